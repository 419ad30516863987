"""Pairing, splitting, reading and batching in dataGenerator.py."""

import os

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from lesion_unet import data as dataGenerator
from lesion_unet import lesion_files
from lesion_unet.data import InputError, LesionDataset, find_pairs, read_image, read_mask, split_pairs


def _write_pair(root, sample_id, ext=".jpg", shape=(20, 30), mask_shape=None, value=255):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    image = np.full((*shape, 3), 120, np.uint8)
    Image.fromarray(image).save(os.path.join(root, "images", sample_id + ext))
    mask = np.zeros(mask_shape or shape, np.uint8)
    mask[: mask.shape[0] // 2] = value
    Image.fromarray(mask).save(os.path.join(root, "masks", sample_id + "_segmentation.png"))


def test_pairs_by_id_not_by_position(tmp_path):
    # "a.jpg" sorts before "a0.jpg", but "a0_segmentation.png" before "a_segmentation.png": pairing
    # by position in the sorted listings would swap them.
    for sample_id in ("a0", "a", "b"):
        _write_pair(str(tmp_path), sample_id)
    assert sorted(os.listdir(tmp_path / "images"))[:2] == ["a.jpg", "a0.jpg"]
    assert sorted(os.listdir(tmp_path / "masks"))[:2] == ["a0_segmentation.png", "a_segmentation.png"]
    pairs = find_pairs(str(tmp_path / "images"), str(tmp_path / "masks"))
    assert [p.id for p in pairs] == ["a", "a0", "b"]
    for pair in pairs:
        assert os.path.basename(pair.image_path) == pair.id + ".jpg"
        assert os.path.basename(pair.mask_path) == pair.id + "_segmentation.png"


def test_upper_case_extensions_and_non_images_ignored(tmp_path, caplog):
    _write_pair(str(tmp_path), "x1", ext=".JPG")
    _write_pair(str(tmp_path), "x2", ext=".png")
    for name in ("LICENSE.txt", "ATTRIBUTION.txt", ".DS_Store", "Thumbs.db"):
        (tmp_path / "images" / name).write_text("not an image")
    with caplog.at_level("INFO"):
        pairs = find_pairs(str(tmp_path / "images"), str(tmp_path / "masks"))
    assert [p.id for p in pairs] == ["x1", "x2"]
    assert "ignored 4 file(s)" in caplog.text


def test_orphans_are_listed(tmp_path):
    for sample_id in ("a", "b"):
        _write_pair(str(tmp_path), sample_id)
    _write_pair(str(tmp_path), "only_image")
    os.remove(tmp_path / "masks" / "only_image_segmentation.png")
    _write_pair(str(tmp_path), "only_mask")
    os.remove(tmp_path / "images" / "only_mask.jpg")
    with pytest.raises(InputError) as error:
        find_pairs(str(tmp_path / "images"), str(tmp_path / "masks"))
    message = str(error.value)
    assert "only_image" in message and "only_mask" in message and "--skip-unpaired" in message
    pairs = find_pairs(str(tmp_path / "images"), str(tmp_path / "masks"), skip_unpaired=True)
    assert [p.id for p in pairs] == ["a", "b"]


def test_orphan_list_is_capped_at_ten(tmp_path):
    _write_pair(str(tmp_path), "paired")
    for index in range(13):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / f"lonely{index:02d}.png")
    with pytest.raises(InputError, match="13 image\\(s\\).*and 3 more"):
        find_pairs(str(tmp_path / "images"), str(tmp_path / "masks"))


def test_resolve_folders_errors(tmp_path):
    with pytest.raises(InputError, match="images"):
        dataGenerator.resolve_folders(str(tmp_path))
    with pytest.raises(InputError, match="not found"):
        dataGenerator.resolve_folders(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="either"):
        dataGenerator.resolve_folders(str(tmp_path), images=str(tmp_path))


