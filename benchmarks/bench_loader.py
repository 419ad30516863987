"""Loader benchmark: building the decoded-image cache from full-size JPEGs, then feeding batches.

    python -m benchmarks.bench_loader                        # 2,594 synthetic 4000x3000 pairs
    python -m benchmarks.bench_loader --count 200 --keep     # smaller, keep the files

Writes `--count` synthetic pairs at `--full-size` (JPEG images, PNG masks, like the ISIC 2018
downloads; the pixels of `--distinct` different lesions, each file written separately), then measures:
decoding every pair once without a cache (what each epoch would cost without one), building the cache,
opening it again, and the images per second that `LesionDataset` delivers from it with augmentation,
in one thread and in `--workers` threads. Compare the last figure with training images per second
from `benchmarks/bench_compute.py`.
"""

import argparse
import concurrent.futures
import io
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lesion_unet import cache
from lesion_unet import data as dataGenerator
from lesion_unet import runfolder
from lesion_unet import synthetic


def write_full_size_pairs(folder, count, full_size, distinct, seed):
    """Writes `count` pairs of `full_size` (H, W) in the ISIC layout; returns the seconds taken."""
    started = time.perf_counter()
    images_dir, masks_dir = os.path.join(folder, "images"), os.path.join(folder, "masks")
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(masks_dir, exist_ok=True)
    height, width = full_size
    encoded = []
    for index in tqdm(range(distinct), desc="Encoding lesions", unit="img"):
        image, mask = synthetic.make_sample(seed + index, (height // 8, width // 8))
        big = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC), dtype=np.int16)
        # Sensor-like grain, so the JPEGs have the size and decoding cost of photographs.
        grain = np.random.default_rng(seed + index).normal(0, 6, big.shape).astype(np.int16)
        jpeg, png = io.BytesIO(), io.BytesIO()
        Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8)).save(jpeg, "JPEG", quality=90)
        Image.fromarray(mask * 255).resize((width, height), Image.NEAREST).save(png, "PNG")
        encoded.append((jpeg.getvalue(), png.getvalue()))
    for index in tqdm(range(count), desc="Writing pairs", unit="pair"):
        jpeg, png = encoded[index % distinct]
        name = f"ISIC_{index:07d}"
        with open(os.path.join(images_dir, name + ".jpg"), "wb") as handle:
            handle.write(jpeg)
        with open(os.path.join(masks_dir, name + "_segmentation.png"), "wb") as handle:
            handle.write(png)
    return time.perf_counter() - started, len(encoded[0][0]), len(encoded[0][1])


def batches_per_second(dataset, workers):
    """Returns images per second over one pass through every batch of `dataset`."""
    dataset[0]  # the first call imports and sets up the augmentation; not part of the rate
    started = time.perf_counter()
    images = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for batch_images, _ in pool.map(dataset.__getitem__, range(len(dataset))):
            images += len(batch_images)
    return images / (time.perf_counter() - started)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2594, help="pairs to write (default: %(default)s, ISIC 2018)")
    parser.add_argument("--full-size", type=int, nargs=2, default=[3000, 4000], metavar=("H", "W"),
                        help="size of the written images (default: %(default)s)")
    parser.add_argument("--distinct", type=int, default=16, help="different lesions among them (default: %(default)s)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"),
                        help="training size to cache (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="loader threads (default: %(default)s)")
    parser.add_argument("--uncached-sample", type=int, default=100,
                        help="pairs decoded without the cache to time it (default: %(default)s)")
    parser.add_argument("--dir", default=None, help="working folder (default: a temporary one, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--report", default=None, help="also write the results as JSON here (default: none)")
    args = parser.parse_args(argv)

    work = args.dir or tempfile.mkdtemp(prefix="lesion-loader-bench-")
    results = {"count": args.count, "full_size": args.full_size, "image_size": args.image_size,
               "cpu_count": os.cpu_count()}
    try:
        data_dir, cache_dir = os.path.join(work, "data"), os.path.join(work, "cache")
        if not os.path.isdir(os.path.join(data_dir, "images")):
            seconds, jpeg_bytes, png_bytes = write_full_size_pairs(data_dir, args.count, tuple(args.full_size),
                                                                   args.distinct, seed=0)
            results.update(write_s=seconds, jpeg_bytes=jpeg_bytes, png_bytes=png_bytes)
        pairs = dataGenerator.find_pairs(os.path.join(data_dir, "images"), os.path.join(data_dir, "masks"))
        image_size = tuple(args.image_size)

        sample = pairs[: args.uncached_sample]
        started = time.perf_counter()
        dataGenerator.load_arrays(sample, image_size, progress=False)
        results["uncached_img_per_s"] = len(sample) / (time.perf_counter() - started)

        shutil.rmtree(cache_dir, ignore_errors=True)
        started = time.perf_counter()
        images, masks, status = cache.cached_arrays(pairs, image_size, cache_dir)
        results["cache_build_s"] = time.perf_counter() - started
        if status != "built":
            raise RuntimeError(f"expected a fresh cache build, got {status}")
        started = time.perf_counter()
        images, masks, status = cache.cached_arrays(pairs, image_size, cache_dir, progress=False)
        images, masks = np.array(images), np.array(masks)
        results["cache_open_s"] = time.perf_counter() - started

        dataset = dataGenerator.LesionDataset(pairs, image_size, args.batch_size, augment=True, shuffle=True,
                                              arrays=(images, masks), progress=False)
        results["loader_img_per_s_1_thread"] = batches_per_second(dataset, 1)
        dataset.on_epoch_end()
        results[f"loader_img_per_s_{args.workers}_threads"] = batches_per_second(dataset, args.workers)
        plain = dataGenerator.LesionDataset(pairs, image_size, args.batch_size, augment=False, shuffle=True,
                                            arrays=(images, masks), progress=False)
        results["loader_img_per_s_no_augmentation"] = batches_per_second(plain, 1)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)

    for key, value in results.items():
        print(f"{key:36s} {value:.2f}" if isinstance(value, float) else f"{key:36s} {value}")
    if args.report:
        runfolder.save_json(results, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
