"""The generalisation protocol for one training recipe: k-fold training, then Dice by lesion size and
under shifts, pooled over the folds' test splits.

    python benchmarks/cv_protocol.py --out runs/cv_default -- --data ../shared/data/isic2017
    python benchmarks/cv_protocol.py --out runs/cv_zoom -- --data ../shared/data/isic2017 --zoom 0.8 1.4

Everything after `--` goes to `train.py` as it is (the recipe); this script adds `--folds K --fold I
--out OUT/foldI` for each fold. A fold that finished is kept, one that was interrupted is resumed, so
the command can be rerun until every fold is done. The result, `OUT/protocol.md` (the table of
`benchmarks/shift_protocol.py`, with the spread over folds) and `OUT/protocol.json` (per-image rows),
compares recipes on every image once. See README, "Judging generalisation to other sources".
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def fold_dirs(out, folds):
    return [os.path.join(out, f"fold{index}") for index in range(folds)]


def run_folds(out, folds, train_args):
    """Trains (or resumes, or keeps) each fold's run; returns the run folders.

    Raises:
        RuntimeError: a fold's training did not finish.
    """
    import keras

    import runfolder
    import train

    runs = fold_dirs(out, folds)
    for index, run in enumerate(runs):
        if os.path.isfile(os.path.join(run, "metrics.json")):
            print(f"fold {index}: done earlier ({run})")
            continue
        resume = os.path.isfile(os.path.join(run, runfolder.STATE))
        arguments = ["--out", run, "--resume"] if resume else [
            *train_args, "--folds", str(folds), "--fold", str(index), "--out", run]
        print(f"fold {index}: {'resuming' if resume else 'training'} {run}")
        keras.backend.clear_session()
        if train.main(arguments) != 0:
            raise RuntimeError(f"fold {index}: training stopped early; see {run}")
    return runs


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    train_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     usage="%(prog)s --out DIR [--folds K] -- TRAIN.PY FLAGS")
    parser.add_argument("--out", required=True, help="folder for the fold runs and the protocol's report")
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default: %(default)s)")
    parser.add_argument("--shifts", nargs="+", default=None,
                        help="shifts to score: none, zoom, dark, vignette, blur (default: all)")
    args = parser.parse_args(own)
    if any(flag in train_args for flag in ("--out", "--folds", "--fold", "--resume", "--overwrite")):
        parser.error("--out, --folds, --fold, --resume and --overwrite are this script's to set")

    import runfolder
    import shift_protocol

    runs = run_folds(args.out, args.folds, train_args)
    results = shift_protocol.score_runs(runs, args.shifts or shift_protocol.SHIFTS)
    runfolder.save_json(results, os.path.join(args.out, "protocol.json"))
    table = shift_protocol.table(results)
    print(table)
    with runfolder.atomic_write(os.path.join(args.out, "protocol.md")) as tmp_path, \
            open(tmp_path, "w", encoding="utf-8") as handle:
        handle.write(f"train.py {' '.join(train_args)} ({args.folds} folds)\n\n{table}\n")
    print(f"wrote {os.path.join(args.out, 'protocol.md')} and protocol.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
