"""Getting the data: the competition's zips from Google Drive into the zip cache, unpacked flat
into the data folder, or the synthetic demo set. No torch. data.ensure_data and
``bash data_download.sh`` (``python -m descan download``) run these steps and check the result.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from helpers import DEMO_MARKER, SPLITS, DataError, env_path, is_colab, list_images
from descan.demo import DEMO_DEFAULTS, make_demo_dataset, settings_line
from descan.files import atomic_path
from descan.zips import ZIP_NAMES, BrokenZip, check_zip, check_zip_set, identify_zip, unpack_zip

DRIVE_IDS = ("16zAeGDmqbAvn7Iy8V-mBylKx6rG-wgLD", "1cqxSVFxfonx5qKVIdfByOq7uYdNZY8ea",
             "1zmfrXzT9lnLg7NlQ-hXekZlyX9aGNNqj")
FALLBACK_TEST_ID = "1DEavUuFh6x7n1XEMQCaW8yaU3wQxqfBu"  # the test zip, replaced in the competition
FOLDERS = {name: SPLITS[name.removesuffix(".zip")] for name in ZIP_NAMES}  # train/scan ...
RECORD = ".drive_ids"  # in the zip cache: lines "<Drive id> <zip name>" of earlier downloads
QUOTA = re.compile(r"too many users|quota|cannot retrieve the public link|uc-error", re.I)
OFFLINE = re.compile(r"name or service not known|failed to resolve|temporary failure in name "
                     r"resolution|nodename nor servname|getaddrinfo|network is unreachable|"
                     r"no route to host|NameResolutionError", re.I)
OFFLINE_TEXT = ("could not reach Google Drive (drive.google.com:443): no network connection (the "
                "name lookup or the connection failed).")


def zip_cache_dir(data, workspace) -> Path:
    """Where the downloaded zips are kept: $DESCAN_ZIP_CACHE; in Colab the workspace on Drive (so
    a new runtime unpacks instead of downloading again); else DATA/zips."""
    path = env_path("DESCAN_ZIP_CACHE")
    if path is not None:
        return path
    return Path(workspace) / "zips" if is_colab() else Path(data) / "zips"


def has_data(data) -> bool:
    """True when ``data`` holds images in train/clean, train/scan and test/scan (not a check)."""
    return all((Path(data) / sub).is_dir() and list_images(Path(data) / sub)
               for sub in SPLITS.values())


def missing(cache) -> list[Path]:
    """The paths of the zips that the cache lacks."""
    return [Path(cache) / n for n in ZIP_NAMES if not (Path(cache) / n).is_file()]


def cannot_download(cache, drive_id, why, first) -> DataError:
    """The error for a download that cannot succeed now: ``why``, and what to do, ``first`` and
    else: put the zips into the cache by hand."""
    return DataError(
        f"{why}\nWhat to do:\n  - {first};\n"
        "  - or put the zips into the cache by hand, each under its name:"
        + "".join(f"\n      {p}" for p in missing(cache)) + "\n"
        f"    e.g. downloaded in a browser (https://drive.google.com/uc?id={drive_id}), or\n"
        "    copied from your own Google Drive (open the file there, File > Make a copy; in\n"
        "    Colab, mount Drive first); then run the download again: zips in the cache are\n"
        "    checked and used;\n"
        "  - to try the notebooks without the competition data: bash data_download.sh --demo")


def refused(cache, drive_id, why="") -> DataError:
    """The error for Google Drive's 'Too many users' (a used-up quota, or a sign-in page)."""
    return cannot_download(
        cache, drive_id, f"{why}Google Drive refused to send the file with id {drive_id}: \"Too "
        "many users have viewed or downloaded this file recently\" (its download quota is used up "
        "for now, or Drive sent a sign-in page).",
        "wait (up to 24 hours) and retry later: run the download again; complete zips are kept")


def find_downloader(cache, drive_id, downloader=None) -> str:
    """The downloader's full path. The default, gdown, only once Drive is known to be reachable
    (fail at once, not after timeouts; a proxy or another downloader may find another way)."""
    exe = shutil.which(str(downloader or "gdown"))
    if exe is None:
        raise cannot_download(cache, drive_id, f"the downloader '{downloader or 'gdown'}' is not "
                              "installed.", "install it: pip install gdown")
    proxies = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    if downloader is None and not any(os.environ.get(v) for v in proxies):
        try:
            socket.create_connection(("drive.google.com", 443), timeout=5).close()
        except OSError:
            raise cannot_download(cache, drive_id, OFFLINE_TEXT, "check the internet connection, "
                                  "then run the download again") from None
    return os.path.abspath(exe)


