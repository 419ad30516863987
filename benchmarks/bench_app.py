"""Time and memory of the web app (`app.py`) per uploaded image, from small to 12000x9000.

    python -m benchmarks.bench_app                        # the pre-trained .keras model
    python -m benchmarks.bench_app --model best.onnx      # an exported model (no TensorFlow)

Starts `app.py --port 0` in its own process, then uploads, in order of size, a synthetic 512x384 PNG,
a 4000x3000 JPEG, a 12000x9000 JPEG and a 12000x9000 PNG (a lesion-like dark ellipse on skin tone),
each twice (the first call of a new input size includes the model's warm-up). After each upload it
reads the server's resident memory and its peak so far (`VmRSS`, `VmHWM` in /proc; Linux only), and
prints a Markdown table. Server start-up (until it prints its address) is timed too.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _memory_mb(pid):
    values = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def _photo(size, format):
    from PIL import Image, ImageDraw

    width, height = size
    photo = Image.new("RGB", size, (205, 160, 140))
    ImageDraw.Draw(photo).ellipse((width * 0.3, height * 0.28, width * 0.7, height * 0.72), fill=(90, 55, 45))
    buffer = io.BytesIO()
    photo.save(buffer, format=format, **({"quality": 90} if format == "JPEG" else {}))
    return buffer.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model or run folder for app.py (default: the pre-trained model)")
    args = parser.parse_args(argv)

    from lesion_unet import lesion_files
    from lesion_unet import synthetic

    uploads = [("synthetic_512x384.png", lesion_files.encode_png(synthetic.make_sample(5, (384, 512))[0])),
               ("photo_4000x3000.jpg", _photo((4000, 3000), "JPEG")),
               ("photo_12000x9000.jpg", _photo((12000, 9000), "JPEG")),
               ("photo_12000x9000.png", _photo((12000, 9000), "PNG"))]
    command = [sys.executable, "app.py", *([args.model] if args.model else []), "--port", "0"]
    started = time.perf_counter()
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        first = server.stdout.readline()
        startup = time.perf_counter() - started
        url = first.split(" at ")[1].split()[0]
        rss, peak = _memory_mb(server.pid)
        print(f"server start-up: {startup:.1f} s, then {rss:.0f} MB resident ({first.strip()})\n")
        print("| upload | file MB | call | server time s | request s | RSS after MB | peak so far MB |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, data in uploads:
            for call in (1, 2):
                request = urllib.request.Request(f"{url}api/segment?name={name}", data=data, method="POST")
                begin = time.perf_counter()
                with urllib.request.urlopen(request, timeout=600) as response:
                    answer = json.loads(response.read())
                elapsed = time.perf_counter() - begin
                rss, peak = _memory_mb(server.pid)
                print(f"| {name} | {len(data) / 1e6:.1f} | {call} | {answer['seconds']:.2f} | {elapsed:.2f} | "
                      f"{rss:.0f} | {peak:.0f} |", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
