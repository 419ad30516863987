"""The tools for judging generalisation: k-fold splits, metrics by lesion size, the training levers."""

import json
import os
import random

import keras
import numpy as np
import pytest
from PIL import Image

from lesion_unet import callbacks
from lesion_unet import data as dataGenerator
from lesion_unet import metrics
from lesion_unet import runfolder
from lesion_unet import scoring
import train
from conftest import TINY, run_main
from lesion_unet.data import Pair, kfold_split



def _pairs(count):
    return [Pair(f"id{i:03d}", f"{i}.jpg", f"{i}_segmentation.png") for i in range(count)]


def test_kfold_test_splits_partition_the_data():
    pairs = _pairs(53)
    splits = [kfold_split(pairs, 5, fold, 0.1, seed=7) for fold in range(5)]
    tests = [set(split["test"]) for split in splits]
    assert sorted(len(test) for test in tests) == [10, 10, 11, 11, 11]
    assert set().union(*tests) == {pair.id for pair in pairs} and sum(map(len, tests)) == 53
    for split in splits:
        parts = [set(split[name]) for name in ("train", "val", "test")]
        assert len(split["val"]) == 5 and set().union(*parts) == {pair.id for pair in pairs}
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert kfold_split(pairs, 5, 2, 0.1, seed=7) == splits[2]
    assert kfold_split(pairs, 5, 2, 0.1, seed=8) != splits[2]


def test_kfold_golden_folds_random_and_by_order():
    pairs = _pairs(12)[::-1]  # the pairs' order must not matter, only their ids'
    # Random folds: the same parts as before --fold-by existed (these ids were drawn by that code).
    assert kfold_split(pairs, 3, 1, 0.2, seed=7) == {
        "train": ["id000", "id002", "id005", "id009", "id010", "id011"], "val": ["id004", "id006"],
        "test": ["id001", "id003", "id007", "id008"]}
    by_order = [kfold_split(pairs, 3, fold, 0.2, seed=7, by="order") for fold in range(3)]
    assert [split["test"] for split in by_order] == [[f"id{i:03d}" for i in range(start, start + 4)]
                                                     for start in (0, 4, 8)]  # runs of consecutive ids
    assert by_order[1] == {"train": ["id001", "id002", "id003", "id008", "id009", "id011"],
                           "val": ["id000", "id010"], "test": ["id004", "id005", "id006", "id007"]}
    for split in by_order:  # validation is drawn at random from the other folds, not next to the test fold
        assert not set(split["val"]) & set(split["test"]) and len(split["val"]) == 2
        assert sorted(split["train"] + split["val"] + split["test"]) == sorted(p.id for p in pairs)
    assert kfold_split(pairs, 3, 1, 0.2, seed=8, by="order")["val"] != by_order[1]["val"]
    assert kfold_split(pairs, 3, 1, 0.2, seed=8, by="order")["test"] == by_order[1]["test"]  # the seed picks only val
    with pytest.raises(ValueError, match="use one of random, order"):
        kfold_split(pairs, 3, 1, by="date")


@pytest.mark.parametrize("folds, fold, count", [(1, 0, 20), (5, 5, 20), (5, -1, 20), (5, 0, 6)])
def test_kfold_refuses_impossible_requests(folds, fold, count):
    with pytest.raises(ValueError):
        kfold_split(_pairs(count), folds, fold)


def test_lesion_fraction_and_bands_golden():
    truth = np.zeros((10, 20), bool)
    truth[:2, :10] = True  # 20 of 200 pixels
    assert metrics.lesion_fraction(truth) == 0.1
    assert [metrics.size_band(f) for f in (0.0, 0.0999, 0.1, 0.2999, 0.3, 0.96, 1.0)] == [
        "<10%", "<10%", "10-30%", "10-30%", ">30%", ">30%", ">30%"]
    with pytest.raises(ValueError):
        metrics.size_band(1.5)


