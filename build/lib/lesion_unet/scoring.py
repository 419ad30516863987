"""Scores predicted masks against the ground truth, per image, at each mask's own resolution.

The library behind `evaluate.py` and the test report of `training.py`: a model's predictions
(`evaluate_pairs`) or a folder of masks from any tool (`score_mask_folder`) become one row of
`metrics.REPORT_METRICS` per image; `write_report` saves them as `metrics.json` and `per_image.csv`.
"""

import csv
import json
import logging
import os

from lesion_unet import inference
from lesion_unet import lesion_files
from lesion_unet import metrics
from lesion_unet import plots
from lesion_unet import quality
from lesion_unet import runfolder
from lesion_unet import settings
from lesion_unet.errors import InputError

log = logging.getLogger("lesion_unet.scoring")  # notes for the user; errors.run_cli shows them


def evaluate_pairs(model, pairs, batch_size=16, tta=False, postprocess=False, threshold=0.5, progress=True,
                   remove_hair=False, quality_model=None):
    """Scores a model on image/mask pairs, one row of metrics per image.

    Args:
        model: a segmentation model with a fixed input size.
        pairs: list of `lesion_files.Pair`.
        batch_size: images per model call.
        tta: flip test-time augmentation.
        postprocess: keep the largest region and fill holes.
        threshold: probability threshold.
        progress: show a progress bar.
        remove_hair: paint thin dark hairs over before predicting (`hair_removal`).
        quality_model: the model's `quality.QualityModel`; its estimates join each row.

    Returns:
        A list of dicts: `id`, each of `metrics.REPORT_METRICS`, `lesion_fraction` (the true
        lesion's share of the image) and `predicted_fraction` (the predicted one's), and with a
        `quality_model` `expected_dice`, `review` and `risk` (`quality.assess`), in the order of `pairs`.

    Raises:
        InputError: a file cannot be read, or a mask's size differs from its image's.
    """
    predictions = inference.predict_files(model, [p.image_path for p in pairs], batch_size, tta,
                                          progress, desc="Evaluating", full_size=False, remove_hair=remove_hair)
    rows = []
    for pair, (path, probability) in zip(pairs, predictions):
        mask = inference.probability_to_mask(probability, lesion_files.image_size_of(path), threshold, postprocess)
        row = score_prediction(pair, mask, "its image")
        if quality_model is not None:
            row.update(quality.assess(quality_model, probability))
        rows.append(row)
    return rows


def score_prediction(pair, prediction, source):
    """Scores one predicted mask against the pair's ground truth: one row of `evaluate_pairs`.

    Args:
        pair: a `lesion_files.Pair`.
        prediction: boolean mask at the image's own size.
        source: what the prediction's size comes from, for the error message.

    Raises:
        InputError: the sizes differ.
    """
    truth = lesion_files.read_mask(pair.mask_path)
    if truth.shape != prediction.shape:
        raise InputError(
            f"{pair.mask_path}: mask is {truth.shape[1]}x{truth.shape[0]} but {source} is "
            f"{prediction.shape[1]}x{prediction.shape[0]}; masks must match their images")
    return metrics.score_row(pair.id, prediction, truth)


def score_mask_folder(predictions_dir, pairs):
    """Scores a folder of predicted masks, `<id>_segmentation.png` as `predict.py` writes them (any
    tool's 0/255 masks at the images' size will do), against the pairs' ground truth.

    Args:
        predictions_dir: the folder of predicted masks.
        pairs: list of `lesion_files.Pair`, the ground truth.

    Returns:
        Rows as `evaluate_pairs` gives them.

    Raises:
        InputError: the folder is missing, or lacks a mask for some pair.
    """
    if not os.path.isdir(predictions_dir):
        raise InputError(f"{predictions_dir}: predictions folder not found")
    paths = [os.path.join(predictions_dir, pair.id + settings.MASK_SUFFIX) for pair in pairs]
    missing = [pair.id for pair, path in zip(pairs, paths) if not os.path.isfile(path)]
    if missing:
        raise InputError(f"{predictions_dir}: no predicted mask for {len(missing)} of {len(pairs)} image(s) "
                         f"(expected <id>{settings.MASK_SUFFIX}): {lesion_files.listed(missing)}")
    rows, formats = [], []
    for pair, path in zip(pairs, paths):
        prediction, found = lesion_files.read_mask(path, return_format=True)
        rows.append(score_prediction(pair, prediction.astype(bool), path))
        formats.append(found)
    for note in lesion_files.mask_format_notes(formats, "predicted mask"):
        log.info("%s", note)
    return rows


