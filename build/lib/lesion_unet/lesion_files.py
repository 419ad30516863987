"""The lesion data on disk, without Keras: pairing images with masks, splits, and reading both.

Pairing follows the ISIC rule: image `<id>.<ext>` goes with mask `<id>_segmentation.png`, matched by
id, never by position. Images are read as 8-bit RGB; masks are resized with nearest neighbour and
binarised at 128, so they stay strictly {0, 1}; a mask whose pixels are all 0 or 1 (a common way to
save masks) is read as lesion = 1. `dataGenerator.py` builds the training batches on
top of this; `predict.py` and `evaluate.py` with an ONNX model need nothing more, so they run where
Keras and TensorFlow are not installed.
"""

import collections
import dataclasses
import io
import logging
import math
import os
import struct

import numpy as np
from PIL import Image, PngImagePlugin

from lesion_unet import runfolder
from lesion_unet.errors import InputError
from lesion_unet.settings import DEFAULT_SPLIT, FOLD_ORDERS, MASK_SUFFIX, OUTPUT_PNG_SOFTWARE, image_id_of, is_usable_file

log = logging.getLogger("lesion_unet.data")  # notes for the user; errors.run_cli shows them

_MAX_LISTED = 10
# What Pillow raises on a malformed file: OSError (truncated data, UnidentifiedImageError), SyntaxError
# and struct.error (broken headers), ValueError (impossible sizes or modes), EOFError, and
# DecompressionBombError (a size meant to exhaust memory). Anything else is a bug, and stays one.
_DECODE_ERRORS = (OSError, SyntaxError, struct.error, ValueError, EOFError, Image.DecompressionBombError)


@dataclasses.dataclass(frozen=True)
class Pair:
    """One image and its mask, by id."""

    id: str
    image_path: str
    mask_path: str


def resolve_folders(data=None, images=None, masks=None):
    """Turns `--data` or `--images/--masks` into the two folders, checking they exist.

    Args:
        data: a folder holding `images/` and `masks/`, or `None`.
        images: the images folder (used when `data` is `None`).
        masks: the masks folder (used when `data` is `None`).

    Returns:
        `(images_dir, masks_dir)`.

    Raises:
        InputError: the folders are missing or the arguments are inconsistent.
    """
    if data is not None:
        if images is not None or masks is not None:
            raise InputError("give either --data DIR or --images DIR --masks DIR, not both")
        if not os.path.isdir(data):
            raise InputError(f"{data}: data folder not found; pass a folder holding images/ and masks/")
        images, masks = os.path.join(data, "images"), os.path.join(data, "masks")
        for folder in (images, masks):
            if not os.path.isdir(folder):
                raise InputError(
                    f"{folder}: not found; --data DIR needs DIR/images and DIR/masks "
                    "(or pass --images DIR --masks DIR)"
                )
    elif images is None or masks is None:
        raise InputError("give --data DIR, or both --images DIR and --masks DIR")
    for folder, what in ((images, "images"), (masks, "masks")):
        if not os.path.isdir(folder):
            raise InputError(f"{folder}: {what} folder not found")
    return images, masks


def listed(names):
    """Returns up to ten of `names`, sorted and comma-separated, with a count of the rest."""
    shown = ", ".join(sorted(names)[:_MAX_LISTED])
    more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
    return shown + more


def _scan(folder, accept):
    """Maps id -> path for the files in `folder` that `accept(name)` turns into an id."""
    found, ignored = {}, 0
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        sample_id = accept(name) if is_usable_file(path) else None
        if sample_id is None:
            ignored += 1
        elif sample_id in found:
            raise InputError(
                f"{path}: a second file for id {sample_id!r} (also {found[sample_id]}); keep one"
            )
        else:
            found[sample_id] = path
    if ignored:
        log.info("note: ignored %d file(s) in %s that are not %s", ignored, folder,
                 "images" if accept is image_id_of else f"*{MASK_SUFFIX} masks")
    return found


def _mask_id(name):
    return name[: -len(MASK_SUFFIX)] if name.lower().endswith(MASK_SUFFIX) else None


