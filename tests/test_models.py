"""The two model builders: shapes, names, sizes, saving and learning."""

import os
import textwrap

import keras
import numpy as np
import pytest

from conftest import run_script
from model_basic import build_unet
from model_improved import build_improved_unet


@pytest.mark.parametrize("size", [(32, 32), (32, 48)])
def test_improved_output_shape(size):
    model = build_improved_unet(size, base_filters=4, depth=4)
    assert model.output_shape == (None, *size, 1)
    assert model(np.zeros((2, *size, 3), np.float32)).shape == (2, *size, 1)


@pytest.mark.parametrize("size", [(32, 32), (16, 48)])
def test_basic_output_shape(size):
    model = build_unet(size, base_filters=4, depth=3)
    assert model.output_shape == (None, *size, 1)
    assert model(np.zeros((1, *size, 3), np.float32)).shape == (1, *size, 1)


def test_default_parameter_counts():
    # The paper's Improved U-Net (16 base filters, 5 levels) and Ronneberger's U-Net (64, 4 poolings).
    assert build_improved_unet().count_params() == 3_188_915
    assert build_unet().count_params() == 31_031_745


def test_improved_unet_follows_the_paper():
    model = build_improved_unet((64, 64))
    names = [layer.name for layer in model.layers]
    for level in range(1, 6):
        assert f"enc{level}_context_sum" in names
    assert [n for n in names if n.startswith("seg") and n[3:].isdigit()] == ["seg3", "seg2", "seg1"]
    assert "seg3_upsample" in names and "seg2_upsample" in names
    norms = [l for l in model.layers if isinstance(l, keras.layers.GroupNormalization)]
    assert norms and all(l.groups == l.input.shape[-1] for l in norms)  # instance norm
    # Every convolution but the 1x1 segmentation layers feeds instance norm and leaky ReLU.
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and not layer.name.startswith("seg"):
            if layer.name.endswith("_a_conv") and "context" in layer.name:
                continue  # inside a pre-activation context module, followed by dropout first
            follower = model.get_layer(layer.name[: -len("_conv")] + "_norm")
            assert follower is not None
    leaky = [l for l in model.layers if isinstance(l, keras.layers.LeakyReLU)]
    assert leaky and all(abs(l.negative_slope - 0.01) < 1e-9 for l in leaky)
    dropouts = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
    assert len(dropouts) == 5 and all(abs(l.rate - 0.3) < 1e-9 for l in dropouts)


def test_layer_names_are_unique_deterministic_and_no_lambda():
    for build in (lambda: build_improved_unet((32, 32), base_filters=4),
                  lambda: build_unet((32, 32), base_filters=4)):
        first, second = build(), build()
        names = [layer.name for layer in first.layers]
        assert len(set(names)) == len(names)
        assert names == [layer.name for layer in second.layers]
        assert not any(isinstance(layer, keras.layers.Lambda) for layer in first.layers)


def test_unsuitable_sizes_are_refused():
    with pytest.raises(ValueError, match="multiples of 16.*96 or 112"):
        build_improved_unet((100, 128))
    with pytest.raises(ValueError, match="multiples of 16"):
        build_unet((120, 128))


def test_save_load_round_trip_with_keras_alone(tmp_path):
    model = build_improved_unet((32, 32), base_filters=4, depth=3)
    images = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    path = str(tmp_path / "model.keras")
    model.save(path)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "expected.npy", model.predict(images, verbose=0))
    # A fresh process that imports nothing from this project.
    code = textwrap.dedent(f"""
        import keras, numpy as np
        model = keras.saving.load_model({path!r})
        got = model.predict(np.load({str(tmp_path / 'images.npy')!r}), verbose=0)
        np.testing.assert_allclose(got, np.load({str(tmp_path / 'expected.npy')!r}), atol=1e-6)
        print("identical")
    """)
    result = run_script("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "identical" in result.stdout


def test_improved_unet_overfits_one_batch():
    import metrics
    import synthetic

    keras.utils.set_random_seed(0)
    samples = [synthetic.make_sample(seed, (64, 64)) for seed in range(4)]
    images = np.stack([s[0] for s in samples]).astype(np.float32) / 255.0
    masks = np.stack([s[1] for s in samples])[..., None].astype(np.float32) / 255.0
    model = build_improved_unet((64, 64), base_filters=8, depth=4, dropout=0.0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=metrics.SegmentationLoss(),
                  metrics=metrics.training_metrics())
    model.fit(images, masks, batch_size=4, epochs=60, verbose=0)
    dice = float(np.mean(keras.ops.convert_to_numpy(metrics.dice_score(masks, model.predict(images, verbose=0)))))
    assert dice > 0.9
