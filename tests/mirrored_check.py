"""Trains the same tiny model on one CPU device and under MirroredStrategy on two; prints the gaps.

Run in a fresh process by `test_distribution.py`: the CPU must be split into two logical devices before
TensorFlow starts. Prints one JSON line: the largest loss and weight differences between the runs.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from lesion_unet import data as dataGenerator  # noqa: E402
from lesion_unet import distribution  # noqa: E402
from lesion_unet import losses  # noqa: E402
from lesion_unet.improved_unet import build_improved_unet  # noqa: E402


def train(data_dir, scope, initial_weights):
    pairs = dataGenerator.find_pairs(os.path.join(data_dir, "images"), os.path.join(data_dir, "masks"))[:12]
    # 12 samples in batches of 4 (two per replica); augmentation seeded per batch, as in train.py.
    dataset = dataGenerator.LesionDataset(pairs, (32, 32), 4, augment=True, shuffle=True, seed=1, progress=False)
    with scope:
        # No dropout: its random masks are drawn per replica, so they could not match.
        model = build_improved_unet((32, 32), base_filters=4, depth=3, dropout=0.0)
        if initial_weights is not None:
            model.set_weights(initial_weights)
        # SGD, not Adam: Adam divides by the root of the squared gradients, which turns the float
        # round-off in gradients that are zero in exact arithmetic (conv biases before a norm) into
        # steps of the full learning rate, so its weights cannot be compared tightly.
        model.compile(optimizer=keras.optimizers.SGD(0.02), loss=losses.SegmentationLoss("dice_bce"),
                      metrics=losses.training_metrics())
    weights = model.get_weights()
    history = model.fit(dataset, epochs=2, verbose=0, shuffle=False)  # as train.py
    return weights, history.history["loss"], model.get_weights()


def main(data_dir):
    keras.utils.set_random_seed(0)
    single = distribution.choose_distribution("off")
    initial, single_loss, single_weights = train(data_dir, single.scope, None)
    mirrored = distribution.choose_distribution("mirrored")
    _, mirrored_loss, mirrored_weights = train(data_dir, mirrored.scope, initial)
    print(json.dumps({
        "replicas": mirrored.replicas,
        "description": mirrored.description,
        "single_loss": single_loss,
        "mirrored_loss": mirrored_loss,
        "max_loss_gap": float(np.max(np.abs(np.subtract(single_loss, mirrored_loss)))),
        "max_weight_gap": max(float(np.max(np.abs(a - b))) for a, b in zip(single_weights, mirrored_weights)),
        "max_weight_change": max(float(np.max(np.abs(a - b))) for a, b in zip(initial, single_weights)),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