def test_split_is_seeded_disjoint_and_complete():
    pairs = [dataGenerator.Pair(f"id{i:03d}", "", "") for i in range(100)]
    split = split_pairs(pairs, seed=7)
    assert [len(split[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    together = split["train"] + split["val"] + split["test"]
    assert sorted(together) == [p.id for p in pairs]
    assert split == split_pairs(list(reversed(pairs)), seed=7)
    assert split != split_pairs(pairs, seed=8)
    tiny = split_pairs(pairs[:3], seed=0)
    assert [len(tiny[k]) for k in ("train", "val", "test")] == [1, 1, 1]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "RGB"])
def test_read_image_converts_modes_to_rgb(tmp_path, mode):
    path = str(tmp_path / "image.png")
    base = Image.fromarray(np.arange(12 * 16, dtype=np.uint8).reshape(12, 16))
    image = base.convert("RGB").convert("P") if mode == "P" else base.convert(mode)
    if mode == "I;16":
        image = Image.fromarray((np.arange(12 * 16).reshape(12, 16) * 300).astype(np.uint16))
    image.save(path)
    array = read_image(path)
    assert array.shape == (12, 16, 3) and array.dtype == np.uint8
    resized = read_image(path, (6, 10))
    assert resized.shape == (6, 10, 3)


def test_read_mask_binarises_at_128(tmp_path):
    path = str(tmp_path / "m_segmentation.png")
    Image.fromarray(np.array([[0, 127], [128, 255]], np.uint8)).save(path)
    np.testing.assert_array_equal(read_mask(path), [[0, 0], [1, 1]])
    big = read_mask(path, (4, 4))
    assert set(np.unique(big)) == {0, 1} and big.shape == (4, 4)


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"this is not a jpeg")
    with pytest.raises(InputError, match="fake.jpg"):
        read_image(str(fake))
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(InputError, match="truncated.jpg"):
        read_image(str(truncated))


def test_an_image_over_pillows_pixel_limit_says_to_downscale_it(tmp_path, monkeypatch):
    # Pillow refuses twice MAX_IMAGE_PIXELS: a 200 MP phone photo against its default of 89.5 MP.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("RGB", (64, 48)).save(tmp_path / "huge.jpg")
    Image.new("L", (64, 48)).save(tmp_path / "huge.png")
    with pytest.raises(InputError, match=r"huge.jpg: this image is larger than Pillow decodes .*3072 pixels.*"
                                         r"save a smaller copy"):
        read_image(str(tmp_path / "huge.jpg"), (16, 16))
    with pytest.raises(InputError, match="huge.png: this mask is larger than Pillow decodes"):
        read_mask(str(tmp_path / "huge.png"))


def test_mask_size_mismatch_is_an_error(tmp_path):
    _write_pair(str(tmp_path), "odd", shape=(20, 30), mask_shape=(20, 31))
    pairs = find_pairs(str(tmp_path / "images"), str(tmp_path / "masks"))
    with pytest.raises(InputError, match="odd_segmentation.png.*31x20"):
        dataGenerator.load_arrays(pairs, (16, 16), progress=False)


def test_batches_shapes_dtypes_and_ranges(synthetic_dir):
    pairs = find_pairs(os.path.join(synthetic_dir, "images"), os.path.join(synthetic_dir, "masks"))
    data = LesionDataset(pairs, image_size=(32, 48), batch_size=5, augment=True, shuffle=True, seed=1, progress=False)
    assert len(data) == 5  # 24 samples: four batches of 5 and one of 4
    images, masks = data[0]
    assert images.shape == (5, 32, 48, 3) and images.dtype == np.float32
    assert masks.shape == (5, 32, 48, 1) and masks.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert data[4][0].shape[0] == 4


def test_every_sample_once_per_epoch_and_reshuffled(synthetic_dir):
    pairs = find_pairs(os.path.join(synthetic_dir, "images"), os.path.join(synthetic_dir, "masks"))
    data = LesionDataset(pairs, image_size=(16, 16), batch_size=5, shuffle=True, seed=0, progress=False)
    orders = []
    for _ in range(2):
        seen = np.concatenate([data.batch_ids(i) for i in range(len(data))])
        assert sorted(seen.tolist()) == list(range(24))
        orders.append(seen)
        # The images in the batches are the ones the order names.
        np.testing.assert_array_equal(data[0][0], data.images[data.batch_ids(0)].astype(np.float32) / 255.0)
        data.on_epoch_end()
    assert not np.array_equal(orders[0], orders[1])
    again = LesionDataset(pairs, image_size=(16, 16), batch_size=5, shuffle=True, seed=0, progress=False)
    np.testing.assert_array_equal(np.concatenate([again.batch_ids(i) for i in range(len(again))]), orders[0])


