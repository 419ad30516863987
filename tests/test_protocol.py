"""The generalisation protocol's scripts: shifted copies, and k-fold runs pooled into one table."""

import os

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, run_script
from lesion_unet.errors import InputError

import protocol
from experiments import archive_order, block_gap, colour_protocol, dehair_protocol, ensemble_protocol, paired_gap
from experiments import postprocess_variants
from lesion_unet.protocol import compare as compare_protocols
from lesion_unet.protocol import shift as shift_protocol


class _Command:
    """`protocol.py NAME` with the interface of a script module: `main(argv)`."""

    def __init__(self, name):
        self.name = name

    def main(self, argv):
        return protocol.main([self.name, *argv])


cv_protocol, shift_command, compare_command = _Command("cv"), _Command("shift"), _Command("compare")


def test_zoom_shift_doubles_the_lesion_share_and_keeps_sizes():
    image = np.zeros((96, 128, 3), np.uint8)
    mask = np.zeros((96, 128), bool)
    mask[38:58, 54:74] = True  # 400 pixels, centred
    image[mask] = 200
    zoomed_image, zoomed_mask = shift_protocol.shift_pair(image, mask, "zoom")
    assert zoomed_image.shape == image.shape and zoomed_mask.shape == mask.shape
    assert zoomed_mask.sum() / mask.sum() == pytest.approx(1.4 ** 2, rel=0.08)
    for shift in ("dark", "vignette", "blur"):
        shifted, same_mask = shift_protocol.shift_pair(image, mask, shift)
        assert shifted.shape == image.shape and shifted.dtype == np.uint8 and same_mask is mask
    dark, _ = shift_protocol.shift_pair(np.full((4, 4, 3), 128, np.uint8), mask[:4, :4], "dark")
    assert dark[0, 0, 0] == round(255 * (128 / 255) ** 1.5)
    vignette, _ = shift_protocol.shift_pair(np.full((96, 128, 3), 200, np.uint8), mask, "vignette")
    assert vignette[48, 64, 0] == 200 and vignette[0, 0, 0] < 100  # centre untouched, corners dark
    hairy, same_mask = shift_protocol.shift_pair(vignette, mask, "hair")
    assert same_mask is mask and (hairy <= vignette).all() and 0.01 < np.any(hairy != vignette, axis=2).mean() < 0.3
    assert (shift_protocol.shift_pair(vignette, mask, "hair")[0] == hairy).all()  # the same hairs every time
    other = shift_protocol.shift_pair(np.full_like(image, 190), mask, "hair")[0]
    assert (np.any(other != 190, axis=2) != np.any(hairy != vignette, axis=2)).any()  # seeded by the image
    small_mask = mask[:4, :4]
    cast, same_mask = shift_protocol.shift_pair(np.full((4, 4, 3), 100, np.uint8), small_mask, "cast")
    assert same_mask is small_mask and (cast == (85, 100, 115)).all()  # red and blue 15% apart, green kept
    assert (shift_protocol.colour_cast(np.full((2, 2, 3), 100, np.uint8)) == (115, 100, 85)).all()  # by the image
    assert "hair" not in shift_protocol.SHIFTS and "cast" not in shift_protocol.SHIFTS  # only when asked
    with pytest.raises(ValueError, match="hair"):
        shift_protocol.shift_pair(image, mask, "rain")


def test_cv_protocol_trains_each_fold_then_pools_their_test_splits(tmp_path, synthetic_dir):
    out = str(tmp_path / "cv")
    train_flags = ["--data", synthetic_dir, "--epochs", "1", *TINY]
    # Both folds at once, each in its own train.py process with its own log.
    assert cv_protocol.main(["--out", out, "--folds", "2", "--parallel", "2", "--shifts", "none", "zoom", "--",
                             *train_flags]) == 0
    for index in range(2):
        with open(os.path.join(out, f"fold{index}.log")) as handle:
            assert f"fold{index}" in handle.read()  # the run line names its folder
    with open(os.path.join(out, "protocol.md")) as handle:
        lines = handle.read().splitlines()
    none_row = next(line for line in lines if line.startswith("| none |"))
    assert none_row.split("|")[2].strip() == "24"  # both folds' test splits: every image once
    assert "±" in none_row and any(line.startswith("| zoom |") for line in lines)
    # A report compared with itself: no change, an interval of width 0, both folds' training clocks.
    same = compare_protocols.compare([os.path.join(out, "protocol.json")] * 2, ["a", "b"], resamples=100)
    assert same[1]["delta_dice"] == 0 and same[1]["delta_dice_ci"] == (0, 0) and same[1]["n_images"] == 24
    assert same[0]["training_s"] > 0 and same[0]["training_s"] == same[1]["training_s"]
    before = os.path.getmtime(os.path.join(out, "fold0", "best.keras"))
    assert cv_protocol.main(["--out", out, "--folds", "2", "--shifts", "none", "--", *train_flags]) == 0
    assert os.path.getmtime(os.path.join(out, "fold0", "best.keras")) == before  # finished folds are kept
    with pytest.raises(SystemExit):
        cv_protocol.main(["--out", out, "--", "--fold", "1"])


