"""Shared fixtures: small synthetic data sets in the ISIC layout, and the project root on sys.path."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import synthetic  # noqa: E402

REAL_DATA = os.path.join(ROOT, "..", "shared", "data", "isic2017")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    """24 synthetic pairs of 48x64 (height x width) pixels: read-only for tests."""
    return synthetic.write_dataset(str(tmp_path_factory.mktemp("synthetic")), num_samples=24, shape=(48, 64), seed=3)


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    """Points train.py's default image cache at a temporary folder, for this process and its children."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield os.environ["XDG_CACHE_HOME"]
    if previous is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = previous


def run_script(*args, env=None, timeout=600):
    """Runs one of the project's scripts in a fresh Python process from the project root."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
