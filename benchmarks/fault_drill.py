"""Fault drill: faults and bad input tried as a new user would (issue 10), one line per case.

    python benchmarks/fault_drill.py [--quick]

Each case makes one fault in a temporary folder (bad images, unpaired names, broken zips,
corrupt or foreign checkpoints, bad CSVs, bad settings, full or read-only disks, kills during a
write), runs the kit's own code on it (in this process, or data_download.sh and kills in a
subprocess) and says what happened:
  clear      refused, with a message that names what is wrong (the case's expected words)
  handled    no error, and the result is right (a blank line ignored, a stale file removed, ...)
  silent     no error, but the result is wrong
  traceback  an unexpected kind of error, or an error that does not say what is wrong
  lost       a file that must survive (a cached zip, the previous CSV, checkpoint or restored
             folder) was changed or deleted, whatever else happened
The last line counts them as "N cases: C clear, S silent, T traceback, L lost", where C counts
the clear errors and the handled cases together (the line before it gives each). The exit status
is 1 unless S, T and L are 0. --quick leaves out the slow cases (data_download.sh, training and
kills in a subprocess) for CI. A read-only folder is simulated when running as root.
"""
import argparse
import errno
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _var in [v for v in os.environ if v.startswith("DESCAN_")]:  # the user's settings stay out of the drill
    del os.environ[_var]
import helpers  # noqa: E402
from helpers import DataError  # noqa: E402
from descan import data, demo, zips  # noqa: E402

CASES = []


class Refused(Exception):
    """A command line or script that stopped with a non-zero exit status; the message is its output."""


class Drill:
    """What a case gets: a fresh folder, undoable patches and settings, and files to protect."""

    def __init__(self, tmp):
        self.tmp, self.undo, self.kept = tmp, [], []

    def setenv(self, name, value):
        old = os.environ.get(name)
        os.environ[name] = value
        self.undo.append(lambda: os.environ.pop(name) if old is None else os.environ.update({name: old}))

    def patch(self, obj, attr, value):
        old = getattr(obj, attr)
        setattr(obj, attr, value)
        self.undo.append(lambda: setattr(obj, attr, old))

    def protect(self, path, also=None):
        """``path`` must keep its bytes (a folder: every file), at ``path`` or at ``also``."""
        self.kept.append((Path(path), also and Path(also), snapshot(path)))

    def lost(self):
        return [str(p) for p, also, before in self.kept if snapshot(p) != before and
                (also is None or snapshot(also) != before)]

    def full_disk(self):  # what shutil.disk_usage says on a full disk
        self.patch(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))

    def read_only(self, folder):
        """Writes under ``folder`` fail as on a read-only mount (a real chmod unless we are root)."""
        folder = Path(folder)
        if os.geteuid() != 0:
            folder.chmod(0o555)
            self.undo.append(lambda: folder.chmod(0o755))
            return
        real_open, real_mkdir = os.open, os.mkdir

        def refuse(real):
            def call(p, *a, **k):
                if str(p).startswith(str(folder)) and (real is real_mkdir or a[0] & (os.O_WRONLY | os.O_RDWR)):
                    raise OSError(errno.EROFS, "Read-only file system", str(p))
                return real(p, *a, **k)
            return call
        self.patch(os, "open", refuse(real_open))
        self.patch(os, "mkdir", refuse(real_mkdir))


def snapshot(path):
    path = Path(path)
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return path.read_bytes() if path.is_file() else None


def case(name, words=(), slow=False):
    """Register a case: with ``words`` it must raise an error naming them all; without, it must
    return normally (its return value is the detail; an AssertionError means a wrong result)."""
    def register(fn):
        CASES.append((name, fn, tuple(words), slow))
        return fn
    return register


def run_case(fn, words, tmp):
    d = Drill(tmp)
    try:
        detail = fn(d)
        outcome = "silent" if words else "handled"
        detail = ("no error: " + str(detail)) if words else str(detail or "")
    except AssertionError as e:
        outcome, detail = "silent", f"wrong result: {e}"
    except (DataError, ValueError, OSError, Refused, KeyboardInterrupt) + CHECKPOINT_ERROR as e:
        msg = str(e)
        missing = [w for w in words if w.lower() not in msg.lower()]
        outcome = "clear" if words and not missing and "Traceback (most recent" not in msg else "traceback"
        detail = f"{type(e).__name__}: {msg}" + (f"  [does not say: {missing}]" if words and missing else "")
    except Exception as e:  # noqa: BLE001 - anything else is the bare traceback a user would see
        outcome, detail = "traceback", f"{type(e).__name__}: {e}"
    finally:
        for undo in reversed(d.undo):
            undo()
    if d.lost():
        outcome, detail = "lost", f"changed or deleted: {', '.join(d.lost())}; {detail}"
    return outcome, " ".join(detail.split())


# ---------------------------------------------------------------- builders

def png(path, h=8, w=8, value=100, dtype=np.uint8, channels=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, channels) if channels > 1 else (h, w), value, dtype)
    assert cv2.imwrite(str(path), img)
    return path


