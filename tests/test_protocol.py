"""The generalisation protocol's scripts: shifted copies, and k-fold runs pooled into one table."""

import os
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import cv_protocol  # noqa: E402
import shift_protocol  # noqa: E402


def test_zoom_shift_doubles_the_lesion_share_and_keeps_sizes():
    image = np.zeros((96, 128, 3), np.uint8)
    mask = np.zeros((96, 128), bool)
    mask[38:58, 54:74] = True  # 400 pixels, centred
    image[mask] = 200
    zoomed_image, zoomed_mask = shift_protocol.shift_pair(image, mask, "zoom")
    assert zoomed_image.shape == image.shape and zoomed_mask.shape == mask.shape
    assert zoomed_mask.sum() / mask.sum() == pytest.approx(1.4 ** 2, rel=0.08)
    for shift in ("dark", "vignette", "blur"):
        shifted, same_mask = shift_protocol.shift_pair(image, mask, shift)
        assert shifted.shape == image.shape and shifted.dtype == np.uint8 and same_mask is mask
    dark, _ = shift_protocol.shift_pair(np.full((4, 4, 3), 128, np.uint8), mask[:4, :4], "dark")
    assert dark[0, 0, 0] == round(255 * (128 / 255) ** 1.5)
    vignette, _ = shift_protocol.shift_pair(np.full((96, 128, 3), 200, np.uint8), mask, "vignette")
    assert vignette[48, 64, 0] == 200 and vignette[0, 0, 0] < 100  # centre untouched, corners dark
    with pytest.raises(ValueError):
        shift_protocol.shift_pair(image, mask, "rain")


def test_cv_protocol_trains_each_fold_then_pools_their_test_splits(tmp_path, synthetic_dir):
    out = str(tmp_path / "cv")
    train_flags = ["--data", synthetic_dir, "--epochs", "1", *TINY]
    assert cv_protocol.main(["--out", out, "--folds", "2", "--shifts", "none", "zoom", "--", *train_flags]) == 0
    with open(os.path.join(out, "protocol.md")) as handle:
        lines = handle.read().splitlines()
    none_row = next(line for line in lines if line.startswith("| none |"))
    assert none_row.split("|")[2].strip() == "24"  # both folds' test splits: every image once
    assert "±" in none_row and any(line.startswith("| zoom |") for line in lines)
    before = os.path.getmtime(os.path.join(out, "fold0", "best.keras"))
    assert cv_protocol.main(["--out", out, "--folds", "2", "--shifts", "none", "--", *train_flags]) == 0
    assert os.path.getmtime(os.path.join(out, "fold0", "best.keras")) == before  # finished folds are kept
    with pytest.raises(SystemExit):
        cv_protocol.main(["--out", out, "--", "--fold", "1"])


class _BrightnessModel:
    """A stand-in segmentation model: the probability is each pixel's red channel."""

    def predict_on_batch(self, images):
        return images[..., :1]


def test_multiscale_tta_maps_each_zoomed_out_copy_back_onto_the_image():
    rows, cols = np.mgrid[:64, :96]
    image = np.stack([rows / 63, cols / 95, np.zeros((64, 96))], axis=-1).astype(np.float32)[None]
    padded, (top, left, height, width) = shift_protocol.zoomed_out(image, 0.5)
    assert padded.shape == image.shape and (top, left, height, width) == (16, 24, 32, 48)
    np.testing.assert_array_equal(padded[0, 14, 24:72], padded[0, 18, 24:72])  # mirrored about row 16, not black
    model = _BrightnessModel()
    np.testing.assert_array_equal(shift_protocol.predict_scales(model, image, (1.0,)), image[..., 0])
    # A smooth ramp survives shrink, crop and enlarge: each scale lands back on the image's own pixels.
    both = shift_protocol.predict_scales(model, image, (1.0, 0.5))
    assert np.abs(both - image[..., 0])[:, 2:-2, 2:-2].max() < 0.03
