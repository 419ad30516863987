"""Trains a lesion segmentation model and reports its test metrics.

    python train.py                                   # the synthetic demo, a few minutes on a CPU
    python train.py --data ../shared/data/isic2017    # real ISIC data (images/ + masks/)
    python train.py --images ISIC2018_Task1-2_Training_Input --masks ISIC2018_Task1_Training_GroundTruth

A run folder (`--out`) gets `config.json`, `split.json`, `history.csv`, `curves.png`, `best.keras`
(best validation Dice, loadable with `keras.saving.load_model` alone), `last.keras` and `state.json`
(for `--resume`), and after the last epoch the test split's `metrics.json`, `per_image.csv` and
`cases.png`. The GPU is used when one is visible, the CPU otherwise.

This file parses the command line (`lesion_unet/train_options.py` defines it) and calls
`lesion_unet.training`, which does the work and which notebooks call directly.
"""

import contextlib
import datetime
import os
import sys
import time

from lesion_unet import runfolder
from lesion_unet.cliargs import explicit_flags
from lesion_unet.errors import exit_script, run_cli
from lesion_unet.train_options import RESUME_FLAGS, build_parser  # noqa: F401 (tests and notebooks use them here)

def main(argv=None):
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    explicit = explicit_flags(parser, sys.argv[1:] if argv is None else argv)
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite contradict each other; pass one")
    if args.resume and args.out is None:
        parser.error("--resume needs --out, the run folder to continue")
    if args.loss == "bce" and "fn_weight" in explicit:
        parser.error("--fn-weight weights the Dice term, and --loss bce has none: use --loss dice_bce or dice")
    if args.folds is None and {"fold", "fold_by"} & explicit:
        parser.error("--fold and --fold-by choose a test fold of --folds K, and no --folds was given: "
                     "add --folds 5, or drop them for the seeded 80/10/10 split")
    if args.out is None:
        args.out = os.path.join("runs", f"{args.model}_{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if args.verbose is None:
        args.verbose = 1 if sys.stdout.isatty() else 2

    from lesion_unet import quiet  # Keras loads only now that the arguments are known to be good

    # TensorFlow's noise comes at the first training step too; a user who set its log level sees it all.
    filter_output = contextlib.nullcontext if "TF_CPP_MIN_LOG_LEVEL" in os.environ else quiet.live_filtered_stderr
    keras = quiet.import_keras()
    from lesion_unet import distribution
    from lesion_unet import training

    if args.distribute in ("auto", "multi-worker") and keras.backend.backend() in ("tensorflow", "jax"):
        is_chief, task_name = distribution.multi_worker_role()
        if not is_chief:  # every worker trains, only the chief's folder is the result
            args.out = f"{args.out}.{task_name}"
    # First: JAX's processes must meet, and TensorFlow's MultiWorkerMirroredStrategy must exist,
    # before the backend computes anything (resolving the settings builds the model once).
    spread = distribution.choose_distribution(args.distribute)
    runtime = dict(use_cache=not args.no_cache, cache_dir=args.cache_dir, distribute=spread,
                   verbose=args.verbose, started=started)
    # Taken before the folder is looked at, so two runs cannot both find it free.
    with runfolder.RunLock(args.out), filter_output():
        if args.resume:
            ignored = sorted(explicit - RESUME_FLAGS)
            if ignored:
                print("note: --resume keeps the run's saved settings (config.json); ignored: "
                      + ", ".join("--" + name.replace("_", "-") for name in ignored), file=sys.stderr)
            folders = None
            if args.data is not None or args.images is not None or args.masks is not None:
                from lesion_unet import data as dataGenerator

                folders = dataGenerator.resolve_folders(args.data, args.images, args.masks)
            return training.resume_training(args.out, folders, args.epochs, args.workers, **runtime)
        training.check_new_run_dir(args.out, args.overwrite)  # the run folder before the data
        return training.run_training(training.resolve_config(args), args.out, args.overwrite, **runtime)


if __name__ == "__main__":
    exit_script(run_cli(main))