BEST_MEDIAN_WORST = (("best", 1.0), ("median", 0.5), ("worst", 0.0))


def pick_cases(rows, quantiles=BEST_MEDIAN_WORST):
    """Returns `[(label, row)]`: for each `(label, q)`, the row at quantile `q` of Dice."""
    order = sorted(range(len(rows)), key=lambda i: rows[i]["dice"])
    return [(label, rows[order[round(q * (len(order) - 1))]]) for label, q in quantiles]


def save_cases(model, pairs, rows, path, tta=False, postprocess=False, threshold=0.5, title="Test cases",
               quantiles=BEST_MEDIAN_WORST, remove_hair=False):
    """Draws cases picked by `pick_cases` (image, ground truth, prediction) to `path`."""
    by_id = {pair.id: pair for pair in pairs}
    cases = []
    for label, row in pick_cases(rows, quantiles):
        pair = by_id[row["id"]]
        _, probability = next(inference.predict_files(model, [pair.image_path], 1, tta, progress=False,
                                                      remove_hair=remove_hair))
        cases.append({
            "label": label, "id": row["id"], "dice": row["dice"],
            "image": lesion_files.read_image(pair.image_path),
            "truth": lesion_files.read_mask(pair.mask_path).astype(bool),
            "prediction": inference.to_mask(probability, threshold, postprocess),
        })
    plots.save_cases_figure(cases, path, title)


METRICS_FILE = "metrics.json"
PER_IMAGE_FILE = "per_image.csv"
QUALITY_FIGURE = "quality.png"
REPORT_FILES = (METRICS_FILE, PER_IMAGE_FILE, runfolder.CASES, QUALITY_FIGURE)  # what evaluate.py writes
_CSV_FIELDS = ["id", *metrics.REPORT_METRICS, "lesion_fraction", "predicted_fraction"]
_QUALITY_FIELDS = ["expected_dice", "review", "risk"]


def _is_own_report(out_dir):
    """Whether `out_dir`'s report files are an earlier report of `write_report`: its metrics.json is
    one (a summary with its settings) and its per_image.csv, if any, has this project's metrics."""
    try:
        with open(os.path.join(out_dir, METRICS_FILE), encoding="utf-8") as handle:
            summary = json.load(handle)
        if not (isinstance(summary, dict) and {"n_images", "median", "settings"} <= summary.keys()):
            return False
        csv_path = os.path.join(out_dir, PER_IMAGE_FILE)
        if os.path.exists(csv_path):
            with open(csv_path, newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), [])
            # Earlier versions wrote fewer columns (no lesion_fraction): still a report of ours.
            return header[:1] == ["id"] and set(metrics.REPORT_METRICS) <= set(header)
        return True
    except (OSError, ValueError):  # missing, unreadable, not JSON or not text
        return False


def check_report_folder(out_dir, overwrite=False, names=REPORT_FILES):
    """Refuses an output folder whose report files another program (or a person) wrote.

    `write_report` and `save_cases` replace `metrics.json`, `per_image.csv` and `cases.png`; in a
    folder that holds an earlier report of this project that is a re-run, anywhere else the files
    are someone's data.

    Args:
        out_dir: the folder the report is about to be written to (it need not exist).
        overwrite: replace such files anyway.
        names: the report files about to be written (`--predictions` draws no cases.png).

    Raises:
        InputError: the folder holds one of those files and no earlier report.
    """
    if overwrite or not os.path.isdir(out_dir):
        return
    present = [name for name in names if os.path.lexists(os.path.join(out_dir, name))]
    if present and not _is_own_report(out_dir):
        raise InputError(f"--out {out_dir}: holds {', '.join(present)}, not a report of evaluate.py, which "
                         "would replace them; choose another --out, or pass --overwrite to replace them")


def quality_of_rows(rows):
    """`quality.quality_report` of rows that carry quality estimates (`evaluate_pairs` with a quality
    model), or `None` when they carry none."""
    if not rows or "expected_dice" not in rows[0]:
        return None
    return quality.quality_report([row["expected_dice"] for row in rows], [row["review"] for row in rows],
                                  [row["risk"] for row in rows], [row["dice"] for row in rows])