def dataset(root, names=("Mag.00001.01", "Mag.00002.01")):
    for n in names:
        png(root / "train/clean" / f"{n}.png"), png(root / "train/scan" / f"{n}.png", value=90)
    png(root / "test/scan/scanner01_000.png")
    return root


def check(root, d):
    return data.check_dataset(root, d.tmp / "ws", show_progress=False, force=True)


def make_zip(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in entries:
            zf.writestr(name, blob)
    return path


def image_zip(path, names):
    ok, buf = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))
    return make_zip(path, [(f"{n}.png", buf.tobytes()) for n in names])


def csv_file(d, text, encoding="utf-8"):
    (d.tmp / "submission.csv").write_bytes(text.encode(encoding))
    return d.tmp / "submission.csv"


HEADER = "Image File,Y Channel Value\n"

# ---------------------------------------------------------------- images and pairs


@case("image: a truncated PNG", ["Mag.00001.01.png", "truncated"])
def _(d):
    root = dataset(d.tmp / "data")
    p = root / "train/clean/Mag.00001.01.png"
    p.write_bytes(p.read_bytes()[:40])
    check(root, d)


@case("image: an empty file", ["Mag.00002.01.png", "unreadable"])
def _(d):
    root = dataset(d.tmp / "data")
    (root / "train/scan/Mag.00002.01.png").write_bytes(b"")
    check(root, d)


@case("image: a text file named .png", ["scanner01_000.png", "unreadable test scans"])
def _(d):
    root = dataset(d.tmp / "data")
    (root / "test/scan/scanner01_000.png").write_text("<html>not an image</html>")
    check(root, d)


@case("image: float pixels (32-bit TIFF)", ["x.tif", "floating-point"])
def _(d):
    helpers.read_rgb(png(d.tmp / "x.tif", value=0.5, dtype=np.float32))


@case("image: 16-bit, grey and RGBA files are converted")
def _(d):
    a = helpers.read_rgb(png(d.tmp / "a.png", value=65535, dtype=np.uint16))
    b = helpers.read_rgb(png(d.tmp / "b.png", value=7, channels=1))
    c = helpers.read_rgb(png(d.tmp / "c.png", value=9, channels=4))
    assert a.shape == b.shape == c.shape == (8, 8, 3) and (a.min(), b.max(), c.max()) == (255, 7, 9)
    return "uint8 RGB with the right values"


@case("pair: sizes differ", ["Mag.00002.01", "sizes differ"])
def _(d):
    root = dataset(d.tmp / "data")
    png(root / "train/scan/Mag.00002.01.png", 8, 9)
    check(root, d)


@case("pair: a clean image without its scan", ["no scan", "Mag.00003.01.png"])
def _(d):
    root = dataset(d.tmp / "data")
    png(root / "train/clean/Mag.00003.01.png")
    check(root, d)


@case("pair: a scan without its clean image", ["no clean image", "Mag.00003.01.tif"])
def _(d):
    root = dataset(d.tmp / "data")
    png(root / "train/scan/Mag.00003.01.tif")
    check(root, d)


@case("pair: one name twice (a .png and a .tif)", ["appear twice", "Mag.00001.01.tif"])
def _(d):
    root = dataset(d.tmp / "data")
    png(root / "train/clean/Mag.00001.01.tif")
    check(root, d)


@case("pair: p.png, p.q.png against p.q.tif, p.tif (sorted orders differ)")
def _(d):
    for n in ("p.png", "p.q.png"):
        png(d.tmp / "c" / n)
    for n in ("p.q.tif", "p.tif"):
        png(d.tmp / "s" / n)
    got = [(p.name, p.clean.name, p.scan.name) for p in helpers.pair_files(d.tmp / "c", d.tmp / "s")]
    assert got == [("p", "p.png", "p.tif"), ("p.q", "p.q.png", "p.q.tif")], got
    return "paired by name"


@case("data: the folder does not exist", ["does not exist", "nowhere"])
def _(d):
    check(d.tmp / "nowhere", d)


@case("data: an empty test folder", ["no test scans", "test/scan"])
def _(d):
    root = dataset(d.tmp / "data")
    (root / "test/scan/scanner01_000.png").unlink()
    check(root, d)


# ---------------------------------------------------------------- zips

@case("zip: truncated", ["not a complete zip", "t.zip"])
def _(d):
    p = image_zip(d.tmp / "t.zip", ["a", "b"])
    p.write_bytes(p.read_bytes()[:-30])
    zips.check_zip(p)


@case("zip: a web page (Drive's quota page)", ["web page", "page.zip"])
def _(d):
    (d.tmp / "page.zip").write_text("<!DOCTYPE html><html><title>Google Drive - Quota exceeded</title></html>")
    zips.check_zip(d.tmp / "page.zip")


@case("zip: a CRC error inside", ["is corrupt", "a.png"])
def _(d):
    p = make_zip(d.tmp / "c.zip", [("a.png", b"0123456789" * 20)])
    blob = bytearray(p.read_bytes())
    blob[blob.index(b"0123456789") + 5] ^= 0xFF
    p.write_bytes(bytes(blob))
    zips.check_zip(p)


