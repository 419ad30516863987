"""export.py to ONNX, and predict.py / evaluate.py running the exported model with ONNX Runtime,
without TensorFlow: the same probabilities and masks as the Keras model."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from lesion_unet import inference
from lesion_unet import lesion_files
from lesion_unet import settings
from conftest import NO_REAL_DATA, REAL_DATA, run_main, run_script

pytest.importorskip("onnxruntime")


def test_export_writes_the_model_and_its_pipeline(exported):
    run, onnx_path = exported
    with open(onnx_path + ".json") as handle:
        description = json.load(handle)
    assert description["input"]["shape"] == ["batch", 32, 32, 3] and description["input"]["channel_order"] == "RGB"
    assert description["output"]["shape"] == ["batch", 32, 32, 1]
    assert description["mask"]["threshold"] == 0.5 and "largest" in description["mask"]["postprocess"]
    assert description["input"]["remove_hair"].startswith("optional, off by default") and "at least 50 grey" in \
        description["input"]["remove_hair"]  # hair_removal.HAIR_LEVEL, in words
    assert not [name for name in os.listdir(run) if ".tmp" in name]


def test_onnx_probabilities_match_keras(exported, synthetic_dir):
    run, onnx_path = exported
    keras_model = inference.load_model(os.path.join(run, "best.keras"))
    onnx_model = inference.load_model(onnx_path)
    assert onnx_model.input_shape[1:] == (32, 32, 3)
    pairs = lesion_files.find_pairs(*lesion_files.resolve_folders(synthetic_dir))
    images = np.stack([lesion_files.read_image(p.image_path, (32, 32)) for p in pairs]).astype(np.float32) / 255
    for tta in (False, True):
        difference = np.abs(inference.predict_batch(onnx_model, images, tta) - inference.predict_batch(keras_model, images, tta))
        assert difference.max() <= 1e-4, (tta, difference.max())


def test_predict_with_onnx_imports_no_tensorflow_and_writes_the_same_masks(exported, synthetic_dir, tmp_path):
    run, onnx_path = exported
    images = os.path.join(synthetic_dir, "images")
    code = ("import sys, predict\n"
            f"predict.main([{onnx_path!r}, {images!r}, '--out', {str(tmp_path / 'onnx')!r}, '--no-progress'])\n"
            "print(sorted({'keras', 'tensorflow', 'jax', 'torch'} & set(sys.modules)))\n")
    result = run_script("-c", code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "[]"
    assert run_main("predict.py", os.path.join(run, "best.keras"), images, "--out", str(tmp_path / "keras"),
                    "--no-progress").returncode == 0
    names = sorted(name for name in os.listdir(tmp_path / "keras") if name != "predictions.csv")
    assert names == sorted(os.listdir(tmp_path / "onnx"))[1:] and len(names) == 24  # after predictions.csv
    same = [np.mean(np.asarray(Image.open(tmp_path / "onnx" / n)) == np.asarray(Image.open(tmp_path / "keras" / n)))
            for n in names]
    assert min(same) >= 0.999


def test_evaluate_with_onnx_imports_no_tensorflow(exported, synthetic_dir, tmp_path):
    _, onnx_path = exported
    code = ("import sys, evaluate\n"
            f"evaluate.main([{onnx_path!r}, '--data', {synthetic_dir!r}, '--out', {str(tmp_path / 'r')!r}, "
            "'--no-progress'])\n"
            "print(sorted({'keras', 'tensorflow', 'jax', 'torch'} & set(sys.modules)))\n")
    result = run_script("-c", code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "[]" and os.path.isfile(tmp_path / "r" / "metrics.json")


def test_evaluate_with_onnx_scores_as_keras(exported, synthetic_dir, tmp_path):
    run, onnx_path = exported
    rows = {}
    for name, model in (("onnx", onnx_path), ("keras", os.path.join(run, "best.keras"))):
        result = run_main("evaluate.py", model, "--data", synthetic_dir, "--out", str(tmp_path / name), "--no-progress")
        assert result.returncode == 0, result.stderr[-3000:]
        with open(tmp_path / name / "per_image.csv") as handle:
            rows[name] = list(csv.DictReader(handle))
    assert len(rows["onnx"]) == 24
    for got, want in zip(rows["onnx"], rows["keras"]):
        assert got["id"] == want["id"] and float(got["dice"]) == pytest.approx(float(want["dice"]), abs=2e-3)


def test_export_errors_are_one_line(tmp_path):
    result = run_main("export.py", str(tmp_path / "missing.keras"))
    assert result.returncode == 2 and "missing.keras: no such run folder or model file" in result.stderr
    model = tmp_path / "best.keras"
    model.write_bytes(b"a model to keep")
    result = run_main("export.py", str(model), "--out", str(model))  # a slip that would replace the model
    assert result.returncode == 2 and "best.keras: --out must name a .onnx file" in result.stderr
    assert model.read_bytes() == b"a model to keep"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    Image.new("RGB", (20, 16)).save(tmp_path / "photo.png")  # the images are checked first
    result = run_main("predict.py", str(bad), str(tmp_path), "--out", str(tmp_path / "m"))
    assert result.returncode == 2 and "bad.onnx: cannot load this ONNX model" in result.stderr


def _onnx_model(path, inputs, nodes):
    """A small ONNX model: `inputs` as `(name, element type)`, output `y`, float (batch, 32, 32, 1)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "odd", [helper.make_tensor_value_info(name, kind, ["batch", 32, 32, 3]) for name, kind in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32, 32, 1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def test_export_and_onnx_models_it_cannot_take_are_one_line(exported, tmp_path):
    from onnx import TensorProto, helper

    run, onnx_path = exported
    result = run_main("export.py", onnx_path)  # already ONNX: the AttributeError before
    assert result.returncode == 2 and "best.onnx: export.py converts a .keras model; this one is ONNX already" \
        in result.stderr
    folder = tmp_path / "dir.onnx"
    folder.mkdir()
    result = run_main("export.py", os.path.join(run, "best.keras"), "--out", str(folder))
    assert result.returncode == 2 and "dir.onnx: a folder, not a file" in result.stderr and os.listdir(folder) == []
    slice_channel = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])]
    constants = [helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [1], [v]))
                 for name, v in (("starts", 0), ("ends", 1), ("axes", 3))]
    two_inputs = _onnx_model(tmp_path / "two.onnx", [("x", TensorProto.FLOAT), ("z", TensorProto.FLOAT)],
                             constants + slice_channel)
    integers = _onnx_model(tmp_path / "int64.onnx", [("raw", TensorProto.INT64)],
                           [helper.make_node("Cast", ["raw"], ["x"], to=TensorProto.FLOAT)] + constants + slice_channel)
    Image.new("RGB", (20, 16)).save(tmp_path / "photo.png")
    for model, expected in ((two_inputs, "two.onnx: the ONNX model has 2 input(s) and 1 output(s)"),
                            (integers, "int64.onnx: the ONNX model takes tensor(int64), not float32 images")):
        out = tmp_path / f"masks_{os.path.basename(model)}"
        result = run_main("predict.py", model, str(tmp_path / "photo.png"), "--out", str(out))
        assert result.returncode == 2 and expected in result.stderr, result.stderr[-2000:]
        assert not out.exists()  # refused before the folder was made