def write_report(rows, out_dir, settings):
    """Writes `metrics.json` (means, medians, image count, settings and, when the rows carry quality
    estimates, how well they ranked and matched the actual Dice: `quality_of_rows`) and `per_image.csv`.

    Returns:
        The summary dict written to `metrics.json`.
    """
    os.makedirs(out_dir, exist_ok=True)
    summary = {**metrics.summarize(rows), "settings": settings}
    quality_summary = quality_of_rows(rows)
    if quality_summary is not None:
        summary["quality"] = quality_summary
    runfolder.save_json(summary, os.path.join(out_dir, METRICS_FILE))
    csv_path = os.path.join(out_dir, PER_IMAGE_FILE)
    fields = _CSV_FIELDS + (_QUALITY_FIELDS if quality_summary is not None else [])
    with runfolder.atomic_write(csv_path) as tmp_path, open(tmp_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: (f"{value:.6f}" if isinstance(value, float) else value)
                             for key, value in row.items()})
    return summary


def format_table(summary):
    """Returns the summary as a small text table: mean and median of each metric, then the means
    by lesion size (the true lesion's share of the image) when the summary has them."""
    lines = [f"{'metric':<18}{'mean':>8}{'median':>9}"]
    for name in metrics.REPORT_METRICS:
        lines.append(f"{name:<18}{summary[name]:>8.4f}{summary['median'][name]:>9.4f}")
    lines.append(f"{'images':<18}{summary['n_images']:>8d}")
    if summary.get("area_ratio") is not None:  # reports written before it have none
        lines.append(f"{'area_ratio':<18}{summary['area_ratio']:>8.4f}   (predicted / true lesion area)")
    if "by_size" in summary:
        names = [*metrics.BAND_METRICS, "area_ratio"]
        lines.append("")
        lines.append(f"{'lesion size':<12}{'images':>7}" + "".join(f"{name:>18}" for name in names))
        for band, values in summary["by_size"].items():
            cells = "".join(f"{'-':>18}" if values.get(name) is None else f"{values[name]:>18.4f}"
                            for name in names)
            lines.append(f"{band:<12}{values['n_images']:>7d}{cells}")
    if summary.get("quality"):
        lines.extend(["", *format_quality(summary["quality"])])
    return "\n".join(lines)


def format_quality(report):
    """Lines of text for a `quality.quality_report`: how the review flag and expected Dice did."""
    failures, total = report["n_failures"], report["n_images"]
    lines = [f"quality estimate (failure: Dice < {quality.FAILURE_DICE})"]
    auc = "-" if report["auc"] is None else f"{report['auc']:.3f}"
    caught = "-" if report["caught"] is None else f"{round(report['caught'] * failures)} of {failures} ({report['caught']:.0%})"
    lines.append(f"  failures {failures} of {total}; ROC AUC of the risk {auc}; flagged {report['flagged']:.1%} of "
                 f"the images, catching {caught} of the failures")
    lines.append(f"  mean expected Dice {report['mean_expected']:.4f}, mean actual {report['mean_dice']:.4f}")
    lines.append(f"  {'expected Dice':<15}{'images':>7}{'mean expected':>15}{'mean actual':>13}")
    for row in report["bins"]:
        lines.append(f"  {row['low']:.2f}-{row['high']:.2f}{'':<5}{row['n_images']:>7d}{row['mean_expected']:>15.4f}"
                     f"{row['mean_dice']:>13.4f}")
    return lines