@case("zip: unreadable (permission denied), not judged", ["cannot read", "kept"])
def _(d):
    p = image_zip(d.tmp / "train_clean.zip", ["a"])
    d.protect(p)

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(p))
    d.patch(zips.zipfile, "ZipFile", denied)
    zips.check_zip(p)


@case("zip: an entry escaping the folder", ["outside the target folder", "../evil.png"])
def _(d):
    d.protect(d.tmp / "out")
    zips.unpack_zip(make_zip(d.tmp / "e.zip", [("ok.png", b"x"), ("../evil.png", b"x")]), d.tmp / "out", False)


@case("zip: a symbolic link entry", ["symbolic link", "link.png"])
def _(d):
    info = zipfile.ZipInfo("link.png")
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(d.tmp / "l.zip", "w") as zf:
        zf.writestr(info, "/etc/passwd")
    d.protect(d.tmp / "out")
    zips.unpack_zip(d.tmp / "l.zip", d.tmp / "out", False)


@case("zip: no images in it", ["holds no images"])
def _(d):
    zips.unpack_zip(make_zip(d.tmp / "n.zip", [("readme.txt", b"x")]), d.tmp / "out", False)


@case("zips: train_scan.zip holds the test scans", ["train_scan.zip", "test_scan.zip"])
def _(d):
    z = {"train_clean.zip": image_zip(d.tmp / "train_clean.zip", ["a.01.01", "b.01.01"]),
         "train_scan.zip": image_zip(d.tmp / "train_scan.zip", ["scanner01_000"]),
         "test_scan.zip": image_zip(d.tmp / "test_scan.zip", ["scanner01_000"])}
    zips.check_zip_set(z)


@case("zips: clean and scan names differ", ["do not hold the same image names", "b.01.01"])
def _(d):
    z = {"train_clean.zip": image_zip(d.tmp / "train_clean.zip", ["a.01.01", "b.01.01"]),
         "train_scan.zip": image_zip(d.tmp / "train_scan.zip", ["a.01.01", "c.01.01"]),
         "test_scan.zip": image_zip(d.tmp / "test_scan.zip", ["scanner01_000"])}
    zips.check_zip_set(z)


# ---------------------------------------------------------------- data_download.sh (slow)

def download(d, env, data_dir=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith("DESCAN_")}
    full.update({"DESCAN_ZIP_CACHE": str(d.tmp / "cache"), "DESCAN_WORKSPACE": str(d.tmp / "ws"),
                 "DESCAN_GDOWN": "false", "DESCAN_RETRY_WAIT": "0", "PYTHON": sys.executable, **env})
    full = {k: v for k, v in full.items() if v is not None}
    r = subprocess.run(["bash", str(ROOT / "data_download.sh"), str(data_dir or d.tmp / "data")],
                       capture_output=True, text=True, env=full, timeout=120)
    if r.returncode:
        raise Refused(r.stdout[-600:] + r.stderr)
    return r.stdout[-200:]


def no_cv2_python(d, passthrough):
    """A python3 on the PATH that cannot import OpenCV (optionally running -c and -m descan -h)."""
    bindir = d.tmp / "bin"
    bindir.mkdir()
    pass_line = f'case "$*" in "-c "*|"-m descan -h") exec "{sys.executable}" "$@" ;; esac\n' if passthrough else ""
    (bindir / "python3").write_text("#!/usr/bin/env bash\n" + pass_line +
                                    "echo \"ModuleNotFoundError: No module named 'cv2'\" >&2\nexit 1\n")
    (bindir / "python3").chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "PYTHON": None}


@case("download: a good cached zip, a python3 without OpenCV", ["opencv", "requirements.txt"], slow=True)
def _(d):
    (d.tmp / "cache").mkdir()
    d.protect(image_zip(d.tmp / "cache/train_clean.zip", ["a.01.01"]))
    download(d, no_cv2_python(d, passthrough=False))


@case("download: the same, the python starts but its zip check fails", ["opencv", "the file is kept"], slow=True)
def _(d):
    (d.tmp / "cache").mkdir()
    d.protect(image_zip(d.tmp / "cache/train_clean.zip", ["a.01.01"]))
    download(d, no_cv2_python(d, passthrough=True))


@case("download: a truncated zip in the cache is moved aside", ["moved it aside", ".bad"], slow=True)
def _(d):
    (d.tmp / "cache").mkdir()
    p = image_zip(d.tmp / "cache/train_clean.zip", ["a.01.01"])
    p.write_bytes(p.read_bytes()[:-30])
    d.protect(p, also=d.tmp / "cache/train_clean.zip.bad")
    download(d, {})


@pytest_like := None  # (no pytest here; a marker for readers: the next cases are settings)
@case("download: DESCAN_DOWNLOAD_TRIES=abc", ["DESCAN_DOWNLOAD_TRIES=abc", "whole number"], slow=True)
def _(d):
    download(d, {"DESCAN_DOWNLOAD_TRIES": "abc"})
