"""A synthetic dermoscopy-like lesion data set, generated deterministically from a seed.

It is the embedded default of `train.py` (the demo) and the data of the fast tests. It is never
used for reported accuracy: the lesions are simple shapes, far easier than real ones.

Each sample is a skin-toned, textured background with one irregular, darker lesion and a few hairs
drawn across it. The mask marks the lesion (hairs over the lesion stay lesion, as in ISIC masks).
Files follow the ISIC layout: `images/<id>.jpg` and `masks/<id>_segmentation.png`.
"""

import os
import sys

import numpy as np
from PIL import Image
from skimage import draw, filters
from tqdm.auto import tqdm

from lesion_unet import cliargs
from lesion_unet.errors import InputError, run_cli
from lesion_unet.runfolder import atomic_write
from lesion_unet.settings import MASK_SUFFIX, image_id_of

SAMPLE_PREFIX = "synthetic_"

DEFAULT_SHAPE = (192, 256)  # (height, width), the ISIC 2017 copy's aspect ratio


def _smooth_noise(rng, shape, sigma):
    """Returns zero-mean, unit-scale noise smoothed at `sigma` pixels."""
    noise = filters.gaussian(rng.standard_normal(shape), sigma=sigma)
    return noise / (np.abs(noise).max() + 1e-8)


def _lesion_mask(rng, shape):
    """Returns a boolean mask of one irregular blob: an ellipse with a wavy radius."""
    height, width = shape
    center_y = rng.uniform(0.35, 0.65) * height
    center_x = rng.uniform(0.35, 0.65) * width
    radius = rng.uniform(0.12, 0.32) * min(height, width)
    aspect = rng.uniform(0.65, 1.35)
    angles = np.linspace(0.0, 2.0 * np.pi, 180, endpoint=False)
    wobble = np.ones_like(angles)
    for harmonic in range(2, 7):
        wobble += rng.uniform(0.0, 0.35 / harmonic) * np.cos(
            harmonic * angles + rng.uniform(0.0, 2.0 * np.pi)
        )
    rows = center_y + radius * wobble * np.sin(angles)
    cols = center_x + radius * aspect * wobble * np.cos(angles)
    mask = np.zeros(shape, dtype=bool)
    rr, cc = draw.polygon(rows, cols, shape=shape)
    mask[rr, cc] = True
    return mask