def find_pairs(images_dir, masks_dir, skip_unpaired=False):
    """Pairs `images_dir/<id>.<ext>` with `masks_dir/<id>_segmentation.png` by id.

    Files that are neither images nor masks (`LICENSE.txt`, `.DS_Store`, ...) are ignored and
    counted in a log note.

    Args:
        images_dir: folder of images (.jpg, .jpeg, .png, .bmp, .tif, .tiff, any case).
        masks_dir: folder of masks named `<id>_segmentation.png`.
        skip_unpaired: drop images without masks and masks without images with a warning, instead
            of raising.

    Returns:
        A list of `Pair`, sorted by id.

    Raises:
        InputError: a folder holds no usable file, or some files have no partner.
    """
    images = _scan(images_dir, image_id_of)
    masks = _scan(masks_dir, _mask_id)
    if not images:
        raise InputError(f"{images_dir}: no images found (expected <id>.jpg/.png/...)")
    if not masks:
        raise InputError(f"{masks_dir}: no masks found (expected <id>{MASK_SUFFIX})")
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    problems = []
    if no_mask:
        problems.append(f"{len(no_mask)} image(s) in {images_dir} without a mask: {listed(no_mask)}")
    if no_image:
        problems.append(f"{len(no_image)} mask(s) in {masks_dir} without an image: {listed(no_image)}")
    if problems and not skip_unpaired:
        raise InputError("; ".join(problems) + "; add the missing files or pass --skip-unpaired")
    for problem in problems:
        log.warning("warning: skipping %s", problem)
    pairs = [Pair(i, images[i], masks[i]) for i in sorted(set(images) & set(masks))]
    if not pairs:
        raise InputError(f"{images_dir} and {masks_dir}: no image has a mask")
    return pairs


def split_pairs(pairs, fractions=DEFAULT_SPLIT, seed=0):
    """Splits pairs at random, reproducibly, into train / val / test ids.

    Args:
        pairs: list of `Pair`.
        fractions: train, validation and test fractions, summing to 1.
        seed: the split's seed.

    Returns:
        A dict `{"train": [...], "val": [...], "test": [...]}` of sorted ids; each split gets at least
        one id when there are three pairs or more.

    Raises:
        ValueError: the fractions are not three non-negative numbers summing to 1.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three numbers >= 0 summing to 1, got {fractions}")
    ids = sorted(pair.id for pair in pairs)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = round(len(ids) * fractions[1])
    n_test = round(len(ids) * fractions[2])
    if len(ids) >= 3:
        n_val, n_test = max(n_val, fractions[1] > 0), max(n_test, fractions[2] > 0)
    test = [ids[i] for i in order[:n_test]]
    val = [ids[i] for i in order[n_test : n_test + n_val]]
    train = [ids[i] for i in order[n_test + n_val :]]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def kfold_split(pairs, folds, fold, val_fraction=DEFAULT_SPLIT[1], seed=0, by="random"):
    """Splits pairs into train / val / test ids for fold `fold` of a seeded `folds`-fold partition.

    With `by="random"` the ids are permuted with `seed` and cut into `folds` near-equal parts; with
    `by="order"` the sorted ids are cut into `folds` runs of consecutive ids, so that a test fold is a
    block of the archive: where ids follow the order in which images arrived, and one source's images
    came together (in ISIC 2017 the blocks differ in colour, dark corners and lesion size:
    `experiments/archive_order.py`), such a fold holds images whose neighbours the training folds do not
    have, a stand-in for another source. Either way part `fold` is the test
    split, so the test splits of folds `0 .. folds-1` cover every pair exactly once. From the rest,
    permuted with `seed`, the first `val_fraction` of all pairs is the validation split, the others
    train, so validation is drawn like the training images (in-distribution) in both cases.

    Args:
        pairs: list of `Pair`.
        folds: number of folds, >= 2.
        fold: which fold is the test split, `0 <= fold < folds`.
        val_fraction: size of the validation split, as a share of all pairs.
        seed: the partition's seed.
        by: `"random"` (seeded parts) or `"order"` (consecutive ids).

    Returns:
        A dict `{"train": [...], "val": [...], "test": [...]}` of sorted ids.

    Raises:
        ValueError: `folds` < 2, `fold` out of range, `by` unknown, or too few pairs for every split to
            get one.
    """
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"need folds >= 2 and 0 <= fold < folds, got fold {fold} of {folds}")
    if by not in FOLD_ORDERS:
        raise ValueError(f"folds by {by!r}: use one of {', '.join(FOLD_ORDERS)}")
    ids = sorted(pair.id for pair in pairs)
    if len(ids) < folds + 2:
        raise ValueError(f"{len(ids)} pairs are too few for {folds} folds; use at least {folds + 2}")
    rng = np.random.default_rng(seed)
    if by == "random":
        parts = np.array_split(rng.permutation(len(ids)), folds)
        rest = np.concatenate([part for index, part in enumerate(parts) if index != fold])
    else:
        parts = np.array_split(np.arange(len(ids)), folds)
        rest = rng.permutation(np.concatenate([part for index, part in enumerate(parts) if index != fold]))
    n_val = min(max(1, round(len(ids) * val_fraction)), len(rest) - 1)
    return {"train": sorted(ids[i] for i in rest[n_val:]), "val": sorted(ids[i] for i in rest[:n_val]),
            "test": sorted(ids[i] for i in parts[fold])}


def select_pairs(pairs, ids, source="the split"):
    """Returns the pairs with the given ids, in that order.

    Raises:
        InputError: an id has no pair in the data folders.
    """
    by_id = {pair.id: pair for pair in pairs}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise InputError(
            f"{source} names {len(missing)} id(s) missing from the data: {listed(missing)}; "
            "point --data at the folder the run was trained on"
        )
    return [by_id[i] for i in ids]


def _open(path, kind):
    """Opens an image file (Pillow reads its header; pixels are decoded on use), or raises InputError
    naming it."""
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise InputError(f"{path}: {kind} file not found") from None
    except Image.DecompressionBombError as error:
        # A real photo can be over Pillow's guard (179 megapixels; a phone's 200 MP mode is): say what helps.
        raise InputError(f"{path}: this {kind} is larger than Pillow decodes ({error}); save a smaller copy, "
                         "e.g. 8000x6000 pixels, and use that") from None
    except _DECODE_ERRORS as error:
        raise InputError(f"{path}: cannot read this {kind} ({error}); replace or remove the file") from None


# EXIF orientations and the turn that shows each as a person sees the photo (Pillow's exif_transpose).
# The rule: images and masks are read as displayed, since a person draws a mask on the displayed photo,
# and a mask is written at its image's displayed size.
_EXIF_ORIENTATION_TAG = 0x0112
_DISPLAY_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                  4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                  7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _orientation(image):
    """The file's EXIF orientation (1 to 8; 1, as stored, when it has none or a damaged one)."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # Pillow raises several types for damaged EXIF blocks; the pixels are still good
        return 1
    return value if value in _DISPLAY_TURNS else 1