def test_summary_by_size_golden():
    rows = [{"dice": d, "jaccard": d / 2, "threshold_jaccard": 0.0, "sensitivity": 1.0, "specificity": 1.0,
             "accuracy": 1.0, "lesion_fraction": f} for d, f in ((0.2, 0.05), (0.4, 0.5), (0.8, 0.35), (1.0, 0.6))]
    summary = metrics.summarize(rows)
    assert summary["by_size"]["<10%"] == {"n_images": 1, "dice": 0.2, "jaccard": 0.1, "threshold_jaccard": 0.0,
                                          "sensitivity": 1.0, "area_ratio": None}  # no predicted_fraction
    assert summary["by_size"]["10-30%"]["n_images"] == 0 and summary["by_size"]["10-30%"]["dice"] is None
    assert summary["by_size"][">30%"]["n_images"] == 3
    assert summary["by_size"][">30%"]["dice"] == pytest.approx((0.4 + 0.8 + 1.0) / 3)
    table = scoring.format_table(summary).splitlines()
    assert table[-4].split()[:2] == ["lesion", "size"]
    assert table[-3].split() == ["<10%", "1", "0.2000", "0.1000", "0.0000", "1.0000", "-"]
    assert table[-2].split() == ["10-30%", "0", "-", "-", "-", "-", "-"]
    assert summary["area_ratio"] is None and not any(line.startswith("area_ratio") for line in table)
    assert table[-1].split()[:3] == [">30%", "3", "0.7333"]
    assert "by_size" not in metrics.summarize([{k: v for k, v in rows[0].items() if k != "lesion_fraction"}])


def test_area_ratio_golden():
    # Shares (true, predicted): a small lesion over-segmented 2x, two large ones under-segmented.
    rows = [{"dice": 1.0, "jaccard": 1.0, "threshold_jaccard": 1.0, "sensitivity": 1.0, "specificity": 1.0,
             "accuracy": 1.0, "lesion_fraction": f, "predicted_fraction": p}
            for f, p in ((0.05, 0.10), (0.40, 0.30), (0.60, 0.50), (0.0, 0.0))]
    assert metrics.area_ratio(rows) == pytest.approx(0.90 / 1.05)  # pooled shares, not a mean of ratios
    summary = metrics.summarize(rows)
    assert summary["area_ratio"] == pytest.approx(0.90 / 1.05)
    assert summary["by_size"]["<10%"]["area_ratio"] == pytest.approx(2.0)  # the empty truth adds nothing
    assert summary["by_size"][">30%"]["area_ratio"] == pytest.approx(0.8)
    assert summary["by_size"]["10-30%"]["area_ratio"] is None  # no images
    assert metrics.area_ratio([rows[3]]) is None  # no true lesion pixel: undefined, not 0 or infinite
    table = scoring.format_table(summary).splitlines()
    assert table[-1].split()[-1] == "0.8000" and table[-4].split()[-1] == "area_ratio"
    assert [line.split()[1] for line in table if line.startswith("area_ratio")] == ["0.8571"]


def test_score_prediction_records_both_areas(tmp_path):
    truth = np.zeros((10, 20), np.uint8)
    truth[:4, :10] = 255  # 40 of 200 pixels
    mask_path = tmp_path / "a_segmentation.png"
    Image.fromarray(truth).save(mask_path)
    prediction = np.zeros((10, 20), bool)
    prediction[:2, :10] = True  # 20 of them: half the lesion
    pair = Pair("a", str(tmp_path / "a.jpg"), str(mask_path))
    row = scoring.score_prediction(pair, prediction, "its image")
    assert (row["lesion_fraction"], row["predicted_fraction"], row["sensitivity"]) == (0.2, 0.1, 0.5)
    assert metrics.area_ratio([row]) == pytest.approx(0.5)


