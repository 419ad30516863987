"""The generalisation protocol for one training recipe: k-fold training, then Dice by lesion size and
under shifts, pooled over the folds' test splits.

    python protocol.py cv --out runs/cv_default -- --data data/isic2017
    python protocol.py cv --out runs/cv_zoom -- --data data/isic2017 --zoom 0.8 1.4

Everything after `--` goes to `train.py` as it is (the recipe); this script adds `--folds K --fold I
--out OUT/foldI` for each fold. Each fold gets `train.py`'s default time budget on real data (90 min,
fewer epochs where they would not fit; the epochs each fold trained are in its `config.json`): pass
`--time-budget 0` after `--` to train every fold the full `--epochs` on a slow machine. A fold that
finished is kept, one that was interrupted is resumed, so the command can be rerun until every fold
is done. `--parallel N` trains N folds at once, each in its own
`train.py` process logging to `OUT/foldI.log` (for a GPU that one run leaves idle; on a 2-core CPU one
at a time is fastest). The result, `OUT/protocol.md` (the table of
`protocol.py shift`, with the spread over folds) and `OUT/protocol.json` (per-image rows),
compares recipes on every image once (`protocol.py compare`).
"""

import os
import subprocess
import sys
import time

from lesion_unet import cliargs
from lesion_unet.protocol import shift


def fold_dirs(out, folds):
    return [os.path.join(out, f"fold{index}") for index in range(folds)]


def fold_arguments(out, folds, train_args):
    """Returns `{fold index: train.py arguments}` for the folds still to train (or to resume)."""
    from lesion_unet import runfolder

    todo = {}
    for index, run in enumerate(fold_dirs(out, folds)):
        if os.path.isfile(os.path.join(run, "metrics.json")):
            print(f"fold {index}: done earlier ({run})")
        elif os.path.isfile(os.path.join(run, runfolder.STATE)):
            todo[index] = ["--out", run, "--resume"]
        else:
            todo[index] = [*train_args, "--folds", str(folds), "--fold", str(index), "--out", run]
    return todo


def run_folds(out, folds, train_args, train_main, parallel=1):
    """Trains (or resumes, or keeps) each fold's run; returns the run folders.

    Args:
        out: folder of the fold runs.
        folds: number of folds.
        train_args: `train.py` arguments of the recipe.
        train_main: `train.py`'s `main` (its caller passes it, so this package never imports a script):
            each fold runs it here, or, with `parallel` > 1, runs its file in a process of its own.
        parallel: folds trained at once, each in its own process; 1 trains them here, one by one.

    Raises:
        RuntimeError: a fold's training did not finish.
    """
    runs = fold_dirs(out, folds)
    todo = fold_arguments(out, folds, train_args)
    if parallel > 1:
        _run_in_processes(out, todo, parallel, os.path.abspath(sys.modules[train_main.__module__].__file__))
        return runs
    import keras

    for index, arguments in todo.items():
        print(f"fold {index}: {_doing(arguments)} {runs[index]}")
        keras.backend.clear_session()
        if train_main(arguments) != 0:
            raise RuntimeError(f"fold {index}: training stopped early; see {runs[index]}")
    return runs


def _doing(arguments):
    return "resuming" if "--resume" in arguments else "training"


def _run_in_processes(out, todo, parallel, script):
    """Runs the `train.py` file `script` for each fold of `todo`, `parallel` at a time, each logging to
    `OUT/foldI.log`.

    Raises:
        RuntimeError: a fold's process failed (after the others have finished).
    """
    os.makedirs(out, exist_ok=True)
    waiting, running, failed = list(todo.items()), {}, []
    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                index, arguments = waiting.pop(0)
                log_path = os.path.join(out, f"fold{index}.log")
                with open(log_path, "a", encoding="utf-8") as log:  # a resumed fold keeps its earlier log
                    process = subprocess.Popen([sys.executable, script, "--verbose", "2", *arguments],
                                               stdout=log, stderr=subprocess.STDOUT)
                running[index] = (process, log_path, time.time())
                print(f"fold {index}: {_doing(arguments)} in its own process, log {log_path}")
            time.sleep(1)
            for index, (process, log_path, started) in list(running.items()):
                if process.poll() is not None:
                    del running[index]
                    print(f"fold {index}: {'finished' if process.returncode == 0 else 'FAILED'} after "
                          f"{time.time() - started:.0f} s")
                    if process.returncode != 0:
                        failed.append((index, f"fold {index} (exit status {process.returncode}; see {log_path})"))
    finally:
        for process, _, _ in running.values():  # interrupted here: stop the folds (each can be resumed)
            process.terminate()
    if failed:
        raise RuntimeError("training stopped early: " + ", ".join(message for _, message in sorted(failed)))


def add_arguments(parser):
    """`protocol.py cv`'s own flags (the recipe's `train.py` flags follow `--`)."""
    parser.usage = "%(prog)s --out DIR [--folds K] -- TRAIN.PY FLAGS"
    parser.add_argument("--out", required=True, help="folder for the fold runs and the protocol's report")
    parser.add_argument("--folds", type=cliargs.int_range(2, 100), default=5,
                        help="number of folds, 2 to 100 (default: %(default)s)")
    parser.add_argument("--parallel", type=cliargs.int_range(1), default=1,
                        help="folds to train at once, each in its own process (default: %(default)s)")
    parser.add_argument("--shifts", nargs="+", default=None, choices=shift.SHIFTS + shift.EXTRA_SHIFTS,
                        help="shifts to score: none, zoom, dark, vignette, blur, and hair only when named "
                             "(default: the first five)")


def run(args, train_args, train_main, parser):
    """`protocol.py cv`: trains the folds (`run_folds`), scores their test splits, writes the report."""
    if any(flag in train_args for flag in ("--out", "--folds", "--fold", "--resume", "--overwrite")):
        parser.error("--out, --folds, --fold, --resume and --overwrite are this script's to set")

    from lesion_unet import runfolder

    runs = run_folds(args.out, args.folds, train_args, train_main, args.parallel)
    results = shift.score_runs(runs, args.shifts or shift.SHIFTS)
    runfolder.save_json(results, os.path.join(args.out, "protocol.json"))
    table = shift.table(results)
    print(table)
    with runfolder.atomic_write(os.path.join(args.out, "protocol.md")) as tmp_path, \
            open(tmp_path, "w", encoding="utf-8") as handle:
        handle.write(f"train.py {' '.join(train_args)} ({args.folds} folds)\n\n{table}\n")
    print(f"wrote {os.path.join(args.out, 'protocol.md')} and protocol.json")
    return 0
