"""Checks on the real ISIC 2017 copy in ../shared (skipped when it is absent)."""

import os

import numpy as np
import pytest

from conftest import NO_REAL_DATA, REAL_DATA
from lesion_unet.data import find_pairs, image_size_of, read_mask, resolve_folders

pytestmark = pytest.mark.skipif(not os.path.isdir(REAL_DATA), reason=NO_REAL_DATA)


def test_real_data_pairs_and_masks():
    pairs = find_pairs(*resolve_folders(REAL_DATA))
    assert len(pairs) == 2148
    for pair in pairs[::300]:
        assert image_size_of(pair.image_path) == (192, 256)
        mask = read_mask(pair.mask_path)
        assert mask.shape == (192, 256) and 0 < mask.mean() < 1
        assert set(np.unique(mask)) == {0, 1}