@pytest.mark.skipif(not os.path.isdir(REAL_DATA), reason=NO_REAL_DATA)
def test_pretrained_onnx_matches_keras_on_real_images(tmp_path):
    onnx_path = str(tmp_path / "improved_unet.onnx")
    assert run_main("export.py", "--out", onnx_path).returncode == 0
    pairs = lesion_files.find_pairs(*lesion_files.resolve_folders(REAL_DATA))
    test = lesion_files.select_pairs(pairs, lesion_files.split_pairs(pairs, seed=0)["test"][:40])
    keras_model, onnx_model = inference.load_model(settings.DEFAULT_MODEL), inference.load_model(onnx_path)
    paths = [pair.image_path for pair in test]
    worst, same = 0.0, []
    for (_, want), (_, got) in zip(inference.predict_files(keras_model, paths, progress=False),
                                   inference.predict_files(onnx_model, paths, progress=False)):
        worst = max(worst, float(np.abs(got - want).max()))
        same.append(np.mean(inference.to_mask(got, postprocess=True) == inference.to_mask(want, postprocess=True)))
    assert worst <= 1e-4 and min(same) >= 0.999, (worst, min(same))


def test_app_serves_an_onnx_model_without_tensorflow_and_stops_on_ctrl_c(exported, synthetic_dir, tmp_path):
    """app.py end to end in its own process: the address it prints answers, the mask equals
    predict.py's with the same .onnx, TensorFlow is never imported, and Ctrl+C stops it cleanly."""
    import signal
    import subprocess
    import sys
    import urllib.request

    from conftest import ROOT

    _, onnx_path = exported
    image = os.path.join(synthetic_dir, "images", "synthetic_0003.jpg")
    assert run_main("predict.py", onnx_path, image, "--out", str(tmp_path), "--no-progress").returncode == 0
    code = ("import sys, app\n"
            "try:\n"
            f"    app.main([{onnx_path!r}, '--port', '0'])\n"
            "finally:\n"
            "    print(sorted({'keras', 'tensorflow', 'jax', 'torch'} & set(sys.modules)), flush=True)\n")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        first = process.stdout.readline()
        assert first.startswith(f"Serving {onnx_path} at http://127.0.0.1:"), first + process.stderr.read()
        url = first.split(" at ")[1].split()[0]
        with open(image, "rb") as handle:
            request = urllib.request.Request(f"{url}api/segment?name=synthetic_0003.jpg", data=handle.read(),
                                             method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        with urllib.request.urlopen(url + answer["files"]["mask_png"].lstrip("/"), timeout=60) as response:
            assert response.read() == (tmp_path / "synthetic_0003_segmentation.png").read_bytes()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()  # not left serving after the test
            raise
    assert process.returncode == 0 and out.splitlines()[-2:] == ["stopped", "[]"], out + err
