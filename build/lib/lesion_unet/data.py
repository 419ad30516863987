"""Pairs lesion images with their masks, splits them, and feeds batches to Keras.

Pairing, splitting and reading live in `lesion_files.py` (they need no Keras) and are available here
under the same names; this module adds decoding whole data sets, augmentation and the
`keras.utils.PyDataset` that feeds training. Images are scaled to [0, 1]; masks stay strictly {0, 1}.

`dataGenerator.py` at the project's root is this module's face: the same names, and
`python dataGenerator.py --data DIR` lists the pairs, shows the split sizes and saves a figure of one
augmented training batch.
"""

import concurrent.futures
import functools
import logging
import math
import os
import random
import sys
import threading

from lesion_unet.errors import InputError
from lesion_unet.settings import COLOR_AUGMENTATIONS, DEFAULT_IMAGE_SIZE, DEFAULT_ZOOM


import keras
import numpy as np
from tqdm.auto import tqdm

from lesion_unet import lesion_files
from lesion_unet.lesion_files import (  # noqa: F401 (this module's data API: the training code and notebooks use it here)
    Pair, find_pairs, image_size_of, kfold_split, listed, load_split, read_image, read_mask, resolve_folders,
    select_pairs, split_pairs)

log = logging.getLogger("lesion_unet.data")  # notes for the user; errors.run_cli shows them

def _load_pair(pair, image_size):
    image_shape, mask_shape = image_size_of(pair.image_path), image_size_of(pair.mask_path)
    if image_shape != mask_shape:
        raise InputError(
            f"{pair.mask_path}: mask is {mask_shape[1]}x{mask_shape[0]} but its image "
            f"{pair.image_path} is {image_shape[1]}x{image_shape[0]} (width x height); "
            "masks must match their images"
        )
    return (read_image(pair.image_path, image_size),
            *read_mask(pair.mask_path, image_size, return_format=True))


def load_arrays(pairs, image_size=DEFAULT_IMAGE_SIZE, progress=True, out=None):
    """Decodes and resizes every pair once, in parallel threads.

    Args:
        pairs: list of `Pair`.
        image_size: `(height, width)` to resize to.
        progress: show a progress bar.
        out: optional `(images, masks)` arrays to fill (e.g. the memory maps of `cache.py`).

    Returns:
        `(images, masks)`: `uint8` arrays of shapes `(n, h, w, 3)` and `(n, h, w)`, masks in {0, 1}.
        Masks of 0 and 1, and masks of other values than 0 and 255 (binarised at 128), are counted
        in a log note (`read_mask` has the rule).
    """
    height, width = image_size
    if out is None:
        out = (np.empty((len(pairs), height, width, 3), dtype=np.uint8),
               np.empty((len(pairs), height, width), dtype=np.uint8))
    images, masks = out
    formats = []
    # Pillow releases the GIL while it decodes and resizes, so threads use every core.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        loaded = pool.map(lambda pair: _load_pair(pair, image_size), pairs)
        for index, (image, mask, found) in enumerate(
            tqdm(loaded, total=len(pairs), desc="Decoding", unit="img", disable=not progress,
                 leave=False)
        ):
            images[index], masks[index] = image, mask
            formats.append(found)
    for note in lesion_files.mask_format_notes(formats):
        log.info("%s", note)
    return images, masks


@functools.cache
def _albumentations():
    # albumentations otherwise looks for a newer release over the network on its first import.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


HAIR_COUNT = (4, 24)  # hairs drawn on an image by the hair augmentation: from a few to dense hair
HAIR_PROBABILITY = 0.5


def draw_hairs(image, rng, count):
    """Draws `count` thin, dark, gently curved hairs (quadratic Bezier curves, black to dark brown)
    across a copy of an image. Hair is where the shipped model loses most: hairs crossing a lesion
    split its outline, and hairs on skin are taken for lesion.

    Args:
        image: `uint8` RGB array `(h, w, 3)`.
        rng: a `numpy.random.Generator`, the source of every random choice.
        count: hairs to draw.

    Returns:
        The new `uint8` image. A lesion mask does not change: the experts outline the lesion under hair.
    """
    import cv2

    height, width = image.shape[:2]
    scale = max(height, width) / 256.0  # thickness set for the ISIC copy's 256x192 images
    out = np.ascontiguousarray(image).copy()
    steps = np.linspace(0.0, 1.0, 24)[:, None]
    for _ in range(count):
        start = rng.uniform((0, 0), (width, height))
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.2, 0.6) * max(height, width)
        end = start + length * np.array([np.cos(angle), np.sin(angle)])
        bend = (start + end) / 2 + rng.normal(0, 0.15 * length, 2)  # the curve's control point
        curve = (1 - steps) ** 2 * start + 2 * (1 - steps) * steps * bend + steps**2 * end
        darkness = rng.uniform(15, 70)
        colour = (int(darkness), int(0.8 * darkness), int(0.65 * darkness))
        thickness = max(1, round(rng.uniform(0.8, 1.8) * scale))
        cv2.polylines(out, [curve.round().astype(np.int32)], False, colour, thickness, cv2.LINE_AA)
    return out


@functools.cache
def _hair_transform_class():
    """`DrawHairs`, an albumentations image-only transform around `draw_hairs`, drawing from the
    pipeline's own seeded generator (made on first use: albumentations is imported lazily)."""
    A = _albumentations()

    class DrawHairs(A.ImageOnlyTransform):
        def apply(self, img, **params):
            return draw_hairs(img, self.random_generator, int(self.random_generator.integers(*HAIR_COUNT,
                                                                                             endpoint=True)))

    return DrawHairs


def build_augmentation(image_size, seed, zoom=DEFAULT_ZOOM, color="light", hair=False):
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
        hair: draw dark hairs (`draw_hairs`, `HAIR_COUNT` of them) on half of the images, before
            the colour changes; the mask is left as it is.

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
    if hair:
        photometric.insert(0, _hair_transform_class()(p=HAIR_PROBABILITY))
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
        augmentation: keyword arguments of `build_augmentation` (`zoom`, `color`, `hair`), or `None` for its
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


def preview_batch(pairs, path, image_size=DEFAULT_IMAGE_SIZE, batch_size=8, augment=True, seed=0):
    """Saves a figure of one training batch: the first `batch_size` training pairs of the seeded split.

    Returns:
        The split (`split_pairs(pairs, seed=seed)`).
    """
    from lesion_unet import plots

    split = split_pairs(pairs, seed=seed)
    shown = select_pairs(pairs, split["train"])[:batch_size]
    dataset = LesionDataset(shown, image_size, len(shown), augment=augment, shuffle=False, seed=seed, progress=False)
    images, masks = dataset[0]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    plots.save_batch_figure(images, masks[..., 0], path, titles=[pair.id for pair in shown])
    return split

