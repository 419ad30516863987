"""Data-parallel training: MirroredStrategy on two logical CPU devices matches one device."""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import (JAX_FAST_COMPILE, ROOT, TINY, TINY_GRAPH, TINY_GRAPH_AUTO_PRECISION, Result, build_once,
                      run_script)

pytest.importorskip("tensorflow")


def test_mirrored_on_two_cpu_devices_matches_one_device(synthetic_dir):
    result = run_script(os.path.join("tests", "mirrored_check.py"), synthetic_dir,
                        env={"KERAS_BACKEND": "tensorflow"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and "CPU:1" in report["description"]
    # Plain SGD (see mirrored_check.py), so a gradient summed instead of averaged over the replicas
    # would double every step: a gap as large as the change itself. Measured here: gaps of 1e-7 on
    # this data; other data sets showed up to 5% of the change, float32 round-off amplified by
    # instance norm on near-constant feature maps.
    assert report["max_weight_change"] > 0.01, report
    assert report["max_loss_gap"] < 2e-3, report
    assert report["max_weight_gap"] < 0.1 * report["max_weight_change"], report


def test_train_py_runs_mirrored_on_two_cpu_devices(synthetic_dir, tmp_path):
    script = ("import sys, tensorflow as tf\n"
              "cpu = tf.config.list_physical_devices('CPU')[0]\n"
              "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
              "import train\n"
              "sys.exit(train.main(sys.argv[1:]))\n")
    result = run_script("-c", script, "--data", synthetic_dir, "--out", str(tmp_path / "run"), "--epochs", "1",
                        *TINY_GRAPH, "--batch-size", "4", "--verbose", "2", "--distribute", "mirrored",
                        env={"KERAS_BACKEND": "tensorflow"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MirroredStrategy over" in result.stdout and "CPU:1" in result.stdout
    assert os.path.isfile(tmp_path / "run" / "metrics.json")


# 23 pairs: odd split sizes, so the last batches must be padded to shard over 2 devices.
# The basic U-Net: JAX compiles it faster on a CPU than the Improved one; the sharding is the same.
JAX_RUN = ("--limit", "23", "--epochs", "1", "--model", "basic", "--image-size", "32", "32", "--base-filters", "4",
           "--batch-size", "4", "--verbose", "2", "--distribute", "auto")


def _history(run_dir):
    with open(os.path.join(run_dir, "history.csv"), encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def jax_two_device_run(synthetic_dir, tmp_path_factory):
    """train.py under JAX `DataParallel` over two host devices of one process, run once per session
    (`build_once`: pytest-xdist's groups did not keep its two tests on one worker)."""
    pytest.importorskip("jax")

    def train(folder):
        run_dir = os.path.join(folder, "run")
        result = run_script("train.py", "--data", synthetic_dir, "--out", run_dir, *JAX_RUN[:-1], "mirrored",
                            env={"KERAS_BACKEND": "jax",
                                 "XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {JAX_FAST_COMPILE}"})
        assert result.returncode == 0, result.stderr[-3000:]
        return [[result.returncode, result.stdout, result.stderr], run_dir]

    result, run_dir = build_once(tmp_path_factory, "jax_two_device_run", train)
    return Result(*result), run_dir


def test_jax_data_parallel_on_two_cpu_devices(jax_two_device_run):
    result, run_dir = jax_two_device_run
    assert "DataParallel over 2 devices" in result.stdout
    assert os.path.isfile(os.path.join(run_dir, "metrics.json"))


def _free_port():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_jax_two_processes_match_one_process_on_two_devices(synthetic_dir, tmp_path, jax_two_device_run):
    # Each process feeds half of every batch (augmented as in one process) to its one device.
    _, reference_dir = jax_two_device_run
    run_dir = str(tmp_path / "run")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "jax",
           "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"localhost:{_free_port()}", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}
    env["XLA_FLAGS"] = JAX_FAST_COMPILE
    command = [sys.executable, "train.py", "--data", synthetic_dir, "--out", run_dir, *JAX_RUN]
    workers = [subprocess.Popen(command, cwd=ROOT, env={**env, "KERAS_DISTRIBUTION_PROCESS_ID": str(index)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for index in (0, 1)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    assert "DataParallel over 2 devices in 2 processes (this is process 0)" in outputs[0][0]
    assert "process 1: training done" in outputs[1][0]
    # Processes timing their own epochs could stop at different ones and wait for each other forever.
    assert "no time budget with 2 processes" in outputs[0][1]
    with open(os.path.join(run_dir, "config.json")) as handle:
        assert json.load(handle)["time_budget_minutes"] is None
    # The first process's folder is the run; the second's only has its own logs and checkpoints.
    assert os.path.isfile(os.path.join(run_dir, "metrics.json"))
    assert not os.path.exists(os.path.join(run_dir + ".process1", "metrics.json"))
    expected, got, other = _history(reference_dir), _history(run_dir), _history(run_dir + ".process1")
    assert len(got) == len(expected) == 1
    for want, row, row_other in zip(expected, got, other):
        for key in ("loss", "dice", "val_loss", "val_dice"):
            assert float(row[key]) == pytest.approx(float(want[key]), abs=2e-3), (key, row, want)
            assert float(row_other[key]) == float(row[key]), key  # one model, reported by both


def test_jax_multi_worker_without_keras_variables_is_a_clear_error(synthetic_dir, tmp_path):
    pytest.importorskip("jax")
    env = {"KERAS_BACKEND": "jax", **{name: "" for name in ("KERAS_DISTRIBUTION_JOB_ADDRESSES",
                                                            "KERAS_DISTRIBUTION_NUM_PROCESSES",
                                                            "KERAS_DISTRIBUTION_PROCESS_ID")}}
    result = run_script("train.py", "--data", synthetic_dir, "--out", str(tmp_path / "run"),
                        "--distribute", "multi-worker", env=env)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert "set KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES" in errors[0]
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("tf_config, expected", [
    (None, (True, None)),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, (True, "worker0")),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, (False, "worker1")),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, (False, "worker0")),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, (True, "chief0")),
])
def test_multi_worker_role_from_tf_config(monkeypatch, tf_config, expected):
    from lesion_unet import distribution

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert distribution.multi_worker_role("tensorflow") == expected


@pytest.mark.parametrize("variables, expected", [
    ({}, (True, None)),
    ({"KERAS_DISTRIBUTION_PROCESS_ID": "1"}, (True, None)),  # without a process count: not multi-process
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "0"}, (True, "process0")),
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "1"}, (False, "process1")),
])
def test_multi_worker_role_from_keras_variables(monkeypatch, variables, expected):
    from lesion_unet import distribution

    for name in distribution.JAX_PROCESS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert distribution.multi_worker_role("jax") == expected


