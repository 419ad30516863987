"""Downloads the official ISIC 2018 Task 1 archives and unpacks them into images/ and masks/.

    python download_isic.py --out data/isic2018          # training input + ground truth (~11 GB)
    python download_isic.py --out data/isic2018 --all    # also validation and test

Downloads resume where a partial `.part` file stopped (also after a cut connection, retried a few
times), each archive is checked (`zipfile` CRCs) before use, and finished archives and unpacked
folders are skipped on a second run. Training pairs land in `DIR/images` and `DIR/masks`, ready for
`python train.py --data DIR`; validation and test in `DIR/validation/` and `DIR/test/`. Files in the
archives that are not images (`LICENSE.txt`, `ATTRIBUTION.txt`) are skipped and counted.
"""

import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile

from tqdm.auto import tqdm

from lesion_unet import cliargs
from lesion_unet import settings
from lesion_unet.errors import InputError, exit_script, make_output_dir, run_cli

BASE_URL = "https://isic-challenge-data.s3.amazonaws.com/2018"
# (archive, sub-folder of --out, images or masks); the first two are the training set.
ARCHIVES = (
    ("ISIC2018_Task1-2_Training_Input.zip", "", "images"),
    ("ISIC2018_Task1_Training_GroundTruth.zip", "", "masks"),
    ("ISIC2018_Task1-2_Validation_Input.zip", "validation", "images"),
    ("ISIC2018_Task1_Validation_GroundTruth.zip", "validation", "masks"),
    ("ISIC2018_Task1-2_Test_Input.zip", "test", "images"),
    ("ISIC2018_Task1_Test_GroundTruth.zip", "test", "masks"),
)
CHUNK = 1 << 20


def download(url, path, retries=5, progress=True, timeout=60):
    """Downloads `url` to `path`, resuming from `path + '.part'` and retrying cut connections.

    Args:
        url: the address.
        path: the final file; written only once complete (the `.part` file is renamed).
        retries: attempts after a failure.
        progress: show a progress bar.
        timeout: seconds to wait for the server on each read.

    Raises:
        InputError: the download keeps failing.
    """
    part = path + ".part"
    for attempt in range(retries + 1):
        done = os.path.getsize(part) if os.path.exists(part) else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if done and response.status != 206:
                    done = 0  # the server ignored the range: start again
                total = done + int(response.headers.get("Content-Length", 0))
                with open(part, "ab" if done else "wb") as handle, tqdm(
                        total=total or None, initial=done, unit="B", unit_scale=True, disable=not progress,
                        desc=os.path.basename(path), leave=False) as bar:
                    while chunk := response.read(CHUNK):
                        handle.write(chunk)
                        bar.update(len(chunk))
            if total and os.path.getsize(part) < total:
                raise urllib.error.URLError(f"connection closed after {os.path.getsize(part)} of {total} bytes")
            os.replace(part, path)
            return path
        except urllib.error.HTTPError as error:
            if error.code == 416 and done:  # the part file is already complete
                os.replace(part, path)
                return path
            if error.code in (403, 404):
                raise InputError(f"{url}: {error.code} {error.reason}; check the address (--base-url)") from None
            failure = error
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            if isinstance(getattr(error, "reason", None), socket.gaierror):  # no retry brings the name back
                host = urllib.parse.urlsplit(url).hostname
                raise InputError(f"{host}: the host cannot be reached (its name does not resolve: "
                                 f"{error.reason.strerror}); check the network connection (or --base-url), then "
                                 "run again to resume") from None
            failure = error
        if attempt < retries:
            print(f"{os.path.basename(path)}: {failure}; resuming ({attempt + 1}/{retries})", file=sys.stderr)
            time.sleep(min(2**attempt, 30) * 0.1)
    raise InputError(f"{url}: download failed after {retries + 1} attempts ({failure}); run again to resume")


