"""Getting the data: the competition's three zips from Google Drive into the zip cache (only those
missing; data.ensure_data and ``bash data_download.sh`` unpack them), or the demo set. No torch."""
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from helpers import DEMO_MARKER, SPLITS, DataError, env_path, is_colab, list_images
from descan.demo import DEMO_DEFAULTS, demo_counts, make_demo_dataset, settings_line
from descan.files import atomic_path
from descan.zips import ZIP_NAMES, BrokenZip, check_zip, identify_zip

DRIVE_IDS = ("16zAeGDmqbAvn7Iy8V-mBylKx6rG-wgLD", "1cqxSVFxfonx5qKVIdfByOq7uYdNZY8ea",
             "1zmfrXzT9lnLg7NlQ-hXekZlyX9aGNNqj")
FALLBACK_TEST_ID = "1DEavUuFh6x7n1XEMQCaW8yaU3wQxqfBu"  # the test zip, replaced in the competition
RECORD = ".drive_ids"  # in the zip cache: lines "<Drive id> <zip name>" of earlier downloads
QUOTA = re.compile(r"too many users|quota|cannot retrieve the public link|uc-error", re.I)
OFFLINE = re.compile(r"name or service not known|failed to resolve|temporary failure in name "
                     r"resolution|nodename nor servname|getaddrinfo|network is unreachable|"
                     r"no route to host|NameResolutionError", re.I)


def zip_cache_dir(data, workspace) -> Path:
    """$DESCAN_ZIP_CACHE; in Colab in the workspace on Drive (kept for a new runtime)."""
    return env_path("DESCAN_ZIP_CACHE") or Path(workspace if is_colab() else data) / "zips"


def missing(cache) -> list[Path]:
    return [Path(cache) / n for n in ZIP_NAMES if not (Path(cache) / n).is_file()]


def cannot_download(cache, why, todo, drive_id="ID") -> DataError:
    """The error for a download that cannot succeed now: ``why``, then what to do."""
    return DataError(
        f"{why}\nWhat to do: {todo}; or put the zips into the cache by hand, each under its name "
        f"(from a browser, https://drive.google.com/uc?id={drive_id}, or from a copy in your own "
        "Google Drive: File > Make a copy):" + "".join(f"\n  {p}" for p in missing(cache))
        + "\nTo try the notebooks without the competition data: bash data_download.sh --demo")


def refused(cache, drive_id, why="") -> DataError:
    return cannot_download(
        cache, f"{why}Google Drive refused to send the file with id {drive_id}: \"Too many users "
        "have viewed or downloaded this file recently\" (its quota is used up, or Drive sent a "
        "sign-in page).", "wait (up to 24 hours) and retry later; complete zips are kept",
        drive_id)


def recorded(cache) -> dict:
    """{Drive id: zip name} of earlier downloads."""
    path = Path(cache) / RECORD
    lines = path.read_text().splitlines() if path.is_file() else []
    return dict(line.split() for line in lines if len(line.split()) == 2)


def keep(cache, drive_id, path) -> bool:
    """Move a download into the cache under the name of what it is; False when it is broken."""
    try:
        check_zip(path)
    except BrokenZip as e:
        if "web page" in str(e):
            why = "The download is a web page, not a zip; deleted it.\n"
            raise refused(cache, drive_id, why) from None
        print(f"Id {drive_id}: the download is not a complete zip; deleted it. ({e})")
        return False
    try:
        name = identify_zip(path)
    except DataError as e:
        kept = cache / path.name
        os.replace(path, kept)
        raise DataError(f"{e}\nThe download (id {drive_id}) is kept as {kept}.") from None
    ids = {**recorded(cache), drive_id: name}
    with atomic_path(cache / RECORD) as tmp:
        tmp.write_text("".join(f"{i} {n}\n" for i, n in ids.items()))
    if (cache / name).is_file():
        print(f"Id {drive_id} is {name}, already in the cache: the new copy is discarded.")
    else:
        os.replace(path, cache / name)
        print(f"{name}: downloaded (id {drive_id}, named '{path.name}' by Drive) and complete.")
    return True


