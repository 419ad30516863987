"""The data generator: image/mask pairs, splits, augmentation, and the `keras.utils.PyDataset`
(`LesionDataset`) that feeds training.

This file is the face, at the project's root, of `lesion_unet/data.py`, where the code lives (the
package's modules never import root files, so they can import that one): every name of it is
available here, imported on first use, so `from dataGenerator import LesionDataset, find_pairs` works as it always has.

Run `python dataGenerator.py --data DIR` to list the pairs, see the split sizes and save a figure of
one augmented training batch.
"""

import importlib
import os

from lesion_unet import cliargs, settings
from lesion_unet.errors import exit_script, run_cli


def __getattr__(name):  # the package module's names, loaded only when asked for (after --help has answered)
    return getattr(importlib.import_module("lesion_unet.data"), name)


def _argument_parser():
    parser = cliargs.ArgumentParser(
        description="List image/mask pairs, show the split sizes and save a figure of one batch.")
    cliargs.add_data_arguments(parser)
    parser.add_argument("--image-size", type=cliargs.int_range(1, 4096), nargs=2,
                        default=list(settings.DEFAULT_IMAGE_SIZE), metavar=("H", "W"),
                        help="batch image size (default: %(default)s)")
    parser.add_argument("--batch-size", type=cliargs.int_range(1, 64), default=8,
                        help="images in the figure (default: %(default)s)")
    parser.add_argument("--seed", type=cliargs.int_range(0, 2**32 - 1), default=0,
                        help="split and augmentation seed (default: %(default)s)")
    parser.add_argument("--no-augment", action="store_true", help="show the batch without augmentation")
    parser.add_argument("--out", default=os.path.join("runs", "batch.png"),
                        help="where to save the batch figure (default: %(default)s)")
    return parser


def main(argv=None):
    args = _argument_parser().parse_args(argv)  # before Keras loads: --help answers at once
    from lesion_unet import quiet

    quiet.import_keras()
    from lesion_unet import data

    images_dir, masks_dir = data.resolve_folders(args.data, args.images, args.masks)
    pairs = data.find_pairs(images_dir, masks_dir, args.skip_unpaired)
    print(f"{len(pairs)} pairs in {images_dir} + {masks_dir}")
    for pair in pairs[:5]:
        print(f"  {pair.id}: {os.path.basename(pair.image_path)} + {os.path.basename(pair.mask_path)}")
    if len(pairs) > 5:
        print(f"  ... and {len(pairs) - 5} more")
    split = data.preview_batch(pairs, args.out, args.image_size, args.batch_size, not args.no_augment, args.seed)
    print("split (seed {}): train {}, val {}, test {}".format(
        args.seed, len(split["train"]), len(split["val"]), len(split["test"])))
    print(f"saved one {'augmented ' if not args.no_augment else ''}batch to {args.out}")


if __name__ == "__main__":
    exit_script(run_cli(main))
