"""The web app behind `app.py`: a page to segment dermoscopy images, and the server that runs the model.

The server is Python's own `http.server` (a thread per request); the page is `static/index.html`
with its script and style. A `Segmenter` holds the model, loaded once, and runs one image at a time
(a lock): users who submit together queue, each gets their own result, and memory stays that of
one image. Segmentation is `inference.segment_files`, the function `predict.py` uses, so the mask a
user downloads is the file `predict.py` writes for the same image and settings.

API (the page uses it; so can `curl`):
    POST /api/segment?name=FILE&tta=0|1&postprocess=0|1&remove_hair=0|1   body: the image file's bytes
        -> 200 JSON result (`Segmenter.segment`), or 4xx/5xx JSON `{"error": message}`
    GET /api/info                   -> the model and the defaults
    GET /results/<token>/<file>     -> a result's images and downloads (the latest, up to `RESULTS_KEPT_BYTES`)

Limits: uploads up to `--max-upload-mb` (a body without a valid Content-Length is refused), a
request that sends nothing for `REQUEST_TIMEOUT_SECONDS` is dropped, and up to `REQUEST_QUEUE`
connections wait to be accepted.
"""

import collections
import json
import logging
import os
import re
import secrets
import sys
import tempfile
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

from lesion_unet import inference
from lesion_unet import lesion_files
from lesion_unet import plots
from lesion_unet import quality
from lesion_unet import settings
from lesion_unet import synthetic
from lesion_unet.errors import InputError

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
PREVIEW_SIDE = 768          # longest side of the pictures shown on the page
OVERLAY_SIDE = 4096         # longest side of the overlay download for images above OVERLAY_PIXELS
OVERLAY_PIXELS = inference.STRIP_PIXELS  # up to here, the overlay download is at the image's own size
DEFAULT_MAX_UPLOAD_MB = 200
# Results' files stay downloadable up to this many bytes together (oldest dropped first; the newest is
# always kept): a noisy 16-megapixel photo's files take about 46 MB, a small image's a few hundred kB.
RESULTS_KEPT_BYTES = 512 * 2**20
REQUEST_TIMEOUT_SECONDS = 30  # a client silent this long (a half-sent request) is dropped
REQUEST_QUEUE = 128         # connections waiting to be accepted (socketserver's default, 5, resets a burst)
EXAMPLE_SEEDS = (11, 23, 37)
EXAMPLE_SHAPE = (384, 512)
HEATMAP_COLOURS = "magma"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")

logger = logging.getLogger("lesion_unet")


def safe_file_name(name):
    """Returns an uploaded file's name reduced to a safe base name (letters, digits, `._-`).

    Raises:
        InputError: the name has no image extension.
    """
    base = _SAFE_NAME.sub("_", os.path.basename(str(name).replace("\\", "/")).strip()).lstrip(".")
    stem, extension = os.path.splitext(base)
    if not stem or settings.image_id_of(base) is None:
        raise InputError(f"{name or '(no name)'}: not an image file name; upload .jpg, .jpeg, .png, .bmp or "
                         ".tif files")
    return stem[:100] + extension.lower()


