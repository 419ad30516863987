"""Out-of-distribution protocol: per-image Dice by lesion size, on held-out images and on shifted copies.

    python protocol.py shift --model pretrained/improved_unet.keras --data data/isic2017
    python protocol.py shift --runs runs/fold0 runs/fold1 runs/fold2 runs/fold3 runs/fold4

One random split flattered the shipped model: 0.901 on its own test split, 0.835 on the official ISIC
2017 test set, whose lesions are larger and whose cameras differ. This script measures what such data
changes, on images the model has not seen:

- `--runs`: the held-out test split of each run (e.g. the folds of `train.py --folds 5 --fold i`),
  pooled and per fold (mean and spread), so a decision rests on every image once, not on one split.
- `--model --data`: one model on the validation split of `train.py`'s seeded split (`--seed`, `--split`).

Every image is scored as it is and under four shifts that mimic other sources: `zoom` (the centre
crop of 1/1.4 of each side, enlarged back: lesions cover about twice their share of the image, as on the
official test set), `dark` (gamma 1.5), `vignette` (dark corners, as some dermoscopes give) and `blur`
(Gaussian, sigma 1.5 pixels at 256x192). Two more are scored only when named, so the five-condition
mean keeps its meaning: `hair` (24 thin dark hairs drawn on) and `cast` (another white balance: red and
blue gains 15% apart). Predictions use the settings of `evaluate.py`'s defaults. The table gives mean
Dice overall and in each lesion-size band, the band taken from the shifted mask.
"""

import os

import numpy as np
from PIL import Image, ImageFilter

from lesion_unet import cliargs

SHIFTS = ("none", "zoom", "dark", "vignette", "blur")
# Scored only when asked (`--shifts ... hair`), so the protocol's five-condition mean, on which every
# decision so far rests, keeps its meaning.
EXTRA_SHIFTS = ("hair", "cast")
ZOOM = 1.4
HAIRS = 24  # dark hairs drawn per image for `hair`: dense hair, the top of training's `HAIR_COUNT`
# `cast`: another camera's white balance, red and blue gains moved 15% apart, warmer or cooler by the
# image (half of each), as dermoscopes and their lamps differ; green, which carries most of the
# brightness, stays.
CAST_GAIN = 0.15


def _image_seed(image):
    """A seed from the image's pixels: a drawn shift is the same for an image every time it is scored."""
    import zlib

    return zlib.crc32(np.ascontiguousarray(image).tobytes())


def draw_hairs(image, count=HAIRS):
    """`dataGenerator.draw_hairs` seeded by the image's pixels, so each image always gets the same hairs."""
    from lesion_unet import data as dataGenerator

    return dataGenerator.draw_hairs(image, np.random.default_rng(_image_seed(image)), count)


def colour_cast(image):
    """`image` under another white balance: red x (1 + `CAST_GAIN`) and blue x (1 - `CAST_GAIN`), or the
    reverse, chosen by the image's pixels (so each image always gets the same cast)."""
    warmer = _image_seed(image) % 2 == 0
    sign = 1.0 if warmer else -1.0
    gains = np.array([1.0 + sign * CAST_GAIN, 1.0, 1.0 - sign * CAST_GAIN], dtype=np.float32)
    return np.clip(image * gains, 0, 255).round().astype(np.uint8)


