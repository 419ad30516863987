"""Writes a synthetic lesion data set in the ISIC layout (images/ and masks/): the demo's data.

    python synthetic.py --out data/synthetic --num 200 --shape 192 256 --seed 0

The code lives in `lesion_unet/synthetic.py`; this file is its command line.
"""

from lesion_unet.errors import exit_script, run_cli
from lesion_unet.synthetic import build_parser, main, make_sample, write_dataset  # noqa: F401 (this file's API)

if __name__ == "__main__":
    exit_script(run_cli(main))