def test_bad_process_id_is_a_clear_error(monkeypatch):
    from lesion_unet import distribution

    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "first")
    with pytest.raises(ValueError, match="KERAS_DISTRIBUTION_PROCESS_ID='first'"):
        distribution.multi_worker_role("jax")


def test_bad_tf_config_is_a_clear_error(monkeypatch):
    from lesion_unet import distribution

    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG: expected JSON"):
        distribution.multi_worker_role("tensorflow")


@pytest.mark.parametrize("builder", ["improved", "basic"])
def test_mixed_precision_on_a_cpu_is_bfloat16_with_a_float32_output(builder):
    import keras

    from lesion_unet import distribution
    from lesion_unet import losses
    from lesion_unet import metrics
    from lesion_unet.basic_unet import build_unet
    from lesion_unet.improved_unet import build_improved_unet

    try:
        assert distribution.set_mixed_precision(True) == "mixed_bfloat16"  # the suite runs without a GPU
        model = (build_improved_unet((16, 16), base_filters=2, depth=2) if builder == "improved"
                 else build_unet((16, 16), base_filters=2, depth=2))
        compute_dtypes = {layer.compute_dtype for layer in model.layers if layer.weights}
        assert "bfloat16" in compute_dtypes
        assert all(weight.dtype == "float32" for weight in model.weights)
        assert keras.backend.standardize_dtype(model.outputs[0].dtype) == "float32"
        prediction = model(keras.ops.ones((1, 16, 16, 3)))
        loss = losses.SegmentationLoss("dice_bce")(keras.ops.ones((1, 16, 16, 1)), prediction)
        assert keras.backend.standardize_dtype(loss.dtype) == "float32"
    finally:
        assert distribution.set_mixed_precision(False) == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("driver, smi, backend_sees_gpu, warns", [
    (True, False, False, True),    # driver loaded, CPU-only TensorFlow installed
    (False, True, False, True),    # nvidia-smi present
    (False, False, False, False),  # no GPU at all: nothing to say
    (True, True, True, False),     # the backend uses the GPU
])
def test_gpu_that_the_backend_misses_is_one_warning(driver, smi, backend_sees_gpu, warns, tmp_path, monkeypatch):
    from lesion_unet import distribution

    driver_path = tmp_path / "nvidia"
    if driver:
        driver_path.mkdir()
    monkeypatch.setattr(distribution, "NVIDIA_DRIVER_PATH", str(driver_path))
    monkeypatch.setattr(distribution.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if smi else None)
    monkeypatch.setattr(distribution, "accelerators", lambda: ["GPU"] if backend_sees_gpu else [])
    warning = distribution.gpu_fallback_warning()
    if not warns:
        assert warning is None
    else:
        assert warning.startswith("warning: this machine has an NVIDIA GPU") and "\n" not in warning
        assert 'pip install "tensorflow[and-cuda]>=2.16,<2.22"' in warning


