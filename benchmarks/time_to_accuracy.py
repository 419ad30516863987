"""Time to accuracy: wall clock from starting `train.py` to the first epoch reaching a validation Dice.

    python -m benchmarks.time_to_accuracy --data ../shared/data/isic2017
    python -m benchmarks.time_to_accuracy --data ../shared/data/isic2017 -- --mixed-precision

Starts `python train.py --data DATA --out OUT [extra train.py arguments after --]` and watches the
run's `history.csv`. Reports the seconds from the start of the command to the end of the first epoch
whose validation per-image Dice reaches `--target`, then stops the run (unless `--finish`). It also
prints each epoch's timings from `history.csv`, including `stall_s`: the epoch's training wall time
minus the sum of its step times, to check the input pipeline does not stall.
"""

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_rows(path):
    """Returns the rows of a `history.csv` written so far (none while it does not exist)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="data folder with images/ and masks/")
    parser.add_argument("--target", type=float, default=0.85, help="validation Dice to reach (default: %(default)s)")
    parser.add_argument("--out", default=None, help="run folder (default: a new temporary folder)")
    parser.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds (default: %(default)s)")
    parser.add_argument("--finish", action="store_true", help="let the run finish instead of stopping it at the target")
    parser.add_argument("train_args", nargs="*", help="extra arguments for train.py (after --)")
    args = parser.parse_args(argv)

    out = args.out or os.path.join(tempfile.mkdtemp(prefix="lesion-tta-"), "run")
    command = [sys.executable, "train.py", "--data", args.data, "--out", out, "--verbose", "2", *args.train_args]
    print("command:", " ".join(command), flush=True)
    history = os.path.join(out, "history.csv")
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    reached = None
    seen = 0
    try:
        while process.poll() is None and time.perf_counter() - started < args.timeout:
            rows = read_rows(history)
            for row in rows[seen:]:
                elapsed = time.perf_counter() - started
                print(f"[bench] epoch {int(row['epoch'])}: val Dice {float(row['val_dice']):.4f}, "
                      f"{elapsed:.0f} s since start (train.py's own clock: {float(row['elapsed_s']):.0f} s); "
                      f"train {float(row['train_s']):.1f} s, val {float(row['val_s']):.1f} s, "
                      f"steps {float(row['steps_s']):.1f} s (slowest {float(row['step_max_s']):.2f} s), "
                      f"stall {float(row['stall_s']):.2f} s", flush=True)
                if reached is None and float(row["val_dice"]) >= args.target:
                    reached = (int(row["epoch"]), elapsed)
            seen = len(rows)
            if reached and not args.finish:
                break
            time.sleep(1.0)
    finally:
        if process.poll() is None and not (args.finish and reached):
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait()
    if reached is None:
        print(f"[bench] validation Dice {args.target} not reached", flush=True)
        return 1
    epoch, elapsed = reached
    print(f"[bench] validation Dice >= {args.target} at epoch {epoch}, {elapsed:.0f} s "
          f"({elapsed / 60:.1f} min) after starting train.py; run folder {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
