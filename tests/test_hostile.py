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
import time

import keras
import numpy as np
import pytest
from PIL import Image

from lesion_unet import cache
from lesion_unet import callbacks
from lesion_unet import data as dataGenerator
from lesion_unet import errors
import evaluate
from lesion_unet import inference
from lesion_unet import lesion_files
from lesion_unet import plots
import predict
from lesion_unet import runfolder
from lesion_unet import scoring
from lesion_unet import settings
from lesion_unet import synthetic
import train
from lesion_unet import training
from conftest import ROOT, TINY
from lesion_unet.errors import InputError
from lesion_unet.improved_unet import build_improved_unet



@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained 32x32 Improved U-Net saved as train.py saves best.keras."""
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    callbacks.export_inference_model(build_improved_unet((32, 32), base_filters=4), path)
    return path


def _fake_run(folder, epochs=4, epochs_done=4):
    """A run folder with the files --resume looks for (the model file is not a real one)."""
    os.makedirs(folder, exist_ok=True)
    runfolder.save_json({"epochs": epochs, "images": "x", "masks": "y", "model": "basic", "image_size": [32, 32],
                         "seed": 0}, os.path.join(folder, runfolder.CONFIG))
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
    with pytest.raises(InputError, match=r"holds files that no run writes \(data\)"):
        train.main(["--data", os.path.join(run, "data"), "--out", run, "--overwrite", *TINY])
    assert _tree(run) == before and sorted(os.listdir(tmp_path)) == ["run"]
    # Under a name that runs do write, the data is still found inside the folder and kept.
    os.rename(os.path.join(run, "data"), os.path.join(run, "evaluation"))
    before = _tree(run)
    with pytest.raises(InputError, match="inside --out"):
        train.main(["--data", os.path.join(run, "evaluation"), "--out", run, "--overwrite", *TINY])
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


def test_overwrite_refuses_a_folder_with_another_programs_config(tmp_path, synthetic_dir):
    """A config.json alone is no run: another program's folder is never set aside and deleted."""
    project = tmp_path / "proj"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text('{"name": "my-web-app"}')
    (project / "thesis.tex").write_text("chapter one")
    (project / "src" / "main.py").write_text("print('hi')")
    before = _tree(project)
    with pytest.raises(InputError, match="exists and is not a run folder of train.py"):
        train.main(["--data", synthetic_dir, "--out", str(project), "--overwrite", "--epochs", "1", *TINY])
    assert _tree(project) == before and sorted(os.listdir(tmp_path)) == ["proj"]
    assert not runfolder.is_run_folder(str(project))


def test_overwrite_refuses_a_run_folder_holding_files_a_run_never_writes(tmp_path, synthetic_dir, basic_run):
    run = tmp_path / "run"
    shutil.copytree(basic_run, run)
    (run / "thesis.tex").write_text("chapter one")
    (run / "notes").mkdir()
    before = _tree(run)
    with pytest.raises(InputError, match=r"holds files that no run writes \(notes, thesis.tex\)"):
        train.main(["--data", synthetic_dir, "--out", str(run), "--overwrite", "--epochs", "1", *TINY])
    assert _tree(run) == before and sorted(os.listdir(tmp_path)) == ["run"]
    assert runfolder.foreign_entries(basic_run) == []  # what a finished run holds is all its own


@pytest.mark.parametrize("out", ["/", "~", "data_images"])
def test_a_folder_that_is_not_a_run_is_named_as_such(out, tmp_path, synthetic_dir):
    """Without --overwrite too: "run folder exists; pass --resume" would send the user the wrong way."""
    if out == "data_images":
        shutil.copytree(synthetic_dir, tmp_path / "syn")
        out = str(tmp_path / "syn" / "images")
    out = os.path.expanduser(out)  # as the shell would
    with pytest.raises(InputError, match="exists and is not a run folder of train.py.*choose a new or empty --out"):
        train.main(["--data", synthetic_dir, "--out", out, "--epochs", "1", *TINY])


