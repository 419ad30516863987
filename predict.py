"""Segments new images with a saved model.

    python predict.py my_lesion.jpg --out masks/                 # the pre-trained model
    python predict.py runs/my_run/best.keras images/ --out masks/ --overlay
    python predict.py best.onnx images/ --out masks/             # ONNX Runtime; no TensorFlow needed

Writes `<id>_segmentation.png` for each image: single-channel, 0 (skin) / 255 (lesion), at the image's
own size (the ISIC submission format); with `--overlay`, also `<id>_overlay.png`, the outline drawn on
the image. `predictions.csv` beside them lists every image worst first, with its lesion area, expected
Dice and review flag (`quality.py`; unknown for a model that carries no quality model).
"""

import os
import sys

from lesion_unet import cliargs
from lesion_unet import runfolder
from lesion_unet import settings
from lesion_unet.errors import InputError, exit_script, make_output_dir, run_cli
from lesion_unet.lesion_files import sample_id_of

OUTPUT_SUFFIXES = ("_segmentation.png", "_overlay.png")
PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_FIELDS = ["id", "image", "lesion_pixels", "lesion_percent", "expected_dice", "review", "risk"]


def is_own_output(name):
    """Whether a file name is one that `predict.py` writes (`<id>_segmentation.png`, `<id>_overlay.png`)."""
    return name.lower().endswith(OUTPUT_SUFFIXES)


def collect_images(inputs):
    """Expands files and folders into a sorted, de-duplicated list of image files.

    In folders, only regular image files count (the rule of `settings.is_usable_file`), and this
    tool's own outputs are skipped, so writing masks into an input folder never feeds them back in.
    Files named explicitly are always taken.

    Raises:
        InputError: an input does not exist, no image is found, or two images share an id (their
            masks would overwrite each other).
    """
    paths, skipped = [], 0
    for item in inputs:
        if os.path.isdir(item):
            found = []
            for name in sorted(os.listdir(item)):
                path = os.path.join(item, name)
                if settings.image_id_of(name) is None or not settings.is_usable_file(path):
                    continue
                if is_own_output(name):
                    skipped += 1
                    continue
                found.append(path)
            if not found:
                raise InputError(f"{item}: no images in this folder (.jpg, .jpeg, .png, .bmp, .tif)")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise InputError(f"{item}: no such file or folder")
    if skipped:
        print(f"note: skipped {skipped} file(s) named like this tool's own outputs (*_segmentation.png, "
              "*_overlay.png); name them explicitly to segment them", file=sys.stderr)
    paths = list(dict.fromkeys(os.path.normpath(path) for path in paths))
    by_id = {}
    for path in paths:
        sample_id = sample_id_of(path)
        if sample_id in by_id:
            raise InputError(f"{path} and {by_id[sample_id]}: both would be written as {sample_id}_segmentation.png; "
                             "rename one, or segment them into separate --out folders")
        by_id[sample_id] = path
    return paths


def check_outputs(paths, out, overlay=False, overwrite=False):
    """Refuses to replace files in `out` that `predict.py` did not write.

    Masks are named as the ISIC ground truth is (`<id>_segmentation.png`), so `--out` pointed at a
    masks folder would otherwise replace expert masks with predictions. Earlier outputs of this tool
    (marked in their PNG header, `lesion_files.is_own_output_png`) are replaced without asking.

    Args:
        paths: the images to segment.
        out: the output folder.
        overlay: whether `<id>_overlay.png` files will be written too.
        overwrite: replace other files as well (`--overwrite`).

    Raises:
        InputError: a file would be replaced that this tool did not write, naming it and the count.
    """
    from lesion_unet import lesion_files

    if overwrite or not os.path.isdir(out):
        return
    suffixes = OUTPUT_SUFFIXES if overlay else OUTPUT_SUFFIXES[:1]
    targets = (os.path.join(out, sample_id_of(path) + suffix) for path in paths for suffix in suffixes)
    foreign = [target for target in targets if os.path.lexists(target) and not lesion_files.is_own_output_png(target)]
    table = os.path.join(out, PREDICTIONS_CSV)
    if os.path.lexists(table) and not is_own_table(table):
        foreign.insert(0, table)
    if foreign:
        others = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise InputError(f"{foreign[0]}{others}: files that predict.py did not write (expert masks?) would be "
                         "replaced; choose another --out, or add --overwrite to replace them")


def is_own_table(path):
    """Whether `path` is a `predictions.csv` that `predict.py` wrote (its header is ours)."""
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), None) == PREDICTIONS_FIELDS
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


def write_predictions_table(rows, path):
    """Writes `predictions.csv` (`PREDICTIONS_FIELDS`), rows in the order given, atomically.

    `review` is `yes`, `no` or `unknown`; `expected_dice` and `risk` are empty where unknown (`risk` also
    for an empty mask, which is always flagged).
    """
    import csv

    def cell(value):
        if value is None:
            return ""
        if isinstance(value, bool):
            return "yes" if value else "no"
        return f"{value:.4f}" if isinstance(value, float) else value

    with runfolder.atomic_write(path) as tmp_path, open(tmp_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=PREDICTIONS_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("unknown" if key == "review" and row[key] is None else cell(row[key]))
                             for key in PREDICTIONS_FIELDS})


