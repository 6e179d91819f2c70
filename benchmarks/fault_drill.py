"""Fault drill: faults and bad input tried as a new user would, one line per case.

    python benchmarks/fault_drill.py [--quick]

Each case makes one fault in a temporary folder (bad images, unpaired names, broken zips, corrupt
or foreign checkpoints, bad CSVs, bad settings, full or read-only disks, kills during a write),
runs the kit's code on it through the door a user takes (``python -m descan train`` with
key=value settings, ``python -m descan download`` and its options, data_download.sh, a notebook's
own call, the environment variables that are left; kills in a subprocess) and prints what
happened:
  clear      refused, with a message that names what is wrong (the case's expected words)
  handled    no error, and the result is right (a blank line ignored, a stale file removed, ...)
  silent     no error, but the result is wrong
  traceback  an unexpected kind of error, or an error that does not say what is wrong
  lost       a file that must survive (a cached zip, the previous CSV, checkpoint or restored
             folder) was changed or deleted, whatever else happened
The last line reads "N cases: C clear, S silent, T traceback, L lost" (C: the clear errors plus the
handled cases, split on the line before); exit status 1 unless S, T and L are 0. --quick leaves out
the slow cases (data_download.sh's checks of its Python, killing a torch process). Read-only is
simulated for root (EROFS). A bad setting counts as clear only when the run stops before it
starts (nothing written) and its message names the setting.
"""
import argparse
import atexit
import contextlib
import dataclasses
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # the broken images are on purpose
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
[os.environ.pop(v) for v in list(os.environ) if v.startswith("DESCAN")]  # the user's own settings stay out
import helpers  # noqa: E402
from descan import checkpoints, cli, crops, data, demo, engine, models, recipes, submit, zips  # noqa: E402
from descan.data import test_scans  # noqa: E402

CASES, TINY, HEADER = [], {"width": 8, "depth": 3}, "Image File,Y Channel Value\n"
CPU, NOTEBOOK_CODE = torch.device("cpu"), object()  # NOTEBOOK_CODE: the model cell's code


class Refused(Exception):
    """A script that stopped with a non-zero exit status; the message is its output."""


def snapshot(path):
    path = Path(path)
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return path.read_bytes() if path.is_file() else None


def raising(error):
    def fail(*a, **k):
        raise error
    return fail


