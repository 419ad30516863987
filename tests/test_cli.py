"""The three command-line tools end to end on tiny synthetic data, and their errors.

They run in this process (`conftest.run_main`), as their command lines would; `test_quiet_and_quick`
checks what only a fresh process shows (start-up noise, `--help` without Keras).
"""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lesion_unet import quiet
from conftest import ROOT, TINY, TINY_GRAPH, TINY_GRAPH_AUTO_PRECISION, run_main, run_script
from lesion_unet.errors import InputError
from lesion_unet.metrics import REPORT_METRICS


def _one_error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


def test_train_writes_a_complete_run_folder(trained_run):
    run_dir, result = trained_run
    for name in ("best.keras", "last.keras", "state.json", "config.json", "split.json", "history.csv",
                 "curves.png", "metrics.json", "per_image.csv", "cases.png"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert "data: 24 pairs" in result.stdout and "improved_unet" in result.stdout
    assert "test Dice" in result.stdout and "2 epochs" in result.stdout
    assert re.search(r"^time: \d+\.\d min from start to test report \(time budget 90 min\)$", result.stdout, re.M)
    assert result.stdout.rstrip().splitlines()[-1] == (f"run folder: {run_dir} (best.keras; history.csv, curves.png, "
                                                       "metrics.json, cases.png)")
    with open(os.path.join(run_dir, "split.json")) as handle:
        split = json.load(handle)
    assert [len(split[k]) for k in ("train", "val", "test")] == [20, 2, 2]
    with open(os.path.join(run_dir, "config.json")) as handle:
        config = json.load(handle)
    assert config["epochs"] == 2 and config["image_size"] == [32, 32] and config["model"] == "improved"
    # pinned by TINY, so that runs compare alike on every CPU; the automatic choice: test_demo_default
    assert config["mixed_precision"] is False and config["mixed_precision_reason"] == "--no-mixed-precision"
    assert "float32 (--no-mixed-precision)" in result.stdout
    import keras  # best.keras computes in float32 however it was trained, for CPUs without bfloat16

    best = keras.saving.load_model(os.path.join(run_dir, "best.keras"))
    assert {layer.dtype_policy.name for layer in best.layers} == {"float32"}
    with open(os.path.join(run_dir, "history.csv")) as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == 2 and {"loss", "dice", "val_dice", "val_loss"} <= set(history[0])
    assert [row["epoch"] for row in history] == ["1", "2"]  # counted as the console and state.json count
    for row in history:  # timings: the steps and the time outside them add up to the training time
        elapsed, train, val, steps, stall = (float(row[k]) for k in ("elapsed_s", "train_s", "val_s", "steps_s",
                                                                      "stall_s"))
        assert 0 < float(row["step_max_s"]) <= steps <= train and train + val <= elapsed
        assert stall == pytest.approx(train - steps, abs=1e-6)
    assert float(history[1]["elapsed_s"]) > float(history[0]["elapsed_s"])
    epoch_lines = [line for line in result.stdout.splitlines() if "val_dice:" in line]
    assert len(epoch_lines) == 2 and not any("stall_s" in line for line in epoch_lines)  # console: no timings
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        summary = json.load(handle)
    assert set(REPORT_METRICS) | {"n_images"} <= set(summary) and summary["n_images"] == 2
    assert all(0.0 <= summary[name] <= 1.0 for name in REPORT_METRICS)
    with open(os.path.join(run_dir, "per_image.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["id"] for row in rows) == split["test"]
    assert Image.open(os.path.join(run_dir, "curves.png")).format == "PNG"


def test_resume_continues_to_the_planned_epochs(basic_run, tmp_path):
    import shutil

    run_dir = str(tmp_path / "resumed")
    shutil.copytree(basic_run, run_dir)
    state_path = os.path.join(run_dir, "state.json")
    with open(state_path) as handle:
        state = json.load(handle)
    with open(state_path, "w") as handle:  # as if the run had been killed after its first epoch
        json.dump({**state, "epochs_done": 1}, handle)
    result = run_main("train.py", "--out", run_dir, "--resume", "--epochs", "2", "--verbose", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming after epoch 1" in result.stdout
    with open(os.path.join(run_dir, "history.csv")) as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]
    with open(state_path) as handle:
        assert json.load(handle)["epochs_done"] == 2


def test_run_eagerly_matches_the_traced_step(basic_run, synthetic_dir, tmp_path):
    """--run-eagerly (what the plumbing tests use, `TINY`) trains the same model as the traced step
    that real runs take: the same losses and Dice, epoch by epoch, and the choice in config.json."""
    traced_dir = str(tmp_path / "traced")
    result = run_main("train.py", "--data", synthetic_dir, "--epochs", "2", "--out", traced_dir, *TINY_GRAPH)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {}
    for name, run_dir in (("eager", basic_run), ("traced", traced_dir)):
        with open(os.path.join(run_dir, "config.json")) as handle:
            runs[name] = {"config": json.load(handle)}
        with open(os.path.join(run_dir, "history.csv")) as handle:
            runs[name]["history"] = list(csv.DictReader(handle))
    assert runs["eager"]["config"]["run_eagerly"] is True and runs["traced"]["config"]["run_eagerly"] is False
    for eager, traced in zip(runs["eager"]["history"], runs["traced"]["history"], strict=True):
        for key in ("loss", "dice", "val_loss", "val_dice"):
            # float32 round-off only: the two paths run the same operations in another order
            assert float(eager[key]) == pytest.approx(float(traced[key]), rel=1e-4, abs=1e-5), key


def test_evaluate_run_folder_and_model_with_data(trained_run, synthetic_dir, tmp_path):
    run_dir, _ = trained_run
    result = run_main("evaluate.py", run_dir, "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dice" in result.stdout and "test split" in result.stdout
    with open(os.path.join(run_dir, "evaluation", "metrics.json")) as handle:
        assert json.load(handle)["n_images"] == 2
    out = str(tmp_path / "eval_all")
    result = run_main("evaluate.py", os.path.join(run_dir, "best.keras"), "--data", synthetic_dir,
                        "--out", out, "--tta", "--postprocess", "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(out, "metrics.json")) as handle:
        summary = json.load(handle)
    assert summary["n_images"] == 24 and summary["settings"]["tta"] is True
    assert os.path.isfile(os.path.join(out, "cases.png")) and os.path.isfile(os.path.join(out, "per_image.csv"))


def test_predict_writes_isic_masks_at_each_images_size(trained_run, synthetic_dir, tmp_path):
    run_dir, _ = trained_run
    out = str(tmp_path / "masks")
    images = os.path.join(synthetic_dir, "images")
    result = run_main("predict.py", os.path.join(run_dir, "best.keras"), images, "--out", out, "--overlay",
                        "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted(os.listdir(out))
    assert len([n for n in written if n.endswith("_segmentation.png")]) == 24
    assert len([n for n in written if n.endswith("_overlay.png")]) == 24
    mask = Image.open(os.path.join(out, "synthetic_0000_segmentation.png"))
    assert mask.mode == "L" and mask.size == (64, 48)
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert not [n for n in written if ".tmp" in n]


def test_demo_default_uses_synthetic_data(tmp_path):
    run_dir = str(tmp_path / "demo")
    result = run_main("train.py", "--epochs", "1", "--limit", "12", "--out", run_dir, *TINY_GRAPH_AUTO_PRECISION,
                      "--verbose", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(synthetic demo)" in result.stdout and "test Dice" in result.stdout and "| 1 epoch," in result.stdout
    assert len(os.listdir(os.path.join(run_dir, "synthetic_data", "images"))) == 240
    from lesion_unet import distribution  # not asked, so chosen for this machine's CPU and named on the run's first line

    with open(os.path.join(run_dir, "config.json")) as handle:
        config = json.load(handle)
    assert config["mixed_precision"] is bool(distribution.native_bfloat16_flags())
    assert config["mixed_precision_reason"].startswith("auto: ")
    assert ("mixed_bfloat16 (auto: " if config["mixed_precision"] else "float32 (auto: ") in result.stdout


def test_existing_run_folder_is_not_overwritten(trained_run, synthetic_dir):
    run_dir, _ = trained_run
    before = os.path.getmtime(os.path.join(run_dir, "best.keras"))
    line = _one_error_line(run_main("train.py", "--data", synthetic_dir, "--out", run_dir, *TINY))
    assert run_dir in line and "--resume" in line and "--overwrite" in line
    assert os.path.getmtime(os.path.join(run_dir, "best.keras")) == before


@pytest.mark.parametrize("kwargs, accepted, refused, bounds", [
    ({"low": 0, "high": 1}, ["0", "1", "0.5"], ["-0.1", "1.01", "nan", "inf"], ">= 0 and <= 1"),
    ({"low": 0, "high": 1, "low_open": True, "high_open": True}, ["0.001", "0.999"], ["0", "1"], "> 0 and < 1"),
    ({"low": 0}, ["0", "1e6"], ["-1e-9"], ">= 0"),
])
def test_float_range_keeps_and_names_its_bounds(kwargs, accepted, refused, bounds):
    import argparse

    from lesion_unet import cliargs

    parse = cliargs.float_range(**kwargs)
    assert [parse(text) for text in accepted] == [float(text) for text in accepted]
    for text in refused:
        with pytest.raises(argparse.ArgumentTypeError, match=f"must be a finite number {bounds}, got "):
            parse(text)
    with pytest.raises(argparse.ArgumentTypeError, match=f"must be a number {bounds}, got 'x'"):
        parse("x")


@pytest.mark.parametrize("args, expected", [
    (["train.py", "--data", "/nonexistent/folder"], "/nonexistent/folder"),
    (["train.py", "--image-size", "100", "128", "--epochs", "1"], "multiples of 16"),
    (["train.py", "--fn-weight", "1"], "--fn-weight: must be a finite number > 0 and < 1, got 1"),
    (["train.py", "--loss", "bce", "--fn-weight", "0.7"], "--loss bce has none"),
    (["evaluate.py", "pytest.ini", "--data", "SYNTHETIC"], "pytest.ini"),
    (["predict.py", "missing_model.keras", "x.jpg"], "missing_model.keras"),
])
def test_bad_input_gives_one_line_and_status_2(args, expected, tmp_path, synthetic_dir):
    args = [synthetic_dir if arg == "SYNTHETIC" else arg for arg in args]
    if args[0] == "train.py":
        args = [*args, "--out", str(tmp_path / "run")]
    line = _one_error_line(run_main(*args))
    assert expected in line
    assert not os.path.exists(tmp_path / "run")  # nothing partial left behind


def test_orphans_stop_training_before_anything_is_written(tmp_path, synthetic_dir):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    os.remove(data / "masks" / "synthetic_0003_segmentation.png")
    line = _one_error_line(run_main("train.py", "--data", str(data), "--out", str(tmp_path / "run"), *TINY))
    assert "synthetic_0003" in line and "--skip-unpaired" in line
    assert not os.path.exists(tmp_path / "run")


def test_scoring_predict_py_masks_equals_scoring_the_model(trained_run, synthetic_dir, tmp_path):
    import evaluate
    import predict

    run_dir, _ = trained_run
    model = os.path.join(run_dir, "best.keras")
    masks = str(tmp_path / "masks")
    predict.main([model, os.path.join(synthetic_dir, "images"), "--out", masks, "--no-progress"])
    evaluate.main(["--predictions", masks, "--data", synthetic_dir, "--out", str(tmp_path / "from_masks")])
    evaluate.main([model, "--data", synthetic_dir, "--out", str(tmp_path / "from_model"), "--no-progress"])
    rows = {}
    for name in ("from_masks", "from_model"):
        with open(tmp_path / name / "per_image.csv") as handle:
            rows[name] = list(csv.DictReader(handle))
    assert len(rows["from_masks"]) == 24 and rows["from_masks"] == rows["from_model"]
    os.remove(os.path.join(masks, "synthetic_0005_segmentation.png"))
    with pytest.raises(InputError, match="no predicted mask for 1 of 24 image.*synthetic_0005"):
        evaluate.main(["--predictions", masks, "--data", synthetic_dir, "--out", str(tmp_path / "again")])


def test_help_loads_no_keras():
    """--help (and a bad flag) answer before Keras loads: no TensorFlow start-up of 10-15 s."""
    code = ("import sys\n"
            "for script in ('train', 'evaluate', 'predict', 'make_figures', 'download_isic', 'app', 'synthetic'):\n"
            "    module = __import__(script)\n"
            "    for argv in (['--help'], ['--no-such-flag']):\n"
            "        try:\n"
            "            module.main(argv)\n"
            "        except SystemExit:\n"
            "            pass\n"
            # library modules that are scripts too: they import Keras at the top, unless run for --help
            "import runpy\n"
            "for script in ('model_improved', 'model_basic', 'dataGenerator'):\n"
            "    for argv in (['--help'], ['--no-such-flag']):\n"
            "        sys.argv = [script + '.py'] + argv\n"
            "        try:\n"
            "            runpy.run_path(script + '.py', run_name='__main__')\n"
            "        except SystemExit:\n"
            "            pass\n"
            "print(sorted({'keras', 'tensorflow', 'jax', 'torch'} & set(sys.modules)))\n")
    result = run_script("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "[]"
    assert result.stdout.count("usage: ") == 10 and "--learning-rate" in result.stdout and "--max-upload-mb" in result.stdout
    assert "--base-filters" in result.stdout and "--no-augment" in result.stdout
    assert result.stderr.count("error: ") == 10


def test_scripts_are_quiet_but_real_warnings_pass(trained_run, synthetic_dir, tmp_path):
    """A fresh process prints none of TensorFlow's start-up lines (absl, CUDA, CPU features), unless
    the user asks for them with TF_CPP_MIN_LOG_LEVEL."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, "predict.py", os.path.join(trained_run[0], "best.keras"),
               os.path.join(synthetic_dir, "images", "synthetic_0000.jpg"), "--out", str(tmp_path / "masks"),
               "--no-progress"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == "" and result.stdout.startswith("wrote 1 mask(s)")
    summary = subprocess.run([sys.executable, "model_basic.py", "--base-filters", "2"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)  # a script that imports Keras at the top
    assert summary.returncode == 0 and summary.stderr == "" and "basic_unet" in summary.stdout, summary.stderr[-2000:]
    loud = subprocess.run(command, cwd=ROOT, env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"}, capture_output=True,
                          text=True, timeout=300)
    assert loud.returncode == 0 and quiet.NOISE.search(loud.stderr)  # the filter had something to filter


def test_filtered_stderr_drops_only_known_noise(capfd):
    with quiet.filtered_stderr():  # what C++ code writes goes to file descriptor 2 directly
        os.write(2, b"I0000 00:00:1 12 cudart_stub.cc:31] Could not find cuda drivers on your machine\n")
        os.write(2, b"warning: something the user must see\n")
        os.write(2, b"E0000 00:00:1 12 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n")
    assert capfd.readouterr().err == "warning: something the user must see\n"


def test_init_starts_from_a_saved_models_weights(basic_run, synthetic_dir, tmp_path):
    """train.py --init: the run starts from the saved weights (a learning rate of 1e-9 keeps them), also
    with --input-norm added, the config names the source, and a model of another width is one clear error."""
    import keras

    source = os.path.join(basic_run, "best.keras")
    run = str(tmp_path / "fine_tuned")
    result = run_main("train.py", "--data", synthetic_dir, "--out", run, "--epochs", "1", *TINY,
                      "--learning-rate", "1e-9", "--warmup-epochs", "0", "--init", source, "--fn-weight", "0.7",
                      "--input-norm")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(run, "config.json")) as handle:
        config = json.load(handle)
    assert config["init"] == os.path.abspath(source)
    # --fn-weight (fine-tuning is where a user would change the loss): recorded, named, and compiled in
    assert config["fn_weight"] == 0.7 and "dice_bce loss (fn weight 0.7)," in result.stdout
    assert keras.saving.load_model(os.path.join(run, "last.keras")).loss.fn_weight == 0.7
    before, after = keras.saving.load_model(source), keras.saving.load_model(os.path.join(run, "best.keras"))
    # --input-norm adds a layer without weights, so a model trained without it still starts the run
    assert config["model_kwargs"]["input_norm"] is True and after.get_layer("image_standardize")
    assert " params, input standardized per image | 1 epoch" in result.stdout
    assert len(before.weights) == len(after.weights) > 10
    for want, got in zip(before.weights, after.weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want), atol=1e-5)
    wider = run_main("train.py", "--data", synthetic_dir, "--out", str(tmp_path / "wider"), "--epochs", "1", *TINY,
                     "--base-filters", "8", "--init", source)
    assert wider.returncode == 2 and f"--init {source}: its weights" in wider.stderr, wider.stderr[-2000:]
    assert "do not fit this model" in wider.stderr and "--base-filters" in wider.stderr
    assert not os.path.exists(tmp_path / "wider")  # a run that never started leaves nothing behind
    missing = run_main("train.py", "--data", synthetic_dir, "--out", str(tmp_path / "none"), "--init", "nope.keras")
    assert missing.returncode == 2 and "--init nope.keras: no such model file" in missing.stderr


def test_training_noise_is_filtered_as_it_comes_and_real_lines_pass(capfd):
    from lesion_unet import quiet

    with quiet.live_filtered_stderr():
        os.write(2, b"E0000 00:00:1 12 util.cc:131] oneDNN supports DT_INT32 only on platforms with AVX-512. "
                    b"Falling back to the default Eigen-based implementation if present.\n")
        os.write(2, b"warning: a line the user must see\n")
        os.write(2, b"a last line without its newline")
    assert capfd.readouterr().err == "warning: a line the user must see\na last line without its newline"


def test_a_log_file_gets_one_line_per_epoch_without_escape_codes(synthetic_dir, tmp_path):
    flags = [flag for flag in TINY if flag not in ("--verbose", "0")]
    assert len(flags) == len(TINY) - 2
    result = run_main("train.py", "--data", synthetic_dir, "--out", str(tmp_path / "run"), "--epochs", "2", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\x1b[" not in result.stdout and "\r" not in result.stdout and "\x08" not in result.stdout
    assert re.search(r"^Epoch 2/2$", result.stdout, re.M) and re.search(r"^\d+/\d+ - .*val_dice", result.stdout, re.M)
