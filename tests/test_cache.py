"""The decoded-image cache: same arrays as decoding, reused, rebuilt when files change, never half-trusted."""

import os
import subprocess
import sys

import numpy as np
import pytest

from lesion_unet import cache
from lesion_unet import data as dataGenerator
from conftest import TINY, run_main
from lesion_unet.data import InputError


@pytest.fixture()
def pairs(synthetic_dir):
    return dataGenerator.find_pairs(os.path.join(synthetic_dir, "images"), os.path.join(synthetic_dir, "masks"))


def test_cache_holds_exactly_what_decoding_gives_and_is_reused(pairs, tmp_path):
    expected_images, expected_masks = dataGenerator.load_arrays(pairs, (24, 40), progress=False)
    images, masks, status = cache.cached_arrays(pairs, (24, 40), str(tmp_path), progress=False)
    assert status == "built"
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(masks, expected_masks)
    images, masks, status = cache.cached_arrays(pairs, (24, 40), str(tmp_path), progress=False)
    assert status == "reused" and isinstance(images, np.memmap) and not images.flags.writeable
    np.testing.assert_array_equal(images, expected_images)
    assert len(os.listdir(tmp_path)) == 1


def test_a_changed_file_or_size_or_list_makes_a_new_entry(pairs, tmp_path):
    first = cache.entry_dir(pairs, (16, 16), str(tmp_path))
    assert cache.entry_dir(pairs, (16, 16), str(tmp_path)) == first
    assert cache.entry_dir(pairs, (16, 24), str(tmp_path)) != first
    assert cache.entry_dir(pairs[:-1], (16, 16), str(tmp_path)) != first
    cache.cached_arrays(pairs[:3], (16, 16), str(tmp_path), progress=False)
    stat = os.stat(pairs[0].mask_path)
    try:
        os.utime(pairs[0].mask_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert cache.entry_dir(pairs, (16, 16), str(tmp_path)) != first
        assert cache.cached_arrays(pairs[:3], (16, 16), str(tmp_path), progress=False)[2] == "built"
    finally:
        os.utime(pairs[0].mask_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_an_abandoned_build_is_ignored_and_removed(pairs, tmp_path):
    final = cache.entry_dir(pairs[:4], (16, 16), str(tmp_path))
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    abandoned = f"{final}.tmp{finished.stdout.strip()}"  # the pid of a process that has ended
    os.makedirs(abandoned)
    np.save(os.path.join(abandoned, "images.npy"), np.zeros((4, 16, 16, 3), np.uint8))
    images, _, status = cache.cached_arrays(pairs[:4], (16, 16), str(tmp_path), progress=False)
    assert status == "built" and images.any()
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(final)]


def test_a_failed_build_leaves_nothing(pairs, tmp_path):
    corrupt = tmp_path / "broken_segmentation.png"
    corrupt.write_bytes(b"\x89PNG not really")
    broken = dataGenerator.Pair("broken", pairs[0].image_path, str(corrupt))
    with pytest.raises(InputError, match="broken_segmentation.png"):
        cache.cached_arrays([*pairs[:3], broken], (16, 16), str(tmp_path / "cache"), progress=False)
    assert not os.path.exists(tmp_path / "cache") or not os.listdir(tmp_path / "cache")


def test_unusable_cache_folder_names_it_and_the_way_out(pairs, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="a_file/cache.*--no-cache"):
        cache.cached_arrays(pairs[:2], (16, 16), str(blocker / "cache"), progress=False)


def test_train_builds_then_reuses_the_cache(synthetic_dir, tmp_path):
    common = ["train.py", "--data", synthetic_dir, "--epochs", "1", *TINY, "--verbose", "2",
              "--cache-dir", str(tmp_path / "cache")]
    first = run_main(*common, "--out", str(tmp_path / "one"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "24 decoded and cached in" in first.stdout
    second = run_main(*common, "--out", str(tmp_path / "two"), "--seed", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "24 read from the cache in" in second.stdout
    assert len(os.listdir(tmp_path / "cache")) == 1
