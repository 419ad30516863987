"""The web app (`app.py`, `webapp.py`): downloads equal to predict.py's files, hostile uploads, two
users at once, and the page itself in headless Chromium (Debian's package, driven by Playwright)."""

import contextlib
import io
import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lesion_unet import settings
from lesion_unet import synthetic
from conftest import ROOT, run_main


@pytest.fixture(scope="session")  # session: a worker that runs another module between would load it again
def server():
    """The app around the pre-trained model, on a free port of 127.0.0.1, served from a thread."""
    from lesion_unet import quiet

    quiet.import_keras()
    from lesion_unet import inference
    from lesion_unet import webapp

    model = inference.load_model(settings.DEFAULT_MODEL)
    app = webapp.make_server(model, os.path.basename(settings.DEFAULT_MODEL), "127.0.0.1", 0,
                             quality_model=inference.load_quality_model(settings.DEFAULT_MODEL))
    thread = threading.Thread(target=app.serve_forever, daemon=True)
    thread.start()
    yield app
    app.shutdown()
    app.server_close()


def post(app, name, data, **flags):
    """POSTs an upload as the page does; returns `(status, JSON body)`."""
    query = urllib.parse.urlencode({"name": name, **{key: int(value) for key, value in flags.items()}})
    request = urllib.request.Request(f"{app.url}api/segment?{query}", data=data, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get(app, path):
    with urllib.request.urlopen(app.url + path.lstrip("/"), timeout=60) as response:
        return response.read()


def encoded(pixels, format="PNG", mode=None):
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format=format)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def lesion_png(tmp_path_factory):
    """A synthetic 300x400 lesion image as a PNG file."""
    path = tmp_path_factory.mktemp("app_images") / "lesion_a.png"
    path.write_bytes(encoded(synthetic.make_sample(5, (300, 400))[0]))
    return str(path)


@pytest.mark.parametrize("flags", [{}, {"tta": True, "postprocess": False}, {"remove_hair": True}],
                         ids=["defaults", "tta_no_postprocess", "remove_hair"])
def test_downloads_are_the_files_predict_writes(server, lesion_png, tmp_path, flags):
    cli = {"tta": "--tta", "postprocess": "--no-postprocess", "remove_hair": "--remove-hair"}
    result = run_main("predict.py", lesion_png, "--out", str(tmp_path), "--overlay", "--no-progress",
                      *[cli[key] for key in flags])
    assert result.returncode == 0, result.stderr
    with open(lesion_png, "rb") as handle:
        status, answer = post(server, "lesion_a.png", handle.read(), **flags)
    assert status == 200, answer
    mask = get(server, answer["files"]["mask_png"])
    assert mask == (tmp_path / "lesion_a_segmentation.png").read_bytes()
    assert get(server, answer["files"]["overlay_png"]) == (tmp_path / "lesion_a_overlay.png").read_bytes()
    assert answer["download_names"] == {"mask_png": "lesion_a_segmentation.png", "overlay_png": "lesion_a_overlay.png"}
    pixels = np.asarray(Image.open(io.BytesIO(mask)))
    assert pixels.shape == (300, 400) and (answer["width"], answer["height"]) == (400, 300)
    assert answer["area_pixels"] == np.count_nonzero(pixels) > 1000
    assert answer["area_percent"] == pytest.approx(100 * answer["area_pixels"] / 120000)
    assert answer["seconds"] > 0
    (row,) = _read_predictions(tmp_path / "predictions.csv")  # the quality estimate, as predict.py lists it
    assert answer["expected_dice"] == pytest.approx(float(row["expected_dice"]), abs=5e-5)
    assert row["review"] == ("yes" if answer["review"] else "no") and 0 <= answer["risk"] <= 1
    assert ((answer["tta"], answer["postprocess"], answer["remove_hair"])
            == (flags.get("tta", False), flags.get("postprocess", True), flags.get("remove_hair", False)))
    for key in ("overlay", "mask", "heatmap"):  # the pictures on the page: previews at the image's size here
        assert Image.open(io.BytesIO(get(server, answer["files"][key]))).size == (400, 300)


