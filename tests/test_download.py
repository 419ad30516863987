"""download_isic.py against a local HTTP server on 127.0.0.1 serving small archives in the official layout."""

import http.server
import io
import os
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from lesion_unet import data as dataGenerator
import download_isic
from lesion_unet.errors import InputError


def _archive(folder, files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{folder}/", "")
        for name, data in files.items():
            archive.writestr(f"{folder}/{name}", data)
    return buffer.getvalue()


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg():
    buffer = io.BytesIO()
    Image.fromarray(np.full((30, 40, 3), 150, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def server():
    ids = [f"ISIC_{i:07d}" for i in range(5)]
    noise = np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)
    files = {
        "ISIC2018_Task1-2_Training_Input.zip": _archive("ISIC2018_Task1-2_Training_Input", {
            **{f"{i}.jpg": _jpeg() for i in ids}, "LICENSE.txt": "license", "ATTRIBUTION.txt": "credit",
            "noise.png": _png(noise)}),
        "ISIC2018_Task1_Training_GroundTruth.zip": _archive("ISIC2018_Task1_Training_GroundTruth", {
            **{f"{i}_segmentation.png": _png(np.full((30, 40), 255, np.uint8)) for i in ids},
            "noise_segmentation.png": _png(np.zeros((300, 300), np.uint8)),
            "LICENSE.txt": "license"}),
    }
    state = {"cut_next": set(), "requests": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            name = self.path.rsplit("/", 1)[-1]
            if name not in files:
                self.send_error(404)
                return
            data, start = files[name], 0
            state["requests"].append((name, self.headers.get("Range")))
            if self.headers.get("Range"):
                start = int(self.headers["Range"].split("=")[1].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if name in state["cut_next"]:
                state["cut_next"].discard(name)
                self.wfile.write(data[start : start + (len(data) - start) // 2])
                self.wfile.flush()
                self.connection.shutdown(2)  # cut the connection half-way
                return
            self.wfile.write(data[start:])

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/2018", files, state
    httpd.shutdown()
    httpd.server_close()


def test_download_check_and_unpack(server, tmp_path):
    url, files, state = server
    out = str(tmp_path / "isic2018")
    report = download_isic.fetch(out, base_url=url, progress=False)
    assert [r[2:] for r in report] == [(6, 2), (6, 1)]  # LICENSE/ATTRIBUTION skipped
    pairs = dataGenerator.find_pairs(*dataGenerator.resolve_folders(out))
    assert len(pairs) == 6
    with open(os.path.join(out, "archives", "ISIC2018_Task1-2_Training_Input.zip"), "rb") as handle:
        assert handle.read() == files["ISIC2018_Task1-2_Training_Input.zip"]
    # A second run skips everything.
    count = len(state["requests"])
    again = download_isic.fetch(out, base_url=url, progress=False)
    assert all(r[2] is None for r in again) and len(state["requests"]) == count


def test_a_folder_of_other_images_is_neither_skipped_nor_replaced(server, tmp_path):
    url, _, state = server
    images = tmp_path / "mine" / "images"
    images.mkdir(parents=True)
    (images / "patient_01.jpg").write_bytes(b"someone's photo")
    with pytest.raises(InputError, match=r"images: holds 1 file\(s\), none from the ISIC archives "
                                         r"\(e.g. patient_01.jpg\)"):
        download_isic.fetch(str(tmp_path / "mine"), base_url=url, progress=False)
    assert os.listdir(images) == ["patient_01.jpg"] and not state["requests"]


def test_resume_after_a_cut_connection(server, tmp_path):
    url, files, state = server
    name = "ISIC2018_Task1-2_Training_Input.zip"
    state["cut_next"].add(name)
    path = str(tmp_path / name)
    download_isic.download(f"{url}/{name}", path, retries=2, progress=False)
    with open(path, "rb") as handle:
        assert handle.read() == files[name]
    ranges = [r for n, r in state["requests"] if n == name]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert not os.path.exists(path + ".part")


def test_resume_from_an_existing_part_file(server, tmp_path):
    url, files, state = server
    name = "ISIC2018_Task1_Training_GroundTruth.zip"
    path = str(tmp_path / name)
    with open(path + ".part", "wb") as handle:
        handle.write(files[name][:100])
    download_isic.download(f"{url}/{name}", path, progress=False)
    with open(path, "rb") as handle:
        assert handle.read() == files[name]
    assert state["requests"] == [(name, "bytes=100-")]


def test_damaged_archive_and_missing_address_are_clear_errors(server, tmp_path):
    url, files, _ = server
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(files["ISIC2018_Task1_Training_GroundTruth.zip"][:-40])
    with pytest.raises(InputError, match="damaged.zip"):
        download_isic.check_archive(str(damaged))
    with pytest.raises(InputError, match="404"):
        download_isic.download(f"{url}/nothing.zip", str(tmp_path / "nothing.zip"), progress=False)


def test_retries_flag_is_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):  # -1 tried nothing, then failed on the error of no attempt
        download_isic.main(["--out", str(tmp_path / "isic"), "--retries", "-1", "--base-url", "http://127.0.0.1:9"])
    assert "--retries: must be an integer >= 0 and <= 100, got -1" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "isic")


def test_a_host_that_does_not_resolve_is_said_at_once(tmp_path, monkeypatch):
    import socket
    import urllib.error

    calls = []

    def no_dns(request, timeout=None):
        calls.append(request.full_url)
        raise urllib.error.URLError(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))

    monkeypatch.setattr(download_isic.urllib.request, "urlopen", no_dns)
    with pytest.raises(InputError, match=r"isic.example: the host cannot be reached \(its name does not resolve: "
                                         r"Name or service not known\); check the network connection"):
        download_isic.download("https://isic.example/a.zip", str(tmp_path / "a.zip"), retries=5, progress=False)
    assert len(calls) == 1  # no retries of a name that does not resolve


def test_two_members_of_one_name_are_refused_not_merged(tmp_path):
    path = tmp_path / "odd.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for folder in ("a", "b"):
            archive.writestr(f"{folder}/ISIC_0000001.jpg", b"jpeg bytes")
        archive.writestr("ISIC_0000002.jpg", b"jpeg bytes")
    target = str(tmp_path / "images")
    with pytest.raises(InputError, match=r"odd.zip: members a/ISIC_0000001.jpg and b/ISIC_0000001.jpg would both "
                                         r"unpack as ISIC_0000001.jpg"):
        download_isic.unpack(str(path), target, "images")
    assert sorted(os.listdir(tmp_path)) == ["odd.zip"]  # no folder, not even the temporary one
