"""Run folders written by an earlier release still evaluate and resume.

`tests/fixtures/runs-0.10.0/` holds two run folders as `train.py` 0.10.0 wrote them (a 4-filter basic
U-Net on 160 synthetic 32x32 pairs, `synthetic.write_dataset(seed=5)`, 2 epochs, float32):
`finished`, a complete run, and `interrupted`, stopped by SIGTERM after its first epoch. Their data
folder is gone, as after a move: the tests draw it again and point the tools at it with `--data`. A
later release that changes the run folder's files adds its own folder beside these and keeps them.
"""

import csv
import json
import os
import shutil

import pytest

from lesion_unet import synthetic
from conftest import ROOT, run_main

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "runs-0.10.0")
FLAGS = ["--no-progress"]


@pytest.fixture(scope="module")
def their_data(tmp_path_factory):
    """The fixtures' data, drawn again (the same pairs: the synthetic set is seeded)."""
    return synthetic.write_dataset(str(tmp_path_factory.mktemp("moved") / "synthetic"), num_samples=160,
                                   shape=(32, 32), seed=5)


def _copy(name, tmp_path):
    return shutil.copytree(os.path.join(FIXTURES, name), str(tmp_path / name))


def test_a_finished_run_scores_its_test_split_as_it_did(their_data, tmp_path):
    run = _copy("finished", tmp_path)
    with open(os.path.join(run, "metrics.json")) as handle:
        reported = json.load(handle)
    result = run_main("evaluate.py", os.path.join(run, "best.keras"), "--data", their_data, "--split", "test",
                      "--out", str(tmp_path / "report"), *FLAGS)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "report" / "metrics.json") as handle:
        scored = json.load(handle)
    assert scored["n_images"] == reported["n_images"] == 16
    for name in ("dice", "jaccard", "sensitivity", "specificity", "accuracy"):
        assert scored[name] == pytest.approx(reported[name], abs=1e-6), name
    # and the run folder itself, once told where its data went
    result = run_main("evaluate.py", run, "--data", their_data, "--split", "test", *FLAGS)
    assert result.returncode == 0, result.stderr
    with open(os.path.join(run, "evaluation_data", "metrics.json")) as handle:
        assert json.load(handle)["dice"] == pytest.approx(reported["dice"], abs=1e-6)
    images = [os.path.join(their_data, "images", f"synthetic_{index:04d}.jpg") for index in range(3)]
    result = run_main("predict.py", run, *images, "--out", str(tmp_path / "masks"), *FLAGS)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "masks")) == ["predictions.csv", *(f"synthetic_{index:04d}_segmentation.png"
                                                                          for index in range(3))]


def test_an_interrupted_run_resumes_to_its_planned_epochs(their_data, tmp_path):
    run = _copy("interrupted", tmp_path)
    assert not os.path.exists(os.path.join(run, "metrics.json"))
    result = run_main("train.py", "--out", run, "--resume", "--data", their_data, "--verbose", "0")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(run, "state.json")) as handle:
        assert json.load(handle)["epochs_done"] == 2
    with open(os.path.join(run, "history.csv"), newline="") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]
    with open(os.path.join(run, "metrics.json")) as handle:
        assert json.load(handle)["n_images"] == 16
