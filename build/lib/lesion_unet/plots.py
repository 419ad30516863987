"""Figures: a batch with mask outlines, training curves, best / median / worst cases, before / after
pairs, overlays, the quality estimate against actual Dice.

Figures are built as `matplotlib.figure.Figure` objects, without pyplot's global state, so no display
is needed, and written atomically (a temporary file, then a rename).
"""

import csv

import numpy as np
from matplotlib.figure import Figure
from skimage import segmentation

from lesion_unet.lesion_files import encode_png
from lesion_unet.runfolder import atomic_write

TRUTH_COLOUR = (0.1, 0.9, 0.2)
PREDICTION_COLOUR = (1.0, 0.2, 0.9)


def save_figure(fig, path):
    """Writes a figure to a PNG atomically (a temporary file, then a rename)."""
    with atomic_write(path) as tmp_path:
        fig.savefig(tmp_path, dpi=110, bbox_inches="tight")


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
    save_figure(fig, path)


def read_history(path):
    """Reads Keras's `history.csv` into a dict of column -> list of floats."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows] for key in (rows[0] if rows else {})}


def save_curves(history, path, title="Training curves"):
    """Saves loss and Dice per epoch, training and validation.

    Args:
        history: dict with `loss`, `val_loss`, `dice`, `val_dice` lists (and `epoch`, counted from 1).
        path: PNG file to write.
        title: the figure's title.
    """
    epochs = np.asarray(history.get("epoch", range(1, len(history["loss"]) + 1)), dtype=int)
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
    save_figure(fig, path)


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
    save_figure(fig, path)


def save_quality_figure(expected, actual, review, report, path, title="Quality estimate",
                        failure_dice=0.7):
    """Saves actual against expected Dice, one point per image (flagged images marked), with the
    calibration bins of a `quality.quality_report` on top.

    Args:
        expected: expected Dice per image.
        actual: actual Dice per image.
        review: review flag per image.
        report: `quality.quality_report` of the same images.
        path: PNG file to write.
        title: the figure's title.
        failure_dice: where failures start (a dashed line).
    """
    expected, actual = np.asarray(expected, dtype=float), np.asarray(actual, dtype=float)
    review = np.asarray(review, dtype=bool)
    fig = Figure(figsize=(5.6, 5.2))
    axis = fig.subplots()
    axis.plot([0, 1], [0, 1], color="0.6", linewidth=1, label="expected = actual")
    axis.axhline(failure_dice, color="0.6", linestyle="--", linewidth=1)
    axis.scatter(expected[~review], actual[~review], s=10, alpha=0.5, color="tab:blue", label="not flagged")
    axis.scatter(expected[review], actual[review], s=22, marker="x", color="tab:red", label="flagged for review")
    bins = report["bins"]
    axis.plot([row["mean_expected"] for row in bins], [row["mean_dice"] for row in bins], "o-", color="black",
              markersize=5, label="mean per bin of expected Dice")
    auc = "-" if report["auc"] is None else f"{report['auc']:.2f}"
    caught = "-" if report["caught"] is None else f"{report['caught']:.0%}"
    axis.set_title(f"{title}\n{report['n_images']} images, {report['n_failures']} with Dice < {failure_dice}; "
                   f"AUC {auc}; flagged {report['flagged']:.0%}, catching {caught}", fontsize=9)
    axis.set_xlabel("expected Dice (quality estimate)")
    axis.set_ylabel("actual Dice")
    axis.set_xlim(min(0.5, float(expected.min()) - 0.05) if len(expected) else 0.0, 1.01)  # where the estimates lie
    axis.set_ylim(0, 1.01)
    axis.legend(fontsize=7, loc="upper left")
    save_figure(fig, path)


def save_before_after_figure(cases, path, title, before="as it is", after="after"):
    """Saves rows of (image before, image after) a preprocessing step, each with the ground truth's
    outline (green) and the prediction's (magenta), e.g. hair removal (`experiments/dehair_protocol.py`).

    Args:
        cases: list of dicts with `label`, `id`, `truth` (boolean mask), and for `"before"` and
            `"after"` each an `image` (`uint8` RGB), `prediction` (boolean mask) and `dice`, as
            `{"before": {...}, "after": {...}}`.
        path: PNG file to write.
        title: the figure's title.
        before, after: the two columns' names.
    """
    fig = Figure(figsize=(7.0, 2.6 * len(cases)))
    axes = fig.subplots(len(cases), 2, squeeze=False)
    for row, case in zip(axes, cases):
        for axis, key, name in ((row[0], "before", before), (row[1], "after", after)):
            side = case[key]
            drawn = outline(side["image"].astype(np.float32) / 255.0, case["truth"], TRUTH_COLOUR)
            axis.imshow(outline(drawn, side["prediction"], PREDICTION_COLOUR))
            axis.set_title(f"{case['label']}: {case['id']}\n{name}: Dice {side['dice']:.3f}", fontsize=8)
            axis.axis("off")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def draw_outline(image, mask):
    """Returns a `uint8` copy of `image` (RGB) with the outline of `mask` drawn in `PREDICTION_COLOUR`.

    The same pixels as `outline`, drawn on a `uint8` copy: no float copy of a large photo.
    """
    drawn = np.array(image, dtype=np.uint8)
    drawn[segmentation.find_boundaries(np.asarray(mask, dtype=bool), mode="thick")] = np.round(
        np.asarray(PREDICTION_COLOUR) * 255).astype(np.uint8)
    return drawn


def save_overlay(image, mask, path):
    """Saves `image` (`uint8` RGB) with the outline of `mask` drawn on it (`draw_outline`), as a PNG
    at the image's size."""
    data = encode_png(draw_outline(image, mask))
    with atomic_write(path) as tmp_path, open(tmp_path, "wb") as handle:
        handle.write(data)