def shift_pair(image, mask, shift):
    """Returns `(image, mask)` under one of `SHIFTS`, at the input's size.

    Args:
        image: `uint8` RGB array `(h, w, 3)`.
        mask: boolean array `(h, w)`.
        shift: a name from `SHIFTS` or `EXTRA_SHIFTS`, or a tuple of them, applied in turn.
    """
    if isinstance(shift, tuple):
        for name in shift:
            image, mask = shift_pair(image, mask, name)
        return image, mask
    height, width = mask.shape
    if shift == "none":
        return image, mask
    if shift == "zoom":
        crop_h, crop_w = round(height / ZOOM), round(width / ZOOM)
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        box = (left, top, left + crop_w, top + crop_h)
        image = np.asarray(Image.fromarray(image).crop(box).resize((width, height), Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).crop(box).resize((width, height),
                                                                                        Image.NEAREST)) > 127
        return image, mask
    if shift == "dark":
        return (255.0 * (image / 255.0) ** 1.5).round().astype(np.uint8), mask
    if shift == "vignette":
        y, x = np.mgrid[:height, :width]
        radius = np.hypot((y - height / 2) / (height / 2), (x - width / 2) / (width / 2))
        falloff = 1.0 - 0.7 * np.clip((radius - 0.7) / 0.6, 0.0, 1.0)
        return (image * falloff[..., None]).round().astype(np.uint8), mask
    if shift == "blur":
        sigma = 1.5 * max(height, width) / 256.0
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma))), mask
    if shift == "hair":
        return draw_hairs(image), mask
    if shift == "cast":
        return colour_cast(image), mask
    raise ValueError(f"unknown shift {shift!r}; choose one of {', '.join(SHIFTS + EXTRA_SHIFTS)}")


def zoomed_out(images, scale):
    """Shrinks model-size images by `scale` (< 1) and pads them back to their size by mirroring
    (OpenCV's BORDER_REFLECT_101, the border of training's affine augmentation).

    Returns:
        `(padded, (top, left, height, width))`: the images and where the shrunk ones sit.
    """
    import cv2

    height, width = images.shape[1:3]
    inner_h, inner_w = round(height * scale), round(width * scale)
    top, left = (height - inner_h) // 2, (width - inner_w) // 2
    padded = np.stack([cv2.copyMakeBorder(cv2.resize(image, (inner_w, inner_h), interpolation=cv2.INTER_AREA),
                                          top, height - inner_h - top, left, width - inner_w - left,
                                          cv2.BORDER_REFLECT_101) for image in images])
    return padded, (top, left, inner_h, inner_w)


def predict_scales(model, images, scales=(1.0,), tta=False):
    """Mean lesion probability over zoomed-out copies of model-size images (multi-scale TTA): each
    copy's probabilities are cropped to where the image sits and resized back.

    Args:
        model: a segmentation model.
        images: `float32` array `(b, h, w, 3)` in [0, 1].
        scales: shrink factors in (0, 1]; 1 is the image as it is.
        tta: also average over flips (`inference.predict_batch`), at each scale.

    Returns:
        `float32` array `(b, h, w)`.
    """
    import cv2

    from lesion_unet import inference

    height, width = images.shape[1:3]
    total = np.zeros(images.shape[:3], dtype=np.float32)
    for scale in scales:
        if scale == 1.0:
            total += inference.predict_batch(model, images, tta)
            continue
        padded, (top, left, inner_h, inner_w) = zoomed_out(images, scale)
        for index, probability in enumerate(inference.predict_batch(model, padded, tta)):
            inner = np.ascontiguousarray(probability[top : top + inner_h, left : left + inner_w])
            total[index] += cv2.resize(inner, (width, height), interpolation=cv2.INTER_LINEAR)
    return total / len(scales)


def read_pairs(pairs):
    """`[(image, mask)]` of pairs: `uint8` RGB images and boolean masks, at their own size."""
    from lesion_unet import lesion_files

    return [(lesion_files.read_image(pair.image_path), lesion_files.read_mask(pair.mask_path).astype(bool))
            for pair in pairs]


def model_batch(images, size):
    """`uint8` images resized to the model's `(height, width)` (bilinear), as one `float32` batch in [0, 1]."""
    return np.stack([np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
                     for image in images]).astype(np.float32) / 255.0


