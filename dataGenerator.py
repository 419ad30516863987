"""Pairs lesion images with their masks, splits them, and feeds batches to Keras.

Pairing follows the ISIC rule: image `<id>.<ext>` goes with mask `<id>_segmentation.png`, matched by
id, never by position. Images are read as RGB and scaled to [0, 1]; masks are resized with nearest
neighbour and binarised at 128, so they stay strictly {0, 1}.

Run `python dataGenerator.py --data DIR` to list the pairs, see the split sizes and save a figure of
one augmented training batch.
"""

import concurrent.futures
import dataclasses
import functools
import json
import logging
import math
import os
import random
import struct
import sys
import threading

import keras
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

import cliargs
from cliargs import int_range
from errors import InputError, run_cli
from settings import (COLOR_AUGMENTATIONS, DEFAULT_IMAGE_SIZE, DEFAULT_SPLIT, DEFAULT_ZOOM, MASK_SUFFIX,
                      image_id_of, is_usable_file)

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


def kfold_split(pairs, folds, fold, val_fraction=DEFAULT_SPLIT[1], seed=0):
    """Splits pairs into train / val / test ids for fold `fold` of a seeded `folds`-fold partition.

    The ids are permuted with `seed` and cut into `folds` near-equal parts; part `fold` is the test
    split, so the test splits of folds `0 .. folds-1` cover every pair exactly once. From the rest, the
    first `val_fraction` of all pairs (in permuted order) is the validation split, the others train.

    Args:
        pairs: list of `Pair`.
        folds: number of folds, >= 2.
        fold: which fold is the test split, `0 <= fold < folds`.
        val_fraction: size of the validation split, as a share of all pairs.
        seed: the partition's seed.

    Returns:
        A dict `{"train": [...], "val": [...], "test": [...]}` of sorted ids.

    Raises:
        ValueError: `folds` < 2, `fold` out of range, or too few pairs for every split to get one.
    """
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"need folds >= 2 and 0 <= fold < folds, got fold {fold} of {folds}")
    ids = sorted(pair.id for pair in pairs)
    if len(ids) < folds + 2:
        raise ValueError(f"{len(ids)} pairs are too few for {folds} folds; use at least {folds + 2}")
    order = np.random.default_rng(seed).permutation(len(ids))
    parts = np.array_split(order, folds)
    rest = np.concatenate([part for index, part in enumerate(parts) if index != fold])
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
    except _DECODE_ERRORS as error:
        raise InputError(f"{path}: cannot read this {kind} ({error}); replace or remove the file") from None