def _stored_size(size, orientation):
    """Pillow's `(width, height)` in the file for a displayed `(height, width)`."""
    height, width = size
    return (height, width) if orientation >= 5 else (width, height)


def _as_displayed(image, orientation):
    return image if orientation == 1 else image.transpose(_DISPLAY_TURNS[orientation])


# Pillow modes of more than 8 bits per pixel, which `_to_rgb` scales down to 8 bits.
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


# Rows of a high bit-depth image scaled to 8 bits at a time: a float64 copy of a whole 12000x12000
# 16-bit image would take 1.1 GB, a strip of these rows a few MB.
HIGH_BIT_STRIP_PIXELS = 1 << 20


def _high_bit_to_grey(image):
    """Scales a high bit-depth grey image (`HIGH_BIT_MODES`) to 8 bits, strip by strip: values up to
    255 are kept as they are, wider ones are divided by 65535 / 255, then clipped and truncated."""
    width, height = image.size
    largest = image.getextrema()[1]
    scale = 65535.0 if largest > 255 else 255.0
    grey = np.empty((height, width), np.uint8)
    rows = max(1, HIGH_BIT_STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        strip = np.asarray(image.crop((0, top, width, min(height, top + rows))), dtype=np.float64)
        grey[top:top + rows] = np.clip(strip / scale * 255.0, 0, 255).astype(np.uint8)
    return Image.fromarray(grey)


def _to_rgb(image):
    """Converts any PIL mode (L, LA, P, RGBA, I;16, I, F, CMYK) to 8-bit RGB."""
    if image.mode in HIGH_BIT_MODES:
        image = _high_bit_to_grey(image)
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def read_image(path, size=None):
    """Reads an image as 8-bit RGB, optionally resized.

    Large JPEGs are decoded at a reduced scale (PIL draft mode) when a smaller size is asked for, so
    a 6000x4000 photo never sits in memory at full size.

    Args:
        path: image file.
        size: `(height, width)` to resize to with area-style (antialiased bilinear) filtering, or
            `None` to keep the file's size.

    Returns:
        A `uint8` array of shape `(height, width, 3)`.

    Raises:
        InputError: the file is missing, truncated or not an image.
    """
    image = _open(path, "image")
    try:
        orientation = _orientation(image)
        if size is not None and image.format == "JPEG":
            image.draft("RGB", _stored_size(size, orientation))
        image = _as_displayed(_to_rgb(image), orientation)
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)
    except _DECODE_ERRORS as error:
        raise InputError(f"{path}: cannot decode this image ({error}); replace or remove the file") from None


