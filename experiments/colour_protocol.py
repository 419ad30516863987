"""Colour constancy before inference (Shades of Gray) under the shift protocol, with and without.

    python -m experiments.colour_protocol --model pretrained/improved_unet.keras --data data/isic2017 \\
        --out runs/sog_shipped
    python protocol.py compare runs/sog_shipped.plain.json runs/sog_shipped.sog.json \\
        --shifts none zoom dark vignette blur        # and --shifts cast

Other dermoscopes give other colours: a lamp's and a sensor's white balance. Shades of Gray (Finlayson
and Trezzi, 2004) estimates an image's illuminant as the Minkowski p-mean of each channel (p = 6) and
divides it out, so that every image looks lit by the same white light; several ISIC challenge
entries normalise their inputs so. Applied at inference only, to a model trained on the images as
they are, it removes a camera's cast (the protocol's `cast` condition) but also shows the model
colours it was not trained on, which the five conditions measure. The script scores the model on
the validation split under the five conditions and `cast`, as the images are (`OUT.plain.json`) and
after `shades_of_gray` (`OUT.sog.json`).
"""

import sys

import numpy as np

from lesion_unet import cliargs
from lesion_unet.protocol import shift as shift_protocol

MINKOWSKI_P = 6  # Finlayson and Trezzi's choice, and the one used for dermoscopy since


def shades_of_gray(image, power=MINKOWSKI_P):
    """Divides out the illuminant that the channels' Minkowski `power`-means estimate, keeping the
    image's mean grey level.

    Args:
        image: `uint8` RGB array `(h, w, 3)`.
        power: the mean's exponent (1: grey world; large: white patch).

    Returns:
        A new `uint8` RGB array of the same shape.
    """
    pixels = image.astype(np.float64) / 255.0
    illuminant = np.power(np.mean(np.power(pixels, power), axis=(0, 1)), 1.0 / power)
    if not np.all(illuminant > 0):  # a channel that is black everywhere: nothing to correct
        return np.array(image, dtype=np.uint8)
    gains = illuminant.mean() / illuminant
    return np.clip(pixels * gains * 255.0, 0, 255).round().astype(np.uint8)


def main(argv=None):
    parser = cliargs.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the .keras model to score")
    parser.add_argument("--data", required=True, help="folder with images/ and masks/")
    parser.add_argument("--out", required=True, help="prefix of the reports: OUT.plain.json and OUT.sog.json")
    parser.add_argument("--seed", type=cliargs.int_range(0, 2**32 - 1), default=0,
                        help="the split's seed (default: %(default)s)")
    parser.add_argument("--shifts", nargs="+", choices=shift_protocol.SHIFTS + shift_protocol.EXTRA_SHIFTS,
                        default=[*shift_protocol.SHIFTS, "cast"],
                        help="conditions to score (default: the five and cast)")
    args = parser.parse_args(argv)

    from lesion_unet import quiet

    quiet.import_keras()
    from lesion_unet import inference

    shift_protocol.score_arms(inference.load_model(args.model), shift_protocol.split_part(args.data, args.seed),
                              args.shifts, [("plain", None), ("sog", shades_of_gray)], args.out, args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
