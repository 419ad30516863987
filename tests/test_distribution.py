"""Data-parallel training: MirroredStrategy on two logical CPU devices matches one device."""

import json
import os

import pytest

from conftest import ROOT, run_script

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
              f"sys.path.insert(0, {ROOT!r})\n"
              "import train\n"
              "sys.exit(train.main(sys.argv[1:]))\n")
    result = run_script("-c", script, "--data", synthetic_dir, "--out", str(tmp_path / "run"), "--epochs", "1",
                        "--image-size", "32", "32", "--base-filters", "4", "--batch-size", "4", "--verbose", "2",
                        "--distribute", "mirrored", env={"KERAS_BACKEND": "tensorflow"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MirroredStrategy over" in result.stdout and "CPU:1" in result.stdout
    assert os.path.isfile(tmp_path / "run" / "metrics.json")


def test_jax_data_parallel_on_two_cpu_devices(synthetic_dir, tmp_path):
    pytest.importorskip("jax")
    # 23 pairs: odd split sizes, so the last batches must be padded to shard over 2 devices.
    result = run_script("train.py", "--data", synthetic_dir, "--limit", "23", "--out", str(tmp_path / "run"),
                        "--epochs", "1",
                        "--image-size", "32", "32", "--base-filters", "4", "--batch-size", "4", "--verbose", "2",
                        "--distribute", "mirrored",
                        env={"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DataParallel over 2 devices" in result.stdout
    assert os.path.isfile(tmp_path / "run" / "metrics.json")


@pytest.mark.parametrize("tf_config, expected", [
    (None, (True, None)),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, (True, "worker0")),
    ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}, (False, "worker1")),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, (False, "worker0")),
    ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, (True, "chief0")),
])
def test_multi_worker_role_from_tf_config(monkeypatch, tf_config, expected):
    import distribution

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert distribution.multi_worker_role() == expected


def test_bad_tf_config_is_a_clear_error(monkeypatch):
    import distribution

    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG: expected JSON"):
        distribution.multi_worker_role()