def test_init_from_the_run_that_overwrite_replaces_is_refused_before_anything_moves(tmp_path, synthetic_dir,
                                                                                      basic_run):
    run = tmp_path / "run"
    shutil.copytree(basic_run, run)
    before = _tree(run)
    with pytest.raises(InputError, match=r"--init .*best.keras: inside --out .* copy the model out"):
        train.main(["--data", synthetic_dir, "--out", str(run), "--overwrite", "--epochs", "1",
                    "--init", str(run / "best.keras"), *TINY])
    assert _tree(run) == before and sorted(os.listdir(tmp_path)) == ["run"]


# 2. One training process per run folder.

def test_a_second_run_into_a_locked_folder_stops(tmp_path, synthetic_dir):
    run = str(tmp_path / "run")
    with runfolder.RunLock(run):
        with pytest.raises(InputError, match="another train.py"):
            train.main(["--data", synthetic_dir, "--out", run, *TINY])
        with pytest.raises(InputError, match="another train.py"):
            train.main(["--out", run, "--resume"])
    assert not os.path.exists(run)


def test_two_names_of_one_folder_share_one_lock(tmp_path, synthetic_dir):
    run, link = tmp_path / "clk", tmp_path / "clk_link"
    run.mkdir()
    link.symlink_to(run)
    with runfolder.RunLock(str(run)):
        with pytest.raises(InputError, match="another train.py"):
            runfolder.RunLock(str(link)).acquire()
        with pytest.raises(InputError, match="another train.py"):
            train.main(["--data", synthetic_dir, "--out", str(link), "--epochs", "1", *TINY])
    assert os.listdir(run) == []


def test_a_killed_holder_does_not_leave_the_lock_stuck(tmp_path):
    run = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from lesion_unet import runfolder; lock = runfolder.RunLock(sys.argv[1]).acquire(); print('locked', flush=True); "
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
    assert sorted(os.listdir(folder)) == ["a.jpg", "a_overlay.png", "a_segmentation.png", "predictions.csv"]


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
    assert sorted(os.listdir(masks)) == ["a_segmentation.png", "b_segmentation.png", "predictions.csv"]
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
    assert sorted(os.listdir(tmp_path / "m")) == ["a_segmentation.png", "predictions.csv"]
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(masks / "a_segmentation.png")
    assert [pair.id for pair in dataGenerator.find_pairs(str(folder), str(masks))] == ["a"]