def _to_rgb(image):
    """Converts any PIL mode (L, LA, P, RGBA, I;16, I, F, CMYK) to 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        scale = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / scale * 255.0, 0, 255).astype(np.uint8))
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
        if size is not None and image.format == "JPEG":
            image.draft("RGB", (size[1], size[0]))
        image = _to_rgb(image)
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)
    except _DECODE_ERRORS as error:
        raise InputError(f"{path}: cannot decode this image ({error}); replace or remove the file") from None


def read_mask(path, size=None, return_was_binary=False):
    """Reads a mask as {0, 1}, binarised at 128, optionally resized with nearest neighbour.

    Args:
        path: mask file (any mode; colour masks are converted to grey first).
        size: `(height, width)` or `None`.
        return_was_binary: also return whether the file held only 0 and 255.

    Returns:
        A `uint8` array of shape `(height, width)` holding only 0 and 1 (and, with
        `return_was_binary`, whether the pixels kept, all of them when not resized, held only 0
        and 255).

    Raises:
        InputError: the file is missing, truncated or not an image.
    """
    image = _open(path, "mask")
    try:
        if size is not None and image.size != (size[1], size[0]):
            # Nearest neighbour only picks pixels, so resizing before thresholding gives the same
            # mask, and a 4000x3000 mask is never converted or thresholded at full size.
            image = image.resize((size[1], size[0]), Image.NEAREST)
        grey = np.asarray(image if image.mode == "L" else _to_rgb(image).convert("L"))
        mask = (grey >= 128).astype(np.uint8)
    except _DECODE_ERRORS as error:
        raise InputError(f"{path}: cannot decode this mask ({error}); replace or remove the file") from None
    if return_was_binary:
        return mask, bool(np.all((grey == 0) | (grey == 255)))
    return mask


def image_size_of(path):
    """Returns `(height, width)` of an image file from its header, without decoding it."""
    width, height = _open(path, "image").size
    return height, width


def _load_pair(pair, image_size):
    image_shape, mask_shape = image_size_of(pair.image_path), image_size_of(pair.mask_path)
    if image_shape != mask_shape:
        raise InputError(
            f"{pair.mask_path}: mask is {mask_shape[1]}x{mask_shape[0]} but its image "
            f"{pair.image_path} is {image_shape[1]}x{image_shape[0]} (width x height); "
            "masks must match their images"
        )
    return (read_image(pair.image_path, image_size),
            *read_mask(pair.mask_path, image_size, return_was_binary=True))


def load_arrays(pairs, image_size=DEFAULT_IMAGE_SIZE, progress=True, out=None):
    """Decodes and resizes every pair once, in parallel threads.

    Args:
        pairs: list of `Pair`.
        image_size: `(height, width)` to resize to.
        progress: show a progress bar.
        out: optional `(images, masks)` arrays to fill (e.g. the memory maps of `cache.py`).

    Returns:
        `(images, masks)`: `uint8` arrays of shapes `(n, h, w, 3)` and `(n, h, w)`, masks in {0, 1}.
        Masks holding values other than 0 and 255 are binarised at 128 and counted in a log note.
    """
    height, width = image_size
    if out is None:
        out = (np.empty((len(pairs), height, width, 3), dtype=np.uint8),
               np.empty((len(pairs), height, width), dtype=np.uint8))
    images, masks = out
    not_binary = 0
    # Pillow releases the GIL while it decodes and resizes, so threads use every core.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        loaded = pool.map(lambda pair: _load_pair(pair, image_size), pairs)
        for index, (image, mask, was_binary) in enumerate(
            tqdm(loaded, total=len(pairs), desc="Decoding", unit="img", disable=not progress,
                 leave=False)
        ):
            images[index], masks[index] = image, mask
            not_binary += not was_binary
    if not_binary:
        log.info("note: %d mask(s) held values other than 0 and 255; binarised at 128", not_binary)
    return images, masks


@functools.cache
def _albumentations():
    # albumentations otherwise looks for a newer release over the network on its first import.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


def build_augmentation(image_size, seed, zoom=DEFAULT_ZOOM, color="light"):
    """Returns the training augmentation: flips, 90-degree turns, random affine, colour changes.

    Geometric transforms move image and mask together (mask with nearest neighbour). Turns by 90
    degrees are used only for square sizes, since they would swap height and width.

    Args:
        image_size: `(height, width)` of the samples.
        seed: the pipeline's seed.
        zoom: `(low, high)` range of the affine's scale factor; above 1 zooms in, so lesions that
            fill most of the frame (common on other sources' images) are common in training too.
        color: `"light"`: brightness/contrast/saturation/hue jitter; `"strong"`: wider jitter plus
            gamma, blur and dark corners, for cameras and lighting that the training images lack.

    Returns:
        An `albumentations.Compose`.

    Raises:
        ValueError: `zoom` is not an increasing pair of positive numbers, or `color` is unknown.
    """
    A = _albumentations()
    import cv2  # opencv-python-headless, albumentations' image backend: its border constants

    if len(zoom) != 2 or not 0 < zoom[0] <= zoom[1]:
        raise ValueError(f"zoom must be (low, high) with 0 < low <= high, got {zoom}")
    if color not in COLOR_AUGMENTATIONS:
        raise ValueError(f"color augmentation must be one of {', '.join(COLOR_AUGMENTATIONS)}, got {color!r}")
    geometric = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if image_size[0] == image_size[1]:
        geometric.append(A.RandomRotate90(p=0.5))
    geometric.append(A.Affine(scale=tuple(zoom), translate_percent=(-0.05, 0.05), rotate=(-20, 20),
                              border_mode=cv2.BORDER_REFLECT_101, p=0.5))
    if color == "light":
        photometric = [A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5)]
    else:
        photometric = [
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
            A.RandomGamma(gamma_limit=(70, 150), p=0.5),
            A.GaussianBlur(blur_limit=(3, 5), p=0.2),
            # Dark corners, as some dermoscopes' vignetting gives (a weak spot of the shipped model).
            A.Illumination(mode="corner", intensity_range=(0.05, 0.2), effect_type="darken", p=0.3),
        ]
    pipeline = A.Compose(geometric + photometric)
    # One shared stream for all transforms. `Compose(seed=...)` seeds every transform with the same
    # seed, so their draws coincide and they apply all together or not at all (albumentations 2.0).
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return pipeline


class LesionDataset(keras.utils.PyDataset):
    """Batches of `(images, masks)` for Keras, decoded once and kept in memory as `uint8`.

    Batches walk through a seeded permutation of the samples that is drawn anew at every epoch end
    (when `shuffle`); the last batch may be smaller, so every sample is seen exactly once an epoch.
    Augmentation of the `k`-th sample of batch `i` in epoch `e` is seeded from `(seed, e, i, k)`, so it
    depends neither on which worker thread makes the batch nor on which process takes that sample.

    Args:
        pairs: list of `Pair`.
        image_size: `(height, width)` of the batches.
        batch_size: samples per batch.
        augment: apply `build_augmentation` (training only).
        augmentation: keyword arguments of `build_augmentation` (`zoom`, `color`), or `None` for its
            defaults.
        shuffle: reshuffle the order every epoch.
        seed: seed of the order and the augmentation.
        arrays: optional `(images, masks)` already loaded by `load_arrays`, to skip decoding.
        progress: show a progress bar while decoding.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of `keras.utils.PyDataset`.

    Returns batches of `float32` images in [0, 1], shape `(b, h, w, 3)`, and `float32` masks in
    {0, 1}, shape `(b, h, w, 1)`. (`distribution.ShardedBatches` pads and shares them between devices
    and processes.)

    Raises:
        ValueError: `batch_size` < 1.
    """

    def __init__(self, pairs, image_size=DEFAULT_IMAGE_SIZE, batch_size=16, augment=False,
                 shuffle=False, seed=0, arrays=None, progress=True, augmentation=None, **kwargs):
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.pairs = list(pairs)
        self.image_size = tuple(image_size)
        self.batch_size = batch_size
        self.augment = augment
        self.augmentation = dict(augmentation or {})
        if augment:  # bad options fail here, not in a worker thread
            build_augmentation(self.image_size, 0, **self.augmentation)
        self._per_thread = threading.local()  # one pipeline per worker thread, built on first use
        self.shuffle = shuffle
        self.seed = seed
        self.images, self.masks = arrays if arrays is not None else load_arrays(
            self.pairs, self.image_size, progress)
        self.epoch = 0
        self.order = self._order_for_epoch(0)

    def _order_for_epoch(self, epoch):
        if not self.shuffle:
            return np.arange(len(self.pairs))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))

    def __len__(self):
        return math.ceil(len(self.pairs) / self.batch_size)

    def batch_ids(self, index):
        """Returns the sample indices of batch `index` in the current epoch."""
        return self.order[index * self.batch_size : (index + 1) * self.batch_size]

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches")
        ids = self.batch_ids(index)
        images, masks = self.images[ids], self.masks[ids]
        if self.augment:
            # Reseeded per sample, so a sample's augmentation depends on (seed, epoch, batch, position)
            # and not on which thread makes it; threads never share a pipeline's random state.
            transform = self._transform()
            out = []
            for position, (image, mask) in enumerate(zip(images, masks)):
                rng = np.random.default_rng([self.seed, self.epoch, index, position])
                transform.set_random_state(rng, random.Random(int(rng.integers(2**31))))
                out.append(transform(image=image, mask=mask))
            images = np.stack([o["image"] for o in out])
            masks = np.stack([o["mask"] for o in out])
        return images.astype(np.float32) / 255.0, masks[..., None].astype(np.float32)

    def _transform(self):
        transform = getattr(self._per_thread, "transform", None)
        if transform is None:
            transform = self._per_thread.transform = build_augmentation(self.image_size, 0, **self.augmentation)
        return transform

    def set_epoch(self, epoch):
        """Moves to epoch `epoch` (its order and augmentation), e.g. when resuming a run."""
        self.epoch = epoch
        self.order = self._order_for_epoch(epoch)

    def on_epoch_end(self):
        self.set_epoch(self.epoch + 1)


def load_split(path):
    """Reads a `split.json` written by `save_json(split_pairs(...))`.

    Raises:
        InputError: the file is missing or not a split.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            split = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: cannot read the split ({error})") from None
    if not isinstance(split, dict) or not {"train", "val", "test"} <= set(split):
        raise InputError(f"{path}: not a split file (needs train, val and test lists)")
    return split


def preview_batch(pairs, path, image_size=DEFAULT_IMAGE_SIZE, batch_size=8, augment=True, seed=0):
    """Saves a figure of one training batch: the first `batch_size` training pairs of the seeded split.

    Returns:
        The split (`split_pairs(pairs, seed=seed)`).
    """
    import plots

    split = split_pairs(pairs, seed=seed)
    shown = select_pairs(pairs, split["train"])[:batch_size]
    dataset = LesionDataset(shown, image_size, len(shown), augment=augment, shuffle=False, seed=seed, progress=False)
    images, masks = dataset[0]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    plots.save_batch_figure(images, masks[..., 0], path, titles=[pair.id for pair in shown])
    return split


def main(argv=None):
    parser = cliargs.ArgumentParser(
        description="List image/mask pairs, show the split sizes and save a figure of one batch.")
    cliargs.add_data_arguments(parser)
    parser.add_argument("--image-size", type=int_range(1, 4096), nargs=2, default=list(DEFAULT_IMAGE_SIZE),
                        metavar=("H", "W"), help="batch image size (default: %(default)s)")
    parser.add_argument("--batch-size", type=int_range(1, 64), default=8, help="images in the figure (default: %(default)s)")
    parser.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0, help="split and augmentation seed (default: %(default)s)")
    parser.add_argument("--no-augment", action="store_true", help="show the batch without augmentation")
    parser.add_argument("--out", default=os.path.join("runs", "batch.png"),
                        help="where to save the batch figure (default: %(default)s)")
    args = parser.parse_args(argv)

    images_dir, masks_dir = resolve_folders(args.data, args.images, args.masks)
    pairs = find_pairs(images_dir, masks_dir, args.skip_unpaired)
    print(f"{len(pairs)} pairs in {images_dir} + {masks_dir}")
    for pair in pairs[:5]:
        print(f"  {pair.id}: {os.path.basename(pair.image_path)} + {os.path.basename(pair.mask_path)}")
    if len(pairs) > 5:
        print(f"  ... and {len(pairs) - 5} more")
    split = preview_batch(pairs, args.out, args.image_size, args.batch_size, not args.no_augment, args.seed)
    print("split (seed {}): train {}, val {}, test {}".format(
        args.seed, len(split["train"]), len(split["val"]), len(split["test"])))
    print(f"saved one {'augmented ' if not args.no_augment else ''}batch to {args.out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
