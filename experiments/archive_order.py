"""What changes along the archive's id order: lesion size, colour and dark corners per block of ids.

    python -m experiments.archive_order --data data/isic2017 --figure resources/archive_order.png

The ISIC ids follow the order in which images entered the archive, and clinics contributed theirs in
batches, so neighbouring ids tend to share a clinic, a dermoscope and a way of framing the lesion. A
random split puts such neighbours on both sides; `train.py --folds K --fold-by order` does not. This
script shows whether the order carries that structure: for each block of `--block-size` consecutive
ids it prints (and with `--figure`, plots) the median lesion share of the image, the median red minus
blue level (the colour of the lamp and sensor), the share of corner pixels darker than 40 (dark,
vignetted corners), and the images' median grey level, with the `--folds` boundaries of
`--fold-by order` marked. No model is involved.
"""

import sys

import numpy as np

from lesion_unet import cliargs

CORNER = 20  # pixels of each corner's square, at the images' own size
DARK_LEVEL = 40
STATISTICS = (("lesion_share", "median lesion share of the image"),
              ("red_minus_blue", "median red - blue level"),
              ("dark_corners", "share of corner pixels < 40"),
              ("grey", "median grey level"))


def image_statistics(image, mask):
    """One image's statistics of `STATISTICS`.

    Args:
        image: `uint8` RGB array `(h, w, 3)`.
        mask: boolean lesion mask `(h, w)`.

    Returns:
        A dict with a float for each name of `STATISTICS`.
    """
    pixels = image.astype(np.float64)
    grey = pixels.mean(axis=2)
    side = min(CORNER, grey.shape[0] // 2, grey.shape[1] // 2)
    corners = np.concatenate([grey[:side, :side].ravel(), grey[:side, -side:].ravel(),
                              grey[-side:, :side].ravel(), grey[-side:, -side:].ravel()])
    return {"lesion_share": float(np.mean(mask)),
            "red_minus_blue": float(pixels[..., 0].mean() - pixels[..., 2].mean()),
            "dark_corners": float(np.mean(corners < DARK_LEVEL)),
            "grey": float(grey.mean())}


def block_table(rows, block_size):
    """Medians (dark corners: the mean) of each block of `block_size` consecutive rows.

    Args:
        rows: per-image dicts of `image_statistics` plus `id`, in id order.
        block_size: images per block.

    Returns:
        A list of dicts: `first`, `last` (ids), `n`, and each statistic.
    """
    blocks = []
    for start in range(0, len(rows), block_size):
        members = rows[start : start + block_size]
        block = {"first": members[0]["id"], "last": members[-1]["id"], "n": len(members)}
        for name, _ in STATISTICS:
            values = [row[name] for row in members]
            block[name] = float(np.mean(values) if name == "dark_corners" else np.median(values))
        blocks.append(block)
    return blocks


def plot(blocks, fold_starts, block_size, path):
    """Draws each statistic against the block's position, with the folds' first images as lines.

    Args:
        blocks: `block_table`'s rows.
        fold_starts: the position (in id order) of each fold's first image.
        block_size: images per block.
        path: the PNG to write.
    """
    from matplotlib.figure import Figure

    from lesion_unet import plots

    figure = Figure(figsize=(9, 2.0 * len(STATISTICS)))
    axes = figure.subplots(len(STATISTICS), 1, sharex=True)
    x = np.arange(len(blocks))
    for axis, (name, label) in zip(axes, STATISTICS):
        axis.bar(x, [block[name] for block in blocks], color="#4477aa", width=0.85)
        axis.set_ylabel(label, fontsize=8)
        for start in fold_starts:  # block k spans positions k*size .. (k+1)*size - 1, its bar centred on k
            axis.axvline(start / block_size - 0.5, color="#cc3311", linestyle="--", linewidth=1)
    axes[-1].set_xticks(x[::2], [block["first"] for block in blocks][::2], rotation=60, ha="right", fontsize=7)
    axes[0].set_title(f"Blocks of {block_size} consecutive ids (dashed: where each --fold-by order fold begins)",
                      fontsize=9)
    figure.tight_layout()
    plots.save_figure(figure, path)


def main(argv=None):
    parser = cliargs.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with images/ and masks/")
    parser.add_argument("--block-size", type=cliargs.int_range(1), default=100,
                        help="consecutive ids per block (default: %(default)s)")
    parser.add_argument("--folds", type=cliargs.int_range(2, 100), default=5,
                        help="mark the fold boundaries of train.py --folds K --fold-by order (default: %(default)s)")
    parser.add_argument("--figure", default=None, help="also draw the blocks into this PNG (default: none)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide the progress bar (default: shown)")
    args = parser.parse_args(argv)

    from lesion_unet import lesion_files
    from tqdm import tqdm

    pairs = lesion_files.find_pairs(*lesion_files.resolve_folders(args.data))
    rows = [{"id": pair.id, **image_statistics(lesion_files.read_image(pair.image_path),
                                               lesion_files.read_mask(pair.mask_path))}
            for pair in tqdm(pairs, desc="Reading", disable=not args.progress)]
    blocks = block_table(rows, args.block_size)
    print("| ids | n | " + " | ".join(label for _, label in STATISTICS) + " |")
    print("| --- " * (2 + len(STATISTICS)) + "|")
    for block in blocks:
        print(f"| {block['first']} .. {block['last']} | {block['n']} | "
              + " | ".join(f"{block[name]:.3f}" if name in ("lesion_share", "dark_corners") else f"{block[name]:.1f}"
                           for name, _ in STATISTICS) + " |")
    if args.figure:
        first_ids = [lesion_files.kfold_split(pairs, args.folds, fold, by="order")["test"][0]
                     for fold in range(args.folds)]
        index_of = {row["id"]: index for index, row in enumerate(rows)}
        plot(blocks, [index_of[i] for i in first_ids if index_of[i] > 0], args.block_size, args.figure)
        print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