def _level_shape(model, name):
    shape = model.get_layer(name).output.shape
    return f"{shape[1]}x{shape[2]}x{shape[3]}"


def save_architecture_figure(model, path):
    """Draws a U-shaped block diagram of a model built by `model_improved` or `model_basic`.

    Shapes are read from the model's own layers (found by their deterministic names), so the figure
    always matches the code.

    Args:
        model: a model from `build_improved_unet` or `build_unet`.
        path: PNG file to write.
    """
    names = {layer.name for layer in model.layers}
    improved = "enc1_context_sum" in names
    if improved:
        enc = [n for n in sorted(names) if n.endswith("_context_sum")]
        encoder = {int(n[3]): n for n in enc}
        decoder = {level: (f"dec{level}_local_b_act" if level > 1 else "dec1_out_act") for level in range(1, len(enc))}
        down, up = "3x3 conv, stride 2", "upsample x2 + 3x3 conv"
        enc_text, dec_text = "context module", "localization"
    else:
        encoder = {int(n[3]): n for n in names if n.startswith("enc") and n.endswith("_b_conv")}
        encoder[len(encoder) + 1] = "bottom_b_conv"
        decoder = {level: f"dec{level}_b_conv" for level in range(1, len(encoder))}
        down, up = "2x2 max pool", "2x2 up-conv"
        enc_text, dec_text = "2x (3x3 conv, ReLU)", "2x (3x3 conv, ReLU)"
    depth = max(encoder)
    fig = Figure(figsize=(11.5, 1.0 + 1.05 * depth))
    axis = fig.subplots()
    axis.set_xlim(-0.2, 11.2)
    axis.set_ylim(-depth - 0.8, 0.9)
    axis.axis("off")
    box = dict(boxstyle="round,pad=0.35", facecolor="#e8f0fb", edgecolor="#3b6ea8")
    dec_box = dict(box, facecolor="#fbeee8", edgecolor="#a8563b")
    arrow = dict(arrowstyle="->", color="#555555", lw=1.2)

    def enc_xy(level):
        return 1.0 + 0.55 * (level - 1), -level

    def dec_xy(level):
        return 7.4 - 0.55 * (level - 1), -level

    for level, name in encoder.items():
        x, y = (4.2, -level) if level == depth else enc_xy(level)
        label = enc_text if level < depth or improved else "bottom: " + enc_text
        text = f"level {level}: {label}\n{_level_shape(model, name)}"
        axis.text(x, y, text, ha="center", va="center", fontsize=8, bbox=box)
        if level > 1:
            px, py = enc_xy(level - 1)
            axis.annotate("", xy=(x, y + 0.25), xytext=(px, py - 0.25), arrowprops=arrow)
            axis.text((x + px) / 2 - 0.15, (y + py) / 2, down, fontsize=7, ha="right", va="center", color="#555555")
    for level, name in decoder.items():
        x, y = dec_xy(level)
        kind = "3x3 conv" if improved and level == 1 else dec_text
        axis.text(x, y, f"level {level}: {kind}\n{_level_shape(model, name)}", ha="center", va="center",
                  fontsize=8, bbox=dec_box)
        source = (4.2, -depth) if level == depth - 1 else dec_xy(level + 1)
        axis.annotate("", xy=(x, y - 0.25), xytext=(source[0], source[1] + 0.25), arrowprops=arrow)
        axis.text((x + source[0]) / 2 + 0.15, (y + source[1]) / 2, up + ", concat skip", fontsize=7,
                  ha="left", va="center", color="#555555")
        ex, ey = enc_xy(level)
        axis.annotate("", xy=(x - 1.0, y), xytext=(ex + 1.0, ey),
                      arrowprops=dict(arrowstyle="->", color="#3b6ea8", lw=1, linestyle="--"))
    seg_levels = sorted((int(n[3:]) for n in names if n.startswith("seg") and n[3:].isdigit()), reverse=True)
    for level in seg_levels:
        x, y = dec_xy(level)
        axis.text(10.1, y, f"1x1 conv seg{level}", ha="center", va="center", fontsize=7,
                  bbox=dict(boxstyle="round,pad=0.3", facecolor="#eef7e8", edgecolor="#4a8a3b"))
        axis.annotate("", xy=(9.5, y), xytext=(x + 1.0, y), arrowprops=arrow)
        if level > 1:
            axis.annotate("", xy=(10.1, y + 0.78), xytext=(10.1, y + 0.2), arrowprops=arrow)
            axis.text(10.2, y + 0.5, "upsample, add", fontsize=7, va="center", color="#555555")
    label = "sum of deep supervision, sigmoid" if len(seg_levels) > 1 else "sigmoid"
    axis.text(10.1, 0.45, f"{label}\nmask {_level_shape(model, 'mask')}", ha="center", va="center", fontsize=7,
              bbox=dict(boxstyle="round,pad=0.3", facecolor="#ffffff", edgecolor="#4a8a3b"))
    axis.annotate("", xy=(10.1, 0.22), xytext=(10.1, -0.8), arrowprops=arrow)
    input_shape = "x".join(str(side) for side in model.input_shape[1:])
    axis.text(0.0, 0.6, f"{model.name}: {model.count_params():,} parameters, input {input_shape}",
              fontsize=10, va="center")
    save_figure(fig, path)
