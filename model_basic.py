"""The U-Net of Ronneberger et al. (2015, arXiv:1505.04597) for binary lesion masks: `build_unet`.

The code lives in `lesion_unet/basic_unet.py`, whose names this root file hands out on first use
(`from model_basic import build_unet`). `python model_basic.py` prints the summary and parameter count
(`--image-size`, `--base-filters`, `--depth`).
"""

import importlib

from lesion_unet import cliargs
from lesion_unet.errors import exit_script, run_cli


def __getattr__(name):
    return getattr(importlib.import_module("lesion_unet.basic_unet"), name)


def main(argv=None):
    cliargs.model_summary_main(argv, "basic U-Net", "basic_unet:build_unet", base_filters=64, depth=4,
                               depth_help="number of poolings")


if __name__ == "__main__":
    exit_script(run_cli(main))