def make_sample(seed, shape=DEFAULT_SHAPE):
    """Draws one synthetic image and its lesion mask.

    Args:
        seed: integer; the same seed always gives the same sample.
        shape: `(height, width)` of the sample.

    Returns:
        `(image, mask)`: a `uint8` RGB array of `shape + (3,)` and a `uint8` array of `shape`
        holding 0 (skin) and 255 (lesion).
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    skin = np.array([rng.uniform(200, 235), rng.uniform(150, 185), rng.uniform(125, 160)])
    texture = _smooth_noise(rng, shape, sigma=3.0)[..., None] * 12.0
    vignette_y, vignette_x = np.meshgrid(
        np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij"
    )
    vignette = (1.0 - 0.25 * (vignette_x**2 + vignette_y**2))[..., None]
    image = (skin + texture) * vignette

    mask = _lesion_mask(rng, shape)
    lesion_colour = np.array(
        [rng.uniform(70, 140), rng.uniform(40, 90), rng.uniform(25, 70)]
    )
    lesion_texture = _smooth_noise(rng, shape, sigma=2.0)[..., None] * 25.0
    # A soft edge, as real lesions fade into the skin over a few pixels.
    alpha = filters.gaussian(mask.astype(float), sigma=1.5)[..., None]
    image = image * (1.0 - alpha) + (lesion_colour + lesion_texture) * alpha

    for _ in range(rng.integers(0, 5)):
        control = rng.uniform(0, 1, size=(3, 2)) * [height, width]
        rr, cc = draw.bezier_curve(
            *np.round(control[0]).astype(int),
            *np.round(control[1]).astype(int),
            *np.round(control[2]).astype(int),
            weight=rng.uniform(0.5, 2.0),
            shape=shape,
        )
        image[rr, cc] = rng.uniform(20, 60)

    image += rng.normal(0.0, 3.0, size=image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image, mask.astype(np.uint8) * 255


def _check_same_recipe(masks_dir, num_samples, shape, seed):
    """Raises InputError when `masks_dir` already holds a synthetic mask that this `shape` and `seed`
    would not draw: skipping it would leave another data set in place while saying it was written."""
    for index in range(num_samples):
        path = os.path.join(masks_dir, f"{SAMPLE_PREFIX}{index:04d}{MASK_SUFFIX}")
        if not os.path.isfile(path):
            continue
        expected = make_sample(seed * 1_000_003 + index, shape)[1]
        try:
            with Image.open(path) as mask:
                found = np.asarray(mask)
        except OSError:
            found = None  # a damaged file: not this recipe's
        if found is None or found.shape != expected.shape or not np.array_equal(found, expected):
            size = f"{found.shape[1]}x{found.shape[0]}" if found is not None and found.ndim >= 2 else "unreadable"
            raise InputError(f"{masks_dir}: holds synthetic pairs drawn with another --shape or --seed "
                             f"({os.path.basename(path)} is {size}, not the {shape[1]}x{shape[0]} mask of seed "
                             f"{seed}); choose another --out, or delete its images/ and masks/ first")
        return  # one sample decides: the rest were written by the same call, or by this recipe


def write_dataset(out_dir, num_samples=200, shape=DEFAULT_SHAPE, seed=0, progress=False):
    """Writes a synthetic data set in the ISIC layout, skipping samples already on disk.

    Args:
        out_dir: folder to write `images/` and `masks/` into.
        num_samples: how many image/mask pairs.
        shape: `(height, width)` of every sample.
        seed: base seed; sample `i` uses `seed * 1_000_003 + i`.
        progress: show a progress bar.

    Returns:
        `out_dir`.

    Raises:
        InputError: `out_dir` already holds images or masks that are not synthetic (a real data
            set, which synthetic pairs would silently join).
    """
    images_dir = os.path.join(out_dir, "images")
    masks_dir = os.path.join(out_dir, "masks")
    for folder in (images_dir, masks_dir):
        others = sorted(name for name in (os.listdir(folder) if os.path.isdir(folder) else ())
                        if image_id_of(name) is not None and not name.startswith(SAMPLE_PREFIX))
        if others:
            raise InputError(f"{folder}: holds {len(others)} image(s) that are not synthetic (e.g. {others[0]}); "
                             "synthetic pairs would join that data set: choose another --out")
    _check_same_recipe(masks_dir, num_samples, shape, seed)
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(masks_dir, exist_ok=True)
    for index in tqdm(range(num_samples), desc="synthetic pairs", unit="pair", disable=not progress):
        sample_id = f"{SAMPLE_PREFIX}{index:04d}"
        image_path = os.path.join(images_dir, sample_id + ".jpg")
        mask_path = os.path.join(masks_dir, sample_id + MASK_SUFFIX)
        if os.path.exists(image_path) and os.path.exists(mask_path):
            continue
        image, mask = make_sample(seed * 1_000_003 + index, shape)
        for array, path, fmt in ((mask, mask_path, "PNG"), (image, image_path, "JPEG")):
            with atomic_write(path) as tmp_path:
                Image.fromarray(array).save(tmp_path, format=fmt, quality=95)
    return out_dir


def build_parser():
    parser = cliargs.ArgumentParser(
        description="Write a synthetic lesion data set (images/ and masks/, ISIC layout)."
    )
    parser.add_argument("--out", default="data/synthetic", help="output folder (default: %(default)s)")
    parser.add_argument("--num", type=cliargs.int_range(1, 100_000), default=200, help="number of pairs (default: %(default)s)")
    parser.add_argument(
        "--shape", type=cliargs.int_range(16, 8192), nargs=2, default=list(DEFAULT_SHAPE), metavar=("H", "W"),
        help="image height and width in pixels, 16 to 8192 (default: %(default)s)",
    )
    parser.add_argument("--seed", type=cliargs.int_range(0, 2**32 - 1), default=0,
                        help="random seed (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    kept = sum(os.path.isfile(os.path.join(args.out, "masks", f"{SAMPLE_PREFIX}{index:04d}{MASK_SUFFIX}"))
               for index in range(args.num))
    write_dataset(args.out, args.num, tuple(args.shape), args.seed, progress=not args.no_progress)
    print(f"wrote {args.num - kept} synthetic pairs to {args.out}/images and {args.out}/masks"
          + (f" ({kept} of the {args.num} were there already, from the same --shape and --seed)" if kept else ""))
