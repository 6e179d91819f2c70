"""The competition's zips: check, identify (by name, else by contents) and unpack them flat,
safely and idempotently. No torch."""
import errno
import re
import shutil
import stat
import zipfile
from pathlib import Path

from helpers import IMAGE_EXTS, DataError, examples
from descan.files import atomic_path, progress_bar, size_text

ZIP_NAMES = ("train_clean.zip", "train_scan.zip", "test_scan.zip")
TEST_MAX_IMAGES = 2000  # a nameless zip with fewer images is the test set (~500; training ~10,000)
UNREADABLE = (errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT, errno.ENXIO, errno.ESTALE)
REDO = (" Delete the wrong zip from the zip cache (or rename it) and run the download again "
        "(nothing was unpacked).")


class BrokenZip(DataError):
    """The file's own bytes are at fault: not a zip, truncated or corrupt."""


def check_zip(path) -> None:
    """Read a whole zip, every entry's CRC included: BrokenZip when its bytes are at fault; a plain
    DataError when it cannot be read (permissions, the disk): then it is not judged."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        if getattr(e, "errno", None) in UNREADABLE:
            raise DataError(f"cannot read {path} ({e}); it was not judged and is kept as it is. "
                            "Check the file's permissions and its disk (or Drive).") from None
        with open(path, "rb") as f:
            head = f.read(200).lower()
        hint = (" It looks like a web page (Google Drive quota or sign-in page), not a zip."
                if b"<html" in head or b"<!doctype" in head else "")
        raise BrokenZip(f"{path} is not a complete zip file ({e}).{hint} Delete it and download "
                        "it again, or put a good copy there by hand.") from None
    if bad is not None:
        raise BrokenZip(f"{path} is corrupt (entry {bad} fails its CRC check). Delete it and "
                        "download it again.")


def image_entries(zip_path) -> dict:
    """{file name: ZipInfo} of the images in a zip (from its table of contents: check_zip reads the
    rest), whatever its folders; DataError for an entry unsafe to unpack."""
    if not zipfile.is_zipfile(zip_path):
        check_zip(zip_path)  # says what is wrong with it
    with zipfile.ZipFile(zip_path) as zf:
        infos = zf.infolist()
    out = {}
    for info in infos:
        name = info.filename.replace("\\", "/")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if (name.startswith("/") or ".." in parts or (parts and ":" in parts[0])
                or stat.S_ISLNK(info.external_attr >> 16)):
            raise DataError(f"{zip_path}: entry {info.filename!r} is a symbolic link or would be "
                            "written outside the target folder; refusing to unpack this zip.")
        hidden = "__MACOSX" in parts or any(p.startswith(".") for p in parts)
        if hidden or not name.lower().endswith(IMAGE_EXTS):
            continue
        if parts[-1] in out:
            raise DataError(f"{zip_path}: two entries are named {parts[-1]} ({info.filename} and "
                            f"{out[parts[-1]].filename}); one folder cannot hold both.")
        out[parts[-1]] = info
    return out


def unpack_zip(zip_path, dest, show_progress=True) -> dict:
    """Unpack a zip's images flat into ``dest``, skipping those there with the right size."""
    entries, dest = image_entries(zip_path), Path(dest)
    if not entries:
        raise DataError(f"{zip_path} holds no images ({', '.join(IMAGE_EXTS)}): delete it and "
                        "put the right zip there.")
    dest.mkdir(parents=True, exist_ok=True)
    todo = {n: i for n, i in entries.items()
            if not (dest / n).is_file() or (dest / n).stat().st_size != i.file_size}
    left = sum(i.file_size for i in todo.values())
    with zipfile.ZipFile(zip_path) as zf:
        for fname, info in progress_bar(sorted(todo.items()), f"unpacking {Path(zip_path).name}",
                                        enabled=show_progress, unit="img"):
            try:
                with atomic_path(dest / fname) as tmp, zf.open(info) as src, \
                        open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise DataError(f"disk full while unpacking {Path(zip_path).name} into {dest}: "
                                f"{size_text(left)} more are needed, "
                                f"{size_text(shutil.disk_usage(dest).free)} free. Free some "
                                "space there, then run again: the images unpacked so far are "
                                "kept, and the zip is fine.") from None
            left -= info.file_size
    return {"written": len(todo), "skipped": len(entries) - len(todo)}


def identify_zip(path) -> str:
    """Which of ZIP_NAMES a download is: by its name ('test', 'clean', or the 'scan' that is not
    the competition's 'descanning'), else a small zip is the test set."""
    path = Path(path)
    for pattern, name in (("test", "test_scan.zip"), ("clean", "train_clean.zip"),
                          (r"(?<!de)scan", "train_scan.zip")):
        if re.search(pattern, path.name.lower()):
            return name
    n = len(image_entries(path))
    if n < TEST_MAX_IMAGES:
        return "test_scan.zip"
    raise DataError(f"'{path.name}' (Google Drive's name) holds {n} images: a training zip, but "
                    "its name says neither clean nor scan. Look inside it, rename it to "
                    "train_clean.zip or train_scan.zip and run the download again.")


def check_zip_set(zips: dict) -> None:
    """DataError unless the zips ({name: path}) hold what their names say."""
    names = {k: {Path(n).stem for n in image_entries(p)} for k, p in zips.items()}
    clean, scan, test = names["train_clean.zip"], names["train_scan.zip"], names["test_scan.zip"]
    for which in ("train_clean.zip", "train_scan.zip"):
        if names[which] == test:
            raise DataError(f"{zips[which]} holds the same {len(test)} images as test_scan.zip: "
                            "one of the two is not what its name says (a Drive id mapped to the "
                            f"wrong zip?).{REDO}")
    if clean != scan:
        only_c, only_s = sorted(clean - scan), sorted(scan - clean)
        raise DataError(f"train_clean.zip and train_scan.zip do not hold the same image names: "
                        f"{len(only_c)} only in train_clean.zip ({examples(only_c, 3)}), "
                        f"{len(only_s)} only in train_scan.zip ({examples(only_s, 3)}).{REDO}")
