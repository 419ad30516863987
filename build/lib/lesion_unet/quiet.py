"""Loads Keras without the backend's start-up noise on the terminal.

TensorFlow prints about nine lines before any script can say a word: absl's "All log messages
before absl::InitializeLog()", "Could not find cuda drivers", "failed call to cuInit", which CPU
instructions the binary was built for. None of it is actionable for a user of this project, and
`TF_CPP_MIN_LOG_LEVEL` does not silence the absl lines. So the command-line tools load Keras
through `import_keras()`, which sends what the C++ side writes to stderr meanwhile through a filter:
the known start-up lines are dropped and everything else still reaches the terminal. A user who sets
`TF_CPP_MIN_LOG_LEVEL` gets TensorFlow's own behaviour, unfiltered.
"""

import contextlib
import os
import re
import sys
import tempfile
import threading

# Start-up lines of TensorFlow 2.16-2.21 that say nothing a user of this project can act on.
NOISE = re.compile(
    r"absl::InitializeLog\(\)"
    r"|cudart_stub\.cc|cuda_platform\.cc|cuda_executor\.cc|failed call to cuInit|Could not find cuda drivers"
    r"|cpu_feature_guard\.cc|This TensorFlow binary is optimized|rebuild TensorFlow with the appropriate compiler"
    r"|oneDNN custom operations are on|TF_ENABLE_ONEDNN_OPTS"
    r"|Unable to register cu(DNN|FFT|BLAS) factory|computation_placer\.cc|TF-TRT Warning"
    r"|Skipping registering GPU devices|Cannot dlopen some GPU libraries"
    # An E-level line of oneDNN's graph pass in TensorFlow 2.19-2.21 at the first training step, printed
    # on CPUs with AVX-512 too; TensorFlow simply keeps those int32 ops off oneDNN.
    r"|oneDNN supports DT_INT32 only on platforms with AVX-512"
)


@contextlib.contextmanager
def filtered_stderr(noise=NOISE):
    """Captures what anything in this process (C++ included) writes to file descriptor 2, then
    writes back the lines that `noise` does not match.

    Args:
        noise: compiled pattern of the lines to drop.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not noise.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@contextlib.contextmanager
def live_filtered_stderr(noise=NOISE):
    """Like `filtered_stderr`, but passes each kept line on as soon as it is complete: for a long
    block (a training run) whose warnings and notes the user should see when they happen.

    File descriptor 2 becomes a pipe that a thread reads; the thread writes the kept lines to the
    original stderr and ends when the block does.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not noise.search(line.decode("utf-8", "replace")):
                    os.write(saved, line)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread reads to its end and stops
        thread.join(timeout=10)
        os.close(saved)


def import_keras():
    """Imports and returns `keras`, its backend's start-up noise filtered from stderr (see the module
    docstring); devices are initialised inside the filter too, where TensorFlow reports cuInit."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:  # the user's own choice wins
        import keras
        return keras
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # TensorFlow's C++ INFO and WARNING lines, e.g. oneDNN's DT_INT32 note
    with filtered_stderr():
        import keras
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf
            tf.config.list_physical_devices()
    return keras
