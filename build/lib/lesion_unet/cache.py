"""A disk cache of decoded, resized images and masks, one entry per data set and training size.

Decoding a 4000x3000 JPEG and its mask takes about 0.1 s, as long as training on a 128x128 image takes
on a laptop CPU, so decoding every epoch would set the pace. The first run decodes each pair once (JPEG
draft mode, threads, a progress bar) into two `.npy` files; later runs memory-map them in well under a
second. Augmentation still happens on the fly, per batch.

An entry's key covers the training size and every pair's id, paths, byte sizes and modification
times, so adding, replacing, renaming or touching a file makes a new entry; stale entries are never
read. An entry is built under a temporary name and renamed when complete, so a killed build leaves
nothing that a later run would trust.
"""

import hashlib
import json
import os
import shutil
import sys

import numpy as np

from lesion_unet import data as dataGenerator
from lesion_unet import runfolder
from lesion_unet.errors import InputError

CACHE_FORMAT = 2  # 2: masks of only 0 and 1 are read as lesion = 1 (they were empty)
_IMAGES, _MASKS, _META = "images.npy", "masks.npy", "meta.json"


def cache_key(pairs, image_size):
    """Returns a hex digest naming the cache entry of `pairs` at `image_size`.

    Args:
        pairs: list of `dataGenerator.Pair`, in the order their arrays will be stored.
        image_size: `(height, width)`.

    Raises:
        InputError: a file has gone missing.
    """
    digest = hashlib.sha256(json.dumps([CACHE_FORMAT, list(image_size)]).encode())
    for pair in pairs:
        fields = [pair.id]
        for path in (pair.image_path, pair.mask_path):
            try:
                stat = os.stat(path)
            except OSError as error:
                raise InputError(f"{path}: cannot read ({error.strerror})") from None
            fields += [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]
        digest.update(json.dumps(fields).encode())
    return digest.hexdigest()[:20]


def entry_dir(pairs, image_size, cache_dir):
    """Returns the folder that holds (or will hold) the cache entry of `pairs` at `image_size`."""
    height, width = image_size
    return os.path.join(cache_dir, f"{height}x{width}-{len(pairs)}-{cache_key(pairs, image_size)}")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned_builds(final_dir):
    """Removes `<entry>.tmp<pid>` folders whose building process no longer runs."""
    parent, name = os.path.split(final_dir)
    for other in os.listdir(parent):
        suffix = other[len(name) + len(".tmp"):]
        if other.startswith(name + ".tmp") and suffix.isdigit() and not _pid_alive(int(suffix)):
            shutil.rmtree(os.path.join(parent, other), ignore_errors=True)


def _open_entry(folder, count, image_size):
    images = np.load(os.path.join(folder, _IMAGES), mmap_mode="r")
    masks = np.load(os.path.join(folder, _MASKS), mmap_mode="r")
    if images.shape != (count, *image_size, 3) or masks.shape != (count, *image_size):
        raise ValueError(f"{folder}: cache entry has shapes {images.shape} and {masks.shape}")
    return images, masks


def cached_arrays(pairs, image_size, cache_dir=None, progress=True):
    """Returns the decoded arrays of `pairs`, from the cache when it holds them, building it if not.

    Args:
        pairs: list of `dataGenerator.Pair`.
        image_size: `(height, width)` to resize to.
        cache_dir: the cache folder (created if needed), or `None` to decode into memory without
            caching.
        progress: show a progress bar while decoding.

    Returns:
        `(images, masks, status)`: read-only memory-mapped `uint8` arrays of shapes `(n, h, w, 3)` and
        `(n, h, w)` (in-memory arrays without a cache), and one of `"reused"`, `"built"`, `"off"`.

    Raises:
        InputError: a file is missing or cannot be decoded.
    """
    image_size = tuple(int(side) for side in image_size)
    if cache_dir is None:
        return (*dataGenerator.load_arrays(pairs, image_size, progress), "off")
    final_dir = entry_dir(pairs, image_size, cache_dir)
    if os.path.isfile(os.path.join(final_dir, _META)):  # written last: the entry is complete
        try:
            return (*_open_entry(final_dir, len(pairs), image_size), "reused")
        except (OSError, ValueError) as error:  # damaged since (truncated, deleted or replaced files)
            print(f"note: the cache entry {final_dir} is damaged ({type(error).__name__}); rebuilding it",
                  file=sys.stderr)
            shutil.rmtree(final_dir, ignore_errors=True)

    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"{cache_dir}: cannot create the cache folder ({error.strerror}); pass another --cache-dir "
            "or --no-cache") from None
    _remove_abandoned_builds(final_dir)
    build_dir = f"{final_dir}.tmp{os.getpid()}"
    shutil.rmtree(build_dir, ignore_errors=True)
    os.makedirs(build_dir)
    try:
        height, width = image_size
        images = np.lib.format.open_memmap(os.path.join(build_dir, _IMAGES), mode="w+", dtype=np.uint8,
                                           shape=(len(pairs), height, width, 3))
        masks = np.lib.format.open_memmap(os.path.join(build_dir, _MASKS), mode="w+", dtype=np.uint8,
                                          shape=(len(pairs), height, width))
        dataGenerator.load_arrays(pairs, image_size, progress, out=(images, masks))
        images.flush()
        masks.flush()
        del images, masks
        meta = {"format": CACHE_FORMAT, "image_size": list(image_size), "count": len(pairs),
                "first_id": pairs[0].id if pairs else None, "last_id": pairs[-1].id if pairs else None}
        runfolder.save_json(meta, os.path.join(build_dir, _META))
        try:
            os.replace(build_dir, final_dir)
        except OSError:  # another process finished the same entry first: use theirs
            shutil.rmtree(build_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    return (*_open_entry(final_dir, len(pairs), image_size), "built")