def _read_predictions(path):
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _truncated_jpeg():
    data = encoded(synthetic.make_sample(1, (192, 256))[0], "JPEG")
    return data[: len(data) // 2]


@pytest.mark.parametrize("name, data, message", [
    ("notes.jpg", b"these are my notes, not an image\n", "notes.jpg: cannot read this image"),
    ("cut.jpg", None, "cut.jpg: cannot decode this image"),
    ("empty.png", b"", "empty.png: the file is empty"),
    ("report.pdf", b"%PDF-1.4", "report.pdf: not an image file name"),
], ids=["text_as_jpg", "truncated_jpeg", "empty", "not_an_image_name"])
def test_bad_uploads_get_a_message_and_the_server_keeps_serving(server, lesion_png, name, data, message):
    status, answer = post(server, name, _truncated_jpeg() if data is None else data)
    assert status == 400 and answer["error"].startswith(message), answer
    assert "Traceback" not in answer["error"] and "lesion-app-" not in answer["error"]  # no temporary path
    with open(lesion_png, "rb") as handle:
        assert post(server, "after.png", handle.read())[0] == 200


UNUSUAL = {  # name: (file bytes, the note the page shows)
    "one_pixel.png": (encoded(np.full((1, 1, 3), 120, np.uint8)), "a very small image (1x1 pixels)"),
    "grey.png": (encoded(synthetic.make_sample(2, (96, 128))[0][..., 0]), "grey image"),
    "alpha.png": (encoded(np.dstack([synthetic.make_sample(3, (96, 128))[0], np.full((96, 128), 200, np.uint8)])),
                  "transparent pixels"),
    "deep.png": (encoded(synthetic.make_sample(4, (96, 128))[0][..., 1].astype(np.uint16) * 257), "16-bit image"),
}


def test_unusual_images_are_segmented_with_a_note(server, tmp_path):
    """A 1x1, a grey, an RGBA and a 16-bit image: segmented as predict.py does, with a note each."""
    for name, (data, _) in UNUSUAL.items():
        (tmp_path / name).write_bytes(data)
    assert run_main("predict.py", *[str(tmp_path / name) for name in UNUSUAL], "--out", str(tmp_path / "out"),
                    "--no-progress").returncode == 0
    for name, (data, note) in UNUSUAL.items():
        status, answer = post(server, name, data)
        assert status == 200, answer
        assert any(line.startswith(note) for line in answer["notes"]), (name, answer["notes"])
        expected = (tmp_path / "out" / f"{os.path.splitext(name)[0]}_segmentation.png").read_bytes()
        assert get(server, answer["files"]["mask_png"]) == expected, name


# 108 MP is above Pillow's warning size (89 MP): the scripts silence it in errors.run_cli, which this
# in-process server does not go through.
@pytest.mark.filterwarnings(r"ignore:Image size \(\d+ pixels\) exceeds limit")
def test_a_12000x9000_photo_is_segmented_at_its_own_size(server):
    photo = Image.new("RGB", (12000, 9000), (205, 160, 140))
    ImageDraw.Draw(photo).ellipse((3500, 2500, 8500, 6500), fill=(90, 55, 45))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=85)
    del photo
    status, answer = post(server, "huge.jpg", buffer.getvalue())
    assert status == 200, answer
    mask = Image.open(io.BytesIO(get(server, answer["files"]["mask_png"])))
    assert mask.size == (12000, 9000) and (answer["width"], answer["height"]) == (12000, 9000)
    true_area = np.pi * 2500 * 2000
    assert abs(answer["area_pixels"] - true_area) < 0.1 * true_area  # the dark ellipse, found at full size
    assert Image.open(io.BytesIO(get(server, answer["files"]["overlay_png"]))).size == (4096, 3072)
    assert Image.open(io.BytesIO(get(server, answer["files"]["overlay"]))).size == (768, 576)
    assert any("overlay download is 4096x3072" in line for line in answer["notes"])


def test_too_large_an_upload_is_refused_with_the_limit(server):
    from lesion_unet import webapp

    small = webapp.make_server(server.segmenter.model, "m", "127.0.0.1", 0, max_upload_mb=0.001)
    thread = threading.Thread(target=small.serve_forever, daemon=True)
    thread.start()
    try:
        status, answer = post(small, "big.png", bytes(2500))
    finally:
        small.shutdown()
        small.server_close()
    assert status == 413 and answer["error"].startswith("big.png: 0 MB is more than this server takes (0 MB")
    assert "--max-upload-mb" in answer["error"]


@contextlib.contextmanager
def served(model, **options):
    """Another app server around `model`, on a free port of 127.0.0.1, for tests that change its limits."""
    from lesion_unet import webapp

    app = webapp.make_server(model, "m", "127.0.0.1", 0, **options)
    thread = threading.Thread(target=app.serve_forever, daemon=True)
    thread.start()
    try:
        yield app
    finally:
        app.shutdown()
        app.server_close()


