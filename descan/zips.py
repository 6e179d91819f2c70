"""The competition's zips: check, identify and unpack them, safely and idempotently. No torch.

The three zips come from Google Drive under ids that a course may change, so a download is never
named by the place of its id in a list: identify_zip names it from the file name Drive gives it,
or else from its contents, and check_zip_set refuses a set whose contents contradict their names.
"""
from __future__ import annotations

import contextlib
import errno
import re
import stat
import zipfile
from pathlib import Path

from helpers import IMAGE_EXTS, DataError, examples
from descan.files import atomic_path, progress_bar

ZIP_NAMES = ("train_clean.zip", "train_scan.zip", "test_scan.zip")
# A test zip holds about 500 images, a training zip about 10,000: a zip with fewer than this many
# images whose name does not say what it is, is taken for the test scans.
TEST_MAX_IMAGES = 2000
UNREADABLE = (errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT, errno.EISDIR, errno.ENXIO,
              errno.ESTALE)


class BrokenZip(DataError):
    """The file's own bytes are at fault: not a zip, truncated or corrupt (it may be replaced)."""


def check_zip(path) -> int:
    """Raise DataError unless ``path`` is a complete, readable zip; return its number of entries.

    BrokenZip when the file's bytes are at fault; a plain DataError when it cannot be read
    (permissions, an I/O error of the disk): then the file may be fine and is not judged."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise BrokenZip(f"{path} is corrupt (entry {bad} fails its CRC check). Delete it "
                                "and download it again.")
            return len(zf.infolist())
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        if isinstance(e, OSError) and e.errno in UNREADABLE:
            raise DataError(f"cannot read {path} ({e}); it was not judged and is kept as it is. "
                            "Check the file's permissions and the disk (or Drive) it is on, then "
                            "try again.") from None
        head = b""
        with contextlib.suppress(OSError), open(path, "rb") as f:
            head = f.read(200).lower()
        hint = (" It looks like a web page (Google Drive quota or sign-in page), not a zip."
                if b"<html" in head or b"<!doctype" in head else "")
        raise BrokenZip(f"{path} is not a complete zip file ({e}).{hint} Delete it and download "
                        "it again, or put a good copy there by hand.") from None


def zip_image_entries(zf: zipfile.ZipFile, zip_path) -> dict:
    """{file name: ZipInfo} of the images in a zip, whatever the folders inside; DataError for an
    entry that would escape the target folder, a link, or two images of the same name."""
    out = {}
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
            raise DataError(f"{zip_path}: entry {info.filename!r} would be written outside the "
                            "target folder; refusing to unpack this zip.")
        hidden = "__MACOSX" in parts or any(p.startswith(".") for p in parts)
        if info.is_dir() or not parts or hidden or not name.lower().endswith(IMAGE_EXTS):
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"{zip_path}: entry {info.filename!r} is a symbolic link, not an "
                            "image; refusing to unpack this zip. Make the zip again without links.")
        if parts[-1] in out:
            raise DataError(f"{zip_path}: two entries are both named {parts[-1]} "
                            f"({out[parts[-1]].filename}, {info.filename}); cannot flatten.")
        out[parts[-1]] = info
    return out


def unpack_zip(zip_path, dest, show_progress=True) -> dict:
    """Unpack the images of a zip flat into ``dest``, whatever the folder nesting inside.

    Skips __MACOSX, hidden files and non-images; refuses entries that would escape ``dest``
    (checked for every entry before anything is written); skips files already unpacked with the
    right size; writes each file atomically. Returns {'written': n, 'skipped': n}.
    """
    check_zip(zip_path)
    dest = Path(dest)
    with zipfile.ZipFile(zip_path) as zf:
        entries = zip_image_entries(zf, zip_path)
        if not entries:
            raise DataError(f"{zip_path} holds no images ({', '.join(IMAGE_EXTS)})")
        dest.mkdir(parents=True, exist_ok=True)
        written = skipped = 0
        for fname, info in progress_bar(sorted(entries.items()), f"unpacking {Path(zip_path).name}",
                                        enabled=show_progress, unit="img"):
            target = dest / fname
            if target.is_file() and target.stat().st_size == info.file_size:
                skipped += 1
                continue
            with atomic_path(target) as tmp, zf.open(info) as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            written += 1
    return {"written": written, "skipped": skipped}


def zip_image_names(path) -> list[str]:
    """The image names (without extension) inside a zip, sorted; DataError if it is not a zip."""
    check_zip(path)
    with zipfile.ZipFile(path) as zf:
        return sorted(Path(n).stem for n in zip_image_entries(zf, path))


def identify_zip(path, drive_name: str | None = None) -> str:
    """Which of ZIP_NAMES a downloaded zip is.

    First by the file name Drive gave it (``drive_name``, default: the file's own name): 'test'
    in it means the test scans; else 'clean' or 'scan' (but not the 'scan' of 'descanning') name
    the training half. When the name says nothing, by its contents: a zip of fewer than
    TEST_MAX_IMAGES images is the test set; a large one cannot be told clean from scan by itself,
    and DataError says how to name it.
    """
    path = Path(path)
    name = (drive_name or path.name).lower()
    if "test" in name:
        return "test_scan.zip"
    if "clean" in name:
        return "train_clean.zip"
    if re.search(r"(?<!de)scan", name):  # not the "scan" of "descanning", the competition's name
        return "train_scan.zip"
    n = len(zip_image_names(path))
    if n < TEST_MAX_IMAGES:
        return "test_scan.zip"
    raise DataError(f"{path} (named {drive_name or path.name!r} by Google Drive) holds {n} images, "
                    "so it is a training zip, but its name does not say whether it holds the clean "
                    "images or the scans. Look inside it, then rename it to train_clean.zip or "
                    "train_scan.zip in the zip cache and run the download again.")


def check_zip_set(zips: dict) -> dict:
    """Check that the contents of the three zips agree with their names; return image counts.

    ``zips`` maps each of ZIP_NAMES to a path. train_clean.zip and train_scan.zip must hold the
    same image names (a clean image and its scan share a name); test_scan.zip must not be a copy
    of a training zip. DataError names the zip that is not what its name says.
    """
    names = {k: set(zip_image_names(p)) for k, p in zips.items()}
    clean, scan, test = names["train_clean.zip"], names["train_scan.zip"], names["test_scan.zip"]
    redo = (" Delete the wrong zip from the zip cache (or give it its right name) and run the "
            "download again.")
    if clean == test or scan == test:
        which = "train_clean.zip" if clean == test else "train_scan.zip"
        raise DataError(f"{zips[which]} holds the same {len(test)} images as test_scan.zip: one "
                        "of the two is not what its name says (a Drive id mapped to the wrong "
                        f"zip?).{redo}")
    if clean != scan:
        only_c, only_s = sorted(clean - scan), sorted(scan - clean)
        looks = [n for n in ("train_scan.zip", "train_clean.zip")
                 if len(names[n] & test) > len(clean & scan)]
        hint = (f" {zips[looks[0]]} looks like the test scans (its names match test_scan.zip's)."
                if looks else "")
        raise DataError(f"train_clean.zip and train_scan.zip do not hold the same image names: "
                        f"{len(only_c)} only in train_clean.zip ({examples(only_c, 3)}), "
                        f"{len(only_s)} only in train_scan.zip ({examples(only_s, 3)})."
                        f"{hint}{redo}")
    return {k: len(v) for k, v in names.items()}