def test_zoom_scales_the_lesion_with_its_image():
    image = np.zeros((64, 64, 3), np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[24:40, 24:40] = 1  # 256 pixels, centred
    image[mask == 1] = 200
    ratios = []
    for seed in range(24):
        out = dataGenerator.build_augmentation((64, 64), seed, zoom=(1.5, 1.5))(image=image, mask=mask)
        ratios.append(out["mask"].sum() / mask.sum())
        assert np.mean((out["mask"] == 1) != (out["image"][..., 0] > 100)) < 0.03  # still aligned
    zoomed = [r for r in ratios if abs(r - 1.0) > 0.1]
    assert zoomed and all(1.9 < r < 2.6 for r in zoomed)  # 1.5 x 1.5 = 2.25 times the area
    assert len(zoomed) < len(ratios)  # the affine applies half of the time


def test_strong_colour_changes_pixels_not_masks():
    rng = np.random.default_rng(0)
    image = rng.integers(30, 220, (32, 32, 3), dtype=np.uint8)
    mask = (rng.random((32, 32)) > 0.5).astype(np.uint8)
    light = dataGenerator.build_augmentation((32, 32), 1, zoom=(1.0, 1.0), color="light")
    strong = dataGenerator.build_augmentation((32, 32), 1, zoom=(1.0, 1.0), color="strong")
    light_change = strong_change = 0.0
    for seed in range(12):
        for pipeline, name in ((light, "light"), (strong, "strong")):
            pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
            out = pipeline(image=image, mask=mask)
            assert out["image"].dtype == np.uint8 and set(np.unique(out["mask"])) <= {0, 1}
            change = np.abs(out["image"].astype(float) - image).mean()
            if name == "light":
                light_change += change
            else:
                strong_change += change
    assert strong_change > light_change > 0


def test_hairs_darken_thin_curves_and_leave_the_mask():
    image = np.full((96, 128, 3), 200, np.uint8)
    hairy = dataGenerator.draw_hairs(image, np.random.default_rng(0), 10)
    changed = np.any(hairy != image, axis=2)
    assert hairy.shape == image.shape and hairy.dtype == np.uint8 and image.max() == 200  # a copy
    assert 0.01 < changed.mean() < 0.2 and (hairy <= image).all()  # thin and dark, never lighter
    assert (hairy[changed][:, 0] >= hairy[changed][:, 2]).all()  # black to brown: red at least blue
    assert (dataGenerator.draw_hairs(image, np.random.default_rng(0), 10) == hairy).all()
    assert (dataGenerator.draw_hairs(image, np.random.default_rng(0), 0) == image).all()
    mask = np.zeros((96, 128), np.uint8)
    mask[30:60, 40:90] = 1
    with_hair = dataGenerator.build_augmentation((96, 128), 0, zoom=(1.0, 1.0), hair=True)
    names = [type(step).__name__ for step in with_hair.transforms]
    assert names.index("DrawHairs") == names.index("ColorJitter") - 1  # hairs take the colour changes too
    assert "DrawHairs" not in [type(step).__name__ for step in dataGenerator.build_augmentation((96, 128), 0)]
    hairs = dataGenerator._hair_transform_class()(p=1.0)
    drawn = []
    for seed in range(3):
        hairs.set_random_state(np.random.default_rng(seed), random.Random(seed))
        out = hairs(image=image, mask=mask)
        assert (out["mask"] == mask).all()
        drawn.append(np.any(out["image"] != image, axis=2).mean())
    assert len(set(drawn)) == 3 and min(drawn) > 0  # the pipeline's seed picks the hairs and their number


@pytest.mark.parametrize("options", [{"zoom": (1.2, 1.1)}, {"zoom": (0, 1)}, {"color": "loud"}])
def test_bad_augmentation_options_are_refused(options):
    with pytest.raises(ValueError):
        dataGenerator.build_augmentation((32, 32), 0, **options)


def test_averaged_weights_are_the_optimizers_moving_average(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid", name="conv")(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=0.9), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    for _ in range(4):  # not fit(): at its end Keras copies the average into the model
        model.train_on_batch(rng.random((4, 4, 4, 3)), (rng.random((4, 4, 4, 1)) > 0.5).astype("float32"))
    averaged = callbacks.averaged_weights(model)
    moving = {v.path: keras.ops.convert_to_numpy(m) for v, m in
              zip(model.optimizer._trainable_variables, model.optimizer._model_variables_moving_average)}
    for variable, value in zip(model.weights, averaged):
        np.testing.assert_array_equal(value, moving[variable.path])
    assert any(not np.array_equal(a, w) for a, w in zip(averaged, model.get_weights()))
    path = str(tmp_path / "ema.keras")
    callbacks.export_inference_model(model, path, averaged)
    for saved, value in zip(keras.saving.load_model(path).get_weights(), averaged):
        np.testing.assert_array_equal(saved, value)


def test_train_with_folds_and_every_lever_records_them(tmp_path, synthetic_dir):
    # A time budget of 0.06 s is spent by the first epoch: the run stops after it, and still reports.
    run = str(tmp_path / "run")
    result = run_main("train.py", "--data", synthetic_dir, "--out", run, "--epochs", "2", "--folds", "4", "--fold", "3",
                      "--fold-by", "order", "--zoom", "0.8", "1.4", "--color-augment", "strong", "--hair-augment", "--ema",
                      "--time-budget", "0.001", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training stops after epoch 1 of 2" in result.stdout and "(time budget 0.001 min)" in result.stdout
    with open(os.path.join(run, "history.csv")) as handle:
        assert len(handle.readlines()) == 2  # header and epoch 1
    config = runfolder.read_json(os.path.join(run, "config.json"), "settings")
    assert (config["folds"], config["fold"], config["fold_by"], config["zoom"], config["color_augment"],
            config["hair_augment"], config["ema"]) == (4, 3, "order", [0.8, 1.4], "strong", True, True)
    assert (config["time_budget_minutes"], config["epochs"]) == (0.001, 2)  # stopped, not re-planned
    assert train.build_parser().parse_args([]).time_budget is None  # resolved per run: 90 on real data, no demo limit
    pairs = dataGenerator.find_pairs(*dataGenerator.resolve_folders(synthetic_dir))
    with open(os.path.join(run, "split.json")) as handle:
        assert json.load(handle) == kfold_split(pairs, 4, 3, 0.1, seed=0, by="order")
    with open(os.path.join(run, "metrics.json")) as handle:
        summary = json.load(handle)
    assert summary["n_images"] == 6 and sum(band["n_images"] for band in summary["by_size"].values()) == 6
    best = keras.saving.load_model(os.path.join(run, "best.keras")).get_weights()
    last = keras.saving.load_model(os.path.join(run, "last.keras")).get_weights()
    assert any(not np.array_equal(b, w) for b, w in zip(best, last))  # best holds the average, last the raw


class _FakeClock(keras.callbacks.Callback):
    """Writes `EpochTiming`'s keys as if epoch `e` (1-based) took `seconds(e)`, 1 s of it validation."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds, self.elapsed = seconds, 0.0

    def on_epoch_end(self, epoch, logs=None):
        took = self.seconds(epoch + 1)
        self.elapsed += took
        logs.update(elapsed_s=self.elapsed, train_s=took - 1.0, val_s=1.0)


class _WeightsAt(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch + 1] = self.model.get_weights()


def _fit_under_budget(budget_s, seconds, planned=10, next_schedule=None):
    """Fits a one-layer model for `planned` epochs of 2 steps under a `TimeBudget` planned after epoch 2,
    with `_FakeClock` timings; returns `(history, budget, weights after each epoch, replans)`."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1, activation="sigmoid", name="conv")(inputs))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    replans = []
    budget = callbacks.TimeBudget(
        budget_s, planned, plan_at=2, test_share=1.0, on_replan=replans.append,
        make_schedule=next_schedule or (lambda epochs: keras.optimizers.schedules.CosineDecay(0.01, 2 * epochs)))
    weights = _WeightsAt()
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 4, 4, 3)), (rng.random((8, 4, 4, 1)) > 0.5).astype("float32")
    history = model.fit(x, y, batch_size=4, epochs=planned, verbose=2, shuffle=False,
                        callbacks=[_FakeClock(seconds), budget, weights, callbacks.ProgressWithoutTimings()])
    return history, budget, weights.weights, replans


def test_time_budget_cuts_the_run_and_replans_the_learning_rate(capsys):
    # After epoch 2 (20 s): 55 - 20 - 2 s reserved for the test report leaves 33 s, three 10-s epochs.
    # The new schedule is a learning rate of 0: if the traced training step kept the old one, the
    # weights would still move after epoch 2.
    history, budget, weights, replans = _fit_under_budget(
        55, lambda epoch: 10.0, next_schedule=lambda epochs: keras.optimizers.schedules.CosineDecay(0.0, 1))
    assert len(history.history["loss"]) == 5 and budget.epochs == 5 and replans == [5]
    assert budget.stopped_early is None
    printed = capsys.readouterr().out
    assert "Epoch 2/10" in printed and "Epoch 3/5" in printed and "Epoch 5/5" in printed
    assert "trains 5 epochs instead of the planned 10" in printed
    assert any(not np.array_equal(a, b) for a, b in zip(weights[1], weights[2]))  # it trained before
    for epoch in (3, 4, 5):
        for before, after in zip(weights[2], weights[epoch]):
            np.testing.assert_array_equal(before, after)


def test_time_budget_that_fits_changes_nothing():
    history, budget, _, replans = _fit_under_budget(1000, lambda epoch: 10.0)
    assert len(history.history["loss"]) == 10 and budget.epochs == 10 and replans == []


def test_time_budget_stops_before_an_epoch_that_would_overrun_it():
    # Planned for 5 epochs after epoch 2 as above; then epoch 3 takes 25 s: after it (45 s),
    # 55 - 45 - 2 = 8 s is left, less than an epoch.
    history, budget, _, replans = _fit_under_budget(55, lambda epoch: 10.0 if epoch <= 2 else 25.0)
    assert replans == [5] and budget.stopped_early == 3 and len(history.history["loss"]) == 3
