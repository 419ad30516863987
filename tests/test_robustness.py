"""Bad input, interruptions and safe loading: clear errors, nothing lost."""

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

from lesion_unet import callbacks
from lesion_unet import data as dataGenerator
from lesion_unet import inference
from conftest import ROOT, TINY, TINY_GRAPH, run_main
from lesion_unet.errors import InputError


def test_lambda_model_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "executed"
    marker_path = str(marker)
    inputs = keras.Input((16, 16, 3))
    # Writes a file if its code ever runs.
    hidden = keras.layers.Lambda(lambda t: (open(marker_path, "w").close(), t)[1], name="payload")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(hidden))
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    marker.unlink(missing_ok=True)
    with pytest.raises(InputError, match="arbitrary code"):
        inference.load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"plain text", b"PK\x03\x04 broken zip"])
def test_non_model_files_are_refused(tmp_path, content):
    path = tmp_path / "model.keras"
    path.write_bytes(content)
    with pytest.raises(InputError, match="model.keras"):
        inference.load_model(str(path))


def test_zip_that_is_not_a_model_is_refused(tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not a model")
    with pytest.raises(InputError, match="cannot load"):
        inference.load_model(str(path))


def test_model_with_wrong_channels_is_refused(tmp_path):
    inputs = keras.Input((16, 16, 1))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs))
    path = str(tmp_path / "grey.keras")
    model.save(path)
    with pytest.raises(InputError, match="RGB"):
        inference.load_model(path)


def _valid_bytes(fmt):
    buffer = io.BytesIO()
    array = np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def test_fuzzed_files_give_only_the_clear_error(tmp_path):
    rng = np.random.default_rng(1234)
    seeds = {"png": _valid_bytes("PNG"), "jpg": _valid_bytes("JPEG"), "bmp": _valid_bytes("BMP")}
    outcomes = {"read": 0, "refused": 0}
    for trial in range(150):
        ext, data = list(seeds.items())[trial % 3]
        data = bytearray(data)
        mode = trial % 3
        if mode == 0:  # random bytes
            data = bytearray(rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes())
        elif mode == 1:  # truncated
            data = data[: int(rng.integers(0, len(data)))]
        else:  # flipped bytes
            for position in rng.integers(0, len(data), 8):
                data[position] = int(rng.integers(0, 256))
        path = tmp_path / f"fuzz{trial}.{ext}"
        path.write_bytes(bytes(data))
        for reader in (dataGenerator.read_image, dataGenerator.read_mask):
            try:
                array = reader(str(path), (8, 8))
                assert array.dtype == np.uint8 and array.shape[:2] == (8, 8)
                outcomes["read"] += 1
            except InputError as error:
                assert str(path) in str(error)
                outcomes["refused"] += 1
    assert outcomes["refused"] > 50


def test_paths_with_spaces_and_non_ascii(tmp_path):
    root = tmp_path / "my lesions ü 皮膚"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "lésion 1.JPEG")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(root / "masks" / "lésion 1_segmentation.png")
    pairs = dataGenerator.find_pairs(*dataGenerator.resolve_folders(str(root)))
    images, masks = dataGenerator.load_arrays(pairs, (8, 8), progress=False)
    assert pairs[0].id == "lésion 1" and masks.min() == 1


def test_large_images_are_decoded_at_reduced_scale(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.full((4000, 6000, 3), 128, np.uint8)).save(path, quality=70)
    decoded_sizes = []
    original = Image.Image.convert

    def recording_convert(self, *args, **kwargs):  # read_image converts the decoded image to RGB
        decoded_sizes.append(self.size)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", recording_convert)
    assert dataGenerator.read_image(str(path), (128, 128)).shape == (128, 128, 3)
    assert decoded_sizes and max(decoded_sizes)[0] <= 6000 // 8 + 1  # decoded at 1/8 scale by the JPEG decoder