def _raw(app, request, timeout=20):
    """Sends raw bytes to the server and returns what it answers before it closes the connection."""
    with socket.create_connection(app.server_address[:2], timeout=timeout) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        return answer


def test_a_negative_content_length_is_refused_at_once(server):
    """Content-Length -1 made the server read until the client closed: past any upload limit."""
    with served(server.segmenter.model, max_upload_mb=0.001) as small:
        started = time.perf_counter()
        answer = _raw(small, b"POST /api/segment?name=a.png HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"
                      + bytes(6000))
    assert answer.startswith(b"HTTP/1.0 411") and b"Content-Length (a number of bytes, 0 or more)" in answer
    assert time.perf_counter() - started < 10  # answered, not waiting for the client to hang up


def test_half_sent_requests_are_dropped_after_the_timeout(server, monkeypatch):
    from lesion_unet import webapp

    monkeypatch.setattr(webapp._Handler, "timeout", 1)
    with served(server.segmenter.model) as app:
        started = time.perf_counter()
        assert _raw(app, b"POST /api/segment?name=a.png HTTP/1.1\r\nContent-Le") == b""  # headers never end
        body = _raw(app, b"POST /api/segment?name=a.png HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + bytes(10))
        assert time.perf_counter() - started < 15
    assert body.startswith(b"HTTP/1.0 408") and b"a.png: the upload stalled for" in body


def test_fifty_clients_at_once_are_all_answered(server):
    """socketserver's default queue of 5 connections reset some of 50 simultaneous ones."""
    barrier, statuses = threading.Barrier(50), []

    def client():
        barrier.wait()
        with urllib.request.urlopen(server.url + "api/info", timeout=60) as response:
            statuses.append(response.status)

    threads = [threading.Thread(target=client) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == [200] * 50 and server.request_queue_size >= 50


def test_results_are_kept_by_their_bytes_not_their_count(server):
    with served(server.segmenter.model) as app:
        app.segmenter.results_kept_bytes = 1  # less than any result: only the newest stays
        urls = [post(app, f"u{seed}.png", encoded(synthetic.make_sample(seed, (60, 80))[0]))[1]["files"]["mask"]
                for seed in (1, 2)]
        with pytest.raises(urllib.error.HTTPError) as gone:
            get(app, urls[0])
        assert gone.value.code == 404
        assert get(app, urls[1]).startswith(b"\x89PNG")
        kept = app.segmenter._results_bytes
        assert kept == sum(len(data) for files in app.segmenter._results.values() for data in files.values()) > 0


def test_favicon_and_a_get_of_the_upload_endpoint(server):
    with urllib.request.urlopen(server.url + "favicon.ico", timeout=60) as response:
        assert response.headers["Content-Type"] == "image/svg+xml" and response.read().startswith(b"<svg")
    with pytest.raises(urllib.error.HTTPError) as error:
        get(server, "api/segment")
    assert error.value.code == 405 and error.value.headers["Allow"] == "POST"
    assert "takes a POST with the image file as the body" in json.loads(error.value.read())["error"]


def test_two_users_at_once_each_get_their_own_result(server, tmp_path):
    images = {f"user_{seed}.png": encoded(synthetic.make_sample(seed, (240, 320))[0]) for seed in (7, 8)}
    alone = {name: post(server, name, data)[1]["area_pixels"] for name, data in images.items()}
    assert len(set(alone.values())) == 2
    barrier, answers = threading.Barrier(len(images)), {}

    def user(name, data):
        barrier.wait()
        answers[name] = post(server, name, data)

    threads = [threading.Thread(target=user, args=item) for item in images.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for name in images:
        status, answer = answers[name]
        assert status == 200 and answer["name"] == name and answer["area_pixels"] == alone[name]
    waits = sorted(answer["waited_seconds"] for _, answer in answers.values())
    assert waits[1] > 0  # one of them queued behind the other: the model runs one image at a time


def test_pages_and_result_files_that_do_not_exist_are_404(server):
    for path in ("no/such/page", "results/unknown-token/mask.png", "static/../webapp.py", "examples/none.png"):
        with pytest.raises(urllib.error.HTTPError) as error:
            get(server, path)
        assert error.value.code == 404
    assert get(server, "/").startswith(b"<!doctype html>")
    info = json.loads(get(server, "api/info"))
    assert info["model"] == "improved_unet.keras" and info["input_size"] == [128, 128]
    example = Image.open(io.BytesIO(get(server, info["examples"][0]["url"])))
    assert example.size == (512, 384)


def test_a_taken_port_is_one_clear_error(server):
    from lesion_unet import webapp
    from lesion_unet.errors import InputError

    with pytest.raises(InputError, match=f"127.0.0.1:{server.server_address[1]}: cannot listen here.*--port"):
        webapp.make_server(server.segmenter.model, "m", "127.0.0.1", server.server_address[1])


def _chromium():
    for candidate in (os.environ.get("CHROMIUM"), "/usr/lib/chromium/chromium", shutil.which("chromium")):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def test_the_page_in_a_real_browser(server, lesion_png, tmp_path):
    """Headless Chromium: upload two images, read the area, download the mask (predict.py's bytes),
    drop a bad file and see the message, turn TTA on and click an example; saves a screenshot."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-test.txt")
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium: apt-get install chromium (.ci/run installs it)")
    assert run_main("predict.py", lesion_png, "--out", str(tmp_path / "cli"), "--no-progress").returncode == 0
    expected_mask = (tmp_path / "cli" / "lesion_a_segmentation.png").read_bytes()
    expected_area = int(np.count_nonzero(np.asarray(Image.open(io.BytesIO(expected_mask)))))
    (listed,) = _read_predictions(tmp_path / "cli" / "predictions.csv")

    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            missing = []  # a 404 (the favicon's was one) is an error in the browser's console
            page.on("response", lambda response: response.status == 404 and missing.append(response.url))
            page.goto(server.url)
            page.wait_for_selector("body[data-ready=true]")
            assert "improved_unet.keras" in page.inner_text("#model-name")

            second = tmp_path / "lesion_b.png"
            second.write_bytes(encoded(synthetic.make_sample(9, (240, 320))[0]))
            page.set_input_files("#file-input", [lesion_png, str(second)])  # several at once: a card each
            card = page.locator('.result[data-name="lesion_a.png"]')
            card.locator(".area").wait_for(timeout=120_000)
            page.locator('.result[data-name="lesion_b.png"] .area').wait_for(timeout=120_000)
            assert card.locator(".area").inner_text().startswith(f"{expected_area:,} px (")
            text = card.locator(".quality").inner_text()  # predict.py's expected Dice, and the flag in words
            assert text.startswith(f"{float(listed['expected_dice']):.2f}")
            assert ("check this mask" in text) == (listed["review"] == "yes")
            assert ("review" in card.get_attribute("class").split()) == (listed["review"] == "yes")
            # A flat grey picture: no lesion to be sure of, so the card asks for a look.
            grey = tmp_path / "flat_grey.png"
            grey.write_bytes(encoded(np.full((96, 128, 3), 150, np.uint8)))
            page.set_input_files("#file-input", [str(grey)])
            doubtful = page.locator('.result[data-name="flat_grey.png"]')
            doubtful.locator(".quality").wait_for(timeout=120_000)
            assert "check this mask" in doubtful.locator(".quality").inner_text()
            assert "review" in doubtful.get_attribute("class").split()
            assert (card.locator(".settings").inner_text()
                    == "TTA off, post-processing on, hair removal off, threshold 0.5")
            with page.expect_download() as download:
                card.locator(".download-mask").click()
            assert download.value.suggested_filename == "lesion_a_segmentation.png"
            assert open(download.value.path(), "rb").read() == expected_mask

            # A text file renamed .jpg, dropped on the zone as a user drags it from a file manager.
            transfer = page.evaluate_handle("""() => {
                const transfer = new DataTransfer();
                transfer.items.add(new File(["not an image"], "notes.jpg", {type: "image/jpeg"}));
                return transfer; }""")
            page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
            message = page.locator('.result.failed[data-name="notes.jpg"] .error')
            message.wait_for(timeout=60_000)
            assert message.inner_text().startswith("notes.jpg: cannot read this image")

            page.check("#tta")  # the switches reach the server
            page.check("#remove-hair")
            page.locator(".examples button").first.click()
            example = page.locator('.result[data-name="synthetic_1.png"]')
            example.locator(".area").wait_for(timeout=120_000)
            assert example.locator(".settings").inner_text().startswith("TTA on, post-processing on, hair removal on")
            page.evaluate("window.scrollTo(0, 0)")
            screenshot = str(tmp_path / "app.png")
            page.screenshot(path=screenshot, full_page=True)
            assert errors == [] and missing == []
        finally:
            browser.close()
    assert Image.open(screenshot).size[0] == 1200
    if os.environ.get("APP_SCREENSHOT"):  # how resources/app_screenshot.png is made
        shutil.copyfile(screenshot, os.path.join(ROOT, os.environ["APP_SCREENSHOT"]))