def run_downloader(exe, drive_id, folder, timeout) -> tuple[int, str]:
    """Run the downloader on one id in ``folder`` without -O, so that the file gets the name Drive
    gives it; show its output as it comes. Returns its exit status and its output."""
    helps = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    opts = ["--timeout", str(timeout)] if "--timeout" in helps else []
    proc = subprocess.Popen([exe, *opts, drive_id], cwd=folder, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = []
    while chunk := proc.stdout.read1(4096):
        out.append(chunk.decode(errors="replace"))
        sys.stdout.write(out[-1])
        sys.stdout.flush()
    return proc.wait(), "".join(out)


def recorded(cache) -> dict:
    """{Drive id: zip name} of earlier downloads."""
    path = Path(cache) / RECORD
    lines = path.read_text().splitlines() if path.is_file() else []
    return {line.split()[0]: line.split()[1] for line in lines if len(line.split()) == 2}


def keep(cache, drive_id, path) -> bool:
    """Check a download, name it by what it is and move it into the cache (unless the cache has
    that zip already). False when it is not a complete zip (it is deleted)."""
    try:
        check_zip(path)
    except BrokenZip as e:
        if "web page" in str(e):
            raise refused(cache, drive_id, f"The file downloaded for id {drive_id} is not a zip "
                          "but a web page; it has been deleted.\n") from None
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
        print(f"Id {drive_id} ('{path.name}') is {name}, which is already in the cache: "
              "the new copy is discarded.")
    else:
        os.replace(path, cache / name)
        print(f"{name}: downloaded (id {drive_id}, named '{path.name}' by Drive) and complete.")
    return True


def attempt(cache, drive_id, exe, timeout) -> bool:
    """One download of ``drive_id`` into a folder of its own in the cache. True when it is in the
    cache; False for a failure worth another try; DataError for one that is not."""
    folder = Path(tempfile.mkdtemp(prefix=".download.", dir=cache))
    try:
        status, log = run_downloader(exe, drive_id, folder, timeout)
        if status != 0:
            if QUOTA.search(log):
                raise refused(cache, drive_id)
            if OFFLINE.search(log):
                raise cannot_download(cache, drive_id, OFFLINE_TEXT, "check the internet "
                                      "connection, then run the download again")
            print(f"Id {drive_id}: the download failed (exit status {status}).")
            return False
        files = sorted(p for p in folder.iterdir() if not p.name.endswith(".part"))
        if len(files) > 1:
            raise DataError(f"the downloader wrote {len(files)} files for id {drive_id} "
                            f"({', '.join(p.name for p in files)}), not one zip; none of them was "
                            f"used. Check DESCAN_DRIVE_IDS (is {drive_id} a folder?).")
        if not files or not files[0].is_file():
            print(f"Id {drive_id}: the downloader exited without writing a file.")
            return False
        return keep(cache, drive_id, files[0])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def download_id(cache, drive_id, exe, tries=3, wait=10, timeout=30) -> None:
    """Download one id into the cache, named by what it is, trying up to ``tries`` times."""
    for n in range(1, tries + 1):
        print(f"Downloading Google Drive id {drive_id} (attempt {n} of {tries}) ...", flush=True)
        if attempt(cache, drive_id, exe, timeout):
            return
        if n < tries:
            print(f"Retrying in {wait} s ...", flush=True)
            time.sleep(wait)
    raise cannot_download(cache, drive_id, f"the file with id {drive_id} could not be downloaded "
                          f"after {tries} attempts (see the messages above; nothing incomplete "
                          "was kept).", "run the download again later (a timeout or a broken "
                          "connection is often temporary)")


def check_cached(cache) -> None:
    """Check the zips already in the cache; move one that is not a complete zip aside (.bad)."""
    for path in [Path(cache) / n for n in ZIP_NAMES if (Path(cache) / n).is_file()]:
        try:
            check_zip(path)
            print(f"{path.name}: complete zip already in the cache, not downloading it again.")
        except BrokenZip as e:
            os.replace(path, f"{path}.bad")
            print(f"{path.name}: the copy in the cache is not a complete zip; moved it aside to "
                  f"{path}.bad and downloading it again. ({e})")


def fetch_zips(cache, tries=3, wait=10, timeout=30, downloader=None) -> None:
    """Make sure that the cache holds the three zips, complete: check those there, then download
    from Google Drive while one is missing. The ids: $DESCAN_DRIVE_IDS (any order), else DRIVE_IDS
    and, while test_scan.zip is missing, FALLBACK_TEST_ID. An id known to be a zip already in the
    cache is skipped. ``downloader``: a program that works as gdown does (default: gdown)."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    check_cached(cache)
    ids = os.environ.get("DESCAN_DRIVE_IDS", "").split()
    fallback = [] if ids else [FALLBACK_TEST_ID]
    exe = None
    for drive_id in (ids or list(DRIVE_IDS)) + fallback:
        if not missing(cache) or (drive_id in fallback and (cache / "test_scan.zip").is_file()):
            continue
        known = recorded(cache).get(drive_id)
        if known and (cache / known).is_file():
            print(f"Id {drive_id} is {known}, already in the cache: not downloading it again.")
            continue
        exe = exe or find_downloader(cache, drive_id, downloader)
        download_id(cache, drive_id, exe, tries, wait, timeout)
    if missing(cache):
        tried = " ".join((ids or list(DRIVE_IDS)) + fallback)
        names = " ".join(p.name for p in missing(cache))
        raise DataError(
            f"still missing from the zip cache after trying the Google Drive ids {tried}:\n"
            f"  {names}\n(none of those downloads turned out to be that zip; see "
            f"{cache / RECORD} for what each id gave).\nWhat to do:\n"
            "  - set DESCAN_DRIVE_IDS to the ids your course hands out (space-separated, any "
            'order), e.g.\n      DESCAN_DRIVE_IDS="ID1 ID2 ID3" bash data_download.sh\n'
            "  - or put the missing zip into the cache by hand under its name:"
            + "".join(f"\n      {p}" for p in missing(cache)) + "\n    then run it again.")


def start_again(data, cache) -> str:
    """What to do when the unpacked data does not pass the check."""
    return (f"To start again: delete {Path(data) / 'train'}, {Path(data) / 'test'} and "
            f"{Path(data) / '.unpacked'}, then run the download again (complete zips in {cache} "
            "are reused).")


def unpack_missing(data, cache, check_failed=False, **options) -> None:
    """Unpack into ``data`` the zips not unpacked there yet (DATA/.unpacked holds a stamp for each
    one done) from the zip cache, downloading what it lacks (fetch_zips with ``options``) and
    checking first that the three zips hold what their names say."""
    print(f"Competition data -> {data} (zip cache: {cache})")
    names = []
    for name in ZIP_NAMES:
        stamp, folder = Path(data) / ".unpacked" / f"{name}.done", Path(data) / FOLDERS[name]
        if stamp.is_file() and folder.is_dir():
            print(f"{name}: already unpacked into {folder} (delete {stamp} to unpack again).")
        else:
            names.append(name)
    if not names and check_failed:
        raise DataError(f"the data in {data} does not pass the check and every zip is marked as "
                        "unpacked, so there is nothing to unpack again.\n"
                        + start_again(data, cache))
    if names:
        fetch_zips(cache, **options)
        print("Checking that the three zips hold what their names say ...")
        try:
            check_zip_set({n: Path(cache) / n for n in ZIP_NAMES})
        except DataError as e:
            raise DataError(f"{e}\nThe zips in {cache} do not hold what their names say; nothing "
                            "was unpacked.") from None
    for name in names:
        path, folder = Path(cache) / name, Path(data) / FOLDERS[name]
        try:
            r = unpack_zip(path, folder)
        except DataError as e:
            raise DataError(f"unpacking {path} failed: {e}\nDelete {path} and run the download "
                            "again.") from None
        with atomic_path(Path(data) / ".unpacked" / f"{name}.done") as tmp:
            tmp.write_text(f"{name} unpacked into {FOLDERS[name]}\n")
        print(f"{name} -> {folder}: {r['written']} written, {r['skipped']} already there")


def get_demo(data, **settings) -> bool:
    """Make the demo set in ``data`` (DEMO_DEFAULTS, ``settings`` changing some) unless the same one
    is there. True when it was made. DataError for a folder of real data (no demo marker)."""
    data, settings = Path(data), {**DEMO_DEFAULTS, **settings}
    marker = data / DEMO_MARKER
    if any((data / sub).exists() for sub in ("train", "test")) and not marker.exists():
        raise DataError(f"{data} already holds data without a {DEMO_MARKER} marker, so it looks "
                        "like the real competition data. Demo data is never written there. Give "
                        "another folder: bash data_download.sh --demo ./data/demo")
    same = marker.exists() and settings_line(settings) in marker.read_text().splitlines()
    if same and has_data(data):
        print(f"Demo data already in {data} ({settings_line(settings)}); nothing to do.")
        return False
    if marker.exists():
        print(f"Replacing the older demo data in {data} (other settings, or incomplete).")
        for sub in ("train", "test"):
            shutil.rmtree(data / sub, ignore_errors=True)
    print(f"Generating SYNTHETIC DEMO DATA in {data} ({settings_line(settings)}) ...", flush=True)
    r = make_demo_dataset(data, **settings)
    print(f"DEMO DATA (synthetic): {r['train_pairs']} pairs ({r['unseen_pairs']} of them from "
          f"unseen scanners, for validation only) and {r['test_scans']} test scans of "
          f"{settings['crop']}x{settings['crop']} in {data}. It is NOT the competition data.")
    return True