def test_nan_loss_stops_training_and_names_the_batch():
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(1, 1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    images = np.ones((8, 4, 4, 3), np.float32)
    images[2:] = np.nan  # the second batch of two goes bad
    masks = np.ones((8, 4, 4, 1), np.float32)
    guard = callbacks.StopOnNonFiniteLoss()
    history = model.fit(images, masks, batch_size=2, epochs=3, callbacks=[guard], verbose=0, shuffle=False)
    assert guard.where[:2] == (1, 2) and math.isnan(guard.where[2])
    assert len(history.history["loss"]) == 1


def test_unwritable_output_folder_is_a_clear_error(tmp_path, synthetic_dir, trained_run):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    model = os.path.join(trained_run[0], "best.keras")
    result = run_main("predict.py", model, os.path.join(synthetic_dir, "images"), "--out", str(blocker / "sub"))
    assert result.returncode == 2 and "a_file/sub: cannot write" in result.stderr and "Traceback" not in result.stderr
    result = run_main("train.py", "--data", synthetic_dir, "--out", str(blocker / "run"), "--epochs", "1")
    assert result.returncode == 2 and "cannot write" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_right_after_an_epoch_ends_training_with_143_not_an_abort(synthetic_dir, tmp_path):
    """SIGTERM the moment an epoch is saved, while fit()'s data threads run on (the traced step, as real
    runs take): the clean-up runs and the process ends with 143, where its threads' teardown at the
    interpreter's exit used to abort it ("terminate called without an active exception", -6)."""
    run_dir = str(tmp_path / "stopped")
    process = subprocess.Popen([sys.executable, "train.py", "--data", synthetic_dir, "--out", run_dir, "--epochs", "6",
                                *TINY_GRAPH], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    state_path = os.path.join(run_dir, "state.json")
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            try:
                with open(state_path) as handle:
                    if json.load(handle)["epochs_done"] >= 1:
                        break
            except (OSError, ValueError):  # not written yet, or being replaced
                pass
            time.sleep(0.005)
        assert process.poll() is None, "training ended before it could be stopped"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM and "terminated" in err, err[-2000:]
    assert "terminate called" not in err
    with open(state_path) as handle:
        assert 1 <= json.load(handle)["epochs_done"] < 6  # resumable (resuming: the kill -9 test below)


def test_kill_9_then_resume_finishes_the_planned_epochs(synthetic_dir, tmp_path):
    run_dir = str(tmp_path / "killed")
    command = [sys.executable, "train.py", "--data", synthetic_dir, "--out", run_dir, "--epochs", "4", *TINY,
               "--batch-size", "4"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path = os.path.join(run_dir, "state.json")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if os.path.isfile(state_path):
            with open(state_path) as handle:
                if json.load(handle)["epochs_done"] >= 1:
                    break
        time.sleep(0.2)
    assert process.poll() is None, "training ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with open(state_path) as handle:
        done = json.load(handle)["epochs_done"]
    assert 1 <= done < 4
    keras.saving.load_model(os.path.join(run_dir, "best.keras"))  # intact after the kill
    # A kill during a write leaves a temporary file (CI once caught one from curves.png); make
    # sure there is one, so the clean-up on resume is always checked.
    with open(os.path.join(run_dir, "curves.tmp99999.png"), "wb") as handle:
        handle.write(b"half-written")
    result = run_main("train.py", "--out", run_dir, "--resume", "--verbose", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(run_dir, "history.csv")) as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3", "4"]
    assert os.path.isfile(os.path.join(run_dir, "metrics.json"))
    assert not [name for name in os.listdir(run_dir) if ".tmp" in name]


def test_grey_level_masks_are_binarised_and_counted(tmp_path, caplog):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for index, values in enumerate(([0, 255], [0, 90, 200], [10, 250])):
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "images" / f"m{index}.png")
        mask = np.resize(np.array(values, np.uint8), (4, 6))
        Image.fromarray(mask).save(tmp_path / "masks" / f"m{index}_segmentation.png")
    pairs = dataGenerator.find_pairs(str(tmp_path / "images"), str(tmp_path / "masks"))
    with caplog.at_level("INFO"):
        _, masks = dataGenerator.load_arrays(pairs, (4, 6), progress=False)
    assert "2 mask(s) held values other than 0 and 255" in caplog.text
    assert set(np.unique(masks)) == {0, 1}
    np.testing.assert_array_equal(masks[1].ravel()[:3], [0, 0, 1])


def test_model_without_a_fixed_size_is_refused(tmp_path):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))
    path = str(tmp_path / "any_size.keras")
    model.save(path)
    with pytest.raises(InputError, match="fixed input size"):
        inference.load_model(path)
