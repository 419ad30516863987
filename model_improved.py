"""The Improved U-Net of Isensee et al. (2017, arXiv:1802.10508), in 2D: `build_improved_unet`.

The code lives in `lesion_unet/improved_unet.py`, whose names this root file hands out on first use
(`from model_improved import build_improved_unet`). `python model_improved.py` prints the summary and parameter count
(`--image-size`, `--base-filters`, `--depth`).
"""

import importlib

from lesion_unet import cliargs
from lesion_unet.errors import exit_script, run_cli


def __getattr__(name):
    return getattr(importlib.import_module("lesion_unet.improved_unet"), name)


def main(argv=None):
    cliargs.model_summary_main(argv, "Improved U-Net", "improved_unet:build_improved_unet", base_filters=16, depth=5,
                               depth_help="resolution levels")


if __name__ == "__main__":
    exit_script(run_cli(main))