class Drill:
    """What a case gets: a fresh folder, undone patches, files not to lose, builders of faults."""

    def __init__(self, tmp):
        self.tmp, self.undo, self.kept, self.was_lost = tmp, [], [], []

    def setenv(self, name, value):
        os.environ[name] = value
        self.undo.append(lambda: os.environ.pop(name, None))

    def patch(self, obj, attr, value):
        self.undo.append(lambda old=getattr(obj, attr): setattr(obj, attr, old))
        setattr(obj, attr, value)

    def protect(self, path, also=None):  # path keeps its bytes (a folder: its files), there or at ``also``
        self.kept.append((Path(path), also, snapshot(path)))
        return path

    def lost(self):
        return self.was_lost + [str(p) for p, also, old in self.kept if snapshot(p) != old and snapshot(also) != old]

    def settle(self):  # before the case replaces its protected files on purpose
        self.was_lost, self.kept = self.lost(), []

    def full_disk(self):
        self.patch(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))

    def read_only(self, folder):
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            folder.chmod(0o555)
            return self.undo.append(lambda: folder.chmod(0o755))
        for name in ("open", "mkdir"):
            def refuse(p, *a, real=getattr(os, name), name=name, **k):
                if str(p).startswith(str(folder)) and (name == "mkdir" or a[0] & (os.O_WRONLY | os.O_RDWR)):
                    raise OSError(errno.EROFS, "Read-only file system", str(p))
                return real(p, *a, **k)
            self.patch(os, name, refuse)

    def png(self, rel, h=8, w=8, value=100, dtype=np.uint8, channels=3):
        (self.tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(self.tmp / rel), np.full((h, w, channels) if channels > 1 else (h, w), value, dtype))
        return self.tmp / rel

    def dataset(self, fault=None):
        """A tiny data folder (two pairs, a test scan); ``fault(root)`` breaks it, then it is checked."""
        for n in ("Mag.00001.01", "Mag.00002.01"):
            self.png(f"data/train/clean/{n}.png"), self.png(f"data/train/scan/{n}.png", value=90)
        self.png("data/test/scan/scanner01_000.png")
        return self.tmp / "data" if fault is None else (fault(self.tmp / "data"), self.check())

    def check(self, root=None):
        return data.check_dataset(root or self.tmp / "data", self.tmp / "ws", show_progress=False, force=True)

    def zip(self, name, entries):
        with zipfile.ZipFile(self.tmp / name, "w") as zf:
            [zf.writestr(arc, blob) for arc, blob in entries]
        return self.tmp / name

    def image_zip(self, name, stems):
        return self.zip(name, [(f"{s}.png", cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
                               for s in stems])

    def save_run(self, run, **kw):
        return checkpoints.save_checkpoint(best_state(**kw), checkpoints.best_path(self.tmp / "ws", run))

    def choose(self, wanted=None, data_kind="real"):
        return checkpoints.choose_checkpoint(self.tmp / "ws", wanted, data_kind=data_kind)

    def read_csv(self, text, encoding="utf-8", expected=("a", "b")):
        (self.tmp / "submission.csv").write_bytes(text.encode(encoding))
        return submit.read_submission(self.tmp / "submission.csv", list(expected))

    def old_csv(self):
        return self.protect(submit.write_submission([("a", 1.0), ("b", 2.0)], self.tmp / "submission.csv", ["a", "b"]))

    def scans(self, n=4):
        return [self.png(f"test/scan/s{i}.tif", 9, 7, 40 * i) for i in range(n)]

    def restored(self, n=4):  # a complete restored folder from an earlier run, protected
        submit.restore_folder(models.Identity(), self.scans(n), self.tmp / "restored", show_progress=False)
        return self.protect(self.tmp / "restored")

    def names(self, sub="."):
        return sorted(p.name for p in (self.tmp / sub).iterdir()) if (self.tmp / sub).is_dir() else []


NOTEBOOK_03 = {}  # its model cell: code, class name, arguments (read on first use)


def notebook_model():
    """Notebook 03's model cell, and a tiny DnCNN built from its code."""
    if not NOTEBOOK_03:
        NOTEBOOK_03.update(recipes.from_notebook("dncnn", CPU, smoke=True)["model"])
    return NOTEBOOK_03, models.build(NOTEBOOK_03["code"], NOTEBOOK_03["name"], TINY)


def best_state(data_kind="real", score=1.0, model_name=None, code=NOTEBOOK_CODE):
    """A best.pt of a tiny DnCNN from notebook 03's cell (``code``: other model code, or None)."""
    spec, model = notebook_model()
    return {"kind": "best", "model_name": model_name or spec["name"], "model_kwargs": TINY,
            "model_code": spec["code"] if code is NOTEBOOK_CODE else code, "val": {"score": score},
            "epoch": 1, "step": 1, "config": {}, "data_kind": data_kind, "model": model.state_dict()}


def case(name, words=(), slow=False, fn=None):
    """A case (also a decorator): with ``words`` it must raise an error naming them all; without,
    it must return normally (its return value is the detail; an AssertionError: a wrong result)."""
    if fn is None:
        return lambda f: case(name, words, slow, f)
    CASES.append((name, fn, tuple(words), slow))


def run_case(fn, words, tmp):
    d, out = Drill(tmp), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            detail = fn(d)
        outcome, detail = ("silent", f"no error ({detail})") if words else ("handled", str(detail or ""))
    except AssertionError as e:
        outcome, detail = "silent", f"wrong result: {e}"
    except (helpers.DataError, ValueError, OSError, Refused, checkpoints.CheckpointError) as e:
        missing = [w for w in words if w.lower() not in str(e).lower()]
        outcome = "clear" if words and not missing and "Traceback (most recent" not in str(e) else "traceback"
        detail = f"{type(e).__name__}: {e}" + (f"  [does not say {missing}]" if words and missing else "")
    except Exception as e:  # noqa: BLE001 - anything else is the bare traceback a user would see
        outcome, detail = "traceback", f"{type(e).__name__}: {e}"
    finally:
        [undo() for undo in reversed(d.undo)]
    if d.lost():
        outcome, detail = "lost", f"changed or deleted: {', '.join(d.lost())}; {detail}"
    return outcome, " ".join(detail.split())


# ---------------------------------------------------------------- the cases (one blank line between)

def cut(path, keep):
    path.write_bytes(path.read_bytes()[:keep])
    return path

def expect(ok, wrong, right):
    assert ok, wrong
    return right

def in_data(fault):  # a case breaking the tiny data folder with fault(d, root), then checking it
    return lambda d: d.dataset(lambda root: fault(d, root))

case("image: a truncated PNG", ["Mag.00001.01.png", "unreadable"],
     fn=in_data(lambda d, r: cut(r / "train/clean/Mag.00001.01.png", 40)))
case("image: a text file named .png", ["scanner01_000.png", "unreadable"],
     fn=in_data(lambda d, r: (r / "test/scan/scanner01_000.png").write_text("<html></html>")))
case("pair: sizes differ", ["Mag.00002.01", "sizes differ"],
     fn=in_data(lambda d, r: d.png("data/train/scan/Mag.00002.01.png", 8, 9)))
case("pair: a clean image without its scan", ["no scan", "Mag.00003.01.png"],
     fn=in_data(lambda d, r: d.png("data/train/clean/Mag.00003.01.png")))
case("data: an empty test folder", ["no test scans", "test/scan"],
     fn=in_data(lambda d, r: (r / "test/scan/scanner01_000.png").unlink()))

# ---- completeness: the test set's list (its zip's, else recorded at the first check)
def zipped(d, tests=("t1", "t2", "t3", "t4")):
    """The tiny data set as zips in a cache, unpacked by ensure_data; the data folder."""
    d.setenv("DESCAN_ZIP_CACHE", str(d.tmp / "cache"))
    (d.tmp / "cache").mkdir()
    pairs = ["Mag.00001.01", "Mag.00002.01"]
    for name, stems in zip(zips.ZIP_NAMES, [pairs, pairs, list(tests)]):
        d.image_zip(name, stems).rename(d.tmp / "cache" / name)
    data.ensure_data(d.tmp / "data", d.tmp / "ws")
    return d.tmp / "data"

@case("test set: unpacked in part (a kill or a full disk), zips in the cache")
def _(d):
    [p.unlink() for p in sorted((zipped(d) / "test/scan").iterdir())[1:]]
    data.ensure_data(d.tmp / "data", d.tmp / "ws")
    got = [p.stem for p in test_scans(d.tmp / "data", d.tmp / "ws")]
    return expect(got == ["t1", "t2", "t3", "t4"], f"test scans {got}", "unpacked again: 4 test scans")

@case("test set: a scan gone from data placed by hand (no zip)", ["lacks 1 of the 4", "t3"])
def _(d):
    zipped(d)
    d.setenv("DESCAN_ZIP_CACHE", str(d.tmp / "elsewhere"))
    data.ensure_data(d.tmp / "data", d.tmp / "ws2")  # recorded at its first check
    (d.tmp / "data/test/scan/t3.png").unlink()
    data.ensure_data(d.tmp / "data", d.tmp / "ws2")

case("test set: an image that is not in test_scan.zip", ["not in test_scan.zip", "extra"], fn=lambda d: (
    zipped(d), d.png("data/test/scan/extra.png"), data.ensure_data(d.tmp / "data", d.tmp / "ws")))

@case("disk full while unpacking: space named, no good file to delete", ["disk full while unpacking", "more are needed", "free"])
def _(d):
    def full(path, mode="r", *a, **k):
        if "w" in mode and "t3" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return open(path, mode, *a, **k)
    zips.open = full  # the module's open, before the builtin one
    d.undo.append(lambda: delattr(zips, "open"))
    try:
        zipped(d)
    except helpers.DataError as e:
        assert "delete" not in str(e).lower(), f"advice that deletes: {e}"
        raise

@case("data: images one folder too deep (unzipped by hand)", ["train/clean/train_clean/", "not where"])
def _(d):
    root = d.dataset()
    (root / "train/clean").rename(d.tmp / "train_clean")
    (root / "train/clean").mkdir()
    (d.tmp / "train_clean").rename(root / "train/clean/train_clean")
    d.protect(root)
    d.setenv("DESCAN_ZIP_CACHE", str(d.tmp / "cache"))
    data.ensure_data(root, d.tmp / "ws")

@case("data: the zips in the data folder, not in the zip cache", ["train_clean.zip (a zip)", "not where"])
def _(d):
    (d.tmp / "data").mkdir()
    d.protect(d.image_zip("data/train_clean.zip", ["a"]))
    d.setenv("DESCAN_ZIP_CACHE", str(d.tmp / "cache"))
    data.ensure_data(d.tmp / "data", d.tmp / "ws")

@case("demo: its generation interrupted, then run again")
def _(d):
    from descan import demo, download as getting
    small, real = {"train_pages": 2, "unseen_pages": 2, "test_pages": 1, "crop": 32}, demo._demo_page

    def stop_after_training_pages(root, split, i, s):
        if split != "train":
            raise KeyboardInterrupt  # Ctrl-C half way
        real(root, split, i, s)
    d.patch(demo, "_demo_page", stop_after_training_pages)
    with contextlib.suppress(KeyboardInterrupt):
        getting.get_demo(d.tmp / "data", **small)
    demo._demo_page = real
    made = getting.get_demo(d.tmp / "data", **small)
    counts = [len(list(d.tmp.glob(f"data/{sub}/*"))) for sub in helpers.SPLITS.values()]
    return expect(made and counts == [8, 8, 3], f"made {made}, counts {counts}", "made again: 8 pairs, 3 test scans")

@case("manifest: no validation rows", ["0 validation rows", "notebook 01"])
def _(d):
    m = data.make_manifest(d.dataset())
    m["split"] = "train"
    data.write_manifest(m, d.tmp / "ws")
    data.load_split(d.tmp / "data", d.tmp / "ws")

@case("submission: a model whose output is constant", ["the same mean Y", "No CSV"])
def _(d):
    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.full_like(x, 0.4)
    d.old_csv()
    submit.restore_folder(Constant(), d.scans(), d.tmp / "restored", show_progress=False)
    submit.make_submission(d.tmp / "restored", d.scans(), d.tmp / "submission.csv")

@case("image: 16-bit, grey and RGBA files")
def _(d):
    got = [helpers.read_rgb(d.png("a.png", value=65535, dtype=np.uint16)), helpers.read_rgb(d.png("b.png", value=7,
           channels=1)), helpers.read_rgb(d.png("c.png", value=9, channels=4))]
    return expect([(i.shape, i.min(), i.max()) for i in got] == [((8, 8, 3), 255, 255), ((8, 8, 3), 7, 7),
                                                                  ((8, 8, 3), 9, 9)], "wrong pixels", "right pixels")

@case("pair: p.png, p.q.png against p.q.tif, p.tif (sorted orders differ)")
def _(d):
    [d.png(n) for n in ("c/p.png", "c/p.q.png", "s/p.q.tif", "s/p.tif")]
    got = [(p.name, p.clean.name, p.scan.name) for p in helpers.pair_files(d.tmp / "c", d.tmp / "s")]
    return expect(got == [("p", "p.png", "p.tif"), ("p.q", "p.q.png", "p.q.tif")], got, "paired by name")

# ---- zips
@case("zip: a CRC error inside", ["is corrupt", "a.png"])
def _(d):
    p = d.zip("c.zip", [("a.png", b"0123456789" * 20)])
    blob = bytearray(p.read_bytes())
    blob[blob.index(b"0123456789") + 5] ^= 0xFF
    zips.check_zip(p.write_bytes(bytes(blob)) and p)

@case("zip: a symbolic link entry", ["symbolic link", "link.png"])
def _(d):
    info = zipfile.ZipInfo("link.png")
    info.external_attr = 0o120777 << 16  # a symbolic link, as `zip -y` stores one
    with zipfile.ZipFile(d.tmp / "l.zip", "w") as zf:
        zf.writestr(info, "/etc/passwd")
    zips.unpack_zip(d.tmp / "l.zip", d.protect(d.tmp / "out"), False)

@case("zip: unreadable (permission denied) is not judged", ["cannot read", "kept"])
def _(d):
    p = d.protect(d.image_zip("z.zip", "a"))
    d.patch(zips.zipfile, "ZipFile", raising(PermissionError(errno.EACCES, "Permission denied", str(p))))
    zips.check_zip(p)

case("zip: truncated", ["not a complete zip", "t.zip"], fn=lambda d: zips.check_zip(cut(d.image_zip("t.zip", "a"), 90)))
case("zip: a web page (Drive's quota page)", ["web page", "page.zip"], fn=lambda d: zips.check_zip(
    d.zip("page.zip", []).write_text("<!DOCTYPE html><html>Quota</html>") and d.tmp / "page.zip"))
case("zip: an entry escaping the folder", ["outside the target folder", "../evil.png"], fn=lambda d: zips.unpack_zip(
    d.zip("e.zip", [("ok.png", b"x"), ("../evil.png", b"x")]), d.protect(d.tmp / "out"), False))
case("zips: train_scan.zip holds the test scans", ["train_scan.zip", "test_scan.zip"], fn=lambda d: zips.check_zip_set(
    {k: d.image_zip(k, [n]) for k, n in zip(zips.ZIP_NAMES, ["a.01", "s01", "s01"])}))

# ---- python -m descan download and data_download.sh (its checks of its Python: slow)
def download(d, *args, env=None, cached=None, script=False):
    """``python -m descan download DATA`` (``script``: bash data_download.sh DATA) with one quick
    try through the downloader `false` (it always fails), then ``args``; ``cached(path)`` puts a
    zip in the cache (protected)."""
    (d.tmp / "cache").mkdir()
    if cached:
        d.protect(cached(d.tmp / "cache/train_clean.zip"), also=d.tmp / "cache/train_clean.zip.bad")
    full = {k: v for k, v in os.environ.items() if not k.startswith("DESCAN")}
    full.update({"DESCAN_ZIP_CACHE": str(d.tmp / "cache"), "DESCAN_WORKSPACE": str(d.tmp / "ws"),
                 "PYTHON": sys.executable, **(env or {})})
    command = ["bash", str(ROOT / "data_download.sh")] if script else [sys.executable, "-m", "descan",
                                                                     "download"]
    options = ["--tries", "1", "--retry-wait", "0", "--downloader", "false", *args]  # the last wins
    r = subprocess.run([*command, str(d.tmp / "data"), *options], capture_output=True, text=True,
                       cwd=ROOT, env={k: v for k, v in full.items() if v is not None}, timeout=120)
    if r.returncode:
        raise Refused(r.stdout + r.stderr)

def no_cv2(d):
    """A python3 first on the PATH that cannot import OpenCV (PYTHON unset: the script's default)."""
    (d.tmp / "bin").mkdir()
    (d.tmp / "bin/python3").write_text("#!/usr/bin/env bash\necho \"ModuleNotFoundError: No module "
                                       "named 'cv2'\" >&2\nexit 1\n")
    (d.tmp / "bin/python3").chmod(0o755)
    return {"PATH": f"{d.tmp / 'bin'}:{os.environ['PATH']}", "PYTHON": None}

case("download: --tries abc", ["--tries", "'abc'", "whole number"],
     fn=lambda d: download(d, "--tries", "abc"))
case("download: --retry-wait -1", ["--retry-wait", "'-1'", "whole number"],
     fn=lambda d: download(d, "--retry-wait", "-1"))
case("download: the downloader fails every time (--downloader false)",
     ["could not be downloaded after 2 attempts", "into the cache by hand"],
     fn=lambda d: download(d, "--tries", "2"))
case("download: a downloader that is not installed", ["'no-such-downloader'", "not installed"],
     fn=lambda d: download(d, "--downloader", "no-such-downloader"))
case("download: a truncated cached zip is moved aside, not deleted", ["moved it aside", ".bad"],
     fn=lambda d: download(d, cached=lambda p: cut(d.image_zip(p, ["a.01.01"]), 60)))
case("download: a good cached zip, a python3 without OpenCV", ["cv2", "requirements.txt"], True,
     lambda d: download(d, env=no_cv2(d), cached=lambda p: d.image_zip(p, ["a.01.01"]), script=True))
case("download: PYTHON names no program", ["no python found", "PYTHON="], True,
     lambda d: download(d, env={"PYTHON": str(d.tmp / "no-python")}, script=True))

# ---- checkpoints and 05's choice
case("checkpoint: a truncated best.pt (kept)", ["corrupt", "best.pt", "nothing was deleted"],
     fn=lambda d: d.choose(str(d.protect(cut(d.save_run("dncnn"), 1000)))))
case("checkpoint: random bytes named .pt", ["corrupt", "x.pt"],
     fn=lambda d: (d.tmp / "x.pt").write_bytes(os.urandom(5000)) and d.choose(str(d.tmp / "x.pt")))
case("checkpoint: a bare state_dict", ["bare state_dict"], fn=lambda d: d.choose(
    torch.save(notebook_model()[1].state_dict(), d.tmp / "sd.pt") or str(d.tmp / "sd.pt")))
case("checkpoint: a model without its code that the kit does not know", ["'swin'", "holds no code"],
     fn=lambda d: d.save_run("mine", model_name="swin", code=None) and d.choose())
case("checkpoint: its model code no longer runs (an edit with a typo)",
     ["cannot be rebuilt", "SyntaxError", "train it again"],
     fn=lambda d: checkpoints.model_from_checkpoint(d.save_run("edited", code="class DnCNN(:\n")))
case("checkpoint: DESCAN_CHECKPOINT names no run", ["no checkpoint named 'dncn'", "dncnn"],
     fn=lambda d: d.save_run("dncnn") and d.choose("dncn"))
case("05 across data kinds: only demo runs, real data", ["trained on real data", "demo_run (demo data)"],
     fn=lambda d: d.save_run("demo_run", data_kind="demo") and d.choose())

case("checkpoint: a broken file beside a good one", fn=lambda d: (cut(d.save_run("broken"), 100), d.save_run(
    "good", score=9.0), expect(d.choose()["run"] == "good", "the broken one chosen", "the good one chosen"))[-1])

@case("05 across data kinds: a demo run (better score) and a real run, real data")
def _(d):
    d.save_run("demo_run", data_kind="demo", score=1.0), d.save_run("real_run", data_kind="real", score=5.0)
    return expect(d.choose(data_kind=helpers.dataset_kind(d.dataset()))["run"] == "real_run", "the demo run chosen",
                  "the real run chosen")

# ---- the CSV
for _name, _text, _words in [
        ("ids not sorted", "b,1.0\na,2.0\n", ["not in sorted order", "row 3 'a'"]),
        ("a number with an underscore", "a,1_0\nb,2.0\n", ["submission.csv", "a=1_0", "underscores"]),
        ("nan", "a,nan\nb,2.0\n", ["not finite", "a=nan"]), ("256", "a,256\nb,2.0\n", ["[0, 255]", "a=256"]),
        ("a row missing", "a,1.0\n", ["have no row", "b"]), ("an id twice", "a,1.0\na,1.0\nb,2.0\n", ["duplicate"]),
        ("three fields", "a,1.0,x\nb,2.0\n", ["row 2 has 3 fields"]),
        ("a blank line inside", "a,1.0\n\nb,2.0\n", ["row 3", "blank line inside"])]:
    case(f"csv: {_name}", _words, fn=lambda d, t=_text: d.read_csv(HEADER + t))
case("csv: the wrong header", ["header must be"], fn=lambda d: d.read_csv("id,value\na,1.0\nb,2.0\n"))
case("csv: Latin-1, not UTF-8", ["submission.csv", "not UTF-8"],
     fn=lambda d: d.read_csv(HEADER + "a,1.0\nb,2.0\nCafé,3.0\n", "latin-1", ["a", "b", "Café"]))
case("csv: a trailing blank line", fn=lambda d: expect(
    d.read_csv(HEADER + "a,1.0\nb,2.0\n\n") == [("a", 1.0), ("b", 2.0)], "rows differ", "ignored"))

# ---- settings: key=value on the command line (the notebooks' parameter cells), the variables left
def train_command(d, *args):
    """``python -m descan train ARGS`` (cli.main, here): a refusal is Refused with what it printed.
    Reaching the data step means that the settings were accepted: that is the wrong result."""
    d.patch(data, "ensure_data", raising(AssertionError("accepted: the run went on to get the data")))
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            code = cli.main(["train", *args, "--data", str(d.tmp / "data"),
                             "--workspace", str(d.tmp / "ws")])
    except SystemExit as e:  # argparse's refusals
        code = e.code
    assert not d.names(), f"refused, but wrote {d.names()} first"
    if code:
        raise Refused(said.getvalue())
    return "trained"

for _setting, _words in [
        ("patch=7", ["patch=7", "at least 8"]), ("epochs=0", ["epochs=0", "at least 1"]),
        ("epochs=1_0", ["epochs='1_0'", "integer"]), ("lr=nan", ["lr=nan", "from 1e-08"]),
        ("batch_size=12", ["batch_size=12", "multiple of crops_per_image=8"]),
        ("batch_size=abc", ["batch_size='abc'", "integer"]),
        ("amp=fp8", ["amp='fp8'", "auto, bf16, fp16, off"]),
        ("compile=maybe", ["compile='maybe'", "True, False"]),
        ("colour_jitter=1.5", ["colour_jitter=1.5", "from 0.0 to 1.0"]),
        ("loss=huber", ["'loss=huber' is not a setting", "key=value"]),  # a setting that was removed
        ("width=2", ["'width=2' is not a setting", "key=value"])]:  # a model argument: 03's model cell
    case(f"setting: python -m descan train --recipe dncnn {_setting}", _words,
         fn=lambda d, s=_setting: train_command(d, "--recipe", "dncnn", s))
case("setting: a value without its key (epochs 5)", ["'epochs' is not a setting", "key=value"],
     fn=lambda d: train_command(d, "--recipe", "attention", "epochs", "5"))
case("setting: --recipe unet", ["--recipe", "'unet'", "dncnn"],
     fn=lambda d: train_command(d, "--recipe", "unet"))
case("setting: --run-dir of a folder without run.json", ["no run.json", "--recipe"],
     fn=lambda d: train_command(d, "--run-dir", str(d.tmp / "runs/mine")))

@case("setting: epochs=0 in a fresh process (exit status, no traceback)", ["epochs=0", "at least 1"])
def _(d):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DESCAN")}, "DESCAN_SMOKE": "1"}
    r = subprocess.run([sys.executable, "-m", "descan", "train", "--recipe", "dncnn", "epochs=0",
                        "--data", str(d.tmp / "data"), "--workspace", str(d.tmp / "ws")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 1 and not d.names(), f"exit status {r.returncode}, wrote {d.names()}"
    raise Refused(r.stdout + r.stderr)

@case("notebook 03: its parameter cell deleted", ["no code cell with 'CFG = TrainConfig('", "repository"])
def _(d):
    nb = json.loads((ROOT / "notebooks" / recipes.NOTEBOOKS["dncnn"]).read_text())
    nb["cells"] = [c for c in nb["cells"] if recipes.MARKERS["config"] not in "".join(c["source"])]
    (d.tmp / "03.ipynb").write_text(json.dumps(nb))
    recipes.notebook_cell(d.tmp / "03.ipynb", recipes.MARKERS["config"])

# notebook 01's line: data.make_manifest(DATA, val_fraction=VAL_FRACTION, seed=0)
for _value in (1.5, 0.0, float("nan")):
    case(f"notebook 01: VAL_FRACTION = {_value}", [f"val_fraction={_value}", "between 0 and 1"],
         fn=lambda d, v=_value: data.make_manifest(d.dataset(), val_fraction=v))

for _var, _value, _words, _read in [
        ("DESCAN_TRAIN_MINUTES", "-1", ["0 or more"], lambda: recipes.with_env(recipes.TrainConfig())),
        ("DESCAN_TRAIN_MINUTES", "abc", ["0 or more"], lambda: recipes.with_env(recipes.TrainConfig())),
        ("DESCAN_SMOKE", "maybe", ["is not a switch"], helpers.smoke_mode),
        ("DESCAN_RUN_NAME", "../elsewhere", ["plain folder name"],  # the notebooks' RUN_DIR line
         lambda: checkpoints.run_dir(os.environ["DESCAN_WORKSPACE"], os.environ["DESCAN_RUN_NAME"]))]:
    case(f"setting: {_var}={_value}", [_var, _value, *_words],
         fn=lambda d, v=_var, x=_value, r=_read: (d.setenv(v, x), r()))

# ---- training: sizes, memory, divergence that stays finite, a resume at an epoch's end
DEMO_PAIRS = {}

def tiny_training(d, **settings):
    """A Trainer of notebook 03's recipe (a tiny DnCNN, 2 epochs of 4 steps) on a small demo set."""
    if not DEMO_PAIRS:
        root = Path(tempfile.mkdtemp(prefix="drill-demo-"))
        atexit.register(shutil.rmtree, root, True)
        demo.make_demo_dataset(root, train_pages=6, unseen_pages=2, test_pages=1, crop=48, show_progress=False)
        m = data.make_manifest(root, val_fraction=0.2)
        DEMO_PAIRS.update(train=data.manifest_pairs(m, root, "train"), val=data.manifest_pairs(m, root, "val"))
    run = recipes.from_notebook("dncnn", CPU, smoke=True)
    run["config"] = dataclasses.replace(run["config"], **{
        "epochs": 2, "crops_per_epoch": 32, "batch_size": 8, "patch": 32, "crops_per_image": 4, "workers": 0,
        **settings})
    run["model"]["kwargs"] = dict(TINY)
    return engine.Trainer(run, DEMO_PAIRS["train"], DEMO_PAIRS["val"], d.tmp / "run", CPU, "demo")

case("training: patch=100000 (larger than the images)", ["patch=100000", "larger than the training images"],
     fn=lambda d: tiny_training(d, patch=100000).fit())

@case("training: a batch whose crops alone take half the memory", ["batch_size=8", "patch=32", "GiB"])
def _(d):
    d.patch(crops, "available_memory", lambda: 2 ** 16)
    tiny_training(d).fit()

@case("training: out of memory in a step", ["out of cpu memory", "batch_size=8", "patch=32"])
def _(d):
    t = tiny_training(d)
    t.train_step = raising(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 GiB"))
    t.fit()

@case("training: Ctrl-C after an epoch's last step, then resumed")
def _(d):
    def stop(step):
        if step == 4:
            raise KeyboardInterrupt
    with contextlib.suppress(KeyboardInterrupt):
        tiny_training(d).fit(on_step=stop)
    tiny_training(d).fit()
    losses = list(pd.read_csv(d.tmp / "run/history.csv")["train_loss"])
    ok = np.isnan(losses[:2]).all() and losses[2] > 0  # step 0, then the resumed epoch's end: no step
    return expect(ok, f"train losses {losses}", f"train losses {losses}")

@case("05: lr=1 (diverged, losses finite): worse than doing nothing", ["worse than doing nothing", "DESCAN_CHECKPOINT="])
def _(d):
    t = tiny_training(d, lr=1.0, epochs=1)
    t.fit()
    pairs = DEMO_PAIRS["val"]
    board = submit.local_leaderboard({"do nothing": models.Identity(), "dncnn": t.model.eval()}, pairs,
                                     d.tmp / "lb", CPU, 2, show_progress=False)
    submit.leaderboard_notes(board, "dncnn")

case("data: DESCAN_DATA names a file", ["is a file", "notes.txt"], fn=lambda d: (
    (d.tmp / "notes.txt").write_text("x"), data.ensure_data(d.protect(d.tmp / "notes.txt"), d.tmp / "ws")))
case("workspace: DESCAN_WORKSPACE names a file", ["is a file", "DESCAN_WORKSPACE"], fn=lambda d: (
    (d.tmp / "ws.txt").write_text("x"), d.setenv("DESCAN_WORKSPACE", str(d.protect(d.tmp / "ws.txt"))),
    helpers.workspace_dir()))
case("test set: its recorded list cut short", ["test_scans.json", "cannot be read"], fn=lambda d: (
    d.setenv("DESCAN_ZIP_CACHE", str(d.tmp / "none")), d.dataset(), d.check(),
    (d.tmp / "ws/test_scans.json").write_text('{"data": "/x'), d.check()))
case("csv: a folder named submission.csv where the CSV goes", ["submission.csv is a folder"], fn=lambda d: (
    (d.tmp / "submission.csv").mkdir(), submit.write_submission([("a", 1.0)], d.tmp / "submission.csv", ["a"])))

# ---- full disks and read-only folders
def short_write(name):  # numpy's tofile on a full disk: part of the bytes, then an OSError without errno
    Path(name).write_bytes(b"8192 bytes")
    raise OSError("23590 requested and 8192 written")

def encoder_cut_at(n):  # cv2.imencode whose n-th PNG meets a full disk when it is written
    encode, calls = cv2.imencode, []
    return lambda ext, img: (calls.append(ext), (True, SimpleNamespace(tofile=short_write)) if len(calls) == n
                             else encode(ext, img))[1]

def broken_writer(error):  # stands for csv.writer: the first row meets ``error``
    return lambda f: SimpleNamespace(writerow=raising(error))

def torch_save_on_full_disk(obj, f, *a, **k):
    Path(f).write_bytes(b"PK half a checkpoint")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 23590 vs 8192")

case("disk full: writing submission.csv (ENOSPC)", ["disk full", "submission.csv"], fn=lambda d: (
    d.old_csv(), d.patch(submit.csv, "writer", broken_writer(OSError(errno.ENOSPC, "No space left on device"))),
    submit.write_submission([("a", 3.0), ("b", 4.0)], d.tmp / "submission.csv", ["a", "b"])))
case("disk full: a checkpoint save (torch's 'unexpected pos')", ["disk full", "best.pt"], fn=lambda d: (
    d.protect(d.save_run("dncnn")), d.full_disk(), d.patch(torch, "save", torch_save_on_full_disk),
    d.save_run("dncnn")))
case("disk full: half-way through restoring the test set", ["disk full", "s2.png"], fn=lambda d: (
    d.restored(), d.full_disk(), d.patch(cv2, "imencode", encoder_cut_at(3)),
    submit.restore_folder(models.Identity(), d.scans(), d.tmp / "restored", show_progress=False)))
case("read-only: the workspace (manifest.csv)", ["read-only", "manifest.csv"], fn=lambda d: (
    d.read_only(d.tmp / "ws"), data.write_manifest(data.make_manifest(d.dataset()), d.tmp / "ws")))
case("restore: into the workspace by mistake", ["holds folders", "nothing was changed"], fn=lambda d: (
    d.save_run("dncnn"), d.protect(d.tmp / "ws"),
    submit.restore_folder(models.Identity(), d.scans(), d.tmp / "ws", show_progress=False)))
case("submission: a restored PNG missing", ["have no row", "s1"], fn=lambda d: (
    d.restored(), d.settle(), d.old_csv(), (d.tmp / "restored/s1.png").unlink(),
    submit.make_submission(d.tmp / "restored", d.scans(), d.tmp / "submission.csv")))

# ---- kills: by an exception, and by os._exit in a subprocess (no finally runs)
def interrupted(d, run, detail):
    with contextlib.suppress(KeyboardInterrupt):
        run()
    return expect([n for n in d.names() if n not in ("test", "ws")] == [p.name for p, _, _ in d.kept],
                  f"left: {d.names()}", detail)

def failing(n):  # an identity model stopped by the user (the stop button) in its n-th pass
    model, calls = models.Identity(), []
    model.forward = lambda x: raising(KeyboardInterrupt())() if len(calls.append(x) or calls) == n else x
    return model

def killed(d, code, *args):
    """Run ``code`` in a Python that dies by os._exit(9) in the middle of a write; the partial files left."""
    r = subprocess.run([sys.executable, "-c", f"import os, sys; sys.path.insert(0, {str(ROOT)!r})\n{code}",
                        *map(str, args)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, f"exit status {r.returncode}: {r.stderr[-300:]}"
    return [n for n in d.names() + d.names("ws/runs/dncnn") if n.endswith((".partial", ".new"))]

def kill_write(d, path, code, write_again):
    """A write of ``path`` killed, then the next write: the old file must stay, the partial must go."""
    left, folder = killed(d, code, d.protect(path)), path.parent.relative_to(d.tmp)
    (path.parent / ".other.csv.0123abcd.partial").write_text("another file's, not to be touched")
    d.settle(), write_again(path)  # the next write replaces the file on purpose
    assert len(left) == 1 and d.names(folder) == sorted([".other.csv.0123abcd.partial", path.name]), d.names(folder)
    return f"{path.name} intact after the kill; {left[0]} removed by the next write, another file's partial kept"

case("kill during a CSV write (the stop button)", fn=lambda d: (
    d.old_csv(), d.patch(submit.csv, "writer", broken_writer(KeyboardInterrupt())), interrupted(
        d, lambda: submit.write_submission([("a", 3.0)], d.tmp / "submission.csv", ["a"]), "the old CSV intact"))[-1])
case("restore: interrupted half-way (the stop button)", fn=lambda d: (d.restored(), interrupted(d, lambda: (
    submit.restore_folder(failing(3), d.scans(), d.tmp / "restored", images_per_pass=1, chunk=1, show_progress=False)),
    "the previous restored folder intact, nothing partial left"))[-1])
case("kill during a write (os._exit), then the next write", fn=lambda d: kill_write(
    d, d.old_csv(), "from descan import files\nwith files.atomic_path(sys.argv[1]) as t:\n    t.write_text('half')\n"
    "    os._exit(9)", lambda p: submit.write_submission([("a", 1.0), ("b", 2.0)], p, ["a", "b"])))
case("kill during a checkpoint save (os._exit), then the next save", slow=True, fn=lambda d: kill_write(
    d, d.save_run("dncnn"), "import torch\nfrom descan import checkpoints\nstate = checkpoints.load_checkpoint("
    "sys.argv[1])\nstate.pop('format')\ntorch.save = lambda o, f: (open(f, 'wb').write(b'PK half'), os._exit(9))\n"
    "checkpoints.save_checkpoint(state, sys.argv[1])", lambda p: checkpoints.save_checkpoint(best_state(), p)))

@case("restore: killed half-way (os._exit), then run again", slow=True)
def _(d):
    code = ("import torch\nfrom pathlib import Path\nfrom descan import submit\nclass M(torch.nn.Module):\n    n = 0\n"
            "    def forward(self, x):\n        M.n += 1\n        return os._exit(9) if M.n == 3 else x\n"
            "submit.restore_folder(M(), sorted(Path(sys.argv[1]).glob('*.tif')), sys.argv[2], images_per_pass=1, "
            "chunk=1, show_progress=False)")
    left = (d.restored(), killed(d, code, d.tmp / "test/scan", d.tmp / "restored"))[1]
    assert left == [".restored.new"], left
    d.settle()  # the next run replaces the folder on purpose
    submit.restore_folder(models.Identity(), d.scans(5), d.tmp / "restored", show_progress=False)
    return expect(d.names() == ["restored", "test"] and len(snapshot(d.tmp / "restored")) == 5, d.names(),
                  "the previous folder intact after the kill; the next run swapped a complete one in")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="leave out the slow cases (for CI)")
    args = ap.parse_args(argv)
    counts, t0 = dict.fromkeys(("clear", "handled", "silent", "traceback", "lost"), 0), time.time()
    with tempfile.TemporaryDirectory(prefix="fault-drill-") as root:
        os.environ.update(DESCAN_DATA=str(Path(root) / "data"), DESCAN_WORKSPACE=str(Path(root) / "ws"))
        for i, (name, fn, words, slow) in enumerate(c for c in CASES if not (c[3] and args.quick)):
            (Path(root) / str(i)).mkdir()
            outcome, detail = run_case(fn, words, Path(root) / str(i))
            counts[outcome] += 1
            print(f"{outcome:<9} {name}" + (f"  -- {detail[:150]}" if detail else ""), flush=True)
    n = sum(counts.values())
    print(f"({counts['clear']} clear errors + {counts['handled']} handled correctly, in {time.time() - t0:.0f} s"
          f"{'; --quick: the slow cases left out' if args.quick else ''})")
    print(f"{n} cases: {counts['clear'] + counts['handled']} clear, {counts['silent']} silent, "
          f"{counts['traceback']} traceback, {counts['lost']} lost")
    return 0 if counts["silent"] + counts["traceback"] + counts["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