def write_mask(mask, path):
    """Writes a boolean mask as a 0/255 single-channel PNG (`inference.encode_mask_png`), atomically."""
    from lesion_unet import inference

    data = inference.encode_mask_png(mask)
    with runfolder.atomic_write(path) as tmp_path, open(tmp_path, "wb") as handle:
        handle.write(data)


def review_summary(table, quality_model, table_path):
    """The line `predict.py` prints about the review flags of `table`'s rows."""
    if quality_model is None:
        return (f"review: unknown (this model carries no quality estimate); {os.path.normpath(table_path)} "
                "lists the masks")
    flagged = sum(1 for row in table if row["review"])
    return (f"review: {flagged} of {len(table)} mask(s) flagged to check by eye (expected Dice low; "
            f"worst first in {os.path.normpath(table_path)})")


def split_inputs(argv_inputs):
    """Splits positional inputs into `(model_path, images)`: a leading `.keras` or `.onnx` file or a
    run folder is the model."""
    first = argv_inputs[0]
    if first.lower().endswith((".keras", ".onnx")):
        return first, argv_inputs[1:]
    if runfolder.is_run_folder(first) or os.path.isfile(os.path.join(first, runfolder.BEST)):
        model_path = os.path.join(first, runfolder.BEST)
        if not os.path.isfile(model_path):
            raise InputError(f"{first}: a run folder without best.keras (its training has not finished an "
                             "epoch); pass another run folder or a .keras file")
        return model_path, argv_inputs[1:]
    return settings.DEFAULT_MODEL, argv_inputs


def build_parser():
    parser = cliargs.ArgumentParser(
        description="Write <id>_segmentation.png lesion masks (0/255, each image's own size) and predictions.csv, "
                    "every image worst first with its expected Dice and whether to check its mask.",
        usage="%(prog)s [MODEL] INPUT [INPUT ...] [--out DIR]")
    parser.add_argument("inputs", nargs="+", metavar="[MODEL] INPUT",
                        help="an optional .keras or .onnx model or run folder (default: the pre-trained "
                             "model), then image files or folders")
    parser.add_argument("--out", default=os.path.join("runs", "predictions"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--overlay", action="store_true", help="also write <id>_overlay.png, the outline on the image")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files in --out that predict.py did not write, e.g. ground-truth masks "
                             "of the same names (default: refuse; its own earlier outputs are always replaced)")
    cliargs.add_inference_arguments(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    model_path, inputs = split_inputs(args.inputs)
    if not inputs:
        raise InputError("no input images given; pass image files or folders after the model")
    if not model_path.lower().endswith(".onnx"):  # ONNX Runtime runs an exported model without Keras
        from lesion_unet import quiet  # Keras loads only now that the arguments are known to be good

        quiet.import_keras()
    from lesion_unet import inference
    from lesion_unet import lesion_files
    from lesion_unet import plots
    from lesion_unet import quality

    inference.check_model_file(model_path)  # the cheap checks first, in the order of the command line
    paths = collect_images(inputs)
    check_outputs(paths, args.out, args.overlay, args.overwrite)
    model = inference.load_model(model_path)
    quality_model = inference.load_quality_model(model_path)
    created = not os.path.isdir(args.out)
    make_output_dir(args.out)
    skipped = []  # unreadable images: the others are still segmented, and the exit status says so
    results = inference.segment_files(model, paths, args.threshold, args.tta, args.postprocess, args.batch_size,
                                      progress=not args.no_progress, remove_hair=args.remove_hair, skipped=skipped)
    table = []
    for path, probability, mask in results:
        sample_id = sample_id_of(path)
        write_mask(mask, os.path.join(args.out, f"{sample_id}_segmentation.png"))
        if args.overlay:
            plots.save_overlay(lesion_files.read_image(path), mask, os.path.join(args.out, f"{sample_id}_overlay.png"))
        area = int(mask.sum())
        table.append({"id": sample_id, "image": path, "lesion_pixels": area, "lesion_percent": 100.0 * area / mask.size,
                      **quality.assess(quality_model, probability)})
    if table:
        write_predictions_table([table[index] for index in quality.review_order(table)],
                                os.path.join(args.out, PREDICTIONS_CSV))
    print(f"wrote {len(table)} mask(s) to {os.path.normpath(args.out)} with {model_path}")
    if table:
        print(review_summary(table, quality_model, os.path.join(args.out, PREDICTIONS_CSV)))
    if skipped:
        if created and not table:  # nothing could be read: leave no empty folder behind
            os.rmdir(args.out)
        for _, message in skipped:
            print(f"skipped: {message}", file=sys.stderr)
        print(f"error: {len(skipped)} of {len(paths)} image(s) could not be read and have no mask (listed above); "
              "replace or remove them and run again", file=sys.stderr)
        return 1


if __name__ == "__main__":
    exit_script(run_cli(main))