def test_train_names_its_device_and_prints_the_gpu_warning(tmp_path, synthetic_dir, monkeypatch, capsys):
    from lesion_unet import distribution
    import keras
    import train

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(distribution, "gpu_fallback_warning", lambda: "warning: fake GPU unseen")
    monkeypatch.setattr(keras.Model, "fit", stop)  # what matters is said before training
    with pytest.raises(KeyboardInterrupt):
        train.main(["--data", synthetic_dir, "--out", str(tmp_path / "run"), "--epochs", "1", "--image-size", "32",
                    "32", "--base-filters", "4", "--verbose", "0"])
    captured = capsys.readouterr()
    assert "warning: fake GPU unseen" in captured.err
    summary = [line for line in captured.out.splitlines() if line.startswith("data:")]
    assert len(summary) == 1 and "| CPU (one device)" in summary[0]


# The flags lines of three real CPUs, shortened: an Intel Xeon with AMX, an AMD EPYC (Zen 4) and an
# older AMD EPYC with AVX2 only (the developers' machines have been all three).
CPU_FLAGS = {
    "intel_amx": "fpu vme sse2 avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8",
    "amd_zen4": "fpu vme sse2 fma avx2 avx512f avx512bw avx512_bf16 avx512_vnni",
    "amd_avx2": "fpu vme sse2 fma avx2 sha_ni",
}


def _cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: some CPU\n" + (f"flags\t\t: {flags}\n" if flags else "")
                    + "bogomips\t: 4000\n\nprocessor\t: 1\n")
    return str(path)


@pytest.mark.parametrize("cpu, expected", [("intel_amx", ["amx_bf16", "avx512_bf16"]),
                                           ("amd_zen4", ["avx512_bf16"]), ("amd_avx2", [])])
def test_native_bfloat16_flags_are_read_from_cpuinfo(tmp_path, cpu, expected):
    from lesion_unet import distribution

    assert distribution.native_bfloat16_flags(_cpuinfo(tmp_path, CPU_FLAGS[cpu])) == expected


