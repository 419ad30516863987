"""Peak memory of `predict.py` on a very large photo, against the same run on a small one.

    python -m benchmarks.bench_memory                    # a 10000x8000 JPEG, 80 megapixels

Each case runs `predict.py` in its own process and reads that process's peak resident set size. The
small image gives the fixed cost (Python, TensorFlow, the model); the difference is what the large
image itself costs.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_photo(path, height, width):
    """A smooth synthetic 'lesion' photo: a dark ellipse on skin colour."""
    y, x = np.ogrid[:height, :width]
    inside = ((y - height / 2) / (height / 3)) ** 2 + ((x - width / 2) / (width / 3)) ** 2 < 1
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (200, 170, 150)
    image[inside] = (90, 60, 50)
    Image.fromarray(image).save(path, quality=85)


def peak_rss_mib(arguments):
    """Runs `predict.py arguments` in a child process; returns its peak resident set size in MiB."""
    probe = ("import resource, subprocess, sys; status = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
             "stderr=subprocess.DEVNULL).returncode; assert status == 0, status; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", probe, sys.executable, "predict.py", *arguments], cwd=ROOT,
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return int(result.stdout.strip()) / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=[8000, 10000], metavar=("H", "W"),
                        help="the large photo's height and width (default: %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        small, large = os.path.join(folder, "small.jpg"), os.path.join(folder, "large.jpg")
        write_photo(small, 192, 256)
        write_photo(large, *args.size)
        out = os.path.join(folder, "out")
        rows = [("256x192, mask", peak_rss_mib([small, "--out", out, "--no-progress"]))]
        label = f"{args.size[1]}x{args.size[0]}"
        rows.append((f"{label}, mask", peak_rss_mib([large, "--out", out, "--no-progress"])))
        rows.append((f"{label}, mask + --overlay --tta",
                     peak_rss_mib([large, "--out", out, "--no-progress", "--overlay", "--tta"])))
    base = rows[0][1]
    print("| case | peak RSS (MiB) | above the small image (MiB) |\n| --- | --- | --- |")
    for name, peak in rows:
        print(f"| {name} | {peak:.0f} | {peak - base:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