def resolve_target(target, data, images, masks, skip_unpaired, split_name="test"):
    """Finds the model file and the pairs to score from the command line.

    With a run folder and no data arguments, the pairs are the run's `split_name` split.

    Returns:
        `(model_path, pairs, description, default_out_dir)`.

    Raises:
        InputError: the target or data folders are missing or inconsistent.
    """
    has_data = data is not None or images is not None or masks is not None
    model_path = runfolder.model_file(target, settings.DEFAULT_MODEL)
    target = target or model_path
    if os.path.isdir(target):
        if has_data:
            folders = lesion_files.resolve_folders(data, images, masks)
            # Not RUN/evaluation: that is the report on the run's test split, which train.py wrote.
            return model_path, lesion_files.find_pairs(*folders, skip_unpaired), \
                f"every pair in {folders[0]}", os.path.join(target, "evaluation_data")
        config = runfolder.read_config(target)
        folders = lesion_files.resolve_folders(None, config["images"], config["masks"])
        pairs = lesion_files.find_pairs(*folders, skip_unpaired=True)
        split = lesion_files.load_split(os.path.join(target, runfolder.SPLIT))
        pairs = lesion_files.select_pairs(pairs, split[split_name], os.path.join(target, runfolder.SPLIT))
        out = os.path.join(target, "evaluation" if split_name == "test" else f"evaluation_{split_name}")
        return model_path, pairs, f"the {split_name} split of {target}", out
    if not has_data:
        raise InputError(f"{target}: a model file alone names no images; add --data DIR "
                         "(or --images DIR --masks DIR), or pass a run folder")
    folders = lesion_files.resolve_folders(data, images, masks)
    return target, lesion_files.find_pairs(*folders, skip_unpaired), f"every pair in {folders[0]}", \
        os.path.join("runs", "evaluation")


def seen_in_training(model_path, pairs):
    """Counts the scored pairs that the model trained or was selected on, from the `split.json` beside
    the model file (a run folder's, or `pretrained/split.json` for the shipped model).

    Returns:
        `None` when there is no readable `split.json` there, else a dict: `split_file`, `train` and
        `val` (how many of `pairs` are in each).
    """
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), runfolder.SPLIT)
    if not os.path.isfile(path):
        return None
    try:
        split = lesion_files.load_split(path)
    except InputError:
        return None
    ids = {pair.id for pair in pairs}
    return {"split_file": path, "train": len(ids & set(split["train"])), "val": len(ids & set(split["val"]))}


def select_model_split(model_path, pairs, split_name, description):
    """Keeps the pairs of one split of the `split.json` beside the model file (a run folder's, or
    `pretrained/split.json`): `evaluate.py MODEL --data DIR --split test`.

    Returns:
        `(pairs, description)`.

    Raises:
        InputError: the model has no `split.json`, or DIR lacks some of the split's ids.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), runfolder.SPLIT)
    if not os.path.isfile(path):
        raise InputError(f"{model_path}: --split needs the model's split.json beside it, and there is none; "
                         "drop --split to score every pair in --data")
    split = lesion_files.load_split(path)
    chosen = lesion_files.select_pairs(pairs, split[split_name], f"{path} (the model's {split_name} split)")
    return chosen, f"the {split_name} split of {path}, from {description.removeprefix('every pair in ')}"


def seen_in_training_note(seen, total):
    """The warning `evaluate.py` prints when scored images were in the model's training or validation split."""
    if not seen or not (seen["train"] or seen["val"]):
        return None
    return (f"warning: {seen['train']} of the {total} scored images were in this model's training split and "
            f"{seen['val']} in its validation split ({seen['split_file']}); their scores are not held-out scores "
            "(score a run folder for its test split)")


def evaluate_run(run_dir, split="test", tta=None, postprocess=None, threshold=settings.DEFAULT_THRESHOLD,
                 batch_size=16, progress=False):
    """Scores a run folder's `best.keras` on one of its splits, with the run's own inference settings.

    Args:
        run_dir: a run folder of `train.py`.
        split: `"test"`, `"val"` or `"train"`.
        tta, postprocess: override the run's settings (`None`: as in its `config.json`).
        threshold: probability threshold.
        batch_size: images per model call.
        progress: show a progress bar.

    Returns:
        A dict: `model`, `pairs`, `rows` (as `evaluate_pairs` gives them), `summary`
        (`metrics.summarize`), `description` and `options` (the inference settings used).

    Raises:
        InputError: the run folder is incomplete or its data has moved.
    """
    model_path, pairs, description, _ = resolve_target(run_dir, None, None, None, True, split)
    config = runfolder.read_config(run_dir)
    options = dict(tta=config.get("tta", settings.DEFAULT_TTA) if tta is None else tta,
                   postprocess=config.get("postprocess", settings.DEFAULT_POSTPROCESS) if postprocess is None
                   else postprocess, threshold=threshold)
    model = inference.load_model(model_path)
    rows = evaluate_pairs(model, pairs, batch_size, progress=progress, **options)
    return {"model": model, "pairs": pairs, "rows": rows, "summary": metrics.summarize(rows),
            "description": description, "options": options}