def check_archive(path):
    """Raises InputError unless `path` is a complete zip whose members pass their CRC checks."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(f"{path}: damaged archive ({error}); delete it and download again") from None
    if bad is not None:
        raise InputError(f"{path}: damaged member {bad}; delete the archive and download again")


def unpack(path, target_dir, kind):
    """Extracts the images (or masks) of an archive into `target_dir`, flat, skipping other files.

    Returns:
        `(extracted, skipped)` counts.
    """
    tmp_dir = target_dir + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    extracted = skipped = 0
    unpacked_from = {}  # base name -> member: two members of one name would leave one file
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            name = os.path.basename(member.filename)
            if member.is_dir() or not name:
                continue
            keep = (settings.image_id_of(name) is not None if kind == "images"
                    else name.lower().endswith(settings.MASK_SUFFIX))
            if not keep or name.startswith("."):
                skipped += 1
                continue
            if name in unpacked_from:
                shutil.rmtree(tmp_dir, ignore_errors=True)
                raise InputError(f"{path}: members {unpacked_from[name]} and {member.filename} would both unpack as "
                                 f"{name}, and one would replace the other; this is not an ISIC archive as "
                                 "published: delete it and download again")
            unpacked_from[name] = member.filename
            with archive.open(member) as source, open(os.path.join(tmp_dir, name), "wb") as target:
                shutil.copyfileobj(source, target)
            extracted += 1
    # The folder appears only once complete, so a killed unpack is redone, never half-used.
    os.replace(tmp_dir, target_dir)
    return extracted, skipped


def _check_unpacked(target_dir):
    """Raises `InputError` if no file in `target_dir` is named as the ISIC archives' are (`ISIC_*`):
    a folder of someone's own images there would otherwise be reported as downloaded."""
    names = sorted(os.listdir(target_dir))
    if not any(name.startswith("ISIC_") for name in names):
        raise InputError(f"{target_dir}: holds {len(names)} file(s), none from the ISIC archives "
                         f"(e.g. {names[0]}), so it is neither skipped as downloaded nor replaced; "
                         "pass another --out")


def fetch(out_dir, include_all=False, base_url=BASE_URL, keep_archives=True, progress=True, retries=5):
    """Downloads, checks and unpacks the archives into `out_dir`.

    Returns:
        A list of `(archive, target folder, extracted, skipped)`, `None` counts for skipped steps.
    """
    make_output_dir(out_dir)
    archive_dir = make_output_dir(os.path.join(out_dir, "archives"))
    report = []
    for name, subset, kind in ARCHIVES if include_all else ARCHIVES[:2]:
        target_dir = os.path.join(out_dir, subset, kind)
        if os.path.isdir(target_dir) and os.listdir(target_dir):
            _check_unpacked(target_dir)
            report.append((name, target_dir, None, None))
            continue
        path = os.path.join(archive_dir, name)
        if not os.path.exists(path):
            download(f"{base_url.rstrip('/')}/{name}", path, retries=retries, progress=progress)
        check_archive(path)
        os.makedirs(os.path.dirname(target_dir) or ".", exist_ok=True)
        extracted, skipped = unpack(path, target_dir, kind)
        if not keep_archives:
            os.remove(path)
        report.append((name, target_dir, extracted, skipped))
    return report


def build_parser():
    parser = cliargs.ArgumentParser(description="Download and unpack the official ISIC 2018 Task 1 data.")
    parser.add_argument("--out", default="data/isic2018", help="destination folder (default: %(default)s)")
    parser.add_argument("--all", action="store_true", help="also the validation and test sets (default: training only)")
    parser.add_argument("--base-url", default=BASE_URL, help="where the archives are served (default: %(default)s)")
    parser.add_argument("--delete-archives", action="store_true", help="delete each archive once unpacked")
    parser.add_argument("--retries", type=cliargs.int_range(0, 100), default=5,
                        help="attempts after a cut connection, 0 to 100 (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    report = fetch(args.out, args.all, args.base_url, not args.delete_archives, not args.no_progress, args.retries)
    for name, target, extracted, skipped in report:
        if extracted is None:
            print(f"{target}: already there, skipped")
        else:
            note = f" ({skipped} non-image files skipped)" if skipped else ""
            print(f"{name} -> {target}: {extracted} files{note}")
    print(f"next: python train.py --data {args.out}")


if __name__ == "__main__":
    exit_script(run_cli(main))
