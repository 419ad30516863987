"""The Improved U-Net of Isensee et al. (2017, arXiv:1802.10508), in 2D, for binary lesion masks.

Encoder: a 3x3 convolution, then at each of `depth` levels a context module (a pre-activation
residual block: instance norm, leaky ReLU, 3x3 conv, dropout, instance norm, leaky ReLU, 3x3 conv,
added to its input), with 3x3 stride-2 convolutions between levels; 16 filters doubling per level.
Decoder: upsampling modules (upsample x2, 3x3 conv halving the features), concatenation with the
encoder level, localization modules (3x3 conv, then 1x1 conv halving the features), and deep
supervision: 1x1 segmentation layers at three decoder levels, upsampled and summed into the output.
Every convolution outside the segmentation layers and the context modules is followed by instance
norm and leaky ReLU (slope 0.01); inside a context module they come before each convolution
(pre-activation). Instance norm is `GroupNormalization(groups=-1)`.

Run `python model_improved.py` to print the summary and parameter count.
"""

import keras
from keras import layers

LEAKY_SLOPE = 0.01


def _norm_act(x, name):
    x = layers.GroupNormalization(groups=-1, epsilon=1e-5, name=f"{name}_norm")(x)
    return layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"{name}_act")(x)


def _conv_norm_act(x, filters, kernel_size, name, strides=1):
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", name=f"{name}_conv")(x)
    return _norm_act(x, name)


def _context_module(x, filters, dropout, name):
    """Pre-activation residual block; returns its input plus the block's output."""
    shortcut = x
    x = _norm_act(x, f"{name}_a")
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_a_conv")(x)
    x = layers.Dropout(dropout, name=f"{name}_dropout")(x) if dropout else x
    x = _norm_act(x, f"{name}_b")
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_b_conv")(x)
    return layers.Add(name=f"{name}_sum")([shortcut, x])


def _upsampling_module(x, filters, name):
    x = layers.UpSampling2D(2, name=f"{name}_upsample")(x)
    return _conv_norm_act(x, filters, 3, name)


def _localization_module(x, filters, name):
    x = _conv_norm_act(x, filters * 2, 3, f"{name}_a")
    return _conv_norm_act(x, filters, 1, f"{name}_b")


def standardized_image(inputs):
    """Standardizes each image channel by channel over its pixels (zero mean, unit variance).

    The paper's own preprocessing (each MRI modality z-scored per patient), in the model so that every
    caller (`predict.py`, the web app, ONNX) gets it: a camera's colour cast, brightness and contrast
    are taken out before the first convolution. A `GroupNormalization` with one group per channel and
    no learned scale or offset: a built-in layer, so saved models load in safe mode.
    """
    return layers.GroupNormalization(groups=-1, center=False, scale=False, epsilon=1e-5,
                                     name="image_standardize")(inputs)


def check_image_size(image_size, poolings, model_name):
    """Checks that height and width can be halved `poolings` times (a U-Net's way down).

    Raises:
        ValueError: a side is not a positive multiple of `2 ** poolings`; the message lists the
            nearest sizes that work.
    """
    step = 2**poolings
    for side in image_size:
        if side is None:
            continue
        if side < step or side % step:
            lower, upper = max(step, side // step * step), (side // step + 1) * step
            raise ValueError(
                f"{model_name} halves its input {poolings} times, so it needs height and width that are multiples of "
                f"{step}; got {tuple(image_size)} (try {lower} or {upper} instead of {side})"
            )


def build_improved_unet(image_size=(128, 128), channels=3, base_filters=16, depth=5,
                        dropout=0.3, deep_supervision=True, input_norm=False):
    """Builds the Improved U-Net.

    Args:
        image_size: `(height, width)`; each a multiple of `2 ** (depth - 1)`. `None` for a side makes
            it flexible.
        channels: input channels.
        base_filters: filters at the first level; they double at each level (paper: 16).
        depth: number of resolution levels (paper: 5).
        dropout: dropout rate inside context modules (paper: 0.3).
        deep_supervision: sum segmentation layers from the lower decoder levels into the output
            (paper: on, from three levels). Needs `depth >= 3`.
        input_norm: standardize each image per channel first (`standardized_image`; the paper
            z-scores its inputs, the project's default feeds them in [0, 1]).

    Returns:
        An uncompiled `keras.Model` mapping `(batch, h, w, channels)` images to `(batch, h, w, 1)`
        lesion probabilities (float32 sigmoid).

    Raises:
        ValueError: the image size does not suit the depth, or the depth is below 2.
    """
    if depth < 2:
        raise ValueError(f"depth must be >= 2, got {depth}")
    check_image_size(image_size, depth - 1, "The Improved U-Net")  # depth counts levels: one fewer halvings
    inputs = keras.Input(shape=(*image_size, channels), name="image")

    x = standardized_image(inputs) if input_norm else inputs
    x = _conv_norm_act(x, base_filters, 3, "enc1_in")
    skips = []
    for level in range(1, depth + 1):
        filters = base_filters * 2 ** (level - 1)
        if level > 1:
            x = _conv_norm_act(x, filters, 3, f"enc{level}_down", strides=2)
        x = _context_module(x, filters, dropout, f"enc{level}_context")
        skips.append(x)

    segmentation = None
    for level in range(depth - 1, 0, -1):
        filters = base_filters * 2 ** (level - 1)
        x = _upsampling_module(x, filters, f"dec{level}_up")
        x = layers.Concatenate(name=f"dec{level}_concat")([skips[level - 1], x])
        if level > 1:
            x = _localization_module(x, filters, f"dec{level}_local")
        else:
            x = _conv_norm_act(x, filters * 2, 3, "dec1_out")
        # Deep supervision draws on the three finest decoder levels (the paper's setting).
        if level <= 3 and (deep_supervision or level == 1):
            seg = layers.Conv2D(1, 1, name=f"seg{level}")(x)
            if segmentation is not None:
                segmentation = layers.UpSampling2D(2, interpolation="bilinear",
                                                   name=f"seg{level + 1}_upsample")(segmentation)
                seg = layers.Add(name=f"seg{level}_sum")([segmentation, seg])
            segmentation = seg
    outputs = layers.Activation("sigmoid", dtype="float32", name="mask")(segmentation)
    return keras.Model(inputs, outputs, name="improved_unet")