def test_augmentation_keeps_image_and_mask_aligned():
    # Image and mask carry the same shape (a bright off-centre block), so after any geometric
    # transform the bright pixels must still be the mask's pixels.
    mask = np.zeros((1, 64, 64), np.uint8)
    mask[0, 8:30, 12:50] = 1
    image = np.repeat(mask[..., None] * 200 + 20, 3, axis=-1).astype(np.uint8)
    pairs = [dataGenerator.Pair("block", "", "")]
    changed = 0
    for seed in range(12):
        data = LesionDataset(pairs, (64, 64), 1, augment=True, seed=seed, arrays=(image, mask), progress=False)
        images, masks = data[0]
        bright = images[0].mean(axis=-1) > images[0].mean()
        agreement = (bright == (masks[0, ..., 0] > 0.5)).mean()
        assert agreement > 0.97, f"seed {seed}: only {agreement:.3f} of pixels agree"
        changed += not np.array_equal(masks[0, ..., 0], mask[0])
    assert changed >= 6  # the augmentation really moved things


def test_augmentation_is_deterministic_per_seed_epoch_and_batch(synthetic_dir):
    pairs = find_pairs(os.path.join(synthetic_dir, "images"), os.path.join(synthetic_dir, "masks"))[:4]
    first = LesionDataset(pairs, (32, 32), 4, augment=True, seed=5, progress=False)
    second = LesionDataset(pairs, (32, 32), 4, augment=True, seed=5, arrays=(first.images, first.masks), progress=False)
    np.testing.assert_array_equal(first[0][0], second[0][0])
    first.on_epoch_end()
    assert not np.array_equal(first[0][0], second[0][0])


def test_padding_for_equal_shards_repeats_samples_with_zero_weight(synthetic_dir):
    from lesion_unet.distribution import ShardedBatches

    pairs = find_pairs(os.path.join(synthetic_dir, "images"), os.path.join(synthetic_dir, "masks"))[:7]
    plain = LesionDataset(pairs, (16, 16), 4, progress=False)
    padded = ShardedBatches(plain, pad_to_multiple=4)
    images, masks, weights = padded[1]  # 3 real samples, padded to 4
    assert images.shape == (4, 16, 16, 3) and masks.shape == (4, 16, 16, 1)
    np.testing.assert_array_equal(weights, [1, 1, 1, 0])
    np.testing.assert_array_equal(images[:3], plain[1][0])
    np.testing.assert_array_equal(images[3], plain[1][0][0])
    np.testing.assert_array_equal(padded[0][2], [1, 1, 1, 1])


def test_shards_of_a_batch_put_together_are_the_whole_batch(synthetic_dir):
    from lesion_unet.distribution import ShardedBatches

    pairs = find_pairs(os.path.join(synthetic_dir, "images"), os.path.join(synthetic_dir, "masks"))[:11]
    options = dict(image_size=(16, 16), batch_size=4, augment=True, shuffle=True, seed=2, progress=False)
    base = LesionDataset(pairs, **options)
    whole = ShardedBatches(base, pad_to_multiple=2)
    shards = [ShardedBatches(LesionDataset(pairs, arrays=(base.images, base.masks), **options), 2, (index, 2))
              for index in (0, 1)]
    for _ in range(2):  # two epochs: new order, new augmentation
        for batch in range(len(whole)):  # the last batch has 3 real samples: padded to 4, 2 per shard
            parts = [shard[batch] for shard in shards]
            assert len(parts[0][0]) == len(parts[1][0]) == len(whole[batch][0]) // 2
            for item in range(3):  # images, masks, weights
                np.testing.assert_array_equal(np.concatenate([part[item] for part in parts]), whole[batch][item])
        for dataset in [whole, *shards]:
            dataset.on_epoch_end()
    np.testing.assert_array_equal(shards[1][len(whole) - 1][2], [1, 0])