def test_cv_protocol_names_the_log_of_a_fold_that_failed(tmp_path):
    out = str(tmp_path / "cv")
    # train.py refuses --epochs 0 while parsing, before loading Keras: a quick failing fold process.
    with pytest.raises(RuntimeError, match=r"fold 0 \(exit status 2; see .*fold0\.log\), fold 1 "):
        cv_protocol.main(["--out", out, "--folds", "2", "--parallel", "2", "--", "--data", "x", "--epochs", "0"])
    with open(os.path.join(out, "fold1.log")) as handle:
        assert "--epochs" in handle.read()  # train.py's own message is kept for the user


class _BrightnessModel:
    """A stand-in segmentation model: the probability is each pixel's red channel."""

    def predict_on_batch(self, images):
        return images[..., :1]


def test_multiscale_tta_maps_each_zoomed_out_copy_back_onto_the_image():
    rows, cols = np.mgrid[:64, :96]
    image = np.stack([rows / 63, cols / 95, np.zeros((64, 96))], axis=-1).astype(np.float32)[None]
    padded, (top, left, height, width) = shift_protocol.zoomed_out(image, 0.5)
    assert padded.shape == image.shape and (top, left, height, width) == (16, 24, 32, 48)
    np.testing.assert_array_equal(padded[0, 14, 24:72], padded[0, 18, 24:72])  # mirrored about row 16, not black
    model = _BrightnessModel()
    np.testing.assert_array_equal(shift_protocol.predict_scales(model, image, (1.0,)), image[..., 0])
    # A smooth ramp survives shrink, crop and enlarge: each scale lands back on the image's own pixels.
    both = shift_protocol.predict_scales(model, image, (1.0, 0.5))
    assert np.abs(both - image[..., 0])[:, 2:-2, 2:-2].max() < 0.03


def test_postprocess_variants_golden_masks():
    mask = np.zeros((40, 40), bool)
    probability = np.zeros((40, 40), np.float32)
    mask[2:12, 2:12] = True  # 100 faint pixels: the largest region
    probability[2:12, 2:12] = 0.55
    mask[20:28, 20:28] = True  # 64 confident pixels: the most probable one (64 > 55)
    probability[20:28, 20:28] = 1.0
    mask[25:27, 5:8] = True  # 6 pixels, 2 rows from nothing else
    probability[mask & (probability == 0)] = 0.9
    steps = postprocess_variants.VARIANTS
    assert steps["none"](mask, probability) is mask
    assert steps["largest"](mask, probability).sum() == 100 and steps["largest"](mask, probability)[5, 5]
    assert steps["prob"](mask, probability).sum() == 64 and steps["prob"](mask, probability)[24, 24]
    u_shape = np.zeros((40, 40), bool)
    u_shape[10:30, 10:14] = u_shape[10:30, 26:30] = u_shape[26:30, 10:30] = True  # open at the top
    hull = steps["hull"](u_shape, u_shape.astype(np.float32))
    assert hull[15, 20] and not u_shape[15, 20] and (hull >= u_shape).all() and hull.sum() == 400
    # hull_large: the same U covers 13% of a 40x40 image (kept as it is) but 36% of a 24x24 one (hulled).
    assert (steps["hull_large"](u_shape, u_shape.astype(np.float32)) == u_shape).all()
    u_large = np.zeros((24, 24), bool)
    u_large[2:22, 2:6] = u_large[2:22, 18:22] = u_large[18:22, 2:22] = True
    assert u_large.sum() == 208 and steps["hull_large"](u_large, u_large.astype(np.float32)).sum() == 400
    gap = np.zeros((40, 40), bool)
    gap[10:30, 5:18] = gap[10:30, 21:35] = True  # two halves 3 pixels apart: closing joins them
    closed = steps["close"](gap, gap.astype(np.float32))
    # The 3 x 20 gap fills but for its two end rows (the disk's round edge does not reach them).
    assert (closed >= gap).all() and closed[11:29, 18:21].all() and closed.sum() == 20 * 30 - 2 * 3
    assert not closed[:, :5].any()  # nothing grown out to the border
    assert steps["largest"](gap, gap.astype(np.float32)).sum() == 20 * 14
    for name, step in steps.items():
        assert not step(np.zeros((8, 8), bool), np.zeros((8, 8), np.float32)).any(), name