def download_id(cache, drive_id, tries, wait, timeout, downloader="gdown") -> None:
    """Download one id into the cache with gdown (or ``downloader``), named by Drive (no -O)."""
    exe = shutil.which(str(downloader))
    if exe is None:
        raise cannot_download(cache, f"the downloader '{downloader}' is not installed.",
                              "install it: pip install gdown", drive_id)
    helps = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    opts = ["--timeout", str(timeout)] if "--timeout" in helps else []  # gdown < 5.2 has none
    for n in range(1, tries + 1):
        print(f"Downloading Google Drive id {drive_id} (attempt {n} of {tries}) ...", flush=True)
        with tempfile.TemporaryDirectory(prefix=".download.", dir=cache) as folder:
            proc = subprocess.Popen([os.path.abspath(exe), *opts, drive_id], cwd=folder,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            log = []
            while chunk := proc.stdout.read1(4096):  # shown as it comes
                log.append(chunk.decode(errors="replace"))
                print(log[-1], end="", flush=True)
            status, log = proc.wait(), "".join(log)
            if status and QUOTA.search(log):
                raise refused(cache, drive_id)
            if status and OFFLINE.search(log):
                raise cannot_download(cache, "could not reach Google Drive: no network connection.",
                                      "check the internet connection and run again", drive_id)
            files = [p for p in Path(folder).iterdir() if not p.name.endswith(".part")]
            if status or len(files) != 1:
                print(f"Id {drive_id}: the download failed (exit status {status}, {len(files)} "
                      "files written, not one zip).")
            elif keep(cache, drive_id, files[0]):
                return
        if n < tries:
            print(f"Retrying in {wait} s ...", flush=True)
            time.sleep(wait)
    raise cannot_download(cache, f"the file with id {drive_id} could not be downloaded after "
                          f"{tries} attempts (see above; nothing incomplete was kept).", "run the "
                          "download again later (timeouts are often temporary)", drive_id)


def fetch_zips(cache, tries=3, wait=10, timeout=30, downloader="gdown") -> None:
    """Make sure the cache holds the three zips, complete, downloading ids while one is missing."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    for path in [cache / n for n in ZIP_NAMES if (cache / n).is_file()]:
        try:
            check_zip(path)
            print(f"{path.name}: complete zip already in the cache, not downloading it again.")
        except BrokenZip as e:
            os.replace(path, f"{path}.bad")
            print(f"{path.name}: not a complete zip; moved it aside to {path}.bad. ({e})")
    ids = os.environ.get("DESCAN_DRIVE_IDS", "").split() or [*DRIVE_IDS, FALLBACK_TEST_ID]
    for drive_id in ids:
        if not missing(cache):
            return
        fallback = "test_scan.zip" if drive_id == FALLBACK_TEST_ID else None
        known = recorded(cache).get(drive_id, fallback)
        if known and (cache / known).is_file():
            print(f"Id {drive_id} is {known}, already in the cache: not downloading it again.")
        else:
            download_id(cache, drive_id, tries, wait, timeout, downloader)
    if missing(cache):
        raise cannot_download(
            cache, f"still missing after trying the Google Drive ids {' '.join(ids)}: "
            f"{' '.join(p.name for p in missing(cache))} (see {cache / RECORD} for what each id "
            "gave).", "set DESCAN_DRIVE_IDS to the ids your course hands out, in any order, e.g. "
            'DESCAN_DRIVE_IDS="ID1 ID2 ID3" bash data_download.sh')


def get_demo(data, **settings) -> bool:
    """Make the demo set in ``data``; False when it is there, complete, made with ``settings``."""
    data, settings = Path(data), {**DEMO_DEFAULTS, **settings}
    marker, line = data / DEMO_MARKER, settings_line(settings)
    if any((data / sub).exists() for sub in ("train", "test")) and not marker.exists():
        raise DataError(f"{data} holds data without a {DEMO_MARKER} marker: it looks like the real "
                        "competition data, and demo data is never written there. Give another "
                        "folder: bash data_download.sh --demo ./data/demo")
    if marker.exists():
        n = demo_counts(settings)
        want = [n["train_pairs"], n["train_pairs"], n["test_scans"]]
        made = [len(list_images(data / s)) if (data / s).is_dir() else 0 for s in SPLITS.values()]
        if line in marker.read_text().splitlines() and made == want:
            print(f"Demo data already in {data} ({line}); nothing to do.")
            return False
        print(f"Replacing the older demo data in {data} (other settings, or incomplete).")
        for sub in ("train", "test"):
            shutil.rmtree(data / sub, ignore_errors=True)
    print(f"Generating SYNTHETIC DEMO DATA in {data} ({line}) ...", flush=True)
    r = make_demo_dataset(data, **settings)
    print(f"DEMO DATA (synthetic): {r['train_pairs']} pairs ({r['unseen_pairs']} of them from "
          f"unseen scanners, for validation only) and {r['test_scans']} test scans of "
          f"{settings['crop']}x{settings['crop']} in {data}. It is NOT the competition data.")
    return True