def shifted_probabilities(model, pairs, shifts=SHIFTS, batch_size=16, progress=True, tta=False, scales=(1.0,),
                          preprocess=None, model_size=False):
    """Yields `(pair, shift, truth, probability)` for each pair under each shift: the shifted mask and
    the model's lesion probability resized to it (bilinear), for whatever mask step follows.
    A shift may be a tuple of names, applied in turn. `preprocess`, if given, maps each shifted `uint8`
    image to the one the model sees (e.g. hair removal). With `model_size`, the probability map stays
    at the model's size.
    """
    from tqdm.auto import tqdm

    from lesion_unet import inference

    size = inference.model_image_size(model)
    with tqdm(total=len(pairs) * len(shifts), desc="Scoring", unit="img", disable=not progress) as bar:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            originals = read_pairs(chunk)
            for shift in shifts:
                shifted = [shift_pair(image, mask, shift) for image, mask in originals]
                if preprocess is not None:
                    shifted = [(preprocess(image), mask) for image, mask in shifted]
                batch = model_batch([image for image, _ in shifted], size)
                for pair, (_, truth), probability in zip(chunk, shifted, predict_scales(model, batch, scales, tta)):
                    yield pair, shift, truth, (probability if model_size
                                               else inference.resize_probability(probability, truth.shape))
                bar.update(len(chunk))


def score_shifted(model, pairs, shifts=SHIFTS, batch_size=16, postprocess=True, progress=True, threshold=0.5,
                  tta=False, scales=(1.0,), preprocess=None):
    """Scores `model` on `pairs` under each shift (`preprocess`: as in `shifted_probabilities`).

    Returns:
        `{shift: rows}`, each row as `scoring.evaluate_pairs` gives (with `lesion_fraction`).
    """
    from lesion_unet import inference
    from lesion_unet import metrics

    results = {shift: [] for shift in shifts}
    for pair, shift, truth, probability in shifted_probabilities(model, pairs, shifts, batch_size, progress,
                                                                 tta, scales, preprocess):
        prediction = inference.to_mask(probability, threshold, postprocess)
        results[shift].append(metrics.score_row(pair.id, prediction, truth))
    return results


def score_arms(model, pairs, shifts, arms, out, model_label):
    """Scores `model` on `pairs` under `shifts` once per arm, e.g. with and without a preprocessing step.

    Args:
        model: a segmentation model.
        pairs: the images to score.
        shifts: conditions, from `SHIFTS` and `EXTRA_SHIFTS`.
        arms: `[(name, preprocess)]`; `preprocess` as in `shifted_probabilities`, `None` for the images
            as they are.
        out: each arm's rows go to `OUT.NAME.json`, a report `protocol.py compare` reads.
        model_label: the report's group name is `"MODEL_LABEL (NAME)"`.

    Returns:
        `{name: {shift: rows}}`; each arm's mean Dice per shift is printed as it finishes.
    """
    from lesion_unet import runfolder

    reports = {}
    for name, preprocess in arms:
        results = reports[name] = score_shifted(model, pairs, shifts, preprocess=preprocess)
        runfolder.save_json({f"{model_label} ({name})": results}, f"{out}.{name}.json")
        print(f"{name}: " + ", ".join(f"{shift} {np.mean([row['dice'] for row in rows]):.4f}"
                                      for shift, rows in results.items()), flush=True)
    return reports


def table(results_by_group):
    """Markdown table: for each shift, mean Dice overall and by band (pooled), with the spread over
    groups (folds) when there are several."""
    from lesion_unet import metrics

    bands = [name for name, _, _ in metrics.SIZE_BANDS]
    lines = ["| shift | images | Dice | " + " | ".join(f"Dice {band}" for band in bands) + " | thr. Jaccard |",
             "| --- | --- | --- | " + " | ".join("---" for _ in bands) + " | --- |"]
    shifts = list(next(iter(results_by_group.values())))
    for shift in shifts:
        pooled = [row for group in results_by_group.values() for row in group[shift]]
        summary = metrics.summarize(pooled)
        per_group = [metrics.summarize(group[shift])["dice"] for group in results_by_group.values()]
        spread = f" ± {np.std(per_group, ddof=1):.4f}" if len(per_group) > 1 else ""
        cells = [f"{summary['by_size'][band]['dice']:.4f} ({summary['by_size'][band]['n_images']})"
                 if summary["by_size"][band]["n_images"] else "-" for band in bands]
        lines.append(f"| {shift} | {summary['n_images']} | {summary['dice']:.4f}{spread} | " + " | ".join(cells)
                     + f" | {summary['threshold_jaccard']:.4f} |")
    return "\n".join(lines)