def test_postprocess_variants_write_one_report_each(tmp_path, trained_run, synthetic_dir, capsys):
    run_dir, _ = trained_run
    out = str(tmp_path / "pp")
    assert postprocess_variants.main(["--model", os.path.join(run_dir, "best.keras"), "--data", synthetic_dir,
                                      "--out", out, "--variants", "largest", "none"]) == 0
    assert "largest: mean Dice over the conditions" in capsys.readouterr().out
    pooled = {name: compare_protocols.load_report(f"{out}.{name}.json")[0] for name in ("largest", "none")}
    assert list(pooled["largest"]) == list(shift_protocol.SHIFTS)
    ids = set(pooled["largest"]["none"])
    assert ids and all(set(pooled[name][shift]) == ids for name in pooled for shift in shift_protocol.SHIFTS)
    rows = compare_protocols.compare([f"{out}.largest.json", f"{out}.none.json"])
    assert len(rows) == 2


def test_ensemble_protocol_scores_each_group_from_one_pass(tmp_path, trained_run, synthetic_dir, capsys):
    run_dir, _ = trained_run
    best, last = os.path.join(run_dir, "best.keras"), os.path.join(run_dir, "last.keras")
    out = str(tmp_path / "ens")
    assert ensemble_protocol.group_names(3) == ["A", "B", "C", "AB", "AC", "BC", "ABC"]
    # A model twice: its ensemble is the model itself, row for row.
    assert ensemble_protocol.main(["--models", best, best, last, "--data", synthetic_dir, "--out", out]) == 0
    printed = capsys.readouterr().out
    assert printed.count("mean Dice over the conditions") == 7 and f"{out}.ABC.json" in printed
    reports = {name: compare_protocols.load_report(f"{out}.{name}.json")[0] for name in ("A", "B", "AB", "ABC")}
    assert list(reports["A"]) == list(shift_protocol.SHIFTS)
    for shift in shift_protocol.SHIFTS:
        assert reports["A"][shift] and reports["AB"][shift] == reports["A"][shift] == reports["B"][shift]
        assert set(reports["ABC"][shift]) == set(reports["A"][shift])
    # The single model's report is shift_protocol's own scoring of it.
    from lesion_unet import inference

    alone = shift_protocol.score_shifted(inference.load_model(best), shift_protocol.split_part(synthetic_dir),
                                         progress=False)
    assert ({row["id"]: row["dice"] for row in alone["zoom"]}
            == {image: row["dice"] for image, row in reports["A"]["zoom"].items()})


def test_dehair_protocol_writes_a_report_per_level_and_for_the_hairiest(tmp_path, trained_run, synthetic_dir, capsys):
    run_dir, _ = trained_run
    out = str(tmp_path / "dehair")
    assert dehair_protocol.main(["--model", os.path.join(run_dir, "best.keras"), "--data", synthetic_dir,
                                 "--out", out, "--shifts", "none", "hair", "--levels", "15", "250",
                                 "--figure", str(tmp_path / "hair.png"),
                                 "--figure-real", str(tmp_path / "real.png")]) == 0
    printed = capsys.readouterr().out
    assert "plain: none" in printed and "level15: none" in printed and "level250: none" in printed
    for name in ("hair.png", "real.png"):
        with Image.open(tmp_path / name) as figure:
            assert figure.format == "PNG" and figure.height > 500  # three rows of two panels
    plain, level15 = (compare_protocols.load_report(f"{out}.{name}.json")[0] for name in ("plain", "level15"))
    assert list(plain) == list(level15) == ["none", "hair"] and set(plain["hair"]) == set(level15["hair"])
    hairy = compare_protocols.load_report(f"{out}.plain.hairy.json")[0]
    assert list(hairy) == ["none"]
    assert len(hairy["none"]) == max(1, round(dehair_protocol.HAIRY_SHARE * len(plain["none"])))
    assert set(hairy["none"]) <= set(plain["none"])
    # A level no pixel reaches removes nothing: the same scores as the plain images.
    level250 = compare_protocols.load_report(f"{out}.level250.json")[0]
    assert {i: r["dice"] for i, r in level250["none"].items()} == {i: r["dice"] for i, r in plain["none"].items()}


