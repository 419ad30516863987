"""Figures: a batch with mask outlines, training curves, best / median / worst cases, overlays.

Figures are built as `matplotlib.figure.Figure` objects, without pyplot's global state, so no display
is needed, and written atomically (a temporary file, then a rename).
"""

import csv
import os

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from skimage import segmentation

TRUTH_COLOUR = (0.1, 0.9, 0.2)
PREDICTION_COLOUR = (1.0, 0.2, 0.9)


def _save(fig, path):
    root, ext = os.path.splitext(path)
    tmp_path = f"{root}.tmp{os.getpid()}{ext}"
    fig.savefig(tmp_path, dpi=110, bbox_inches="tight")
    os.replace(tmp_path, path)


def outline(image, mask, colour, thickness="thick"):
    """Returns `image` (float, [0, 1]) with the boundary of `mask` drawn in `colour`."""
    return segmentation.mark_boundaries(image, mask.astype(int), color=colour, mode=thickness)


def save_batch_figure(images, masks, path, titles=None, columns=4):
    """Saves a grid of images with their mask outlines (green).

    Args:
        images: `(b, h, w, 3)` floats in [0, 1].
        masks: `(b, h, w)` in {0, 1}.
        path: PNG file to write.
        titles: optional caption per image.
        columns: images per row.
    """
    count = len(images)
    rows = int(np.ceil(count / columns))
    fig = Figure(figsize=(3 * columns, 3 * rows * images.shape[1] / images.shape[2]))
    axes = fig.subplots(rows, columns, squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < count:
            axis.imshow(outline(images[index], masks[index], TRUTH_COLOUR))
            if titles is not None:
                axis.set_title(titles[index], fontsize=8)
    fig.suptitle("Training batch (augmented), lesion outlines in green", fontsize=10)
    _save(fig, path)


def read_history(path):
    """Reads Keras's `history.csv` into a dict of column -> list of floats."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {})}


def save_curves(history, path, title="Training curves"):
    """Saves loss and Dice per epoch, training and validation.

    Args:
        history: dict with `loss`, `val_loss`, `dice`, `val_dice` lists (and `epoch`).
        path: PNG file to write.
        title: the figure's title.
    """
    epochs = np.asarray(history.get("epoch", range(len(history["loss"])))) + 1
    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2)
    for axis, key, label in ((left, "loss", "loss"), (right, "dice", "Dice (per image, threshold 0.5)")):
        axis.plot(epochs, history[key], "o-", label="train", markersize=3)
        if f"val_{key}" in history:
            axis.plot(epochs, history[f"val_{key}"], "o-", label="validation", markersize=3)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    if "val_dice" in history and history["val_dice"]:
        best = int(np.argmax(history["val_dice"]))
        right.axvline(epochs[best], color="grey", linestyle=":", label="best")
        right.set_title(f"best validation Dice {history['val_dice'][best]:.4f} (epoch {epochs[best]})", fontsize=9)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def save_cases_figure(cases, path, title="Test cases"):
    """Saves rows of image / ground truth / prediction for a few cases.

    Args:
        cases: list of dicts with `label` (e.g. "best"), `id`, `image` (`uint8` RGB), `truth` and
            `prediction` (boolean masks at the image's size) and `dice`.
        path: PNG file to write.
        title: the figure's title.
    """
    fig = Figure(figsize=(9.5, 2.6 * len(cases)))
    axes = fig.subplots(len(cases), 3, squeeze=False)
    for row, case in zip(axes, cases):
        image = case["image"].astype(np.float32) / 255.0
        row[0].imshow(image)
        row[0].set_title(f"{case['label']}: {case['id']}", fontsize=8)
        row[1].imshow(outline(image, case["truth"], TRUTH_COLOUR))
        row[1].set_title("ground truth", fontsize=8)
        row[2].imshow(outline(outline(image, case["truth"], TRUTH_COLOUR), case["prediction"], PREDICTION_COLOUR))
        row[2].set_title(f"prediction (magenta), Dice {case['dice']:.3f}", fontsize=8)
        for axis in row:
            axis.axis("off")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def save_overlay(image, mask, path):
    """Saves `image` (`uint8` RGB) with the outline of `mask` drawn on it, at the image's size."""
    drawn = outline(image.astype(np.float32) / 255.0, mask, PREDICTION_COLOUR)
    root, ext = os.path.splitext(path)
    tmp_path = f"{root}.tmp{os.getpid()}{ext}"
    Image.fromarray((drawn * 255).round().astype(np.uint8)).save(tmp_path)
    os.replace(tmp_path, path)
