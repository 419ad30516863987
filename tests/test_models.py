"""The two model builders: shapes, names, sizes, saving and learning."""

import textwrap

import keras
import numpy as np
import pytest

from conftest import run_script
from lesion_unet.basic_unet import build_unet
from lesion_unet.improved_unet import build_improved_unet


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
    # Read from the graph, not from names: each convolution outside the 1x1 segmentation layers feeds
    # instance norm then leaky ReLU, except in the pre-activation context modules, where instance norm
    # and leaky ReLU come before each convolution (the second one feeds the residual sum).
    inputs = {layer.name: [parent.operation for node in layer._inbound_nodes for parent in node.parent_nodes]
              for layer in model.layers}
    consumers = {layer.name: [] for layer in model.layers}
    for name, parents in inputs.items():
        for parent in parents:
            consumers[parent.name].append(model.get_layer(name))
    convolutions = [l for l in model.layers if isinstance(l, keras.layers.Conv2D) and not l.name.startswith("seg")]
    pre_activated = [l for l in convolutions if "_context_" in l.name]
    assert len(pre_activated) == 2 * 5 and len(convolutions) > len(pre_activated)
    for layer in convolutions:
        if layer in pre_activated:
            (act,) = inputs[layer.name]
            (norm,) = inputs[act.name]
            assert isinstance(act, keras.layers.LeakyReLU) and isinstance(norm, keras.layers.GroupNormalization), layer.name
        else:
            (norm,) = consumers[layer.name]
            (act,) = consumers[norm.name]
            assert isinstance(norm, keras.layers.GroupNormalization) and isinstance(act, keras.layers.LeakyReLU), layer.name
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
    from lesion_unet import losses
    from lesion_unet import metrics
    from lesion_unet import synthetic

    keras.utils.set_random_seed(0)
    samples = [synthetic.make_sample(seed, (32, 32)) for seed in range(4)]
    images = np.stack([s[0] for s in samples]).astype(np.float32) / 255.0
    masks = np.stack([s[1] for s in samples])[..., None].astype(np.float32) / 255.0
    model = build_improved_unet((32, 32), base_filters=8, depth=3, dropout=0.0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=losses.SegmentationLoss(),
                  metrics=losses.training_metrics())
    untrained = float(np.mean(keras.ops.convert_to_numpy(losses.dice_score(masks, model.predict(images, verbose=0)))))
    model.fit(images, masks, batch_size=4, epochs=40, verbose=0)
    dice = float(np.mean(keras.ops.convert_to_numpy(losses.dice_score(masks, model.predict(images, verbose=0)))))
    assert untrained < 0.7 and dice > 0.95


@pytest.mark.parametrize("build", [build_improved_unet, build_unet])
def test_input_norm_takes_out_colour_cast_brightness_and_contrast(build):
    """With `input_norm`, a per-channel gain and offset (a camera's cast, exposure) changes nothing."""
    kwargs = {"base_filters": 4, "depth": 3} if build is build_improved_unet else {"base_filters": 4, "depth": 2}
    keras.utils.set_random_seed(0)
    model = build((32, 32), input_norm=True, **kwargs)
    assert model.get_layer("image_standardize").count_params() == 0
    assert model.count_params() == build((32, 32), **kwargs).count_params()  # no weights added
    images = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    cast = images * np.array([0.6, 0.9, 1.3], np.float32) + np.array([0.1, -0.05, 0.02], np.float32)
    np.testing.assert_allclose(model.predict(cast, verbose=0), model.predict(images, verbose=0), atol=5e-4)  # float32 rounding
    plain = build((32, 32), **kwargs)
    plain.set_weights(model.get_weights())
    assert np.abs(plain.predict(cast, verbose=0) - plain.predict(images, verbose=0)).max() > 1e-2  # what it removes
