"""The run folder that `train.py` writes: its file names, safe writes, the lock and replacement.

A run folder is recognised by what only `train.py` writes: a `config.json` with the settings every
run records, or a `state.json` with its progress. `--overwrite` replaces nothing else, and not even a
run folder that also holds files a run never writes (`foreign_entries`).
Every file is written through `atomic_write` (a temporary name, then a rename), so a killed or failed
write leaves the previous complete file, and `remove_stale_temp_files` knows every temporary name.
`RunLock` keeps two `train.py` processes out of one folder; the operating system drops the lock
when its process dies, so a killed run never leaves it stuck.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import shutil

from lesion_unet.errors import InputError

CONFIG = "config.json"
SPLIT = "split.json"
STATE = "state.json"
HISTORY = "history.csv"
BEST = "best.keras"
LAST = "last.keras"
CURVES = "curves.png"
CASES = "cases.png"
MARKERS = (CONFIG, STATE)  # either one, in train.py's schema, makes a folder a run folder
# Settings that every config.json of train.py has held since the first release.
CONFIG_KEYS = ("model", "image_size", "epochs", "seed", "images", "masks")
# What train.py, evaluate.py and export.py write into a run folder: anything else is the user's.
RUN_ENTRIES = frozenset({CONFIG, SPLIT, STATE, HISTORY, BEST, LAST, CURVES, CASES, "metrics.json",
                         "per_image.csv", "synthetic_data", "evaluation", "evaluation_data", "best.onnx",
                         "best.onnx.json", "last.onnx", "last.onnx.json"})

_TEMP_NAME = re.compile(r"\.tmp\d+")


def temporary_path(path):
    """Returns the temporary name `atomic_write` uses for `path`: `name.tmp<pid>.ext`.

    The extension stays last because some writers pick the format from it (`.keras`, `.png`).
    """
    stem, ext = os.path.splitext(path)
    return f"{stem}.tmp{os.getpid()}{ext}"


@contextlib.contextmanager
def atomic_write(path):
    """Yields a temporary path to write; renames it to `path` only if the block succeeds.

    On any error (a full disk included) or interrupt the temporary file is removed and `path` keeps
    its previous content.

    Raises:
        InputError: the disk is full or the file too large (`ENOSPC`, `EFBIG`, `EDQUOT`), naming `path`.
    """
    tmp_path = temporary_path(path)
    existed = os.path.exists(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(tmp_path)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            kept = "the previous complete file is intact" if existed else "nothing was written to it"
            raise InputError(f"{path}: no space left writing this file ({error.strerror}); free some disk "
                             f"space ({kept})") from None
        raise


def save_json(obj, path):
    """Writes `obj` as indented JSON, atomically."""
    with atomic_write(path) as tmp_path, open(tmp_path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=2)
        handle.write("\n")


def read_json(path, what):
    """Reads a JSON file of a run folder.

    Args:
        path: the file.
        what: what it holds, for the message (e.g. "the run's settings").

    Raises:
        InputError: the file is missing, unreadable or not valid JSON, naming it.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{path}: not found ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: damaged, cannot read {what} ({error}); restore the file, or start a new "
                         "run with another --out") from None


def model_file(target, default):
    """Returns the model file that a command line names: `target` itself, a run folder's
    `best.keras`, or `default` (the pre-trained model) when `target` is `None`.

    Raises:
        InputError: the target does not exist, or is a folder without `best.keras`.
    """
    if target is None:
        if not os.path.isfile(default):
            raise InputError(f"{default}: no model given and the pre-trained model is missing; "
                             "pass a .keras file or a run folder")
        return default
    if not os.path.exists(target):
        raise InputError(f"{target}: no such run folder or model file")
    if os.path.isdir(target):
        path = os.path.join(target, BEST)
        if not os.path.isfile(path):
            raise InputError(f"{target}: not a run folder (no best.keras); pass a run folder or a .keras file")
        return path
    return target


def read_config(run_dir):
    """Returns a run folder's `config.json` (its resolved settings).

    Raises:
        InputError: the file is missing or damaged, naming it.
    """
    return read_json(os.path.join(run_dir, CONFIG), "the run's settings")


def remove_stale_temp_files(folder):
    """Deletes temporary files (`<name>.tmp<pid>...`) that a killed process left half-written."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if _TEMP_NAME.search(name) and os.path.isfile(path):
            os.remove(path)


def _read_dict(path):
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def is_run_folder(path):
    """Whether `path` is a folder that `train.py` made: its `config.json` holds the settings every run
    records (`CONFIG_KEYS`), or its `state.json` a run's progress (an integer `epochs_done`).

    Another program's `config.json` (say `{"name": "my-web-app"}`) does not make a run folder.
    """
    if not os.path.isdir(path):
        return False
    config = _read_dict(os.path.join(path, CONFIG))
    if config is not None and all(key in config for key in CONFIG_KEYS):
        return True
    state = _read_dict(os.path.join(path, STATE))
    return state is not None and type(state.get("epochs_done")) is int


def foreign_entries(path):
    """Returns the sorted names in folder `path` that no run writes (`RUN_ENTRIES`, temporary files)."""
    return sorted(name for name in os.listdir(path) if name not in RUN_ENTRIES and not _TEMP_NAME.search(name))


class RunLock:
    """An exclusive lock on a run folder, held while a process trains into it.

    The lock is a hidden file beside the folder (`.<name>.lock`), so it also covers a folder that does
    not exist yet or is being replaced. It is an `flock`: released by the operating system when the
    process ends, however it ends.

    Args:
        run_dir: the run folder.

    Raises:
        InputError (from `acquire`): another process holds the lock, or the lock cannot be created.
    """

    def __init__(self, run_dir):
        # The resolved folder, so that two names of one folder (a symbolic link) share one lock.
        run_dir = os.path.realpath(run_dir)
        self.run_dir = run_dir
        self.path = os.path.join(os.path.dirname(run_dir), f".{os.path.basename(run_dir)}.lock")
        self._handle = None

    def acquire(self):
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        except OSError as error:
            raise InputError(f"{self.run_dir}: cannot write to this folder ({error.strerror}); choose another "
                             "--out") from None
        while True:
            try:
                handle = open(self.path, "a+", encoding="utf-8")
            except OSError as error:
                raise InputError(f"{self.run_dir}: cannot write beside this folder ({error.strerror}); choose "
                                 "another --out") from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise InputError(f"{self.run_dir}: another train.py (process {owner}) is training into this "
                                 "folder; wait for it to finish, or choose another --out") from None
            # The holder before us may have removed the file after we opened it: then our lock is on
            # a file nobody else will see, so take the one at the path now.
            try:
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def release(self):
        if self._handle is not None:
            with contextlib.suppress(OSError):
                os.remove(self.path)
            self._handle.close()  # closing drops the lock
            self._handle = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


def set_aside(run_dir):
    """Renames a run folder to `<run_dir>.replaced-<date>-<time>` and returns the new name."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = f"{run_dir.rstrip(os.sep)}.replaced-{stamp}"
    suffix = 0
    while os.path.exists(aside):
        suffix += 1
        aside = f"{run_dir.rstrip(os.sep)}.replaced-{stamp}-{suffix}"
    os.rename(run_dir, aside)
    return aside


def restore(aside, run_dir):
    """Undoes `set_aside`: removes what was written to `run_dir` since, and puts the old folder back."""
    shutil.rmtree(run_dir, ignore_errors=True)
    os.rename(aside, run_dir)
