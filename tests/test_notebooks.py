"""Executes each notebook on tiny synthetic data (its `parameters` cell replaced); any cell error fails."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOKS = os.path.join(ROOT, "notebooks")


def _execute(name, parameters, tmp_path):
    """Runs a notebook with `parameters` set after its own (as papermill injects them)."""
    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    cells = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    cells[0].source += "\n" + "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
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


def _text(notebook):
    return "".join(o.get("text", "") for o in _outputs(notebook))


def _in_a_fresh_clone(name, parameters, tmp_path):
    """Runs a notebook with its own defaults but `parameters`; skips unless its default data and runs
    are absent, as in a fresh clone. Returns the notebook and its printed text."""
    present = [path for path in ("data/isic2017", "runs/isic_basic", "runs/isic_improved")
               if os.path.exists(os.path.join(ROOT, path))]
    if present:
        pytest.skip(f"not a fresh clone: {', '.join(present)} exist")
    notebook = _execute(name, parameters, tmp_path)
    return notebook, _text(notebook)


def test_basic_unet_notebook_in_a_fresh_clone(tmp_path):
    """Its default data is absent: it says so, draws a synthetic set and trains on it (tiny settings)."""
    notebook, text = _in_a_fresh_clone("ISIC2018_Segmentation.ipynb", {**NOTEBOOK_TINY, "SYNTHETIC_PAIRS": 24}, tmp_path)
    assert "../data/isic2017 not found, so this runs on 24 synthetic pairs" in text
    images = [o for o in _outputs(notebook) if any(kind.startswith("image/") for kind in o.get("data", {}))]
    assert len(images) >= 3  # batch, curves, cases


def test_improved_unet_notebook_in_a_fresh_clone(tmp_path):
    """No data and no run: the shipped model, its training log, and a note where the comparison would be."""
    _, text = _in_a_fresh_clone("ISIC2018_Segmentation_improved_u_net.ipynb", {"SYNTHETIC_PAIRS": 12}, tmp_path)
    assert "not found, so this shows the shipped model, pretrained/improved_unet.keras" in text
    assert "every pair in" in text and "no basic U-Net run at ../runs/isic_basic" in text


def test_improved_unet_notebook(synthetic_dir, trained_run, basic_run, tmp_path):
    # A finished run to show (the basic notebook covers training inside the notebook).
    notebook = _execute("ISIC2018_Segmentation_improved_u_net.ipynb",
                        {"DATA": synthetic_dir, "RUN": trained_run[0], "BASIC_RUN": basic_run, **NOTEBOOK_TINY}, tmp_path)
    text = "".join(o.get("text", "") for o in _outputs(notebook))
    assert "improved" in text and "basic" in text


def test_test_notebook_in_a_fresh_clone(tmp_path):
    """The shipped model on a synthetic set drawn in place of the absent data."""
    _, text = _in_a_fresh_clone("Test.ipynb", {"SYNTHETIC_PAIRS": 30}, tmp_path)
    assert "improved_unet, input (128, 128); 3 test images" in text
    assert "TTA on" in text and "post-processing" in text
    assert "24 drawn hairs: mean Dice" in text and "without hair removal" in text
    assert "quality estimate (failure: Dice < 0.7)" in text and "mean expected Dice" in text  # the shipped one


def test_committed_notebooks_are_small_and_use_paths_users_have():
    for name in ("ISIC2018_Segmentation.ipynb", "ISIC2018_Segmentation_improved_u_net.ipynb", "Test.ipynb"):
        path = os.path.join(NOTEBOOKS, name)
        assert os.path.getsize(path) < 500_000, name
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        assert "shared/data" not in text, name  # the developers' data path; users have data/isic2017