def test_synthetic_py_checks_its_flags_and_never_joins_a_real_data_set(tmp_path, capsys):
    for argv, expected in ((["--num", "0"], "--num: must be an integer >= 1 and <= 100000, got 0"),
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
    (train, ["--epochs", "0"], "--epochs: must be an integer >= 1 and <= 10000, got 0"),
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


@pytest.mark.parametrize("flags", [["--fold", "2"], ["--fold-by", "order"]])
def test_fold_flags_without_folds_stop_at_parse_time(flags, tmp_path, capsys, monkeypatch):
    """Without --folds they would be ignored, and a run meant as an order fold would train on a random split."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        train.main([*flags, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2 and "no --folds was given" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_fold_must_be_below_folds(tmp_path, synthetic_dir):
    with pytest.raises(InputError, match="--fold 5: must be below --folds 5"):
        train.main(["--data", synthetic_dir, "--out", str(tmp_path / "run"), "--folds", "5", "--fold", "5", *TINY])
    assert not os.path.exists(tmp_path / "run")


def test_fn_weight_from_python_is_checked_before_anything_is_written(tmp_path, synthetic_dir):
    """train.py refuses --fn-weight 1 at parse time; `training.make_config`, which notebooks call, must too."""
    from lesion_unet import training

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


def test_a_bare_resume_after_the_data_moved_says_how_to_point_at_it(tmp_path, synthetic_dir, basic_run):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    run = str(tmp_path / "run")
    _killed_after_epoch_1(basic_run, run)
    config_path = os.path.join(run, runfolder.CONFIG)
    with open(config_path) as handle:
        config = json.load(handle)
    runfolder.save_json({**config, "images": str(data / "images"), "masks": str(data / "masks")}, config_path)
    shutil.move(data, tmp_path / "elsewhere")
    with pytest.raises(InputError, match=r"data/images: the run's data is no longer there .* --resume --out "
                                         rf"{run} --data DIR"):
        train.main(["--out", run, "--resume"])


def test_a_run_folder_of_an_earlier_release_still_resumes(tmp_path, basic_run):
    """config.json without config_version (every release before 0.9.0) reads as version 1."""
    run = str(tmp_path / "run")
    _killed_after_epoch_1(basic_run, run)
    path = os.path.join(run, runfolder.CONFIG)
    with open(path) as handle:
        config = json.load(handle)
    assert config.pop("config_version") == training.CONFIG_VERSION == 2
    for key in ("fold_by", "hair_augment", "mixed_precision_reason"):  # settings that came later
        config.pop(key, None)
    runfolder.save_json(config, path)
    assert train.main(["--out", run, "--resume", "--verbose", "0"]) == 0
    with open(os.path.join(run, runfolder.STATE)) as handle:
        assert json.load(handle)["epochs_done"] == 2


@pytest.mark.parametrize("file, key, value, expected", [
    (runfolder.STATE, "epochs_done", -5, "epochs_done = -5: must be 0 to the run's 2 epochs"),
    (runfolder.STATE, "best_val_dice", "x", 'best_val_dice = "x": must be a number from 0 to 1'),
    (runfolder.STATE, "best_epoch", 7, "best_epoch = 7: must be an epoch of the run"),
    (runfolder.CONFIG, "seed", -1, "seed = -1: must be an integer >= 0"),
    (runfolder.CONFIG, "epochs", "4", 'epochs = "4": must be an integer'),
    (runfolder.CONFIG, "epochs", 1e23, "epochs = 1e\\+23: must be an integer"),
    (runfolder.CONFIG, "batch_size", 0, "batch_size = 0: must be an integer >= 1 and <= 4096"),
    (runfolder.CONFIG, "image_size", [32], r"image_size = \[32\]: must be a list of two values"),
    (runfolder.CONFIG, "zoom", [5, 1], r"zoom = \[5, 1\]: the smaller zoom comes first"),
    (runfolder.CONFIG, "loss", "focal", "loss = \"focal\": must be one of dice_bce, dice, bce"),
    (runfolder.CONFIG, "augment", "yes", "augment = \"yes\": must be true or false"),
    (runfolder.CONFIG, "config_version", 3, "config_version = 3: this release reads versions 1 to 2"),
])
def test_hand_edited_run_files_are_refused_naming_the_value(file, key, value, expected, tmp_path, basic_run):
    run = str(tmp_path / "run")
    _killed_after_epoch_1(basic_run, run)
    path = os.path.join(run, file)
    with open(path) as handle:
        saved = json.load(handle)
    runfolder.save_json({**saved, key: value}, path)
    before = _tree(run)
    with pytest.raises(InputError, match=f"{path}: {expected}.*restore the file"):
        train.main(["--out", run, "--resume"])
    assert _tree(run) == before


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


def test_a_16_bit_image_is_scaled_strip_by_strip(tmp_path):
    """A small 16-bit PNG can hold a huge image: its float copy must never be whole (it took 4 GB)."""
    import tracemalloc

    path = str(tmp_path / "deep.png")
    pixels = np.full((3000, 3000), 40000, np.uint16)
    pixels[0, :3] = [0, 1000, 65535]
    Image.fromarray(pixels).save(path)
    assert os.path.getsize(path) < 100_000
    tracemalloc.start()
    try:
        small = lesion_files.read_image(path, (32, 32))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # numpy's arrays: the 8-bit grey image (9 MB) and a float64 strip or two (8 MB each), never the
    # 72 MB float64 copy of the whole image (three of them before)
    assert peak < 40e6, peak
    assert small.shape == (32, 32, 3) and np.all(small[2:] == 155)
    image = lesion_files.read_image(path)
    np.testing.assert_array_equal(image[0, :4], [[0] * 3, [3] * 3, [255] * 3, [155] * 3])  # 40000 * 255 / 65535
    assert image.shape == (3000, 3000, 3) and np.all(image[1:] == 155)


def _padded_keras_file(source, path, padding):
    """A copy of the .keras file `source` whose config.json is padded with `padding` spaces: small on
    disk (the spaces compress to almost nothing), huge once inflated."""
    import zipfile

    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as padded:
        for member in archive.infolist():
            data = archive.read(member)
            if member.filename == "config.json":
                padded.writestr(member.filename, data + b" " * padding)  # still valid JSON
            else:
                padded.writestr(member, data)
    return str(path)


def test_a_zip_bomb_model_is_refused_before_it_is_inflated(tmp_path, tiny_model, synthetic_dir, monkeypatch):
    bomb = _padded_keras_file(tiny_model, tmp_path / "bomb.keras", 200 * 2**20)
    assert os.path.getsize(bomb) < os.path.getsize(tiny_model) + 300_000
    inflated = []
    monkeypatch.setattr("zipfile.ZipFile.read", lambda *args, **kwargs: inflated.append(args) or b"{}")
    with pytest.raises(InputError, match=r"bomb.keras: refused: its config.json would unpack to 210 MB"):
        inference.load_model(bomb)
    with pytest.raises(InputError, match=r"bomb.keras: refused: its config.json"):
        train.main(["--data", synthetic_dir, "--out", str(tmp_path / "run"), "--init", bomb, *TINY])
    assert inflated == [] and not os.path.exists(tmp_path / "run")
    monkeypatch.undo()
    fine = _padded_keras_file(tiny_model, tmp_path / "padded.keras", 1000)  # a little padding is harmless
    assert inference.load_model(fine).input_shape == (None, 32, 32, 3)


# Masks of 0 and 1, the two reports of a run folder, default output folders.

def _masks_as_0_1(source, target):
    """Copies a folder of 0/255 masks as masks of 0 and 1 (lesion = 1), a common way to save them."""
    os.makedirs(target)
    for name in os.listdir(source):
        pixels = np.asarray(Image.open(os.path.join(source, name)))
        Image.fromarray((pixels // 255).astype(np.uint8)).save(os.path.join(target, name))
    return str(target)


def test_masks_of_0_and_1_mark_the_lesion_with_1(tmp_path, synthetic_dir, caplog):
    truth = os.path.join(synthetic_dir, "masks")
    zero_one = _masks_as_0_1(truth, tmp_path / "p01")
    name = sorted(os.listdir(truth))[0]
    mask, found = lesion_files.read_mask(os.path.join(zero_one, name), return_format=True)
    np.testing.assert_array_equal(mask, lesion_files.read_mask(os.path.join(truth, name)))
    assert found == lesion_files.MASK_0_1 and mask.any()
    assert lesion_files.read_mask(os.path.join(truth, name), return_format=True)[1] == lesion_files.MASK_0_255
    # evaluate.py --predictions: the same Dice as the 0/255 masks, with one note
    reports = {}
    for label, folder in (("0/255", truth), ("0/1", zero_one)):
        caplog.clear()
        with caplog.at_level("INFO", logger="lesion_unet"):
            evaluate.main(["--predictions", folder, "--data", synthetic_dir, "--out", str(tmp_path / label[-1])])
        with open(tmp_path / label[-1] / "metrics.json") as handle:
            reports[label] = json.load(handle)["dice"]
        notes = [record.getMessage() for record in caplog.records if "0 and 1" in record.getMessage()]
        assert notes == ([] if label == "0/255" else ["note: 24 predicted mask(s) held only the values 0 and 1; "
                                                     "read as lesion = 1"])
    assert reports == {"0/255": 1.0, "0/1": 1.0}
    # training data: the masks hold the lesions, not nothing
    data = tmp_path / "data01"
    shutil.copytree(os.path.join(synthetic_dir, "images"), data / "images")
    _masks_as_0_1(truth, data / "masks")
    pairs = dataGenerator.find_pairs(*dataGenerator.resolve_folders(str(data)))
    with caplog.at_level("INFO", logger="lesion_unet"):
        _, masks = dataGenerator.load_arrays(pairs, (32, 32), progress=False)
    expected = dataGenerator.load_arrays(dataGenerator.find_pairs(*dataGenerator.resolve_folders(synthetic_dir)),
                                         (32, 32), progress=False)[1]
    np.testing.assert_array_equal(masks, expected)
    assert "note: 24 mask(s) held only the values 0 and 1; read as lesion = 1" in caplog.text


def test_evaluate_with_data_keeps_the_runs_test_report_and_warns_of_seen_images(tmp_path, trained_run,
                                                                              synthetic_dir, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    test_report = (run / "evaluation" / "metrics.json")
    evaluate.main([str(run), "--no-progress"])  # the run's test split
    before = test_report.read_text()
    capsys.readouterr()
    evaluate.main([str(run), "--data", synthetic_dir, "--no-progress"])
    err = capsys.readouterr().err
    assert test_report.read_text() == before and json.loads(before)["n_images"] == 2
    with open(run / "evaluation_data" / "metrics.json") as handle:
        report = json.load(handle)
    assert report["n_images"] == 24
    assert report["settings"]["seen_in_training"] == {"split_file": str(run / "split.json"), "train": 20, "val": 2}
    assert "warning: 20 of the 24 scored images were in this model's training split and 2 in its validation " \
           "split" in err
    # --split with --data: that split of the model's split.json, found in DIR (the shipped model has one)
    evaluate.main([str(run / "best.keras"), "--data", synthetic_dir, "--split", "val", "--out", str(tmp_path / "v"),
                   "--no-progress"])
    assert "warning: 0 of the 2 scored images were in this model's training split and 2 in its validation" \
        in capsys.readouterr().err
    with open(tmp_path / "v" / "metrics.json") as handle:
        assert json.load(handle)["n_images"] == 2
    alone = tmp_path / "alone.keras"
    shutil.copy(run / "best.keras", alone)
    with pytest.raises(InputError, match="alone.keras: --split needs the model's split.json beside it"):
        evaluate.main([str(alone), "--data", synthetic_dir, "--split", "test"])


def test_the_shipped_model_carries_its_split():
    split = lesion_files.load_split(os.path.join(ROOT, "pretrained", "split.json"))
    assert [len(split[name]) for name in ("train", "val", "test")] == [1718, 215, 215]
    real = os.path.join(ROOT, "..", "shared", "data", "isic2017")
    if os.path.isdir(real):  # the seeded split of the real data, as pretrained/README.md says it was trained
        pairs = lesion_files.find_pairs(*lesion_files.resolve_folders(real))
        assert lesion_files.split_pairs(pairs, seed=0) == split
        seen = scoring.seen_in_training(settings.DEFAULT_MODEL, pairs[:100])
        assert seen["train"] + seen["val"] == len(set(p.id for p in pairs[:100]) - set(split["test"]))


def test_default_outputs_go_under_runs(tmp_path, tiny_model, synthetic_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evaluate.main([tiny_model, "--data", synthetic_dir, "--no-progress"])
    predict.main([tiny_model, os.path.join(synthetic_dir, "images"), "--no-progress"])
    assert sorted(os.listdir(tmp_path)) == ["runs"]
    assert sorted(os.listdir(tmp_path / "runs")) == ["evaluation", "predictions"]
    assert os.path.isfile(tmp_path / "runs" / "evaluation" / "metrics.json")
    assert len(os.listdir(tmp_path / "runs" / "predictions")) == 24 + 1  # and predictions.csv


def test_synthetic_py_never_says_it_wrote_what_it_kept(tmp_path, capsys):
    out = str(tmp_path / "syn")
    synthetic.main(["--out", out, "--num", "3", "--shape", "48", "64", "--no-progress"])
    assert capsys.readouterr().out.startswith(f"wrote 3 synthetic pairs to {out}/images")
    before = _tree(out), open(os.path.join(out, "masks", "synthetic_0000_segmentation.png"), "rb").read()
    for flags in (["--shape", "32", "32"], ["--seed", "7"]):
        with pytest.raises(InputError, match=r"holds synthetic pairs drawn with another --shape or --seed "
                                             r"\(synthetic_0000_segmentation.png is 64x48"):
            synthetic.main(["--out", out, "--num", "3", "--shape", "48", "64", "--no-progress", *flags])
    assert (_tree(out), open(os.path.join(out, "masks", "synthetic_0000_segmentation.png"), "rb").read()) == before
    synthetic.main(["--out", out, "--num", "5", "--shape", "48", "64", "--no-progress"])  # the same recipe, more
    assert capsys.readouterr().out.startswith(f"wrote 2 synthetic pairs to {out}/images and {out}/masks (3 of the 5")
    assert len(os.listdir(os.path.join(out, "images"))) == 5


def test_a_model_with_nan_weights_is_refused_not_turned_into_empty_masks(tmp_path, tiny_model):
    model = keras.saving.load_model(tiny_model)
    weights = model.get_weights()
    weights[0][...] = np.nan
    model.set_weights(weights)
    damaged = str(tmp_path / "nan.keras")
    model.save(damaged)
    image = tmp_path / "img.png"
    _image(image)
    with pytest.raises(InputError, match="nan.keras: the model's weights hold NaN or inf values"):
        predict.main([damaged, str(image), "--out", str(tmp_path / "out"), "--no-progress"])
    assert not os.path.exists(tmp_path / "out")

    class NanModel:  # an ONNX model's path has no weights to look at: its output is checked
        name, input_shape, output_shape = "nan.onnx", (None, 32, 32, 3), (None, 32, 32, 1)

        def predict_on_batch(self, images):
            return np.full((*images.shape[:3], 1), np.nan, np.float32)

    with pytest.raises(InputError, match=r"nan.onnx: gives non-finite values \(NaN or inf\) for .*img.png"):
        list(inference.segment_files(NanModel(), [str(image)], progress=False))


def test_exif_orientation_is_applied_to_images_and_masks_alike(tmp_path, tiny_model):
    """A person draws on the photo as displayed: an orientation-6 photo stored 256x192 is 192x256."""
    stored = np.zeros((192, 256, 3), np.uint8)
    stored[:10, :40] = 255  # a bright band along the stored top-left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    photo = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(photo, exif=exif, quality=95)
    mask = tmp_path / "photo_segmentation.png"
    Image.fromarray(stored[..., 0]).save(mask, exif=exif)
    displayed = np.rot90(stored, k=-1)  # what a viewer shows: 256 high, 192 wide
    assert lesion_files.image_size_of(str(photo)) == (256, 192)
    image = lesion_files.read_image(str(photo))
    assert image.shape == (256, 192, 3) and abs(image.astype(int) - displayed).max() < 40  # JPEG round-off
    np.testing.assert_array_equal(lesion_files.read_mask(str(mask)), displayed[..., 0] // 255)
    small = np.asarray(Image.fromarray(stored[..., 0]).resize((64, 48), Image.NEAREST))  # as stored
    np.testing.assert_array_equal(lesion_files.read_mask(str(mask), (64, 48)), np.rot90(small, k=-1) // 255)
    assert lesion_files.read_image(str(photo), (64, 48)).shape == (64, 48, 3)
    out = tmp_path / "out"
    predict.main([tiny_model, str(photo), "--out", str(out), "--no-progress", "--overlay"])
    assert np.asarray(Image.open(out / "photo_segmentation.png")).shape == (256, 192)
    assert np.asarray(Image.open(out / "photo_overlay.png")).shape == (256, 192, 3)


def test_one_unreadable_image_is_skipped_listed_and_fails_the_run(tmp_path, tiny_model, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        _image(folder / name)
    (folder / "b.jpg").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    assert errors.run_cli(predict.main, [tiny_model, str(folder), "--out", str(out), "--no-progress"]) == 1
    assert sorted(os.listdir(out)) == ["a_segmentation.png", "c_segmentation.png", "predictions.csv"]
    captured = capsys.readouterr()
    assert f"skipped: {folder / 'b.jpg'}: cannot read this image" in captured.err
    assert "error: 1 of 3 image(s) could not be read and have no mask" in captured.err
    assert "wrote 2 mask(s)" in captured.out
    # Nothing readable: no empty folder is left behind.
    assert errors.run_cli(predict.main, [tiny_model, str(folder / "b.jpg"), "--out", str(tmp_path / "none"),
                                         "--no-progress"]) == 1
    assert not os.path.exists(tmp_path / "none")


def test_sigterm_during_predict_leaves_no_temporary_file(tmp_path, tiny_model):
    folder = tmp_path / "in"
    folder.mkdir()
    noisy = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    for index in range(30):  # noisy photos: writing each overlay PNG takes most of the time
        Image.fromarray(noisy).save(folder / f"img{index:02d}.jpg", quality=90)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "predict.py", tiny_model, str(folder), "--out", str(out), "--overlay",
                                "--no-progress"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        deadline = time.monotonic() + 300
        while not (out.is_dir() and any(name.endswith("_overlay.png") for name in os.listdir(out))):
            assert process.poll() is None and time.monotonic() < deadline, "predict.py ended before writing"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM and "terminated" in err, err[-2000:]
    assert not [name for name in os.listdir(out) if ".tmp" in name]


def _parsers():
    import importlib

    import app
    from lesion_unet import cliargs
    import export

    return {"train.py": train.build_parser(), "evaluate.py": evaluate.build_parser(), "predict.py": predict.build_parser(),
            "app.py": app.build_parser(), "export.py": export.build_parser(), "synthetic.py": synthetic.build_parser(),
            "dataGenerator.py": importlib.import_module("dataGenerator")._argument_parser(),  # the root face
            "model_*.py": cliargs.model_summary_parser("model", 16, 4, "levels")}


def test_every_numeric_flag_has_an_upper_bound_checked_when_parsed():
    unbounded = [f"{script} {action.option_strings[0]}" for script, parser in _parsers().items()
                 for action in parser._actions
                 if hasattr(action.type, "high") and action.type.high is None]
    assert unbounded == []
    numeric = [action for parser in _parsers().values() for action in parser._actions if hasattr(action.type, "high")]
    assert len(numeric) > 25  # the walk does see the flags


def test_an_absurd_epoch_count_stops_at_parse_time_and_writes_nothing(tmp_path, synthetic_dir, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main(["--data", synthetic_dir, "--out", str(tmp_path / "run"), "--epochs", "99999999999999999999"])
    assert stop.value.code == 2 and "argument --epochs: must be an integer >= 1 and <= 10000" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_a_full_disk_at_the_first_checkpoint_leaves_no_half_made_run(tmp_path, synthetic_dir, basic_run):
    """No state.json yet: the folder could be neither resumed nor reused, and "the previous complete
    file is intact" was not true of a file that never existed."""
    import resource

    last_size = os.path.getsize(os.path.join(basic_run, runfolder.LAST))

    def small_files():  # the first last.keras cannot be written: the disk is "full"
        resource.setrlimit(resource.RLIMIT_FSIZE, (last_size // 2, last_size // 2))

    run = str(tmp_path / "run")
    command = [sys.executable, "train.py", "--data", synthetic_dir, "--out", run, "--epochs", "1", *TINY]
    full = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, preexec_fn=small_files, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr[-2000:]
    assert "no space left writing" in full.stderr and "nothing was written to it" in full.stderr
    assert "intact" not in full.stderr and f"note: no epoch of the new run was saved, so {run} was removed" in full.stderr
    assert os.listdir(tmp_path) == []  # nothing half-made: the same command simply runs again
    assert train.main(["--data", synthetic_dir, "--out", run, "--epochs", "1", *TINY]) == 0
