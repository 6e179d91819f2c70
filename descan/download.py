"""Getting the data: the competition's zips from Google Drive into the zip cache, unpacked flat
into the data folder (data.ensure_data, ``bash data_download.sh``), or the demo set. No torch."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from helpers import (DEMO_MARKER, SPLITS, DataError, by_stem, env_path, examples, is_colab,
                     list_images)
from descan.demo import DEMO_DEFAULTS, demo_counts, make_demo_dataset, settings_line
from descan.files import atomic_path
from descan.zips import ZIP_NAMES, BrokenZip, check_zip, identify_zip, image_entries

DRIVE_IDS = ("16zAeGDmqbAvn7Iy8V-mBylKx6rG-wgLD", "1cqxSVFxfonx5qKVIdfByOq7uYdNZY8ea",
             "1zmfrXzT9lnLg7NlQ-hXekZlyX9aGNNqj")
FALLBACK_TEST_ID = "1DEavUuFh6x7n1XEMQCaW8yaU3wQxqfBu"  # the test zip, replaced in the competition
TEST_LIST = "test_scans.json"  # in the workspace: the test set's ids, recorded at the first check
RECORD = ".drive_ids"  # in the zip cache: lines "<Drive id> <zip name>" of earlier downloads
QUOTA = re.compile(r"too many users|quota|cannot retrieve the public link|uc-error", re.I)
OFFLINE = re.compile(r"name or service not known|failed to resolve|temporary failure in name "
                     r"resolution|nodename nor servname|getaddrinfo|network is unreachable|"
                     r"no route to host|NameResolutionError", re.I)


def zip_cache_dir(data, workspace) -> Path:
    """$DESCAN_ZIP_CACHE; in Colab in the workspace on Drive (kept for a new runtime)."""
    return env_path("DESCAN_ZIP_CACHE") or Path(workspace if is_colab() else data) / "zips"


def has_data(data) -> bool:
    """True when ``data`` holds images in train/clean, train/scan and test/scan (not a check)."""
    return all((Path(data) / sub).is_dir() and list_images(Path(data) / sub)
               for sub in SPLITS.values())


def missing(cache) -> list[Path]:
    return [Path(cache) / n for n in ZIP_NAMES if not (Path(cache) / n).is_file()]


def cannot_download(cache, why, first, drive_id="ID") -> DataError:
    """The error for a download that cannot succeed now: ``why``, then what to do."""
    return DataError(
        f"{why}\nWhat to do:\n  - {first};\n  - or put the zips into the cache by hand (from a "
        f"browser, https://drive.google.com/uc?id={drive_id}, or copied in your own Google Drive: "
        "File > Make a copy), each under its name, and run the download again:"
        + "".join(f"\n      {p}" for p in missing(cache))
        + "\n  - to try the notebooks without the competition data: bash data_download.sh --demo")


def refused(cache, drive_id, why="") -> DataError:
    """Google Drive's 'Too many users' (a used-up quota, or a sign-in page)."""
    return cannot_download(
        cache, f"{why}Google Drive refused to send the file with id {drive_id}: \"Too many users "
        "have viewed or downloaded this file recently\" (its quota is used up for now, or Drive "
        "sent a sign-in page).", "wait (up to 24 hours) and retry later; complete zips are kept",
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
    with atomic_path(cache / RECORD) as tmp:
        ids = {**recorded(cache), drive_id: name}
        tmp.write_text("".join(f"{i} {n}\n" for i, n in ids.items()))
    if (cache / name).is_file():
        print(f"Id {drive_id} ('{path.name}') is {name}, which is already in the cache: "
              "the new copy is discarded.")
    else:
        os.replace(path, cache / name)
        print(f"{name}: downloaded (id {drive_id}, named '{path.name}' by Drive) and complete.")
    return True


def download_id(cache, drive_id, tries, wait, timeout, downloader=None) -> None:
    """Download one id into the cache with gdown (or ``downloader``), named by Drive (no -O)."""
    exe = shutil.which(str(downloader or "gdown"))
    if exe is None:
        raise cannot_download(cache, f"the downloader '{downloader or 'gdown'}' is not "
                              "installed.", "install it: pip install gdown", drive_id)
    helps = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    opts = ["--timeout", str(timeout)] if "--timeout" in helps else []  # gdown < 5.2 has none
    for n in range(1, tries + 1):
        print(f"Downloading Google Drive id {drive_id} (attempt {n} of {tries}) ...", flush=True)
        with tempfile.TemporaryDirectory(prefix=".download.", dir=cache) as folder:
            proc = subprocess.Popen([os.path.abspath(exe), *opts, drive_id], cwd=folder,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out = []
            while chunk := proc.stdout.read1(4096):  # shown as it comes
                out.append(chunk.decode(errors="replace"))
                sys.stdout.write(out[-1])
                sys.stdout.flush()
            status, log = proc.wait(), "".join(out)
            if status and QUOTA.search(log):
                raise refused(cache, drive_id)
            if status and OFFLINE.search(log):
                raise cannot_download(cache, "could not reach Google Drive: no network connection "
                                      "(the name lookup or the connection failed).", "check the "
                                      "internet connection, then run the download again", drive_id)
            files = [p for p in Path(folder).iterdir() if not p.name.endswith(".part")]
            if status or len(files) != 1:
                print(f"Id {drive_id}: the download failed (exit status {status}, "
                      f"{len(files)} files written, not one zip).")
            elif keep(cache, drive_id, files[0]):
                return
        if n < tries:
            print(f"Retrying in {wait} s ...", flush=True)
            time.sleep(wait)
    raise cannot_download(cache, f"the file with id {drive_id} could not be downloaded after "
                          f"{tries} attempts (see the messages above; nothing incomplete was "
                          "kept).", "run the download again later (a timeout or a broken "
                          "connection is often temporary)", drive_id)


def fetch_zips(cache, tries=3, wait=10, timeout=30, downloader=None) -> None:
    """Make sure the cache holds the three zips, complete, downloading ids while one is missing."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    for path in [cache / n for n in ZIP_NAMES if (cache / n).is_file()]:
        try:
            check_zip(path)
            print(f"{path.name}: complete zip already in the cache, not downloading it again.")
        except BrokenZip as e:
            os.replace(path, f"{path}.bad")
            print(f"{path.name}: the copy in the cache is not a complete zip; moved it aside to "
                  f"{path}.bad and downloading it again. ({e})")
    ids = os.environ.get("DESCAN_DRIVE_IDS", "").split() or [*DRIVE_IDS, FALLBACK_TEST_ID]
    for drive_id in ids:
        if not missing(cache):
            return
        fallback = "test_scan.zip" if drive_id == FALLBACK_TEST_ID else None
        known = recorded(cache).get(drive_id, fallback)
        if known and (cache / known).is_file():
            print(f"Id {drive_id} is {known}, already in the cache: not downloading it again.")
            continue
        download_id(cache, drive_id, tries, wait, timeout, downloader)
    if missing(cache):
        raise cannot_download(
            cache, f"still missing from the zip cache after trying the Google Drive ids "
            f"{' '.join(ids)}: {' '.join(p.name for p in missing(cache))} (see {cache / RECORD} "
            "for what each id gave).", "set DESCAN_DRIVE_IDS to the ids your course hands out "
            '(space-separated, any order), e.g.\n      DESCAN_DRIVE_IDS="ID1 ID2 ID3" bash '
            "data_download.sh")


def get_demo(data, **settings) -> bool:
    """Make the demo set in ``data`` (DEMO_DEFAULTS updated by ``settings``); True when made."""
    data, settings = Path(data), {**DEMO_DEFAULTS, **settings}
    marker = data / DEMO_MARKER
    if any((data / sub).exists() for sub in ("train", "test")) and not marker.exists():
        raise DataError(f"{data} already holds data without a {DEMO_MARKER} marker, so it looks "
                        "like the real competition data. Demo data is never written there. Give "
                        "another folder: bash data_download.sh --demo ./data/demo")
    same = marker.exists() and settings_line(settings) in marker.read_text().splitlines()
    counts = demo_counts(settings)
    made = [len(list_images(data / sub)) if (data / sub).is_dir() else 0 for sub in SPLITS.values()]
    if same and made == [counts["train_pairs"]] * 2 + [counts["test_scans"]]:
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


def test_ids(data, workspace, anew=False) -> list[str]:
    """The test set's ids, which decide whether the test folder is complete and which rows the CSV
    has: test_scan.zip's table of contents when the zip cache holds it, else the list recorded in
    the workspace at the folder's first check (or ``anew``: the folder was just made)."""
    data, record = Path(data).resolve(), Path(workspace) / TEST_LIST
    test_zip = zip_cache_dir(data, workspace) / "test_scan.zip"
    try:
        saved = json.loads(record.read_text()) if record.is_file() else {}
    except ValueError:
        raise DataError(f"{record} cannot be read (cut short, or edited by hand). Delete it: the "
                        "test set's list is then recorded again from the test folder.") from None
    if test_zip.is_file():
        try:
            ids = sorted(Path(name).stem for name in image_entries(test_zip, check=False))
        except zipfile.BadZipFile:
            check_zip(test_zip)  # says what is wrong with it
            raise
    elif saved.get("data") == str(data) and not anew:
        return saved["ids"]
    else:
        folder = data / SPLITS["test_scan"]
        ids = sorted(by_stem(list_images(folder), folder))
    if saved != {"data": str(data), "ids": ids}:
        with atomic_path(record) as tmp:
            tmp.write_text(json.dumps({"data": str(data), "ids": ids}, indent=0))
    return ids


def test_scans(data, workspace, anew=False) -> list[Path]:
    """The test scans, in test_ids' order; DataError when one is missing or one is not listed."""
    folder = Path(data) / SPLITS["test_scan"]
    found, ids = by_stem(list_images(folder), folder), test_ids(data, workspace, anew)
    missing, extra = sorted(set(ids) - set(found)), sorted(set(found) - set(ids))
    zipped = (zip_cache_dir(data, workspace) / "test_scan.zip").is_file()
    source = "test_scan.zip" if zipped else f"the list recorded at its first check ({TEST_LIST})"
    if not ids:
        raise DataError(f"no test scans in {folder}")
    if missing:
        todo = ("Run the download again (bash data_download.sh or notebook 01): it unpacks what "
                "is missing." if zipped else "Put them back; if you replaced the test set on "
                f"purpose, delete {Path(workspace) / TEST_LIST} and run again.")
        raise DataError(f"{folder} lacks {len(missing)} of the {len(ids)} test scans of {source}: "
                        f"{examples(missing)}. {todo}")
    if extra:
        raise DataError(f"{folder} holds {len(extra)} images that are not in {source}: "
                        f"{examples(extra)}. Move them out: the CSV has one row per test scan.")
    return [found[i] for i in ids]


def misplaced(data, cache) -> None:
    """DataError when the images are one folder too deep or the zips lie in the data folder."""
    found = [f"{d.relative_to(data)}/ ({len(list_images(d))} images)" for sub in SPLITS.values()
             if (data / sub).is_dir() for d in sorted((data / sub).iterdir())
             if d.is_dir() and list_images(d)]
    found += [f"{p.name} (a zip)" for p in sorted(data.glob("*.zip")) if p.parent != cache]
    if found:
        layout = ", ".join(f"{sub}/*.png" for sub in SPLITS.values())
        raise DataError(f"{data} holds data, but not where it is looked for: {examples(found)}. "
                        f"The layout expected is {layout} (.tif also; no subfolders), and the "
                        f"zips go into {cache}. Move them there and run again.")
