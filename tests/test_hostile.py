"""Hostile input and operator mistakes: nothing deleted, nothing silently wrong, one clear line.

Each test reproduces one case of the hostile-input issue; most call the scripts' `main` in this process
(an `InputError` is what the command line prints as one `error:` line with status 2).
"""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import cache
import callbacks
import dataGenerator
import errors
import evaluate
import inference
import lesion_files
import plots
import predict
import runfolder
import synthetic
import train
import training
from conftest import ROOT, TINY
from errors import InputError
from model_improved import build_improved_unet



@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained 32x32 Improved U-Net saved as train.py saves best.keras."""
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    callbacks.export_inference_model(build_improved_unet((32, 32), base_filters=4), path)
    return path


def _fake_run(folder, epochs=4, epochs_done=4):
    """A run folder with the files --resume looks for (the model file is not a real one)."""
    os.makedirs(folder, exist_ok=True)
    runfolder.save_json({"epochs": epochs, "images": "x", "masks": "y"}, os.path.join(folder, runfolder.CONFIG))
    runfolder.save_json({"epochs_done": epochs_done, "best_val_dice": 0.5, "best_epoch": 1},
                        os.path.join(folder, runfolder.STATE))
    with open(os.path.join(folder, runfolder.LAST), "wb") as handle:
        handle.write(b"PK not really a model")
    return folder


def _tree(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, dirs, files in os.walk(folder) for name in dirs + files)


# 1. --overwrite deletes only run folders, and only after every other check.

def test_overwrite_never_deletes_a_data_folder_or_a_file(tmp_path, synthetic_dir):
    data = tmp_path / "mydata"
    shutil.copytree(synthetic_dir, data)
    before = _tree(tmp_path)
    with pytest.raises(InputError, match="not a run folder"):
        train.main(["--data", str(data), "--out", str(tmp_path), "--overwrite", *TINY])
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(InputError, match="not a run folder"):
        train.main(["--data", "/nonexistent", "--out", str(notes), "--overwrite", *TINY])
    assert notes.read_text() == "my notes"
    assert _tree(tmp_path) == sorted(before + ["notes.txt"])


def test_overwrite_refuses_a_run_folder_that_holds_the_data(tmp_path, synthetic_dir):
    run = _fake_run(str(tmp_path / "run"))
    shutil.copytree(synthetic_dir, os.path.join(run, "data"))
    before = _tree(run)
    with pytest.raises(InputError, match="inside --out"):
        train.main(["--data", os.path.join(run, "data"), "--out", run, "--overwrite", *TINY])
    assert _tree(run) == before and sorted(os.listdir(tmp_path)) == ["run"]


def test_overwrite_with_bad_arguments_keeps_the_old_run(tmp_path):
    run = _fake_run(str(tmp_path / "run"))
    before = _tree(run)
    with pytest.raises(InputError, match="/nonexistent"):
        train.main(["--data", "/nonexistent", "--out", run, "--overwrite", *TINY])
    assert _tree(run) == before and sorted(os.listdir(tmp_path)) == ["run"]


def test_overwrite_keeps_the_old_run_until_the_first_checkpoint(tmp_path, synthetic_dir, monkeypatch):
    run = _fake_run(str(tmp_path / "run"))
    before = _tree(run)

    def interrupted_fit(*args, **kwargs):
        assert [name for name in os.listdir(tmp_path) if ".replaced-" in name]  # set aside, not deleted
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        train.main(["--data", synthetic_dir, "--out", run, "--overwrite", "--epochs", "1", *TINY])
    assert _tree(run) == before and sorted(os.listdir(tmp_path)) == ["run"]  # put back as it was
    monkeypatch.undo()
    assert train.main(["--data", synthetic_dir, "--out", run, "--overwrite", "--epochs", "1", *TINY]) == 0
    assert sorted(os.listdir(tmp_path)) == ["run"]  # replaced; the old copy is gone after the checkpoint
    with open(os.path.join(run, runfolder.CONFIG)) as handle:
        assert json.load(handle)["epochs"] == 1


# 2. One training process per run folder.

def test_a_second_run_into_a_locked_folder_stops(tmp_path, synthetic_dir):
    run = str(tmp_path / "run")
    with runfolder.RunLock(run):
        with pytest.raises(InputError, match="another train.py"):
            train.main(["--data", synthetic_dir, "--out", run, *TINY])
        with pytest.raises(InputError, match="another train.py"):
            train.main(["--out", run, "--resume"])
    assert not os.path.exists(run)


def test_a_killed_holder_does_not_leave_the_lock_stuck(tmp_path):
    run = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, runfolder; lock = runfolder.RunLock(sys.argv[1]).acquire(); print('locked', flush=True); "
        "time.sleep(60)"), run], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(InputError, match=f"process {holder.pid}"):
        runfolder.RunLock(run).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock = runfolder.RunLock(run).acquire()  # the stale lock file is there, the lock is not
    lock.release()
    assert not os.path.exists(lock.path)


# 3. predict.py: colliding ids and its own outputs.

def _image(path, size=(20, 30)):
    Image.fromarray(np.full((*size, 3), 90, np.uint8)).save(path)


def test_predict_refuses_two_images_with_one_id(tmp_path, tiny_model):
    (tmp_path / "in1").mkdir()
    (tmp_path / "in2").mkdir()
    for path in ("in1/a.jpg", "in1/a.png", "in2/b.jpg"):
        _image(tmp_path / path)
    with pytest.raises(InputError, match="a.jpg and .*a.png|a.png and .*a.jpg"):
        predict.main([tiny_model, str(tmp_path / "in1"), "--out", str(tmp_path / "masks"), "--no-progress"])
    _image(tmp_path / "in2" / "a.jpg")
    os.remove(tmp_path / "in1" / "a.png")
    with pytest.raises(InputError, match="a_segmentation.png"):
        predict.main([tiny_model, str(tmp_path / "in1"), str(tmp_path / "in2"), "--out", str(tmp_path / "m")])
    assert not os.path.exists(tmp_path / "masks") and not os.path.exists(tmp_path / "m")


def test_scripts_do_not_warn_of_an_attack_for_a_large_photo(tmp_path, tiny_model, monkeypatch, recwarn):
    # Pillow warns above MAX_IMAGE_PIXELS (89 MP by default: a 100 MP photo) and refuses above twice that.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (40, 30), (200, 150, 130)).save(tmp_path / "photo.jpg")
    argv = [tiny_model, str(tmp_path / "photo.jpg"), "--out", str(tmp_path / "masks"), "--no-progress"]
    assert errors.run_cli(predict.main, argv) == 0
    assert Image.open(tmp_path / "masks" / "photo_segmentation.png").size == (40, 30)
    assert [str(w.message) for w in recwarn if "decompression bomb" in str(w.message)] == []


def test_predict_into_its_input_folder_does_not_feed_on_its_outputs(tmp_path, tiny_model, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    _image(folder / "a.jpg")
    for run in range(3):
        predict.main([tiny_model, str(folder), "--out", str(folder), "--overlay", "--no-progress"])
        assert "wrote 1 mask(s)" in capsys.readouterr().out
    assert sorted(os.listdir(folder)) == ["a.jpg", "a_overlay.png", "a_segmentation.png"]


def test_predict_never_replaces_a_mask_it_did_not_write(tmp_path, tiny_model):
    # The ISIC layout names expert masks as predict.py names its masks: --out at the masks folder.
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for name in ("a", "b"):
        _image(images / f"{name}.jpg")
        Image.fromarray(np.full((20, 30), 255, np.uint8)).save(masks / f"{name}_segmentation.png")
    expert = {path.name: path.read_bytes() for path in masks.iterdir()}
    with pytest.raises(InputError, match=r"a_segmentation.png and 1 more: files that predict.py did not write"):
        predict.main([tiny_model, str(images), "--out", str(masks), "--no-progress"])
    assert {path.name: path.read_bytes() for path in masks.iterdir()} == expert
    predict.main([tiny_model, str(images), "--out", str(masks), "--overwrite", "--no-progress"])
    assert sorted(os.listdir(masks)) == ["a_segmentation.png", "b_segmentation.png"]
    assert all(lesion_files.is_own_output_png(masks / name) for name in expert)
    assert (masks / "a_segmentation.png").read_bytes() != expert["a_segmentation.png"]


def test_links_and_folders_named_like_images_are_ignored_everywhere(tmp_path, tiny_model):
    folder = tmp_path / "photos"
    folder.mkdir()
    _image(folder / "a.jpg")
    (folder / "sub.jpg").mkdir()
    os.symlink(folder / "missing.jpg", folder / "dangling.jpg")
    os.symlink(folder / "loop.jpg", folder / "loop.jpg")
    assert predict.collect_images([str(folder)]) == [str(folder / "a.jpg")]
    predict.main([tiny_model, str(folder), "--out", str(tmp_path / "m"), "--no-progress"])
    assert os.listdir(tmp_path / "m") == ["a_segmentation.png"]
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(masks / "a_segmentation.png")
    assert [pair.id for pair in dataGenerator.find_pairs(str(folder), str(masks))] == ["a"]


def test_synthetic_py_checks_its_flags_and_never_joins_a_real_data_set(tmp_path, capsys):
    for argv, expected in ((["--num", "0"], "--num: must be an integer >= 1, got 0"),
                           (["--shape", "0", "5"], "--shape: must be an integer >= 16 and <= 8192, got 0"),
                           (["--seed", "-1"], "--seed: must be an integer >= 0")):
        with pytest.raises(SystemExit):
            synthetic.main(["--out", str(tmp_path / "syn"), *argv])
        assert expected in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "syn")
    data = tmp_path / "mydata"
    synthetic.main(["--out", str(data), "--num", "2", "--shape", "16", "24", "--no-progress"])
    assert sorted(os.listdir(data / "masks")) == ["synthetic_0000_segmentation.png", "synthetic_0001_segmentation.png"]
    synthetic.main(["--out", str(data), "--num", "3", "--shape", "16", "24", "--no-progress"])  # tops up its own
    assert len(os.listdir(data / "images")) == 3
    _image(data / "images" / "ISIC_0000000.jpg")
    with pytest.raises(InputError, match=r"mydata/images: holds 1 image\(s\) that are not synthetic \(e.g. ISIC_0000000"):
        synthetic.main(["--out", str(data), "--num", "5", "--no-progress"])
    assert len(os.listdir(data / "images")) == 4


# 4. A diverged model is never saved, never called intact.

def test_non_finite_weights_are_never_checkpointed(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, name="conv")(inputs))
    checkpoint = callbacks.RunCheckpoint(str(tmp_path))
    checkpoint.set_model(model)
    kernel = model.get_layer("conv").kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    checkpoint.on_epoch_end(0, {"loss": 0.5, "val_dice": 0.1})  # Dice 0 of a NaN model beats -inf
    assert checkpoint.diverged and os.listdir(tmp_path) == [] and checkpoint.best == -math.inf
    kernel.assign(np.zeros(kernel.shape, np.float32))
    checkpoint.diverged = False
    checkpoint.on_epoch_end(1, {"loss": math.inf, "val_dice": 0.1})
    assert checkpoint.diverged and os.listdir(tmp_path) == []
    checkpoint.on_epoch_end(2, {"loss": 0.5, "val_dice": 0.1})
    assert sorted(os.listdir(tmp_path)) == ["best.keras", "last.keras", "state.json"]


def test_diverging_run_saves_nothing_and_says_so(tmp_path, synthetic_dir, capsys, monkeypatch):
    # The issue's `--learning-rate nan`, past the flag check: every weight is NaN after one step.
    monkeypatch.setattr(training, "make_optimizer", lambda config, steps: keras.optimizers.Adam(float("nan")))
    run = str(tmp_path / "run")
    status = train.main(["--data", synthetic_dir, "--out", run, "--epochs", "2", *TINY])
    error = capsys.readouterr().err
    assert status == 1 and "diverged" in error and "no checkpoint was saved" in error and "intact" not in error
    assert not os.path.exists(os.path.join(run, "best.keras")) and not os.path.exists(os.path.join(run, "state.json"))


# 5. --resume --epochs beyond the planned schedule is refused with the reason.

def test_resume_with_other_epochs_is_refused(tmp_path):
    run = _fake_run(str(tmp_path / "run"), epochs=4, epochs_done=4)
    with pytest.raises(InputError, match="planned for 4 epochs.*cosine"):
        train.main(["--out", run, "--resume", "--epochs", "6"])


# 6. A run folder without a model is an error, not a folder of images.

def test_predict_with_a_run_folder_lacking_best_keras(tmp_path):
    run = _fake_run(str(tmp_path / "run"))
    with pytest.raises(InputError, match="without best.keras"):
        predict.main([run, str(tmp_path), "--out", str(tmp_path / "m")])
    assert not os.path.exists(tmp_path / "m")


# 7, 8, 9, 12. Numeric flags are checked when parsed, with their range.

@pytest.mark.parametrize("script, flags, expected", [
    (train, ["--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
    (train, ["--epochs", "-3"], "--epochs: must be an integer >= 1"),
    (train, ["--learning-rate", "-1"], "--learning-rate: must be a finite number > 0"),
    (train, ["--learning-rate", "nan"], "--learning-rate: must be a finite number"),
    (train, ["--limit", "-1"], "--limit: must be an integer >= 3"),
    (train, ["--limit", "0"], "--limit: must be an integer >= 3"),
    (train, ["--base-filters", "0"], "--base-filters: must be an integer >= 1"),
    (train, ["--image-size", "-16", "16"], "--image-size: must be an integer >= 16"),
    (train, ["--batch-size", "0"], "--batch-size: must be an integer >= 1"),
    (train, ["--seed", "-1"], "--seed: must be an integer >= 0"),
    (train, ["--warmup-epochs", "nan"], "--warmup-epochs: must be a finite number >= 0"),
    (train, ["--zoom", "0", "1"], "--zoom: must be a finite number > 0"),
    (predict, ["x.jpg", "--threshold", "nan"], "--threshold: must be a finite number >= 0 and <= 1"),
    (predict, ["x.jpg", "--batch-size", "0"], "--batch-size: must be an integer >= 1"),
    (evaluate, ["--batch-size", "0"], "--batch-size: must be an integer >= 1"),
])
def test_out_of_range_flags_stop_at_parse_time(script, flags, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        script.main([*flags, "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and expected in error and len(error.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_fold_must_be_below_folds(tmp_path, synthetic_dir):
    with pytest.raises(InputError, match="--fold 5: must be below --folds 5"):
        train.main(["--data", synthetic_dir, "--out", str(tmp_path / "run"), "--folds", "5", "--fold", "5", *TINY])
    assert not os.path.exists(tmp_path / "run")


def test_fn_weight_from_python_is_checked_before_anything_is_written(tmp_path, synthetic_dir):
    """train.py refuses --fn-weight 1 at parse time; `training.make_config`, which notebooks call, must too."""
    import training

    with pytest.raises(InputError, match="--fn-weight 1: fn_weight must be in \\(0, 1\\)"):
        training.make_config(str(tmp_path / "run"), data=synthetic_dir, fn_weight=1.0)
    assert training.make_config(str(tmp_path / "run"), data=synthetic_dir, fn_weight=0.7)["fn_weight"] == 0.7
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("damage", ["truncate_images", "remove_masks", "wrong_shape"])
def test_a_damaged_cache_entry_is_rebuilt_with_a_note(damage, synthetic_dir, tmp_path, capsys):
    pairs = dataGenerator.find_pairs(*dataGenerator.resolve_folders(synthetic_dir))[:6]
    expected = dataGenerator.load_arrays(pairs, (16, 16), progress=False)
    cache.cached_arrays(pairs, (16, 16), str(tmp_path), progress=False)
    entry = cache.entry_dir(pairs, (16, 16), str(tmp_path))
    if damage == "truncate_images":
        with open(os.path.join(entry, "images.npy"), "r+b") as handle:
            handle.truncate(200)
    elif damage == "remove_masks":
        os.remove(os.path.join(entry, "masks.npy"))
    else:
        np.save(os.path.join(entry, "masks.npy"), np.zeros((6, 8, 8), np.uint8))
    images, masks, status = cache.cached_arrays(pairs, (16, 16), str(tmp_path), progress=False)
    assert status == "built" and "damaged" in capsys.readouterr().err
    np.testing.assert_array_equal(images, expected[0])
    np.testing.assert_array_equal(masks, expected[1])


# 10. Damaged run files: one line naming the file.

@pytest.mark.parametrize("name", [runfolder.STATE, runfolder.CONFIG, runfolder.SPLIT, runfolder.LAST])
def test_resume_with_a_damaged_file_names_it(name, tmp_path, synthetic_dir):
    run = _fake_run(str(tmp_path / "run"), epochs=4, epochs_done=1)
    config = {**training.resolve_config(train.build_parser().parse_args(["--data", synthetic_dir, "--out", run,
                                                                        *TINY])), "epochs": 4}
    runfolder.save_json(config, os.path.join(run, runfolder.CONFIG))
    pairs = training.find_run_pairs(config)
    runfolder.save_json(training.make_split(pairs, config), os.path.join(run, runfolder.SPLIT))
    path = os.path.join(run, name)
    if name == runfolder.LAST:  # a real checkpoint, cut short as a full disk or a copy would leave it
        build_improved_unet((32, 32), base_filters=4).save(path)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    with pytest.raises(InputError, match=f"{path}: damaged"):
        train.main(["--out", run, "--resume"])


# 11. --resume after the data moved.

def _killed_after_epoch_1(basic_run, run):
    """A copy of the shared 2-epoch run, as if killed after its first epoch; returns its state path."""
    shutil.copytree(basic_run, run)
    state_path = os.path.join(run, runfolder.STATE)
    with open(state_path) as handle:
        state = json.load(handle)
    runfolder.save_json({**state, "epochs_done": 1}, state_path)
    return state_path


def test_resume_takes_moved_data_and_names_ignored_flags(tmp_path, synthetic_dir, basic_run, capsys):
    run = str(tmp_path / "run")
    state_path = _killed_after_epoch_1(basic_run, run)
    with open(state_path) as handle:
        state = json.load(handle)
    moved = tmp_path / "moved"  # the run's data, now in another folder
    shutil.copytree(synthetic_dir, moved)
    capsys.readouterr()
    assert train.main(["--out", run, "--resume", "--data", str(moved), "--learning-rate", "0.5",
                       "--verbose", "0"]) == 0
    error = capsys.readouterr().err
    assert "ignored: --learning-rate" in error and str(moved) in error
    with open(os.path.join(run, runfolder.CONFIG)) as handle:
        config = json.load(handle)
    assert config["images"] == str(moved / "images") and config["learning_rate"] == 1e-3
    with open(state_path) as handle:
        assert json.load(handle)["epochs_done"] == 2
    other = tmp_path / "other"
    (other / "images").mkdir(parents=True)
    (other / "masks").mkdir()
    for name in sorted(os.listdir(moved / "images"))[:3]:
        shutil.copy(moved / "images" / name, other / "images" / name)
        stem = os.path.splitext(name)[0]
        shutil.copy(moved / "masks" / f"{stem}_segmentation.png", other / "masks")
    runfolder.save_json({**state, "epochs_done": 1}, state_path)
    with pytest.raises(InputError, match="missing from the data"):
        train.main(["--out", run, "--resume", "--data", str(other)])


# 12, 15. evaluate.py writes nothing for a refused model, never into a run folder, and replaces no
# files of its report's names that it did not write.

def test_evaluate_leaves_no_output_for_a_refused_model(tmp_path, synthetic_dir):
    bad = tmp_path / "bad.keras"
    bad.write_text("not a model")
    with pytest.raises(InputError, match="bad.keras"):
        evaluate.main([str(bad), "--data", synthetic_dir, "--out", str(tmp_path / "out")])
    assert not os.path.exists(tmp_path / "out")


def test_evaluate_refuses_to_write_into_a_run_folder(tmp_path, tiny_model, synthetic_dir):
    run = _fake_run(str(tmp_path / "run"))
    with open(os.path.join(run, "metrics.json"), "w") as handle:
        handle.write('{"dice": 0.9}')
    with pytest.raises(InputError, match="run folder"):
        evaluate.main([tiny_model, "--data", synthetic_dir, "--out", run])
    with open(os.path.join(run, "metrics.json")) as handle:
        assert json.load(handle) == {"dice": 0.9}


def test_evaluate_replaces_its_own_report_but_not_other_files(tmp_path, tiny_model, synthetic_dir):
    masks = os.path.join(synthetic_dir, "masks")  # the truth as predictions: no model needed
    out = tmp_path / "results"
    evaluate.main(["--predictions", masks, "--data", synthetic_dir, "--out", str(out)])
    evaluate.main(["--predictions", masks, "--data", synthetic_dir, "--out", str(out)])  # a re-run replaces
    with open(out / "metrics.json") as handle:
        assert json.load(handle)["dice"] == 1.0
    # Someone's own files of those names, alone or beside a report of ours, are kept.
    (out / "per_image.csv").write_text("patient,score\n7,0.5\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.json").write_text('{"accuracy": 0.97}')
    (mine / "cases.png").write_bytes(b"someone's figure")
    for folder, argv in ((out, ["--predictions", masks]), (mine, ["--predictions", masks]),
                         (mine, [tiny_model, "--no-progress"])):
        with pytest.raises(InputError, match=f"{folder.name}: holds .*--overwrite"):
            evaluate.main([*argv, "--data", synthetic_dir, "--out", str(folder)])
    assert (out / "per_image.csv").read_text() == "patient,score\n7,0.5\n"
    assert (mine / "metrics.json").read_text() == '{"accuracy": 0.97}'
    assert (mine / "cases.png").read_bytes() == b"someone's figure"
    evaluate.main([tiny_model, "--data", synthetic_dir, "--out", str(mine), "--no-progress", "--overwrite"])
    with open(mine / "metrics.json") as handle:
        assert json.load(handle)["n_images"] == 24
    assert (mine / "cases.png").read_bytes().startswith(b"\x89PNG")
    # --predictions draws no figure, so someone's cases.png alone is no reason to stop.
    figure_only = tmp_path / "figure_only"
    figure_only.mkdir()
    (figure_only / "cases.png").write_bytes(b"someone's figure")
    evaluate.main(["--predictions", masks, "--data", synthetic_dir, "--out", str(figure_only)])
    assert (figure_only / "cases.png").read_bytes() == b"someone's figure"


def test_evaluate_names_a_missing_target(tmp_path):
    with pytest.raises(InputError, match="no such run folder or model file"):
        evaluate.main([str(tmp_path / "doesnotexist")])


# 13, 14. A full disk or an interrupt mid-write leaves the previous file and no temporary.

@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     OSError(errno.EFBIG, "File too large"), KeyboardInterrupt()])
def test_failed_writes_keep_the_old_file_and_remove_the_temporary(failure, tmp_path):
    path = str(tmp_path / "state.json")
    runfolder.save_json({"epochs_done": 1}, path)
    expected = InputError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as raised:
        with runfolder.atomic_write(path) as tmp_path_:
            with open(tmp_path_, "w") as handle:
                handle.write("{half")
            raise failure
    if expected is InputError:
        assert "no space left writing" in str(raised.value) and path in str(raised.value)
    assert os.listdir(tmp_path) == ["state.json"]
    with open(path) as handle:
        assert json.load(handle) == {"epochs_done": 1}


def test_interrupted_overlay_leaves_no_temporary(tmp_path, monkeypatch):
    def interrupted_rename(source, target):  # the temporary file is complete; Ctrl+C before the rename
        assert os.path.getsize(source) > 0
        raise KeyboardInterrupt

    monkeypatch.setattr(runfolder.os, "replace", interrupted_rename)
    with pytest.raises(KeyboardInterrupt):
        plots.save_overlay(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), bool), str(tmp_path / "a_overlay.png"))
    assert os.listdir(tmp_path) == []


def test_disk_full_while_training_is_one_line_and_resumable(tmp_path, basic_run):
    import resource

    run = str(tmp_path / "run")
    state_path = _killed_after_epoch_1(basic_run, run)
    last_size = os.path.getsize(os.path.join(run, runfolder.LAST))

    def small_files():  # files above half a checkpoint cannot be written: the disk is "full"
        resource.setrlimit(resource.RLIMIT_FSIZE, (last_size // 2, last_size // 2))

    command = [sys.executable, "train.py", "--out", run, "--resume", "--verbose", "0"]
    full = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, preexec_fn=small_files, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-2000:]
    assert "no space left writing" in full.stderr
    assert not [name for name in os.listdir(run) if ".tmp" in name]
    with open(state_path) as handle:
        assert json.load(handle)["epochs_done"] == 1
    keras.saving.load_model(os.path.join(run, runfolder.LAST))  # the last complete checkpoint
    assert train.main(["--out", run, "--resume", "--verbose", "0"]) == 0
    with open(state_path) as handle:
        assert json.load(handle)["epochs_done"] == 2


# 16. Large images: masks and overlays without full-size float copies.

def test_strip_resize_gives_the_whole_resize_mask(monkeypatch):
    probability = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    size = (1000, 1333)
    whole = inference.resize_probability(probability, size)
    monkeypatch.setattr(inference, "STRIP_PIXELS", 1000)  # force strips on this small map
    for postprocess in (False, True):
        strips = inference.probability_to_mask(probability, size, 0.5, postprocess)
        expected = inference.to_mask(whole, 0.5, postprocess)
        assert strips.shape == size and strips.dtype == bool
        differ = strips != expected
        if not postprocess:  # only pixels within float round-off of the threshold may differ
            assert np.all(np.abs(whole[differ] - 0.5) < 1e-5)
        assert differ.mean() < 1e-4


def test_postprocess_keeps_the_largest_8_connected_region_filled():
    mask = np.zeros((9, 12), bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False           # a hole: filled
    mask[6, 6] = True            # touches the square diagonally: part of it
    mask[1:3, 9:11] = True       # a smaller region: dropped
    out = inference.postprocess_mask(mask)
    expected = np.zeros((9, 12), bool)
    expected[1:6, 1:6] = True
    expected[6, 6] = True
    np.testing.assert_array_equal(out, expected)
    assert not inference.postprocess_mask(np.zeros((4, 4), bool)).any()


def test_overlay_draws_the_outline_pixels_of_the_float_version(tmp_path):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 12:35] = True
    plots.save_overlay(image, mask, str(tmp_path / "o.png"))
    drawn = plots.outline(image.astype(np.float32) / 255.0, mask, plots.PREDICTION_COLOUR)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), (drawn * 255).round().astype(np.uint8))
