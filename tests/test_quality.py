"""The quality estimate (`quality.py`): golden features on hand-made probability maps, the fit and its
operating point, the archive round trip, and the same values from predict.py, evaluate.py, the web app
and an exported ONNX model."""

import csv
import json
import os
import shutil
import zipfile

import numpy as np
import pytest

from lesion_unet import quality
from conftest import hand_quality_model, run_main


def _blob(size=16):
    p = np.zeros((size, size))
    p[4:12, 4:12] = 0.95
    return p


def _fuzzy():
    p = np.zeros((16, 16))
    p[3:13, 3:13] = 0.3
    p[5:11, 5:11] = 0.6
    return p


def _two_regions():
    p = np.zeros((16, 16))
    p[2:6, 2:6] = 0.9
    p[9:14, 9:14] = 0.8
    return p


def _at_border():
    p = np.zeros((16, 16))
    p[0:6, 4:10] = 0.9
    return p


# Worked by hand: entropy of the clean blob = 64/256 * H(0.95) (+ 192 near-zero pixels); the fuzzy map
# has 100 pixels in (0.2, 0.8) and 36 at >= 0.5; the two regions hold 16 and 25 pixels; the border blob
# covers 6 of the 60 outermost pixels.
GOLDEN = {
    "clean blob": (_blob, {"mean_probability_inside": 0.95, "uncertain_ratio": 0.0, "entropy": 0.071615,
                           "regions": 1, "largest_share": 1.0, "border_share": 0.0, "lesion_share": 0.25}),
    "fuzzy blob": (_fuzzy, {"mean_probability_inside": 0.6, "uncertain_ratio": 100 / 36, "entropy": 0.356876,
                            "regions": 1, "largest_share": 1.0, "border_share": 0.0, "lesion_share": 36 / 256}),
    "two regions": (_two_regions, {"mean_probability_inside": (16 * 0.9 + 25 * 0.8) / 41, "uncertain_ratio": 0.0,
                                   "entropy": 0.099831, "regions": 2, "largest_share": 25 / 41,
                                   "border_share": 0.0, "lesion_share": 41 / 256}),
    "at the border": (_at_border, {"mean_probability_inside": 0.9, "uncertain_ratio": 0.0, "entropy": 0.065971,
                                   "regions": 1, "largest_share": 1.0, "border_share": 6 / 60,
                                   "lesion_share": 36 / 256}),
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_features_of_hand_made_maps(name):
    make, expected = GOLDEN[name]
    features = quality.image_features(make())
    assert list(features) == list(quality.FEATURES)
    for key, value in expected.items():
        assert features[key] == pytest.approx(value, abs=1e-6), key


def test_empty_map_is_flagged_with_expected_dice_zero():
    model = _hand_model()
    features = quality.image_features(np.full((16, 16), 0.1))
    assert features["lesion_share"] == 0 and features["mean_probability_inside"] == 0 and features["largest_share"] == 1
    assert quality.assess(model, np.full((16, 16), 0.1)) == {"expected_dice": 0.0, "review": True, "risk": None}
    assert quality.assess(None, _blob()) == {"expected_dice": None, "review": None, "risk": None}


def _hand_model(flag_risk=0.5):
    return hand_quality_model(flag_risk)


def test_assess_golden_values():
    model = _hand_model()
    clean, fuzzy = model.assess(_blob()), model.assess(_fuzzy())
    # clean: log(0.01) + 2 = -2.6052 -> risk 0.068806; expected 0.95 - 0.65 * risk
    assert clean["risk"] == pytest.approx(1 / (1 + np.exp(-(np.log(0.01) + 2))), rel=1e-9)
    assert clean["risk"] == pytest.approx(0.068806, abs=1e-6)
    assert clean["expected_dice"] == pytest.approx(0.95 - 0.65 * clean["risk"]) and clean["review"] is False
    # fuzzy: log(2.7878) + 2 = 3.0252 -> risk 0.953702, flagged
    assert fuzzy["risk"] == pytest.approx(0.953702, abs=1e-6) and fuzzy["review"] is True
    assert fuzzy["expected_dice"] == pytest.approx(0.95 - 0.65 * fuzzy["risk"])
    results = [clean, fuzzy, {"expected_dice": 0.0, "review": True, "risk": None}]
    assert quality.review_order(results) == [2, 1, 0]  # empty first, then by falling risk
    assert quality.review_order([{"review": None, "risk": None}, clean]) == [1, 0]


def _synthetic_rows(count=400, seed=0):
    """Rows whose failures (Dice < 0.7) grow with uncertain_ratio, and a feature that is noise."""
    rng = np.random.default_rng(seed)
    ratio = rng.lognormal(-1.5, 1.0, count)
    dice = np.clip(0.97 - 0.25 * ratio + rng.normal(0, 0.05, count), 0, 1)
    rows = [{"uncertain_ratio": float(r), "mean_probability_inside": float(rng.uniform(0.8, 1.0)),
             "entropy": 0.1, "regions": 1.0, "largest_share": 1.0, "border_share": float(rng.uniform(0, 0.2)),
             "lesion_share": float(rng.uniform(0.05, 0.6))} for r in ratio]
    groups = [f"image_{index // 4}" for index in range(count)]  # four copies of each image
    return rows, dice, groups


def test_fit_chooses_the_signal_and_sets_the_operating_point():
    rows, dice, groups = _synthetic_rows()
    names, auc = quality.select_features(rows, dice, groups)
    assert names == ["uncertain_ratio"] and auc > 0.9
    model, out_of_fold = quality.fit_quality_model(rows, dice, groups, names, false_flag_rate=0.10)
    good = dice >= quality.FAILURE_DICE
    flagged = np.array([model.risk(row) >= model.flag_risk for row in rows])
    assert flagged[good].mean() == pytest.approx(0.10, abs=1 / good.sum() + 1e-9)  # the operating point, in sample
    assert flagged[~good].mean() > 0.8
    assert out_of_fold["n_images"] == 400 and out_of_fold["n_failures"] == int((~good).sum())
    assert out_of_fold["auc"] > 0.9 and out_of_fold["caught"] > 0.75
    assert out_of_fold["mean_expected"] == pytest.approx(out_of_fold["mean_dice"], abs=0.02)  # calibrated
    assert np.all(np.diff(model.dice_knots) <= 0) and np.all(np.diff(model.risk_knots) >= 0)
    assert model.fitted_on["images"] == 100 and model.fitted_on["rows"] == 400
    assert quality.QualityModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model


def test_quality_report_golden_values():
    report = quality.quality_report(expected=[0.95, 0.9, 0.6, 0.85, 0.0], review=[False, False, True, True, True],
                                    risk=[0.05, 0.1, 0.7, 0.3, None], dice=[0.96, 0.5, 0.4, 0.9, 0.0])
    # failures: 0.5 (risk 0.1), 0.4 (0.7), 0.0 (None = riskiest); successes: 0.05, 0.3. Pairs ranked
    # right: (0.7, 0.3), (0.7, 0.05), (1, 0.3), (1, 0.05), (0.1, 0.05) = 5 of 6.
    assert report["auc"] == pytest.approx(5 / 6)
    assert report["caught"] == pytest.approx(2 / 3) and report["flagged"] == pytest.approx(3 / 5)
    assert report["n_failures"] == 3 and report["mean_dice"] == pytest.approx(2.76 / 5)
    assert [(row["low"], row["n_images"]) for row in report["bins"]] == [(0.0, 2), (0.85, 1), (0.9, 1), (0.95, 1)]
    assert report["bins"][0]["mean_expected"] == pytest.approx(0.3) and report["bins"][0]["mean_dice"] == pytest.approx(0.2)


@pytest.mark.parametrize("change, message", [
    ({"features": ["colour"]}, "features must be names"),
    ({"coefficients": [1.0, 2.0]}, "one mean, scale and coefficient"),
    ({"risk_knots": [1.0, 0.0]}, "risk_knots must be increasing"),
    ({"scale": [0.0]}, "scales must be positive"),
    ({"intercept": float("nan")}, "every number must be finite"),
    ({"extra": 1}, "unknown field(s) extra"),
])
def test_malformed_quality_models_are_refused(change, message):
    values = {**_hand_model().to_dict(), **change}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        quality.QualityModel.from_dict(values, "model.keras")


@pytest.fixture(scope="session")
def rated_run(exported):
    """The shared exported run (conftest): its best.keras carries `_hand_model()`, its best.onnx.json too."""
    return exported[0]


def test_the_quality_model_travels_in_the_keras_file_and_the_onnx_json(rated_run, tmp_path):
    from lesion_unet import inference

    assert inference.load_quality_model(os.path.join(rated_run, "best.keras")) == _hand_model()
    model_path = str(tmp_path / "best.keras")  # a copy: other tests read the shared run at the same time
    shutil.copy(os.path.join(rated_run, "best.keras"), model_path)
    inference.load_model(model_path)  # Keras still loads the archive, in safe mode
    with zipfile.ZipFile(model_path) as archive:
        assert archive.namelist().count(quality.QUALITY_MEMBER) == 1
    quality.attach_to_keras(_hand_model(0.4), model_path)  # replaced, not added twice
    with zipfile.ZipFile(model_path) as archive:
        assert archive.namelist().count(quality.QUALITY_MEMBER) == 1
    assert inference.load_quality_model(model_path).flag_risk == 0.4
    inference.load_model(model_path)
    assert inference.load_quality_model(os.path.join(rated_run, "best.onnx")) == _hand_model()


def test_a_model_without_one_and_a_damaged_one_say_unknown(trained_run, tmp_path, caplog):
    from lesion_unet import inference

    assert inference.load_quality_model(os.path.join(trained_run[0], "best.keras")) is None
    damaged = tmp_path / "damaged.keras"
    shutil.copy(os.path.join(trained_run[0], "best.keras"), damaged)
    with zipfile.ZipFile(damaged, "a") as archive:
        archive.writestr(quality.QUALITY_MEMBER, "{not json")
    assert inference.load_quality_model(str(damaged)) is None
    assert f"{damaged}: its {quality.QUALITY_MEMBER} is not JSON" in caplog.text


def _read_table(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_predict_writes_the_review_list_worst_first_and_onnx_agrees(rated_run, synthetic_dir, tmp_path):
    from lesion_unet import inference
    from lesion_unet import lesion_files

    images = os.path.join(synthetic_dir, "images")
    result = run_main("predict.py", rated_run, images, "--out", str(tmp_path / "keras"), "--no-progress")
    assert result.returncode == 0, result.stderr
    table = _read_table(tmp_path / "keras" / "predictions.csv")
    assert len(table) == 24 and list(table[0]) == ["id", "image", "lesion_pixels", "lesion_percent",
                                                   "expected_dice", "review", "risk"]
    flagged = sum(row["review"] == "yes" for row in table)
    assert f"review: {flagged} of 24 mask(s) flagged to check by eye" in result.stdout
    risks = [1.0 if row["risk"] == "" else float(row["risk"]) for row in table]
    assert risks == sorted(risks, reverse=True)  # worst first
    # each row is what quality.assess says of the model's own probability map
    model, hand = inference.load_model(os.path.join(rated_run, "best.keras")), _hand_model()
    for row in table[:3]:
        image = lesion_files.read_image(row["image"], (32, 32)).astype(np.float32)[None] / 255.0
        expected = hand.assess(inference.predict_batch(model, image)[0])
        assert float(row["expected_dice"]) == pytest.approx(expected["expected_dice"], abs=1e-4)
        assert row["review"] == ("yes" if expected["review"] else "no")
        mask = lesion_files.read_mask(str(tmp_path / "keras" / f"{row['id']}_segmentation.png"))
        assert int(row["lesion_pixels"]) == np.count_nonzero(mask)
    result = run_main("predict.py", os.path.join(rated_run, "best.onnx"), images, "--out", str(tmp_path / "onnx"),
                      "--no-progress")
    assert result.returncode == 0, result.stderr
    by_id = {row["id"]: row for row in _read_table(tmp_path / "onnx" / "predictions.csv")}
    for row in table:
        assert float(by_id[row["id"]]["expected_dice"]) == pytest.approx(float(row["expected_dice"]), abs=2e-3)


def test_predict_without_a_quality_model_says_unknown_and_keeps_a_foreign_table(trained_run, synthetic_dir, tmp_path):
    image = os.path.join(synthetic_dir, "images", "synthetic_0000.jpg")
    result = run_main("predict.py", trained_run[0], image, "--out", str(tmp_path), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "review: unknown (this model carries no quality estimate)" in result.stdout
    (row,) = _read_table(tmp_path / "predictions.csv")
    assert (row["review"], row["expected_dice"], row["risk"]) == ("unknown", "", "")
    other = tmp_path / "other"
    other.mkdir()
    (other / "predictions.csv").write_text("patient,diagnosis\n1,naevus\n")
    result = run_main("predict.py", trained_run[0], image, "--out", str(other), "--no-progress")
    assert result.returncode == 2 and "predictions.csv" in result.stderr and "--overwrite" in result.stderr
    assert (other / "predictions.csv").read_text() == "patient,diagnosis\n1,naevus\n"


def test_evaluate_reports_how_the_estimate_ranked_failures(rated_run, synthetic_dir, tmp_path):
    out = tmp_path / "report"
    result = run_main("evaluate.py", os.path.join(rated_run, "best.keras"), "--data", synthetic_dir,
                      "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "quality estimate (failure: Dice < 0.7)" in result.stdout and "quality.png" in result.stdout
    with open(out / "metrics.json") as handle:
        summary = json.load(handle)
    per_image = _read_table(out / "per_image.csv")
    report = summary["quality"]
    assert report["n_images"] == 24 == len(per_image)
    failures = [row for row in per_image if float(row["dice"]) < 0.7]
    assert report["n_failures"] == len(failures)
    flagged = [row for row in per_image if row["review"] == "True"]
    assert report["flagged"] == pytest.approx(len(flagged) / 24)
    assert report["mean_expected"] == pytest.approx(np.mean([float(row["expected_dice"]) for row in per_image]),
                                                    abs=1e-5)
    assert (out / "quality.png").stat().st_size > 10_000


def test_protocol_measures_each_copy_as_evaluate_scores_it(synthetic_dir):
    """`protocol.py quality`'s `measure`: per copy, the Dice that evaluate.py gives the unshifted image and the
    features of the model-size map; combined shifts are named with '+'."""
    from lesion_unet import quiet

    quiet.import_keras()
    from lesion_unet.protocol import quality_fit as quality_protocol
    from lesion_unet import inference
    from lesion_unet import lesion_files
    from lesion_unet import scoring
    from lesion_unet import settings

    model = inference.load_model(settings.DEFAULT_MODEL)
    pairs = lesion_files.find_pairs(*lesion_files.resolve_folders(synthetic_dir))[:3]
    rows = quality_protocol.measure(model, pairs, [("none",), ("zoom", "dark")], progress=False)
    assert [(row["id"], row["condition"]) for row in rows] == [
        *[(pair.id, "none") for pair in pairs], *[(pair.id, "zoom+dark") for pair in pairs]]
    scored = scoring.evaluate_pairs(model, pairs, postprocess=True, progress=False)
    assert [row["dice"] for row in rows[:3]] == pytest.approx([row["dice"] for row in scored], abs=1e-9)
    image = lesion_files.read_image(pairs[0].image_path, inference.model_image_size(model)).astype(np.float32) / 255
    features = quality.image_features(inference.predict_batch(model, image[None])[0])
    assert {key: rows[0][key] for key in quality.FEATURES} == pytest.approx(features, abs=1e-3)
