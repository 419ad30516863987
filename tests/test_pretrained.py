"""The committed pre-trained Improved U-Net: it loads, segments, and keeps its accuracy."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

from lesion_unet import data as dataGenerator
from lesion_unet import inference
from lesion_unet import metrics
from lesion_unet import scoring
from lesion_unet import settings
from lesion_unet import synthetic
from conftest import NO_REAL_DATA, REAL_DATA, run_main


def test_pretrained_model_loads_and_segments_a_synthetic_lesion(tmp_path):
    model = keras.saving.load_model(settings.DEFAULT_MODEL)  # safe mode, no custom objects
    assert model.name == "improved_unet" and model.input_shape == (None, 128, 128, 3)
    scores = []
    for seed in range(4):
        image, mask = synthetic.make_sample(500 + seed)
        path = str(tmp_path / f"lesion{seed}.jpg")
        Image.fromarray(image).save(path)
        _, probability = next(inference.predict_files(model, [path], progress=False))
        assert probability.shape == mask.shape
        scores.append(metrics.score_masks(inference.to_mask(probability), mask > 0)["dice"])
    assert np.mean(scores) > 0.7, scores


def test_predict_uses_the_pretrained_model_by_default(tmp_path):
    image, _ = synthetic.make_sample(7)
    path = str(tmp_path / "my_lesion.jpg")
    Image.fromarray(image).save(path)
    result = run_main("predict.py", path, "--out", str(tmp_path / "masks"), "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    mask = np.asarray(Image.open(tmp_path / "masks" / "my_lesion_segmentation.png"))
    assert mask.shape == image.shape[:2] and 0 < (mask == 255).mean() < 1


@pytest.mark.skipif(not os.path.isdir(REAL_DATA), reason=NO_REAL_DATA)
def test_pretrained_dice_on_real_test_images():
    pairs = dataGenerator.find_pairs(*dataGenerator.resolve_folders(REAL_DATA))
    test_ids = dataGenerator.split_pairs(pairs, seed=0)["test"][:50]  # the split it was trained with
    model = inference.load_model(settings.DEFAULT_MODEL)
    rows = scoring.evaluate_pairs(model, dataGenerator.select_pairs(pairs, test_ids), progress=False)
    assert metrics.summarize(rows)["dice"] >= 0.88