def test_native_bfloat16_flags_are_none_without_a_readable_cpuinfo(tmp_path):
    from lesion_unet import distribution

    assert distribution.native_bfloat16_flags(str(tmp_path / "missing")) == []  # not Linux
    assert distribution.native_bfloat16_flags(_cpuinfo(tmp_path, "")) == []  # no flags line


def test_mixed_precision_is_automatic_only_when_not_asked(tmp_path, monkeypatch):
    from lesion_unet import distribution

    with_bf16, without = _cpuinfo(tmp_path, CPU_FLAGS["amd_zen4"]), str(tmp_path / "no_cpuinfo")
    assert distribution.choose_mixed_precision(None, with_bf16) == (
        True, "auto: this CPU computes bfloat16 natively (avx512_bf16)")
    enabled, reason = distribution.choose_mixed_precision(None, without)
    assert not enabled and reason.startswith("auto: this CPU has no native bfloat16")
    assert distribution.choose_mixed_precision(False, with_bf16) == (False, "--no-mixed-precision")
    assert distribution.choose_mixed_precision(True, without) == (True, "--mixed-precision")
    monkeypatch.setattr(distribution, "accelerators", lambda: ["GPU"])  # float16 on a GPU is not measured
    assert distribution.choose_mixed_precision(None, with_bf16)[0] is False
    assert distribution.choose_mixed_precision(True, with_bf16)[0] is True


@pytest.mark.parametrize("cpu, flags, expected", [("amd_zen4", [], True), ("amd_avx2", [], False),
                                                  ("amd_zen4", ["--no-mixed-precision"], False)])
def test_train_config_records_the_precision_and_why(synthetic_dir, tmp_path, monkeypatch, cpu, flags, expected):
    from lesion_unet import distribution
    import train
    from lesion_unet import training

    monkeypatch.setattr(distribution, "CPUINFO_PATH", _cpuinfo(tmp_path, CPU_FLAGS[cpu]))
    args = train.build_parser().parse_args(["--data", synthetic_dir, "--out", str(tmp_path / "run"), *TINY_GRAPH_AUTO_PRECISION,
                                              *flags])
    config = training.resolve_config(args)
    assert config["mixed_precision"] is expected
    assert config["mixed_precision_reason"].startswith("--no-" if flags else "auto: ")


def test_a_model_trained_in_bfloat16_is_saved_to_compute_in_float32(tmp_path):
    import keras
    import numpy as np

    from lesion_unet import callbacks
    from lesion_unet import distribution
    from lesion_unet.improved_unet import build_improved_unet

    try:
        distribution.set_mixed_precision(True)
        model = build_improved_unet((16, 16), base_filters=2, depth=2)
        path = str(tmp_path / "best.keras")
        callbacks.export_inference_model(model, path)
    finally:
        distribution.set_mixed_precision(False)
    loaded = keras.saving.load_model(path)
    assert {layer.dtype_policy.name for layer in loaded.layers} == {"float32"}
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), loaded.get_weights()))
    images = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    bfloat16, float32 = (keras.ops.convert_to_numpy(m(images)) for m in (model, loaded))
    # The same weights, other arithmetic: close, but not equal (bfloat16 keeps 8 bits of mantissa).
    assert 0 < np.abs(bfloat16 - float32).max() < 0.05


def test_a_mixed_precision_run_leaves_its_process_in_float32(synthetic_dir, tmp_path):
    import keras

    from conftest import run_main

    run_dir = str(tmp_path / "run")
    result = run_main("train.py", "--data", synthetic_dir, "--epochs", "1", "--out", run_dir, *TINY,
                      "--mixed-precision")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mixed_bfloat16" in result.stdout  # it did train in bfloat16
    assert keras.mixed_precision.global_policy().name == "float32"  # and a notebook's next model does not
    best = keras.saving.load_model(os.path.join(run_dir, "best.keras"))
    assert {layer.dtype_policy.name for layer in best.layers} == {"float32"}
