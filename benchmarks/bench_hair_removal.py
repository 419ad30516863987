"""Time of hair removal (`--remove-hair`) per image, and `predict.py`'s speed with and without it.

    python -m benchmarks.bench_hair_removal                    # the pre-trained model, 48 images a size
    python -m benchmarks.bench_hair_removal --images ../shared/data/isic2017/images   # real images instead

Writes `--count` synthetic JPEGs (dark hairs drawn on, as `protocol.py shift --shifts hair` does) at
each size: the ISIC copy's 256x192, PH2's 765x574 and a 4000x3000 photo. For each size it times
`lesion_files.read_image` at the model's input size against `hair_removal.read_image_without_hair`
(the filter runs at 256 pixels on the long side, whatever the photo's size), then
`inference.predict_files` (reading, the model, the map resized to the image) both ways, after one
warm-up batch. With `--images DIR`, the first `--count` images of DIR are timed instead, at their own
size. Prints a Markdown table. The inpainting's cost grows with the pixels taken for hair, so dense
drawn hair is the slow case.
"""

import os
import sys
import tempfile
import time

import numpy as np

from lesion_unet import cliargs


def _size(text):
    height, width = (int(part) for part in text.lower().split("x"))
    return height, width


def write_images(folder, size, count):
    """`count` synthetic lesion JPEGs of `size` with drawn hairs; returns their paths."""
    from PIL import Image

    from lesion_unet import data as dataGenerator
    from lesion_unet import synthetic

    paths = []
    for index in range(count):
        image = synthetic.make_sample(index, size)[0]
        image = dataGenerator.draw_hairs(image, np.random.default_rng(index), 24)
        path = os.path.join(folder, f"{size[1]}x{size[0]}_{index:03d}.jpg")
        Image.fromarray(image).save(path, quality=90)
        paths.append(path)
    return paths


def _seconds(function, repeats=1):
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def main(argv=None):
    parser = cliargs.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a .keras or .onnx model (default: the pre-trained model)")
    parser.add_argument("--count", type=cliargs.int_range(1), default=48, help="images per size (default: %(default)s)")
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(192, 256), (574, 765), (3000, 4000)],
                        help="image sizes HxW (default: 192x256 574x765 3000x4000)")
    parser.add_argument("--images", default=None,
                        help="time the first --count images of this folder instead of synthetic ones (default: none)")
    args = parser.parse_args(argv)

    from lesion_unet import quiet

    quiet.import_keras()
    from lesion_unet import hair_removal
    from lesion_unet import inference
    from lesion_unet import lesion_files
    from lesion_unet import settings

    model = inference.load_model(args.model or settings.DEFAULT_MODEL)
    input_size = inference.model_image_size(model)
    print("| images | read (ms/img) | read + hair removal (ms/img) | predict_files (img/s) | "
          "with --remove-hair (img/s) |\n| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        if args.images:
            paths = sorted(os.path.join(args.images, name) for name in os.listdir(args.images)
                           if settings.image_id_of(name))[: args.count]
            if not paths:
                parser.error(f"--images {args.images}: no images in this folder")
            height, width = lesion_files.image_size_of(paths[0])
            cases = [(f"{len(paths)} images of {args.images} ({width}x{height}, the first)", paths)]
        else:
            cases = [(f"{size[1]}x{size[0]}, drawn hair", write_images(folder, size, args.count))
                     for size in args.sizes]
        for label, paths in cases:
            read = _seconds(lambda: [lesion_files.read_image(path, input_size) for path in paths])
            cleaned = _seconds(lambda: [hair_removal.read_image_without_hair(path, input_size) for path in paths])
            speeds = []
            for remove_hair in (False, True):
                list(inference.predict_files(model, paths[:16], progress=False, remove_hair=remove_hair))  # warm-up
                seconds = _seconds(lambda: list(inference.predict_files(model, paths, progress=False,
                                                                         remove_hair=remove_hair)))
                speeds.append(len(paths) / seconds)
            print(f"| {label} | {1000 * read / len(paths):.1f} | {1000 * cleaned / len(paths):.1f} | "
                  f"{speeds[0]:.1f} | {speeds[1]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
