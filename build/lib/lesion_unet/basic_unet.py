"""The U-Net of Ronneberger et al. (2015, arXiv:1505.04597) for binary lesion masks.

Each level holds two 3x3 convolutions with ReLU; 2x2 max pooling goes down, a 2x2 up-convolution
(transposed convolution) goes up, and the decoder concatenates the encoder's feature map of the same
level (the skip). Padding is `same`, so the output has the input's size. The original has 64 base
filters and 4 poolings; a 1x1 convolution with a sigmoid gives the lesion probability.

Run `python model_basic.py` to print the summary and parameter count.
"""

import keras
from keras import layers

from lesion_unet.improved_unet import check_image_size, standardized_image


def _double_conv(x, filters, name):
    for part in ("a", "b"):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_{part}_conv")(x)
    return x


def build_unet(image_size=(128, 128), channels=3, base_filters=64, depth=4, input_norm=False):
    """Builds the basic U-Net.

    Args:
        image_size: `(height, width)`; each a multiple of `2 ** depth`. `None` for a side makes it
            flexible.
        channels: input channels.
        base_filters: filters at the first level; they double at each level (paper: 64).
        depth: number of poolings (paper: 4).
        input_norm: standardize each image per channel first (`model_improved.standardized_image`).

    Returns:
        An uncompiled `keras.Model` mapping `(batch, h, w, channels)` images to `(batch, h, w, 1)`
        lesion probabilities (float32 sigmoid).

    Raises:
        ValueError: the image size does not suit the depth, or the depth is below 1.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    check_image_size(image_size, depth, "The basic U-Net")  # depth counts poolings
    inputs = keras.Input(shape=(*image_size, channels), name="image")
    x, skips = (standardized_image(inputs) if input_norm else inputs), []
    for level in range(1, depth + 1):
        x = _double_conv(x, base_filters * 2 ** (level - 1), f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _double_conv(x, base_filters * 2**depth, "bottom")
    for level in range(depth, 0, -1):
        filters = base_filters * 2 ** (level - 1)
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"dec{level}_upconv")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([skips[level - 1], x])
        x = _double_conv(x, filters, f"dec{level}")
    x = layers.Conv2D(1, 1, name="seg1")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="mask")(x)
    return keras.Model(inputs, outputs, name="basic_unet")

