"""The model, loss and metrics run on a second Keras backend (JAX)."""

import importlib.util
import textwrap

import pytest

from conftest import JAX_FAST_COMPILE, run_script


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_one_training_step_on_jax(synthetic_dir):
    code = textwrap.dedent(f"""
        import os, keras, numpy as np
        assert keras.backend.backend() == "jax"
        from lesion_unet import data as dataGenerator, losses
        from lesion_unet.improved_unet import build_improved_unet
        pairs = dataGenerator.find_pairs(os.path.join({synthetic_dir!r}, "images"), os.path.join({synthetic_dir!r}, "masks"))
        data = dataGenerator.LesionDataset(pairs[:4], (32, 32), 4, augment=True, progress=False)
        images, masks = data[0]
        # Every block of the Improved U-Net, at a depth that JAX compiles in seconds rather than
        # minutes; the basic U-Net trains under JAX in test_distribution.py.
        model = build_improved_unet((32, 32), base_filters=4, depth=3)
        model.compile(optimizer="adam", loss=losses.SegmentationLoss(), metrics=losses.training_metrics())
        before = [w.copy() for w in model.get_weights()]
        logs = model.train_on_batch(images, masks, return_dict=True)
        assert np.isfinite(logs["loss"]) and 0 <= logs["dice"] <= 1, logs
        assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
        print("jax ok")
    """)
    result = run_script("-c", code, env={"KERAS_BACKEND": "jax", "XLA_FLAGS": JAX_FAST_COMPILE})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "jax ok" in result.stdout
