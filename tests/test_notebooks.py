"""Executes each notebook on tiny synthetic data (its `parameters` cell replaced); any cell error fails."""

import os

import nbformat
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOKS = os.path.join(ROOT, "notebooks")


def _execute(name, parameters, tmp_path):
    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    cells = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    cells[0].source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    env_backup = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    try:
        NotebookClient(notebook, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": NOTEBOOKS}}).execute()
    finally:
        if env_backup is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL")
        else:
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = env_backup
    nbformat.write(notebook, str(tmp_path / name))  # kept for inspection when a test fails
    return notebook


def _outputs(notebook):
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]


NOTEBOOK_TINY = {"IMAGE_SIZE": (32, 32), "EPOCHS": 1, "LIMIT": 24, "BASE_FILTERS": 4, "SEED": 0, "RUN_EAGERLY": True}


def test_basic_unet_notebook(synthetic_dir, tmp_path):
    notebook = _execute("ISIC2018_Segmentation.ipynb", {"DATA": synthetic_dir, "RUN": None, **NOTEBOOK_TINY}, tmp_path)
    images = [o for o in _outputs(notebook) if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # batch, curves, cases


def test_improved_unet_notebook(synthetic_dir, trained_run, basic_run, tmp_path):
    # A finished run to show (the basic notebook covers training inside the notebook).
    notebook = _execute("ISIC2018_Segmentation_improved_u_net.ipynb",
                        {"DATA": synthetic_dir, "RUN": trained_run[0], "BASIC_RUN": basic_run, **NOTEBOOK_TINY}, tmp_path)
    text = "".join(o.get("text", "") for o in _outputs(notebook))
    assert "improved" in text and "basic" in text


def test_test_notebook(synthetic_dir, basic_run, tmp_path):
    notebook = _execute("Test.ipynb", {"DATA": synthetic_dir, "MODEL_PATH": os.path.join(basic_run, "best.keras"),
                                       "SPLIT": "test", "SEED": 0, "LIMIT": None}, tmp_path)
    text = "".join(o.get("text", "") for o in _outputs(notebook))
    assert "TTA on" in text and "post-processing" in text
    assert "24 drawn hairs: mean Dice" in text and "without hair removal" in text