def test_shades_of_gray_makes_a_uniform_cast_grey():
    tinted = np.empty((8, 8, 3), np.uint8)
    tinted[:] = (200, 160, 120)
    assert (colour_protocol.shades_of_gray(tinted) == 160).all()  # the mean grey level kept
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cast = np.clip(image * np.array([1.15, 1.0, 0.85]), 0, 255).astype(np.uint8)
    back = colour_protocol.shades_of_gray(cast).astype(int)
    assert np.abs(back.mean(axis=(0, 1)) - back.mean()).max() < np.abs(cast.mean(axis=(0, 1)) - cast.mean()).max()
    black = np.zeros((4, 4, 3), np.uint8)
    black[..., 1] = 50
    assert (colour_protocol.shades_of_gray(black) == black).all()  # a channel black everywhere: unchanged


def test_colour_protocol_writes_plain_and_corrected_reports(tmp_path, trained_run, synthetic_dir, capsys):
    run_dir, _ = trained_run
    out = str(tmp_path / "sog")
    assert colour_protocol.main(["--model", os.path.join(run_dir, "best.keras"), "--data", synthetic_dir,
                                 "--out", out, "--shifts", "none", "cast"]) == 0
    printed = capsys.readouterr().out
    assert "plain: none" in printed and "sog: none" in printed
    plain, corrected = (compare_protocols.load_report(f"{out}.{name}.json")[0] for name in ("plain", "sog"))
    assert list(plain) == list(corrected) == ["none", "cast"] and set(plain["cast"]) == set(corrected["cast"])


def _row(image_id, dice, fraction):
    return {"id": image_id, "dice": dice, "jaccard": dice, "threshold_jaccard": dice, "sensitivity": 1.0,
            "specificity": 1.0, "accuracy": 1.0, "lesion_fraction": fraction, "predicted_fraction": fraction}


def test_block_gap_golden_gaps_and_size_adjustment():
    # Outside the block: small lesions at 0.9, large ones at 0.8. Inside: 0.7 and 0.6, and mostly large.
    rows = [_row("a1", 0.9, 0.05), _row("a2", 0.9, 0.05), _row("a3", 0.8, 0.5), _row("a4", 0.8, 0.5),
            _row("b1", 0.7, 0.05), _row("b2", 0.6, 0.5), _row("b3", 0.6, 0.5), _row("b4", 0.6, 0.5)]
    result = block_gap.compare_groups(rows, ("b1", "b9"), resamples=200)
    assert (result["others"]["n_images"], result["block"]["n_images"]) == (4, 4)
    assert result["others"]["dice"] == pytest.approx(0.85) and result["block"]["dice"] == pytest.approx(0.625)
    assert result["gap"] == pytest.approx(0.225)
    # Band gaps 0.2 and 0.2, weighted 1/4 and 3/4 by the block's bands: 0.2, though the block's
    # larger (harder) lesions make the raw gap look bigger.
    assert result["adjusted_gap"] == pytest.approx(0.2)
    low, high = result["gap_ci"]
    assert 0 < low <= result["gap"] <= high
    # Resampled within bands, whose images all score alike here, the interval cannot move.
    assert result["adjusted_gap_ci"] == pytest.approx((0.2, 0.2))
    assert result["block"]["by_size"][">30%"]["n_images"] == 3
    assert block_gap.in_block("b1", ("b1", "b9")) and not block_gap.in_block("a4", ("b1", "b9"))
    # A band of the block that no other image has: no size-adjusted gap, rather than a wrong one.
    alone = block_gap.compare_groups(rows[:2] + rows[4:], ("b1", "b9"), resamples=50)
    assert alone["adjusted_gap"] is None and alone["adjusted_gap_ci"] is None
    with pytest.raises(ValueError, match="no scored image is inside the block"):
        block_gap.compare_groups(rows, ("c1", "c9"))