def fit_size(size, longest):
    """Returns `(height, width)` scaled so that its longest side is at most `longest` (never enlarged)."""
    height, width = size
    scale = min(1.0, longest / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def nearest_resize(mask, size):
    """Resizes a boolean mask to `(height, width)` by picking the nearest pixel (no full-size copy)."""
    rows = (np.arange(size[0]) + 0.5) * mask.shape[0] / size[0]
    cols = (np.arange(size[1]) + 0.5) * mask.shape[1] / size[1]
    return mask[np.ix_(rows.astype(np.intp), cols.astype(np.intp))]


def _image_notes(mode, size, model_size):
    """What the page should say about how an image was read, from its Pillow mode and size."""
    notes = []
    if mode in lesion_files.HIGH_BIT_MODES:
        notes.append(f"{'16-bit' if mode.startswith('I;16') else 'high bit-depth'} image ({mode}): scaled to "
                     "8 bits for the model")
    if mode in ("L", "LA", "1", *lesion_files.HIGH_BIT_MODES):
        notes.append("grey image: its grey level fills all three colour channels")
    if mode in ("RGBA", "LA", "PA") or mode == "P":
        notes.append("transparent pixels (if any) are put on black, as predict.py does")
    if min(size) < 32:
        notes.append(f"a very small image ({size[1]}x{size[0]} pixels): the model sees it enlarged to "
                     f"{model_size[1]}x{model_size[0]}, so its mask says little")
    return notes


class Segmenter:
    """Segments uploaded images with one loaded model, one image at a time, and keeps the results'
    files for download.

    Args:
        model: a model from `inference.load_model`.
        model_name: what the page calls it (e.g. the file name).
        threshold: probability threshold, as `predict.py --threshold`.
        quality_model: a `quality.QualityModel` for the expected Dice and review flag, or `None`.
    """

    def __init__(self, model, model_name, threshold=settings.DEFAULT_THRESHOLD, quality_model=None):
        self.model = model
        self.quality_model = quality_model
        self.model_name = model_name
        self.threshold = threshold
        self._model_lock = threading.Lock()
        self._results = collections.OrderedDict()
        self._results_bytes = 0
        self._results_lock = threading.Lock()
        self.results_kept_bytes = RESULTS_KEPT_BYTES

    def segment(self, name, data, tta=settings.DEFAULT_TTA, postprocess=settings.DEFAULT_POSTPROCESS,
                remove_hair=settings.DEFAULT_REMOVE_HAIR):
        """Segments one uploaded image.

        Args:
            name: the uploaded file's name (its id names the downloads, as in `predict.py`).
            data: the file's bytes.
            tta: flip test-time augmentation.
            postprocess: keep the largest region and fill its holes.
            remove_hair: paint thin dark hairs over first (`hair_removal`).

        Returns:
            A JSON-ready dict: `name`, `id`, `width`, `height`, `area_pixels`, `area_percent`,
            `expected_dice` and `review` (the quality estimate, `quality.assess`; `None` when the model
            carries none),
            `seconds` (processing), `waited_seconds` (queued behind other users), the settings,
            `notes`, and `files`: URLs of the `overlay`, `mask` and `heatmap` pictures and of the
            `mask_png` and `overlay_png` downloads, with `download_names`.

        Raises:
            InputError: the name is not an image's, the file is empty or cannot be read as an image.
        """
        received = time.perf_counter()
        file_name = safe_file_name(name)
        if not data:
            raise InputError(f"{name}: the file is empty")
        with tempfile.TemporaryDirectory(prefix="lesion-app-") as folder:
            path = os.path.join(folder, file_name)
            with open(path, "wb") as handle:
                handle.write(data)
            try:
                with self._model_lock:
                    started = time.perf_counter()
                    result, files = self._segment_file(path, tta, postprocess, remove_hair)
            except InputError as error:  # name the user's file, not the temporary copy; no advice about folders
                message = str(error).replace(path, file_name).replace("; replace or remove the file", "")
                raise InputError(f"{message}; upload a .jpg, .png, .bmp or .tif image") from None
        finished = time.perf_counter()
        stem = os.path.splitext(file_name)[0]
        names = {"overlay": "overlay.png", "mask": "mask.png", "heatmap": "heatmap.png",
                 "mask_png": f"{stem}_segmentation.png", "overlay_png": f"{stem}_overlay.png"}
        token = secrets.token_urlsafe(12)
        with self._results_lock:
            self._results[token] = {names[key]: data for key, data in files.items()}
            self._results_bytes += sum(len(data) for data in files.values())
            while self._results_bytes > self.results_kept_bytes and len(self._results) > 1:
                _, dropped = self._results.popitem(last=False)
                self._results_bytes -= sum(len(data) for data in dropped.values())
        result.update(
            name=str(name), id=stem, seconds=round(finished - started, 3), waited_seconds=round(started - received, 3),
            tta=bool(tta), postprocess=bool(postprocess), remove_hair=bool(remove_hair), threshold=self.threshold,
            files={key: f"/results/{token}/{file}" for key, file in names.items()},
            # predict.py's names, from the name as uploaded (the URLs use the safe copy of it)
            download_names={"mask_png": f"{lesion_files.sample_id_of(name)}_segmentation.png",
                            "overlay_png": f"{lesion_files.sample_id_of(name)}_overlay.png"})
        logger.info("segmented %s (%dx%d) in %.2f s", file_name, result["width"], result["height"], finished - started)
        return result

    def _segment_file(self, path, tta, postprocess, remove_hair):
        from matplotlib import colormaps  # only here: the server starts without matplotlib's import

        ((_, probability, mask),) = inference.segment_files(self.model, [path], self.threshold, tta, postprocess,
                                                            batch_size=1, progress=False, remove_hair=remove_hair)
        height, width = mask.shape
        with Image.open(path) as header:
            mode = header.mode
        area = int(np.count_nonzero(mask))
        preview_size = fit_size((height, width), PREVIEW_SIDE)
        mask_preview = nearest_resize(mask, preview_size)
        probability_preview = inference.resize_probability(probability, preview_size)
        heatmap = np.round(colormaps[HEATMAP_COLOURS](np.clip(probability_preview, 0, 1))[..., :3] * 255)
        notes = _image_notes(mode, (height, width), inference.model_image_size(self.model))
        if height * width <= OVERLAY_PIXELS:  # predict.py --overlay's pixels; the preview from the same decode
            image = lesion_files.read_image(path)
            overlay = plots.draw_outline(image, mask)
            image_preview = np.asarray(Image.fromarray(image).resize(preview_size[::-1], Image.BILINEAR))
        else:  # large JPEGs decode at reduced scale (draft mode) for each of the two sizes
            overlay_size = fit_size((height, width), OVERLAY_SIDE)
            overlay = plots.draw_outline(lesion_files.read_image(path, overlay_size),
                                         nearest_resize(mask, overlay_size))
            image_preview = lesion_files.read_image(path, preview_size)
            notes.append(f"the overlay download is {overlay_size[1]}x{overlay_size[0]} pixels, not the image's "
                         f"{width}x{height}; the mask download is full size")
        files = {
            "mask_png": inference.encode_mask_png(mask),
            "overlay_png": lesion_files.encode_png(overlay),
            "overlay": lesion_files.encode_png(plots.draw_outline(image_preview, mask_preview)),
            "mask": lesion_files.encode_png(mask_preview.astype(np.uint8) * 255),
            "heatmap": lesion_files.encode_png(heatmap.astype(np.uint8)),
        }
        result = {
            "width": width, "height": height, "area_pixels": area, "area_percent": 100.0 * area / (height * width),
            **quality.assess(self.quality_model, probability),
            "notes": notes,
        }
        return result, files

    def result_file(self, token, file):
        """Returns the bytes of a kept result's file (a name in the URLs of `segment`'s `files`), or `None`."""
        with self._results_lock:
            return self._results.get(token, {}).get(file)


class AppServer(ThreadingHTTPServer):
    """The app's HTTP server: a thread per request, around one `Segmenter`.

    Args:
        address: `(host, port)`; port 0 picks a free one.
        segmenter: the `Segmenter`.
        max_upload_bytes: larger uploads are refused with a message.
    """

    daemon_threads = True
    request_queue_size = REQUEST_QUEUE

    def __init__(self, address, segmenter, max_upload_bytes):
        self.segmenter = segmenter
        self.max_upload_bytes = max_upload_bytes
        self.example_seeds = {f"synthetic_{index + 1}.png": seed for index, seed in enumerate(EXAMPLE_SEEDS)}
        self._example_pngs = {}
        super().__init__(address, _Handler)

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def example(self, name):
        """Returns an example image's PNG bytes (drawn by `synthetic.make_sample` on first use), or `None`."""
        if name not in self.example_seeds:
            return None
        if name not in self._example_pngs:
            image = synthetic.make_sample(self.example_seeds[name], EXAMPLE_SHAPE)[0]
            self._example_pngs[name] = lesion_files.encode_png(image)
        return self._example_pngs[name]

    def info(self):
        segmenter = self.segmenter
        return {
            "model": segmenter.model_name,
            "input_size": list(inference.model_image_size(segmenter.model)),
            "threshold": segmenter.threshold,
            "tta": settings.DEFAULT_TTA,
            "postprocess": settings.DEFAULT_POSTPROCESS,
            "remove_hair": settings.DEFAULT_REMOVE_HAIR,
            "max_upload_bytes": self.max_upload_bytes,
            "examples": [{"name": name, "url": f"/examples/{name}"} for name in self.example_seeds],
        }

    def handle_error(self, request, client_address):
        # A browser that goes away mid-answer is routine; anything else is logged with its traceback.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            logger.debug("client %s disconnected", client_address)
            return
        logger.exception("error while serving %s", client_address)


def _flag(value, default):
    if value is None:
        return default
    return value.lower() in ("1", "true", "on", "yes")


class _Handler(BaseHTTPRequestHandler):
    server_version = "lesion-unet"
    timeout = REQUEST_TIMEOUT_SECONDS  # the socket's: http.server drops a request line that never comes

    def log_message(self, format, *args):  # noqa: A002 (http.server's name): requests are not news
        logger.debug("%s " + format, self.address_string(), *args)

    def _send(self, status, body, content_type, extra_headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in extra_headers:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, obj, status=HTTPStatus.OK):
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

    def _send_error(self, status, message):
        self._send_json({"error": message}, status)

    def do_GET(self):  # noqa: N802 (http.server's name)
        route = urllib.parse.urlsplit(self.path).path
        if route in ("/", "/index.html"):
            route = "/static/index.html"
        if route == "/favicon.ico":  # what browsers ask for before they read the page's icon link
            route = "/static/favicon.svg"
        if route == "/api/segment":
            return self._send(HTTPStatus.METHOD_NOT_ALLOWED,
                              json.dumps({"error": "/api/segment takes a POST with the image file as the body "
                                                   "(e.g. curl --data-binary @image.jpg "
                                                   "'.../api/segment?name=image.jpg')"}).encode("utf-8"),
                              "application/json", [("Allow", "POST")])
        if route.startswith("/static/") and route[len("/static/"):] in STATIC_FILES:
            name = route[len("/static/"):]
            with open(os.path.join(STATIC_DIR, name), "rb") as handle:
                return self._send(HTTPStatus.OK, handle.read(), STATIC_FILES[name])
        if route == "/api/info":
            return self._send_json(self.server.info())
        match = re.fullmatch(r"/examples/([\w.-]+)", route)
        if match and (data := self.server.example(match.group(1))) is not None:
            return self._send(HTTPStatus.OK, data, "image/png")
        match = re.fullmatch(r"/results/([\w-]+)/([\w.-]+)", route)
        if match:
            token, file = match.groups()
            data = self.server.segmenter.result_file(token, file)
            if data is None:
                return self._send_error(HTTPStatus.NOT_FOUND, "this result is no longer kept; segment the image again")
            download = file.endswith(("_segmentation.png", "_overlay.png"))
            headers = [("Content-Disposition", f'attachment; filename="{file}"')] if download else []
            return self._send(HTTPStatus.OK, data, "image/png", headers)
        return self._send_error(HTTPStatus.NOT_FOUND, f"{route}: no such page")

    def do_POST(self):  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/api/segment":
            return self._send_error(HTTPStatus.NOT_FOUND, f"{url.path}: no such endpoint; POST images to /api/segment")
        query = dict(urllib.parse.parse_qsl(url.query))
        name = query.get("name", "")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = None
        if length is None or length < 0:  # a negative length would make read() wait for the client to close
            self.close_connection = True
            return self._send_error(HTTPStatus.LENGTH_REQUIRED, "send the image file as the request body, with its "
                                                                "Content-Length (a number of bytes, 0 or more)")
        limit = self.server.max_upload_bytes
        if length > limit:
            if length <= 4 * limit:  # read it, so that the browser sees the answer, not a reset connection
                for _ in range(0, length, 1 << 20):
                    self.rfile.read(min(1 << 20, length))
            else:
                self.close_connection = True
            return self._send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                    f"{name}: {length / 1e6:.0f} MB is more than this server takes "
                                    f"({limit / 1e6:.0f} MB; app.py --max-upload-mb raises it)")
        try:
            data = self.rfile.read(length)
        except TimeoutError:  # the client stopped sending mid-body; its thread is not held any longer
            self.close_connection = True
            return self._send_error(HTTPStatus.REQUEST_TIMEOUT, f"{name}: the upload stalled for "
                                                                f"{REQUEST_TIMEOUT_SECONDS} s; send it again")
        if len(data) < length:
            return self._send_error(HTTPStatus.BAD_REQUEST, f"{name}: the upload was cut short; send it again")
        tta = _flag(query.get("tta"), settings.DEFAULT_TTA)
        postprocess = _flag(query.get("postprocess"), settings.DEFAULT_POSTPROCESS)
        remove_hair = _flag(query.get("remove_hair"), settings.DEFAULT_REMOVE_HAIR)
        try:
            result = self.server.segmenter.segment(name, data, tta, postprocess, remove_hair)
        except InputError as error:
            return self._send_error(HTTPStatus.BAD_REQUEST, str(error))
        except MemoryError:
            return self._send_error(HTTPStatus.INSUFFICIENT_STORAGE,
                                    f"{name}: not enough memory to segment this image; try a smaller copy of it")
        except Exception as error:  # the server keeps serving; the details go to its log
            logger.exception("segmenting %s failed", name)
            return self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR,
                                    f"{name}: could not segment this image ({type(error).__name__}); the "
                                    "server's log has the details")
        return self._send_json(result)


def make_server(model, model_name, host="127.0.0.1", port=8000, threshold=settings.DEFAULT_THRESHOLD,
                max_upload_mb=DEFAULT_MAX_UPLOAD_MB, quality_model=None):
    """Builds the app's server around a loaded model; call `serve_forever()` on it.

    Args:
        model: a model from `inference.load_model`.
        model_name: what the page calls the model.
        host: address to listen on (`127.0.0.1`: this computer only).
        port: port, or 0 for any free one (see the server's `url`).
        threshold: probability threshold.
        max_upload_mb: largest upload accepted, in MB.
        quality_model: the model's `quality.QualityModel` (`inference.load_quality_model`), or `None`.

    Returns:
        An `AppServer`, listening.

    Raises:
        InputError: the address cannot be used (e.g. the port is taken).
    """
    try:
        return AppServer((host, port), Segmenter(model, model_name, threshold, quality_model),
                         int(max_upload_mb * 1e6))
    except OSError as error:
        raise InputError(f"{host}:{port}: cannot listen here ({error.strerror}); pass another --port "
                         "(0 picks a free one) or --host") from None