def add_arguments(parser):
    """`protocol.py shift`'s flags."""
    parser.add_argument("--runs", nargs="*", default=[], help="run folders whose test splits to score "
                                                              "(e.g. the k folds) (default: none)")
    parser.add_argument("--model", default=None, help="a .keras model to score on --data's split (default: none)")
    parser.add_argument("--data", default=None, help="with --model: folder with images/ and masks/ (default: none)")
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="with --model: which part of the seeded 80/10/10 split (default: %(default)s)")
    parser.add_argument("--seed", type=cliargs.int_range(0, 2**32 - 1), default=0,
                        help="with --model: the split's seed (default: %(default)s)")
    parser.add_argument("--shifts", nargs="+", choices=SHIFTS + EXTRA_SHIFTS, default=list(SHIFTS),
                        help="conditions to score; 'hair' (dense dark hairs drawn on) and 'cast' (another "
                             "white balance) only when named "
                             f"(default: the five, {' '.join(SHIFTS)})")
    parser.add_argument("--threshold", type=cliargs.float_range(0, 1), default=0.5,
                        help="probability threshold, 0 to 1 (default: %(default)s)")
    parser.add_argument("--tta", action="store_true", help="flip test-time augmentation (default: off)")
    parser.add_argument("--scales", nargs="+", type=cliargs.float_range(0, 1, low_open=True), default=[1.0],
                        help="multi-scale TTA: average the predictions of the image shrunk by each factor "
                             "(mirror-padded back to size), e.g. 1 0.8 (default: %(default)s, none)")
    parser.add_argument("--report", default=None, help="also write the per-image rows as JSON here (default: none)")


def run(args, parser):
    """`protocol.py shift`: scores `--model` on its split and `--runs` on theirs; prints the table."""
    if not args.runs and not (args.model and args.data):
        parser.error("give --runs RUN..., or --model MODEL --data DIR")

    from lesion_unet import quiet

    quiet.import_keras()  # without TensorFlow's start-up noise
    from lesion_unet import inference
    from lesion_unet import runfolder

    results = {}
    if args.model:
        results[args.model] = score_shifted(inference.load_model(args.model),
                                            split_part(args.data, args.seed, args.split), args.shifts,
                                            threshold=args.threshold, tta=args.tta, scales=args.scales)
    results.update(score_runs(args.runs, args.shifts))
    print(table(results))
    if args.report:
        runfolder.save_json(results, args.report)
    return 0


def split_part(data, seed=0, part="val"):
    """The pairs of `data` in one part (`"val"` or `"test"`) of `train.py`'s seeded 80/10/10 split."""
    from lesion_unet import data as dataGenerator

    pairs = dataGenerator.find_pairs(*dataGenerator.resolve_folders(data))
    return dataGenerator.select_pairs(pairs, dataGenerator.split_pairs(pairs, seed=seed)[part])


def score_runs(runs, shifts=SHIFTS, progress=True):
    """Scores each run's `best.keras` on its own test split under `shifts`.

    Returns:
        `{run: {shift: rows}}`.
    """
    from lesion_unet import data as dataGenerator
    from lesion_unet import inference
    from lesion_unet import runfolder

    results = {}
    for run in runs:
        config = runfolder.read_config(run)
        pairs = dataGenerator.find_pairs(config["images"], config["masks"], skip_unpaired=True)
        split = dataGenerator.load_split(os.path.join(run, runfolder.SPLIT))
        results[run] = score_shifted(inference.load_model(os.path.join(run, runfolder.BEST)),
                                     dataGenerator.select_pairs(pairs, split["test"]), shifts, progress=progress)
    return results

