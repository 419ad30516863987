"""Shared fixtures: small synthetic data sets in the ISIC layout, one tiny trained run, and two ways
to run a script: in this process (fast) or in a fresh one. `pytest.ini` puts the project's root on
the import path (`pythonpath`)."""

import collections
import contextlib
import importlib
import io
import os
import subprocess
import sys

import pytest

from lesion_unet import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The real ISIC 2017 copy: data/isic2017 in the clone, as the docs build it (docs/how-to/real-data.md),
# or the developers' shared copy beside the clone; tests that need it skip, saying how to build it.
REAL_DATA = next((path for path in (os.path.join(ROOT, "data", "isic2017"),
                                    os.path.join(ROOT, "..", "shared", "data", "isic2017")) if os.path.isdir(path)),
                 os.path.join(ROOT, "data", "isic2017"))
NO_REAL_DATA = f"real data not found at {REAL_DATA}; docs/how-to/real-data.md builds it"
# train.py flags for a run of seconds: a 4-filter basic U-Net on 32x32 images, run eagerly. Tests of
# the run's plumbing use it: TensorFlow builds its training step 3x faster than the Improved U-Net's
# (10 s against 29 s here), and a few tiny steps run faster eagerly than tracing them takes (a 2-epoch
# run: 7 s against 14 s). `TINY_GRAPH` is the traced path, which real runs take: the mirrored test,
# `test_demo_default` and `test_run_eagerly_matches_the_traced_step` use it (the JAX runs have their
# own flags, traced); `trained_run` and the model tests cover the Improved U-Net.
#
# Both pin float32: on a CPU with native bfloat16 a run left to choose trains in bfloat16, whose rounding
# differs between the eager and traced paths, between one and two devices and between a run and its
# resumption, so tests that compare two runs' numbers would hold only on CPUs without it.
# `TINY_GRAPH_AUTO_PRECISION` leaves the choice to the run, for the tests of that choice.
TINY_GRAPH_AUTO_PRECISION = ["--model", "basic", "--image-size", "32", "32", "--base-filters", "4",
                             "--batch-size", "8", "--verbose", "0"]
TINY_GRAPH = [*TINY_GRAPH_AUTO_PRECISION, "--no-mixed-precision"]
TINY = [*TINY_GRAPH, "--run-eagerly"]
Result = collections.namedtuple("Result", "returncode stdout stderr")


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


def run_main(script, *args):
    """Runs a script's `main` in this process as its command line would (`errors.run_cli`: bad input
    is one `error:` line and status 2), capturing what it prints.

    Args:
        script: e.g. `"train.py"`.
        *args: its arguments.

    Returns:
        A `Result(returncode, stdout, stderr)`, as `run_script` gives.
    """
    from lesion_unet.errors import run_cli

    module = importlib.import_module(script.removesuffix(".py"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = run_cli(module.main, list(args))
        except SystemExit as exit_:  # argparse's own exits (--help, a bad flag)
            status = exit_.code
    return Result(status, out.getvalue(), err.getvalue())


def build_once(tmp_path_factory, name, build):
    """Builds something once per test session for all pytest-xdist workers: the first worker to ask
    builds it under a lock (`build(folder)`, returning JSON-able data), the others wait and reuse it.

    A run trained twice, once per worker, cost both cores 50 s; waiting for the other worker's costs
    one core less.
    """
    import fcntl
    import json

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder = root / f"shared_{name}"
    with open(root / f"shared_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even if the build fails
        done = folder / "built.json"
        if not done.exists():
            folder.mkdir(exist_ok=True)
            done.write_text(json.dumps(build(str(folder))))
        return json.loads(done.read_text())


@pytest.fixture(scope="session")
def trained_run(synthetic_dir, tmp_path_factory):
    """`(run_dir, result)`: one tiny 2-epoch `train.py` run on `synthetic_dir`, trained once per test
    session (`build_once`) and shared by every test that needs a finished run; copy it before changing it."""

    def train(folder):
        run_dir = os.path.join(folder, "tiny")
        result = run_main("train.py", "--data", synthetic_dir, "--epochs", "2", "--out", run_dir, *TINY,
                          "--model", "improved", "--verbose", "2")  # the later flag wins
        assert result.returncode == 0, result.stderr[-3000:]
        return [run_dir, list(result)]

    run_dir, result = build_once(tmp_path_factory, "trained_run", train)
    return run_dir, Result(*result)


def hand_quality_model(flag_risk=0.5):
    """A hand-made `quality.QualityModel`: risk = sigmoid(log(uncertain_ratio + 0.01) + 2); expected Dice
    falls linearly from 0.95 (risk 0) to 0.3 (risk 1); flagged at `flag_risk`."""
    from lesion_unet import quality

    return quality.QualityModel(features=["uncertain_ratio"], mean=[0.0], scale=[1.0], coefficients=[1.0],
                                intercept=2.0, risk_knots=[0.0, 1.0], dice_knots=[0.95, 0.3], flag_risk=flag_risk)


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory):
    """`(run_dir, onnx_path)`: a copy of the shared tiny run whose best.keras carries `hand_quality_model()`,
    exported with export.py's defaults (`best.onnx` and its `.onnx.json` beside it), once per session
    (`build_once`); copy a file before changing it."""
    import shutil

    from lesion_unet import quality

    def export(folder):
        run = os.path.join(folder, "run")
        shutil.copytree(trained_run[0], run)
        quality.attach_to_keras(hand_quality_model(), os.path.join(run, "best.keras"))
        result = run_main("export.py", run, "--format", "onnx")
        assert result.returncode == 0, result.stderr[-3000:]
        return [run, os.path.join(run, "best.onnx")]

    return tuple(build_once(tmp_path_factory, "exported", export))


@pytest.fixture(scope="session")
def basic_run(synthetic_dir, tmp_path_factory):
    """A tiny 2-epoch basic U-Net run (`TINY`) on `synthetic_dir`, shared like `trained_run`: for the
    tests of resuming, where the model does not matter and the basic one reloads 3x faster."""

    def train(folder):
        run_dir = os.path.join(folder, "basic")
        result = run_main("train.py", "--data", synthetic_dir, "--epochs", "2", "--out", run_dir, *TINY)
        assert result.returncode == 0, result.stderr[-3000:]
        return run_dir

    return build_once(tmp_path_factory, "basic_run", train)


# JAX's default optimisation makes compiling the tiny test models take 3x longer than at level 0
# (46 s against 14 s for one Improved U-Net step here); their speed does not matter.
JAX_FAST_COMPILE = "--xla_backend_optimization_level=0"


def run_script(*args, env=None, timeout=600):
    """Runs one of the project's scripts in a fresh Python process from the project root."""
    # PYTHONPATH: a script under tests/ or benchmarks/ imports the package as the root's scripts do.
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": path, **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
