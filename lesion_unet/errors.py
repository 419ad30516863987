"""The project's error for bad input, and the wrapper that turns it into one line and exit code 2."""

import logging
import os
import signal
import sys
import threading
import warnings


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it ends as an interrupt does: temporary files
    removed, a half-made run undone (`run_cli` installs the handler)."""


def _raise_terminated(signum, frame):
    raise Terminated()


class InputError(ValueError):
    """Bad input from the user: a file or folder that is missing, unreadable or inconsistent.

    The message names the file or folder and says what to do; command-line tools print it as one
    line, without a traceback, and exit with status 2.
    """


def run_cli(main, argv=None):
    """Runs a script's `main(argv)`, turning `InputError` into one line on stderr and status 2.

    Args:
        main: the script's `main(argv=None)`.
        argv: arguments, or `None` for `sys.argv[1:]`.

    Returns:
        The process exit status: `main`'s own (0 when it returns `None`), 2 for bad input, or 130
        when interrupted.
    """
    # The project's notes (INFO) reach the user; other libraries' INFO lines (e.g. matplotlib's
    # "generated new fontManager" on a first run) do not.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("lesion_unet").setLevel(logging.INFO)
    # The scripts read large photos on purpose (a big JPEG is decoded at reduced scale); Pillow's
    # warning for one over 89 megapixels would read as an attack. Its hard limit still stops with a
    # clear error (lesion_files._open).
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit .* decompression bomb")
    # By default SIGTERM ends the process where it stands, leaving a half-written file behind; as an
    # exception it unwinds through the same clean-up as Ctrl-C. (Signals reach the main thread only.)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        status = main(argv)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return status or 0


INTERRUPTED = (130, 128 + signal.SIGTERM)  # run_cli's statuses for Ctrl-C and SIGTERM


def exit_script(status):
    """Ends a script's process with `status` (`run_cli`'s), as `sys.exit` does, except after an interrupt:
    every root script ends with `exit_script(run_cli(main))`.

    Ctrl-C or SIGTERM inside Keras (a `fit()`, a prediction) can leave its data threads and TensorFlow's
    running; at the interpreter's normal exit their teardown can abort the process ("terminate called
    without an active exception", exit -6) after the clean-up has run. So an interrupted script, its
    files already safe and its message printed, flushes its output and leaves at once with its status.
    """
    if status in INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def make_output_dir(path):
    """Creates `path` (and parents) if needed and checks that files can be written in it.

    Raises:
        InputError: the folder cannot be created or written.
    """
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test{os.getpid()}")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as error:
        raise InputError(f"{path}: cannot write to this folder ({error.strerror}); choose another --out") from None
    return path