def test_block_gap_scores_a_run_split_against_a_block(tmp_path, trained_run, synthetic_dir, capsys):
    run_dir, _ = trained_run
    with open(os.path.join(run_dir, "split.json")) as handle:
        import json

        split = json.load(handle)
    held_out = sorted(split["val"] + split["test"])
    block = (held_out[0], held_out[len(held_out) // 2])
    report = str(tmp_path / "gap.json")
    assert block_gap.main(["--model", os.path.join(run_dir, "best.keras"), "--data", synthetic_dir,
                           "--split-file", os.path.join(run_dir, "split.json"), "--block", *block,
                           "--report", report, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"on val + test ({len(held_out)} images)" in printed and "gap (others - block)" in printed
    with open(report) as handle:
        saved = json.load(handle)
    assert sorted(row["id"] for row in saved["rows"]) == held_out
    assert saved["block"]["n_images"] == len(held_out) // 2 + 1
    assert saved["gap"] == pytest.approx(saved["others"]["dice"] - saved["block"]["dice"])


def test_paired_gap_golden_contrast_on_shared_images(tmp_path, capsys):
    """A (trained without the block) loses 0.1 to B inside the block and 0.02 elsewhere: contrast 0.08."""
    import json

    rows_a = [_row("a1", 0.88, 0.05), _row("a2", 0.78, 0.5), _row("b1", 0.6, 0.05), _row("b2", 0.7, 0.5),
              _row("c7", 0.5, 0.05)]  # c7: only A scored it, so it is left out
    rows_b = [_row("a1", 0.9, 0.05), _row("a2", 0.8, 0.5), _row("b1", 0.7, 0.05), _row("b2", 0.8, 0.5),
              _row("a9", 0.1, 0.05)]
    differences = paired_gap.paired_differences(rows_a, rows_b, ("b1", "b9"))
    np.testing.assert_allclose(differences["block"], [0.1, 0.1])
    np.testing.assert_allclose(differences["others"], [0.02, 0.02])
    result = paired_gap.compare(differences, resamples=200)
    assert (result["block"]["n"], result["others"]["n"]) == (2, 2)
    assert result["contrast"] == pytest.approx(0.08)
    # Every image differs alike within its group, so no resample can move the means.
    assert result["contrast_ci"] == pytest.approx((0.08, 0.08)) and result["block"]["ci"] == pytest.approx((0.1, 0.1))
    with pytest.raises(ValueError, match="share no scored image inside the block"):
        paired_gap.paired_differences(rows_a, rows_b, ("d1", "d9"))

    paths = []
    for name, rows in (("a", rows_a), ("b", rows_b)):
        paths.append(str(tmp_path / f"{name}.json"))
        with open(paths[-1], "w") as handle:
            json.dump({"model": f"{name}.keras", "block_ids": ["b1", "b9"], "rows": rows}, handle)
    assert paired_gap.main([*paths, "--resamples", "200"]) == 0
    printed = capsys.readouterr().out
    assert "block: +0.1000 (+0.1000 to +0.1000) on 2 images" in printed
    assert "block minus others: +0.0800" in printed
    with open(paths[1], "w") as handle:
        json.dump({"model": "b.keras", "block_ids": ["b1", "b5"], "rows": rows_b}, handle)
    with pytest.raises(InputError, match="block b1 .. b5 differs from"):
        paired_gap.main(paths)


def test_archive_order_statistics_golden_and_figure(tmp_path, synthetic_dir, capsys):
    image = np.full((60, 80, 3), (150, 100, 50), np.uint8)
    image[:20, :20] = 10  # one of four corner squares dark: a quarter of the corner pixels
    mask = np.zeros((60, 80), bool)
    mask[20:35, 20:60] = True  # 600 of 4800 pixels
    stats = archive_order.image_statistics(image, mask)
    assert stats["lesion_share"] == 0.125 and stats["dark_corners"] == 0.25
    assert stats["red_minus_blue"] == pytest.approx(100 * (1 - 400 / 4800))
    blocks = archive_order.block_table([{"id": f"i{k}", **stats, "grey": k} for k in range(5)], 2)
    assert [(b["first"], b["last"], b["n"], b["grey"]) for b in blocks] == [("i0", "i1", 2, 0.5), ("i2", "i3", 2, 2.5),
                                                                           ("i4", "i4", 1, 4.0)]
    figure = str(tmp_path / "order.png")
    assert archive_order.main(["--data", synthetic_dir, "--block-size", "10", "--folds", "3", "--figure", figure,
                               "--no-progress"]) == 0
    printed = capsys.readouterr().out
    table_lines = [line for line in printed.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 2 + 3 and Image.open(figure).size[0] > 500  # 24 synthetic pairs: 3 blocks


def _report(path, dice_by_shift, ids=("a", "b", "c", "d"), fraction=0.2):
    """Writes a protocol report of one group; `dice_by_shift[shift]` lists each image's Dice."""
    import json

    report = {"run": {shift: [{"id": image_id, "dice": dice, "threshold_jaccard": dice,
                               "jaccard": dice, "sensitivity": 1.0, "lesion_fraction": fraction}
                              for image_id, dice in zip(ids, values)]
                      for shift, values in dice_by_shift.items()}}
    with open(path, "w") as handle:
        json.dump(report, handle)
    return str(path)


def test_compare_protocols_golden_changes_and_intervals(tmp_path):
    base = _report(tmp_path / "base.json", {"none": [0.9, 0.8, 0.7, 0.6], "zoom": [0.5, 0.5, 0.5, 0.5]})
    # Every image gains exactly 0.1 under "none" and nothing under "zoom": +0.05 per image, no spread.
    same_gain = _report(tmp_path / "gain.json", {"none": [1.0, 0.9, 0.8, 0.7], "zoom": [0.5, 0.5, 0.5, 0.5]})
    # Gains of +0.2, 0, 0, -0.2 under "none": mean 0, an interval that holds 0 on both sides.
    mixed = _report(tmp_path / "mixed.json", {"none": [1.1, 0.8, 0.7, 0.4], "zoom": [0.5, 0.5, 0.5, 0.5]})
    results = compare_protocols.compare([base, same_gain, mixed], ["base", "gain", "mixed"], resamples=2000)
    assert results[0]["dice"] == pytest.approx(0.625) and results[0]["worst_shift"] == "zoom"
    assert results[0]["dice_by_shift"] == pytest.approx({"none": 0.75, "zoom": 0.5})
    assert results[0]["dice_by_band"]["10-30%"] == (pytest.approx(0.625), 8)  # 4 images x 2 shifts
    assert results[0]["dice_by_band"]["<10%"] == (None, 0) and "delta_dice" not in results[0]
    assert results[1]["delta_dice"] == pytest.approx(0.05)
    assert results[1]["delta_dice_ci"] == (pytest.approx(0.05), pytest.approx(0.05))
    low, high = results[2]["delta_dice_ci"]
    assert results[2]["delta_dice"] == pytest.approx(0) and -0.1 <= low < 0 < high <= 0.1
    assert results[0]["training_s"] is None  # "run" is no run folder
    text = compare_protocols.table(results)
    assert "| gain | 4 | 0.6750 | +0.0500 (+0.0500 to +0.0500) |" in text and "| base | 4 | 0.6250 | baseline |" in text
    # --shifts: on "zoom" alone the gain is gone; on "none" alone it is the whole +0.1.
    zoom_only = compare_protocols.compare([base, same_gain], resamples=100, only_shifts=["zoom"])
    assert zoom_only[1]["shifts"] == ["zoom"] and zoom_only[1]["delta_dice"] == pytest.approx(0)
    none_only = compare_protocols.compare([base, same_gain], resamples=100, only_shifts=["none"])
    assert none_only[1]["delta_dice"] == pytest.approx(0.1) and none_only[0]["dice"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no hair condition"):
        compare_protocols.compare([base, same_gain], resamples=100, only_shifts=["none", "hair"])


def test_compare_protocols_refuses_reports_of_other_images(tmp_path):
    base = _report(tmp_path / "base.json", {"none": [0.9, 0.8, 0.7, 0.6]})
    other = _report(tmp_path / "other.json", {"none": [0.9, 0.8, 0.7, 0.6]}, ids=("a", "b", "c", "e"))
    with pytest.raises(ValueError, match="other.json: its images under 'none' differ"):
        compare_protocols.compare([base, other])
    shifted = _report(tmp_path / "shifted.json", {"zoom": [0.9, 0.8, 0.7, 0.6]})
    with pytest.raises(ValueError, match="shifted.json: shifts"):
        compare_protocols.compare([base, shifted])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: cannot read"):
        compare_protocols.compare([base, str(broken)])
    binary = tmp_path / "model.keras"  # a likely slip: a model file given for its report
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00")
    with pytest.raises(ValueError, match="model.keras: cannot read this protocol report"):
        compare_protocols.compare([base, str(binary)])
    with pytest.raises(ValueError, match="at least two"):
        compare_protocols.compare([base])


@pytest.mark.parametrize("script, argv, expected", [
    (shift_command, ["--model", "m.keras", "--data", "d", "--scales", "1", "0"], "--scales: must be a finite number > 0"),
    (shift_command, ["--model", "m.keras", "--data", "d", "--threshold", "nan"], "--threshold: must be a finite number"),
    (shift_command, ["--model", "m.keras", "--data", "d", "--seed", "-1"], "--seed: must be an integer >= 0"),
    (cv_protocol, ["--out", "o", "--folds", "1"], "--folds: must be an integer >= 2"),
    (cv_protocol, ["--out", "o", "--parallel", "0"], "--parallel: must be an integer >= 1, got 0"),
    (cv_protocol, ["--out", "o", "--shifts", "rain"], "--shifts: invalid choice: 'rain'"),  # before any fold trains
    (ensemble_protocol, ["--models", "m.keras", "--data", "d", "--out", "o"], "--models: give 2 to 4 models, got 1"),
    (dehair_protocol, ["--model", "m.keras", "--data", "d", "--out", "o", "--levels", "0"],
     "--levels: must be an integer >= 1 and <= 255, got 0"),
    (dehair_protocol, ["--model", "m.keras", "--data", "d", "--out", "o", "--split", "test"], "--split: invalid choice"),
    (dehair_protocol, ["--model", "m.keras", "--data", "d", "--out", "o", "--shifts", "none", "--figure", "f.png"],
     "--figure draws the hair condition: add hair to --shifts"),
    (dehair_protocol, ["--model", "m.keras", "--data", "d", "--out", "o", "--shifts", "hair", "--figure-real", "f.png"],
     "--figure-real draws the unshifted images: add none to --shifts"),
    (compare_command, ["a.json", "b.json", "--resamples", "0"], "--resamples: must be an integer >= 100"),
    (block_gap, ["--model", "m.keras", "--data", "d", "--block", "b", "a"], "--block b a: the first id sorts after"),
    (archive_order, ["--data", "d", "--block-size", "0"], "--block-size: must be an integer >= 1"),
    (paired_gap, ["a.json", "b.json", "--resamples", "5"], "--resamples: must be an integer >= 100"),
])
def test_protocol_scripts_check_their_flags_in_one_line(script, argv, expected, capsys):
    with pytest.raises(SystemExit) as stop:
        script.main(argv)
    error = capsys.readouterr().err
    assert stop.value.code == 2 and expected in error and len(error.strip().splitlines()) == 1, error


def test_protocol_py_compares_without_keras_and_passes_train_flags_to_cv_only(tmp_path, capsys):
    base = _report(tmp_path / "base.json", {"none": [0.9, 0.8, 0.7, 0.6]})
    better = _report(tmp_path / "better.json", {"none": [1.0, 0.9, 0.8, 0.7]})
    code = ("import sys, protocol\n"
            f"protocol.main(['compare', {base!r}, {better!r}, '--resamples', '100', '--labels', 'base', 'better'])\n"
            "print(sorted({'keras', 'tensorflow', 'jax', 'torch'} & set(sys.modules)))\n")
    result = run_script("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "[]" and "| better | 4 | 0.8500 | +0.1000 (+0.1000 to +0.1000)" in result.stdout
    with pytest.raises(SystemExit):
        protocol.main(["compare", base, better, "--", "--epochs", "1"])
    assert "'--' passes train.py flags to 'cv' only; drop it from 'compare'" in capsys.readouterr().err
