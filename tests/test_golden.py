"""Golden values for the defaults that change reported numbers: the learning-rate schedule, the flip
TTA, the pixel values of decoded images, the curves figure, and make_figures.py end to end."""

import math
import os

import numpy as np
import pytest
from PIL import Image

from lesion_unet import data as dataGenerator
from lesion_unet import inference
from lesion_unet import plots
from lesion_unet import training
from conftest import run_main


def test_warmup_then_cosine_schedule():
    # 4 epochs of 10 steps, 1 epoch of warm-up to 1e-3: linear from 0, then cosine to 0 at step 40.
    optimizer = training.make_optimizer({"epochs": 4, "warmup_epochs": 1.0, "learning_rate": 1e-3}, 10)
    schedule = optimizer._learning_rate  # the schedule itself; `learning_rate` is its current value
    expected = {0: 0.0, 5: 5e-4, 10: 1e-3, 25: 1e-3 * 0.5 * (1 + math.cos(math.pi * 15 / 30)), 40: 0.0}
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, abs=1e-9), step
    no_warmup = training.make_optimizer({"epochs": 2, "warmup_epochs": 0.0, "learning_rate": 2e-3}, 5)._learning_rate
    assert float(no_warmup(0)) == pytest.approx(2e-3) and float(no_warmup(5)) == pytest.approx(1e-3)


class _RedChannel:
    """A stand-in model whose probability is the image's red channel: it moves with every flip, so
    TTA equals plain prediction only when each flipped prediction is flipped back."""

    def predict_on_batch(self, images):
        return images[..., :1]


def test_tta_flips_each_prediction_back():
    images = np.random.default_rng(0).random((2, 6, 8, 3)).astype(np.float32)
    plain = inference.predict_batch(_RedChannel(), images)
    np.testing.assert_array_equal(plain, images[..., 0])
    np.testing.assert_allclose(inference.predict_batch(_RedChannel(), images, tta=True), plain, atol=1e-7)


@pytest.mark.parametrize("mode, pixels, expected", [
    ("L", np.array([[0, 77, 255]], np.uint8), [[0, 0, 0], [77, 77, 77], [255, 255, 255]]),
    # 16-bit: scaled by 255/65535 when any value is above 255, then truncated
    ("I;16", np.array([[0, 1000, 65535]], np.uint16), [[0, 0, 0], [3, 3, 3], [255, 255, 255]]),
    # transparent pixels over black, opaque ones as they are
    ("RGBA", np.array([[[200, 100, 50, 0], [200, 100, 50, 255], [200, 100, 50, 128]]], np.uint8),
     [[0, 0, 0], [200, 100, 50], [100, 50, 25]]),
])
def test_decoded_pixel_values(tmp_path, mode, pixels, expected):
    path = str(tmp_path / "image.png")
    image = Image.fromarray(pixels)
    assert image.mode == mode
    image.save(path)
    np.testing.assert_allclose(dataGenerator.read_image(path)[0], expected, atol=1)


def test_curves_name_the_best_epoch_as_an_integer(tmp_path, monkeypatch):
    history_path = tmp_path / "history.csv"
    history_path.write_text("epoch,dice,loss,val_dice,val_loss\n1,0.5,0.9,0.6,0.8\n2,0.7,0.5,0.8,0.4\n"
                            "3,0.8,0.4,0.7,0.5\n")
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    plots.save_curves(plots.read_history(str(history_path)), str(tmp_path / "curves.png"), "run")
    (figure,) = figures
    assert figure.axes[1].get_title() == "best validation Dice 0.8000 (epoch 2)"
    assert list(figure.axes[0].lines[0].get_xdata()) == [1, 2, 3]


def test_make_figures_from_a_run(trained_run, tmp_path):
    out = str(tmp_path / "resources")
    result = run_main("make_figures.py", "--run", trained_run[0], "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(out)) == ["architecture_basic.png", "architecture_improved.png", "test_examples.png",
                                       "training_curves.png"]
    for name in os.listdir(out):
        assert Image.open(os.path.join(out, name)).format == "PNG"
    missing = run_main("make_figures.py", "--run", str(tmp_path), "--out", out)
    assert missing.returncode == 2 and "no history.csv" in missing.stderr