# What `read_mask` found in a mask file: 0 and 255 only (ISIC's format), 0 and 1 only (lesion = 1),
# or other grey levels (binarised at 128).
MASK_0_255, MASK_0_1, MASK_GREY = "0/255", "0/1", "grey"


def read_mask(path, size=None, return_format=False):
    """Reads a mask as {0, 1}, optionally resized with nearest neighbour.

    The rule: a mask whose pixels are all 0 or 1 (with some 1) marks the lesion with 1; any other mask
    is binarised at 128, so 0/255 masks (ISIC's format) and soft masks mark it with values of 128 and
    more. An empty mask is empty either way.

    Args:
        path: mask file (any mode; colour masks are converted to grey first).
        size: `(height, width)` or `None`.
        return_format: also return what the file held: `MASK_0_255`, `MASK_0_1` or `MASK_GREY`
            (judged on the pixels kept, all of them when not resized).

    Returns:
        A `uint8` array of shape `(height, width)` holding only 0 and 1 (and, with `return_format`,
        the format found).

    Raises:
        InputError: the file is missing, truncated or not an image.
    """
    image = _open(path, "mask")
    try:
        orientation = _orientation(image)
        if size is not None and image.size != _stored_size(size, orientation):
            # Nearest neighbour only picks pixels, so resizing before thresholding gives the same
            # mask, and a 4000x3000 mask is never converted or thresholded at full size.
            image = image.resize(_stored_size(size, orientation), Image.NEAREST)
        image = _as_displayed(image, orientation)
        grey = np.asarray(image if image.mode == "L" else _to_rgb(image).convert("L"))
        largest = int(grey.max()) if grey.size else 0
        if largest == 1:
            mask, found = grey.astype(np.uint8), MASK_0_1
        else:
            mask = (grey >= 128).astype(np.uint8)
            found = MASK_0_255 if bool(np.all((grey == 0) | (grey == 255))) else MASK_GREY
    except _DECODE_ERRORS as error:
        raise InputError(f"{path}: cannot decode this mask ({error}); replace or remove the file") from None
    if return_format:
        return mask, found
    return mask


def mask_format_notes(formats, what="mask"):
    """Returns the notes a command prints once about the mask formats it read (see `read_mask`).

    Args:
        formats: the formats `read_mask` returned, one per file.
        what: what the masks are, e.g. "predicted mask".
    """
    counts = collections.Counter(formats)
    notes = []
    if counts[MASK_0_1]:
        notes.append(f"note: {counts[MASK_0_1]} {what}(s) held only the values 0 and 1; read as lesion = 1")
    if counts[MASK_GREY]:
        notes.append(f"note: {counts[MASK_GREY]} {what}(s) held values other than 0 and 255 (or 0 and 1); "
                     "binarised at 128")
    return notes


def sample_id_of(path):
    """Returns the id a mask is named after: the image's file name without its extension."""
    return os.path.splitext(os.path.basename(path))[0]


def encode_png(pixels):
    """Returns a `uint8` array (grey or RGB) as PNG bytes, marked as this project's output.

    The mark (a "Software" text chunk, `settings.OUTPUT_PNG_SOFTWARE`) is what `is_own_output_png`
    looks for.
    """
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", OUTPUT_PNG_SOFTWARE)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def is_own_output_png(path):
    """Whether `path` is a PNG that `encode_png` wrote (read from its header; pixels are not decoded).

    Anything else, unreadable files included, is someone else's, to be kept.
    """
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == OUTPUT_PNG_SOFTWARE
    except _DECODE_ERRORS:
        return False


def image_size_of(path):
    """Returns `(height, width)` of an image file as displayed (EXIF orientation applied), from its
    header, without decoding it."""
    image = _open(path, "image")
    width, height = image.size
    return (width, height) if _orientation(image) >= 5 else (height, width)


def load_split(path):
    """Reads a `split.json` written by `save_json(split_pairs(...))`.

    Raises:
        InputError: the file is missing, damaged or not a split.
    """
    split = runfolder.read_json(path, "the run's train/val/test split")
    if not isinstance(split, dict) or not {"train", "val", "test"} <= set(split):
        raise InputError(f"{path}: not a split file (needs train, val and test lists)")
    return split