@pytest.mark.parametrize("batch_size, shard, message", [
    (5, (0, 2), "multiple of the 2 processes"),
    (4, (2, 2), "0 <= index < count"),
])
def test_bad_shards_are_clear_errors(synthetic_dir, batch_size, shard, message):
    from lesion_unet.distribution import ShardedBatches

    pairs = find_pairs(os.path.join(synthetic_dir, "images"), os.path.join(synthetic_dir, "masks"))[:2]
    with pytest.raises(ValueError, match=message):
        ShardedBatches(LesionDataset(pairs, (16, 16), batch_size, progress=False), shard=shard)


def test_zero_weight_padding_leaves_the_validation_metrics_unchanged(synthetic_dir):
    keras = pytest.importorskip("keras")
    from lesion_unet import losses
    from lesion_unet import metrics
    from lesion_unet.distribution import ShardedBatches
    from lesion_unet.improved_unet import build_improved_unet

    pairs = find_pairs(os.path.join(synthetic_dir, "images"), os.path.join(synthetic_dir, "masks"))[:7]
    plain = LesionDataset(pairs, (16, 16), 7, progress=False)
    padded = ShardedBatches(plain, pad_to_multiple=4)
    keras.utils.set_random_seed(0)
    model = build_improved_unet((16, 16), base_filters=2, depth=2)
    model.compile(loss=losses.SegmentationLoss("dice"), weighted_metrics=losses.training_metrics())  # as training.py
    # The padded copy repeats an image whose Dice differs from the mean: only weight 0 keeps it out.
    expected = model.evaluate(plain, verbose=0, return_dict=True)
    got = model.evaluate(padded, verbose=0, return_dict=True)
    assert got["dice"] == pytest.approx(expected["dice"], abs=1e-6)
    assert got["jaccard"] == pytest.approx(expected["jaccard"], abs=1e-6)


def test_a_bug_while_decoding_is_not_blamed_on_the_file(tmp_path, monkeypatch):
    path = tmp_path / "fine.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)

    def broken(image):
        raise TypeError("a bug in our own code")

    monkeypatch.setattr(lesion_files, "_to_rgb", broken)
    with pytest.raises(TypeError, match="our own code"):  # not "replace or remove the file"
        read_image(str(path))


def test_augmentation_pipeline_is_built_once_per_worker_thread(synthetic_dir, monkeypatch):
    import concurrent.futures

    pairs = find_pairs(os.path.join(synthetic_dir, "images"), os.path.join(synthetic_dir, "masks"))[:8]
    dataset = LesionDataset(pairs, (32, 32), batch_size=2, augment=True, seed=1, progress=False)
    built = []
    original = dataGenerator.build_augmentation
    monkeypatch.setattr(dataGenerator, "build_augmentation", lambda *a, **k: built.append(1) or original(*a, **k))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        batches = list(pool.map(dataset.__getitem__, [0, 1, 2, 3, 0, 1, 2, 3]))
    assert 1 <= len(built) <= 2  # one per thread, not one per batch
    for first, again in zip(batches[:4], batches[4:]):  # the same batch, whichever thread made it
        np.testing.assert_array_equal(first[0], again[0])


def test_only_this_projects_pngs_count_as_its_outputs(tmp_path):
    grey, rgb = np.arange(20, dtype=np.uint8).reshape(4, 5), np.zeros((4, 5, 3), np.uint8)
    for pixels in (grey, rgb):
        own = tmp_path / f"own{pixels.ndim}.png"
        own.write_bytes(lesion_files.encode_png(pixels))
        np.testing.assert_array_equal(np.asarray(Image.open(own)), pixels)
        assert lesion_files.is_own_output_png(own)
    plain = tmp_path / "plain.png"
    Image.fromarray(grey).save(plain)
    other = tmp_path / "other.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "GIMP 2.10")
    Image.fromarray(grey).save(other, pnginfo=info)
    jpeg = tmp_path / "own.jpg"
    Image.fromarray(rgb).save(jpeg)
    broken = tmp_path / "broken.png"
    broken.write_bytes(lesion_files.encode_png(grey)[:20])
    folder = tmp_path / "folder.png"
    folder.mkdir()
    for path in (plain, other, jpeg, broken, folder, tmp_path / "missing.png"):
        assert not lesion_files.is_own_output_png(path), path
