"""Shared code of the Descanning notebooks: data, metric, submission, demo data.

Every notebook imports this module; tests reach everything through it. The
notebooks explain the ideas, this file keeps the one copy of each function.

Contracts used throughout:
- An *image* is a numpy ``uint8`` array of shape (H, W, 3) in **RGB** order,
  values 0..255. Functions never modify the arrays they are given.
- A *pair* is ``Pair(name, clean, scan)``: the file-name stem shared by the
  clean image and its scan, and the two paths.

Command line (``python helpers.py -h``): ``score``, ``demo``, ``unpack``,
``check``, ``run-notebooks``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import math
import os
import random
import re
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent
IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
CSV_HEADER = ("Image File", "Y Channel Value")
PARAM_LIMIT = 10_000_000
DEMO_MARKER = "DEMO_DATA.txt"
SPLITS = {"train_clean": "train/clean", "train_scan": "train/scan", "test_scan": "test/scan"}


class DataError(Exception):
    """Something is wrong with the data on disk; the message says what and what to do."""


def _examples(items, n=5):
    items = list(items)
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


# --------------------------------------------------------------------------
# Environment: one switch for smoke mode, paths overridable from the environment
# --------------------------------------------------------------------------

def is_colab() -> bool:
    return "google.colab" in sys.modules


def smoke_mode() -> bool:
    """True when DESCAN_SMOKE=1: fast CPU run on demo data (CI, no GPU)."""
    return os.environ.get("DESCAN_SMOKE", "0").strip().lower() in ("1", "true", "yes")


def data_dir() -> Path:
    """Where the unpacked data lives: $DESCAN_DATA, else a default that never mixes demo and real."""
    if os.environ.get("DESCAN_DATA"):
        return Path(os.environ["DESCAN_DATA"]).expanduser()
    if smoke_mode():
        return ROOT / "data" / "demo"
    return Path("/content/data") if is_colab() else ROOT / "data" / "real"


def workspace_dir() -> Path:
    """Where notebooks hand files to each other (checkpoints, CSVs): $DESCAN_WORKSPACE, else
    Google Drive in Colab (runtimes do not share /content), else ./workspace/{demo,real}."""
    if os.environ.get("DESCAN_WORKSPACE"):
        path = Path(os.environ["DESCAN_WORKSPACE"]).expanduser()
    elif smoke_mode():
        path = ROOT / "workspace" / "demo"
    elif is_colab():
        path = Path("/content/drive/MyDrive/descanning")
    else:
        path = ROOT / "workspace" / "real"
    path.mkdir(parents=True, exist_ok=True)
    return path


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value in (None, "") else float(value)


def seed_everything(seed: int) -> None:
    """Seed Python's random, numpy and torch (CPU and CUDA) in one call."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)  # also seeds every CUDA device


def setup_notebook(seed: int = 0):
    """Seed everything and report versions and the device. Returns the torch device."""
    import torch
    seed_everything(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"python {sys.version.split()[0]} | torch {torch.__version__} | opencv {cv2.__version__} "
          f"| numpy {np.__version__}")
    if device.type == "cuda":
        print(f"device: cuda ({torch.cuda.get_device_name(0)})")
    else:
        print("device: cpu" + ("" if smoke_mode() else
              "  -- no GPU found. In Colab: Runtime > Change runtime type > GPU, then run all again."))
    print("mode:", "SMOKE (fast CPU run on demo data, DESCAN_SMOKE=1)" if smoke_mode() else "full")
    return device


# --------------------------------------------------------------------------
# Files: atomic writes, image reading, pairing
# --------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    An exception (or a kill) before the end leaves any previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_rgb(path) -> np.ndarray:
    """Read any image file as RGB uint8 (H, W, 3): grey, alpha and 16-bit files are converted.

    16-bit values are scaled by 255/65535 and rounded; alpha is dropped (not composited).
    """
    path = Path(path)
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data is not None and data.size else None
    if img is None:
        raise DataError(f"cannot read image {path}: the file is missing, empty, truncated or not an "
                        "image. Delete it and download or unpack the data again.")
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        raise DataError(f"{path} holds floating-point pixels; expected an 8- or 16-bit image.")
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_png(path, rgb: np.ndarray) -> None:
    """Save an RGB uint8 image as PNG, atomically."""
    _check_image(rgb, "image to save")
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"OpenCV could not encode {path}")
    with atomic_path(path) as tmp:
        buf.tofile(str(tmp))


def list_images(folder) -> list[Path]:
    """Image files in ``folder`` (not recursive), sorted by name; hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist. Run notebook 01 (or `bash data_download.sh`, "
                        "or `bash data_download.sh --demo` for demo data) first, or set DESCAN_DATA.")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)


def _by_stem(files, folder) -> dict[str, Path]:
    out, dups = {}, []
    for p in files:
        if p.stem in out:
            dups.append(f"{out[p.stem].name} / {p.name}")
        out[p.stem] = p
    if dups:
        raise DataError(f"{folder}: {len(dups)} image names appear twice with different extensions: "
                        f"{_examples(dups)}. Keep one file per name.")
    return out


@dataclass(frozen=True)
class Pair:
    name: str
    clean: Path
    scan: Path


def pair_files(clean_dir, scan_dir) -> list[Pair]:
    """Pair clean and scan images by file name (extension ignored), sorted by name.

    Raises DataError listing examples when a folder is missing or empty, a name appears twice,
    or an image has no partner.
    """
    clean_files, scan_files = list_images(clean_dir), list_images(scan_dir)
    for folder, files in ((clean_dir, clean_files), (scan_dir, scan_files)):
        if not files:
            raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}. "
                            "Unpack the data again (notebook 01).")
    clean, scan = _by_stem(clean_files, clean_dir), _by_stem(scan_files, scan_dir)
    only_clean, only_scan = sorted(set(clean) - set(scan)), sorted(set(scan) - set(clean))
    if only_clean or only_scan:
        msg = []
        if only_clean:
            msg.append(f"{len(only_clean)} clean images have no scan in {scan_dir}: "
                       f"{_examples(clean[n].name for n in only_clean)}")
        if only_scan:
            msg.append(f"{len(only_scan)} scans have no clean image in {clean_dir}: "
                       f"{_examples(scan[n].name for n in only_scan)}")
        raise DataError("unpaired images. " + "; ".join(msg) +
                        ". A clean image and its scan must share a file name; re-unpack the data.")
    return [Pair(n, clean[n], scan[n]) for n in sorted(clean)]


def check_pairs(pairs, progress=True) -> dict:
    """Read every image of every pair; raise DataError naming unreadable files and size mismatches.

    Returns counts of image sizes, e.g. {(512, 512): 10000}.
    """
    unreadable, mismatched, sizes = [], [], {}
    for pair in _progress(pairs, "checking pairs", enabled=progress):
        shapes = []
        for path in (pair.clean, pair.scan):
            try:
                shapes.append(read_rgb(path).shape[:2])
            except DataError:
                unreadable.append(path)
        if len(shapes) == 2:
            if shapes[0] != shapes[1]:
                mismatched.append(f"{pair.name} (clean {shapes[0]}, scan {shapes[1]})")
            sizes[shapes[0]] = sizes.get(shapes[0], 0) + 1
    problems = []
    if unreadable:
        problems.append(f"{len(unreadable)} unreadable images: {_examples(unreadable)}")
    if mismatched:
        problems.append(f"{len(mismatched)} pairs whose sizes differ: {_examples(mismatched)}")
    if problems:
        raise DataError("; ".join(problems) + ". Delete the data folder and unpack it again.")
    return sizes


def dataset_kind(data) -> str:
    """'demo' when the folder was generated by `data_download.sh --demo`, else 'real'."""
    return "demo" if (Path(data) / DEMO_MARKER).exists() else "real"


def data_label(data) -> str:
    """A label for titles and prints: shows plainly when the data is the synthetic demo set."""
    return "DEMO DATA (synthetic)" if dataset_kind(data) == "demo" else "competition data"


def _progress(iterable, desc, enabled=True, total=None):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False)


# --------------------------------------------------------------------------
# Cropping and the train/validation split
# --------------------------------------------------------------------------

def random_crop_pair(clean: np.ndarray, scan: np.ndarray, size: int, rng: np.random.Generator):
    """The same random size x size window from both images of a pair.

    Images smaller than ``size`` are first padded by reflection on the bottom/right, so the
    crop is always size x size and the two stay aligned. Returns new arrays.
    """
    if clean.shape[:2] != scan.shape[:2]:
        raise ValueError(f"pair sizes differ: clean {clean.shape[:2]}, scan {scan.shape[:2]}")
    h, w = clean.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        clean = cv2.copyMakeBorder(clean, 0, ph, 0, pw, cv2.BORDER_REFLECT_101 if min(h, w) > 1 else
                                   cv2.BORDER_REPLICATE)
        scan = cv2.copyMakeBorder(scan, 0, ph, 0, pw, cv2.BORDER_REFLECT_101 if min(h, w) > 1 else
                                  cv2.BORDER_REPLICATE)
        h, w = clean.shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    window = (slice(top, top + size), slice(left, left + size))
    return clean[window].copy(), scan[window].copy()


def page_id(name: str) -> str:
    """The source page of a crop: 'BookOfMaking.00012.02' -> 'BookOfMaking.00012'.

    Names without a title.page.crop pattern are their own page.
    """
    parts = Path(name).stem.split(".") if Path(name).suffix.lower() in IMAGE_EXTS else name.split(".")
    return ".".join(parts[:-1]) if len(parts) >= 3 else ".".join(parts)


def split_names(names, val_fraction=0.1, seed=0) -> dict[str, str]:
    """Deterministic train/validation split by source page: {name: 'train' | 'val'}.

    All crops of one page land on the same side, so validation never sees a page that training
    saw. The result does not depend on the order of ``names``. At least one page goes to each
    side when there are two pages or more.
    """
    names = sorted(set(names))
    pages = sorted({page_id(n) for n in names})
    # Rank pages by a seeded hash: stable across machines and Python versions.
    ranked = sorted(pages, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    n_val = int(round(val_fraction * len(pages)))
    if len(pages) >= 2:
        n_val = min(max(n_val, 1), len(pages) - 1)
    val_pages = set(ranked[:n_val])
    return {n: ("val" if page_id(n) in val_pages else "train") for n in names}


# --------------------------------------------------------------------------
# The metric, exactly as the course scores it
# --------------------------------------------------------------------------

def _check_image(img, what="image"):
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise TypeError(f"{what} must be an RGB uint8 array of shape (H, W, 3), got {got}. "
                        "Convert float images with to_uint8() first.")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8 the way saving a PNG does: clip, scale by 255, round."""
    return np.clip(np.rint(np.asarray(img, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def y_channel(rgb: np.ndarray) -> np.ndarray:
    """Luma Y of an RGB uint8 image exactly as the scorer gets it: OpenCV's COLOR_BGR2YUV channel 0
    (Y = 0.299 R + 0.587 G + 0.114 B, rounded by OpenCV to uint8). Returns a new uint8 (H, W) array."""
    _check_image(rgb)
    return cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2YUV)[..., 0]


def mean_y(rgb: np.ndarray) -> float:
    """The number the leaderboard sees for one image: the mean of its uint8 Y channel."""
    return float(y_channel(rgb).mean())


def competition_score(restored, clean) -> float:
    """Mean over images of |mean Y(restored) - mean Y(clean)|. Lower is better, 0 is perfect.

    ``restored`` and ``clean`` are equal-length sequences of RGB uint8 images (or of mean-Y
    values, as floats).
    """
    a = [x if isinstance(x, (float, int, np.floating)) else mean_y(x) for x in restored]
    b = [x if isinstance(x, (float, int, np.floating)) else mean_y(x) for x in clean]
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same, non-zero number of images, got {len(a)} and {len(b)}")
    return float(np.mean(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def pixel_y_mae(restored: np.ndarray, clean: np.ndarray) -> float:
    """Pixel-wise mean |Y(restored) - Y(clean)| on the 0..255 scale (a diagnostic, not the score)."""
    return float(np.abs(y_channel(restored).astype(np.int16) - y_channel(clean)).mean())


def psnr(restored: np.ndarray, clean: np.ndarray) -> float:
    """PSNR in dB over the RGB uint8 pixels (peak 255); inf for identical images."""
    _check_image(restored), _check_image(clean)
    mse = np.mean((restored.astype(np.float64) - clean.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def image_metrics(restored: np.ndarray, clean: np.ndarray) -> dict:
    """Per-image figures: both mean Ys, their absolute difference, pixel Y MAE and PSNR."""
    my_r, my_c = mean_y(restored), mean_y(clean)
    return {"mean_y": my_r, "mean_y_clean": my_c, "abs_mean_y_err": abs(my_r - my_c),
            "pixel_y_mae": pixel_y_mae(restored, clean), "psnr": psnr(restored, clean)}


def score_folders(pred_dir, clean_dir) -> dict:
    """Competition score of a folder of restored images against the clean ones, matched by name.

    Every restored image needs a clean partner; extra clean images (e.g. the training part of
    the data) are ignored. Files are read with cv2.imread as the course's scorer does.
    """
    pred = _by_stem(list_images(pred_dir), pred_dir)
    clean = _by_stem(list_images(clean_dir), clean_dir)
    if not pred:
        raise DataError(f"no images in {pred_dir}")
    missing = sorted(set(pred) - set(clean))
    if missing:
        raise DataError(f"{len(missing)} restored images have no clean image in {clean_dir}: "
                        f"{_examples(missing)}")
    a = [csv_mean_y(pred[n]) for n in sorted(pred)]
    b = [csv_mean_y(clean[n]) for n in sorted(pred)]
    return {"n_images": len(a), "score": competition_score(a, b)}


# --------------------------------------------------------------------------
# Submission CSV, in the course's exact format
# --------------------------------------------------------------------------

def csv_mean_y(png_path) -> float:
    """Mean Y of a saved image, computed exactly as the course's code does (cv2.imread, BGR2YUV)."""
    bgr = cv2.imread(str(png_path))
    if bgr is None:
        raise DataError(f"cannot read {png_path} with OpenCV; save it again")
    return float(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)[:, :, 0].mean())


def submission_rows(restored_dir) -> list[tuple[str, float]]:
    """(id, mean Y) for every PNG in ``restored_dir``, in sorted file-name order."""
    files = sorted(p for p in Path(restored_dir).glob("*.png"))
    if not files:
        raise DataError(f"no restored PNGs in {restored_dir}; restore the test set first")
    return [(p.stem, csv_mean_y(p)) for p in files]


def validate_submission(rows, expected_ids) -> None:
    """Raise ValueError unless ``rows`` has exactly one finite value in [0, 255] per expected id."""
    ids = [r[0] for r in rows]
    expected = set(expected_ids)
    problems = []
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        problems.append(f"duplicate ids: {_examples(dup)}")
    missing, extra = sorted(expected - set(ids)), sorted(set(ids) - expected)
    if missing:
        problems.append(f"{len(missing)} test images have no row: {_examples(missing)}")
    if extra:
        problems.append(f"{len(extra)} rows are not test images: {_examples(extra)}")
    bad = []
    for i, v in rows:
        try:
            ok = math.isfinite(float(v)) and 0.0 <= float(v) <= 255.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bad.append(f"{i}={v}")
    if bad:
        problems.append(f"values not finite numbers in [0, 255]: {_examples(bad)}")
    if len(rows) != len(expected) and not problems:
        problems.append(f"{len(rows)} rows for {len(expected)} test images")
    if problems:
        raise ValueError("invalid submission: " + "; ".join(problems))


def write_submission(rows, path, expected_ids) -> Path:
    """Validate, then write the CSV atomically: header 'Image File,Y Channel Value', sorted rows."""
    validate_submission(rows, expected_ids)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_HEADER)
            for name, value in sorted(rows, key=lambda r: r[0]):
                w.writerow([name, repr(float(value))])
    return Path(path)


def read_submission(path, expected_ids=None) -> list[tuple[str, float]]:
    """Read a submission CSV back; checks the header, and the rows when ``expected_ids`` is given."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if tuple(header or ()) != CSV_HEADER:
            raise ValueError(f"{path}: header must be {','.join(CSV_HEADER)!r}, got {header}")
        rows = []
        for line in reader:
            if len(line) != 2:
                raise ValueError(f"{path}: row {len(rows) + 2} has {len(line)} fields, expected 2")
            try:
                rows.append((line[0], float(line[1])))
            except ValueError:
                raise ValueError(f"{path}: row {len(rows) + 2} value {line[1]!r} is not a number")
    if expected_ids is not None:
        validate_submission(rows, expected_ids)
    return rows


# --------------------------------------------------------------------------
# Zips: unpack whatever the nesting, safely and idempotently
# --------------------------------------------------------------------------

def check_zip(path) -> int:
    """Raise DataError unless ``path`` is a complete, readable zip; return its number of entries."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DataError(f"{path} is corrupt (entry {bad} fails its CRC check). Delete it and "
                                "download it again.")
            return len(zf.infolist())
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        head = path.read_bytes()[:200].lower() if path.stat().st_size else b""
        hint = (" It looks like a web page (Google Drive quota or sign-in page), not a zip."
                if b"<html" in head or b"<!doctype" in head else "")
        raise DataError(f"{path} is not a complete zip file ({e}).{hint} Delete it and download "
                        "it again, or put a good copy there by hand.") from None


def _zip_image_entries(zf: zipfile.ZipFile, zip_path):
    out = {}
    for info in zf.infolist():
        name = info.filename.replace("\\", "/")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
            raise DataError(f"{zip_path}: entry {info.filename!r} would be written outside the "
                            "target folder; refusing to unpack this zip.")
        if info.is_dir() or not parts or "__MACOSX" in parts or any(p.startswith(".") for p in parts):
            continue
        if Path(parts[-1]).suffix.lower() not in IMAGE_EXTS:
            continue
        if parts[-1] in out:
            raise DataError(f"{zip_path}: two entries are both named {parts[-1]} "
                            f"({out[parts[-1]].filename}, {info.filename}); cannot flatten.")
        out[parts[-1]] = info
    return out


def unpack_zip(zip_path, dest, progress=True) -> dict:
    """Unpack the images of a zip flat into ``dest``, whatever the folder nesting inside.

    Skips __MACOSX, hidden files and non-images; refuses entries that would escape ``dest``
    (checked for every entry before anything is written); skips files already unpacked with the
    right size; writes each file atomically. Returns {'written': n, 'skipped': n}.
    """
    check_zip(zip_path)
    dest = Path(dest)
    with zipfile.ZipFile(zip_path) as zf:
        entries = _zip_image_entries(zf, zip_path)
        if not entries:
            raise DataError(f"{zip_path} holds no images ({', '.join(IMAGE_EXTS)})")
        dest.mkdir(parents=True, exist_ok=True)
        written = skipped = 0
        for fname, info in _progress(sorted(entries.items()), f"unpacking {Path(zip_path).name}",
                                     enabled=progress):
            target = dest / fname
            if target.is_file() and target.stat().st_size == info.file_size:
                skipped += 1
                continue
            with atomic_path(target) as tmp, zf.open(info) as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            written += 1
    return {"written": written, "skipped": skipped}


def check_dataset(data, progress=True, read_images=True) -> dict:
    """Check the unpacked layout: pairing of train/clean with train/scan, readable images of equal
    size, and the test scans. Returns a summary; raises DataError on any problem."""
    data = Path(data)
    pairs = pair_files(data / SPLITS["train_clean"], data / SPLITS["train_scan"])
    test = list_images(data / SPLITS["test_scan"])
    if not test:
        raise DataError(f"no test scans in {data / SPLITS['test_scan']}")
    _by_stem(test, data / SPLITS["test_scan"])
    summary = {"kind": dataset_kind(data), "train_pairs": len(pairs), "test_scans": len(test),
               "extensions": sorted({p.suffix.lower() for pr in pairs for p in (pr.clean, pr.scan)} |
                                    {p.suffix.lower() for p in test})}
    if read_images:
        summary["train_sizes"] = check_pairs(pairs, progress=progress)
        test_sizes = {}
        unreadable = []
        for p in _progress(test, "checking test scans", enabled=progress):
            try:
                s = read_rgb(p).shape[:2]
                test_sizes[s] = test_sizes.get(s, 0) + 1
            except DataError:
                unreadable.append(p)
        if unreadable:
            raise DataError(f"{len(unreadable)} unreadable test scans: {_examples(unreadable)}. "
                            "Delete the data folder and unpack it again.")
        summary["test_sizes"] = test_sizes
    return summary


# --------------------------------------------------------------------------
# Demo data: procedural magazine pages and a print-and-scan simulator
# --------------------------------------------------------------------------

_WORDS = ("raspberry pi make build code sensor robot light motor python game retro pixel "
          "circuit solder board camera screen sound wireless project guide maker hack").split()
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN)


def _smooth_field(rng, h, w, cells, channels=3):
    """Random smooth colour field in [0, 1]: coarse noise upsampled with cubic interpolation."""
    coarse = rng.random((cells, cells, channels)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1).reshape(h, w, channels)


def make_page(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A magazine-like page: coloured or white background, photo-like regions, gradients, shapes
    and blocks of text in several sizes and colours. RGB uint8."""
    bg = np.array([255, 255, 255]) if rng.random() < 0.6 else rng.integers(150, 256, 3)
    page = np.empty((height, width, 3), np.uint8)
    page[:] = bg
    s = min(height, width)
    for _ in range(rng.integers(1, 4)):  # photo-like regions and gradients
        h, w = rng.integers(s // 5, s // 2, 2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        if rng.random() < 0.7:
            photo = _smooth_field(rng, h, w, int(rng.integers(3, 9)))
            photo = photo * 0.85 + 0.15 * _smooth_field(rng, h, w, int(rng.integers(12, 30)))
        else:
            t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
            c0, c1 = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
            photo = np.broadcast_to(c0 * (1 - t) + c1 * t, (h, w, 3))
        page[y:y + h, x:x + w] = (photo * 255).astype(np.uint8)
    for _ in range(rng.integers(1, 5)):  # shapes
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        c = tuple(int(v) for v in rng.integers(0, s, 2))
        if rng.random() < 0.5:
            cv2.circle(page, c, int(rng.integers(s // 20, s // 6)), color, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(page, c, (c[0] + int(rng.integers(5, s // 4)), c[1] + int(rng.integers(3, s // 8))),
                          color, -1)
    for _ in range(rng.integers(2, 5)):  # text blocks
        scale = float(rng.choice([0.3, 0.35, 0.45, 0.6, 0.9, 1.3])) * s / 256
        font = int(rng.choice(_FONTS))
        dark = rng.random() < 0.75
        color = tuple(int(c) for c in (rng.integers(0, 90, 3) if dark else rng.integers(0, 256, 3)))
        thick = max(1, int(round(scale * (2 if rng.random() < 0.3 else 1))))
        line_h = max(6, int(22 * scale))
        x = int(rng.integers(0, max(1, width // 3)))
        y = int(rng.integers(line_h, height))
        for _ in range(rng.integers(1, 8)):
            text = " ".join(rng.choice(_WORDS, rng.integers(2, 7)))
            cv2.putText(page, text, (x, y), font, scale, color, thick, cv2.LINE_AA)
            y += line_h
            if y > height:
                break
    return page


def _halftone(img: np.ndarray, rng, period: float) -> np.ndarray:
    """CMYK halftone: each ink is screened with rotated round dots (classic 15/75/0/45 degrees)."""
    rgb = img.astype(np.float32) / 255.0
    k = 1.0 - rgb.max(axis=2)
    cmy = (1.0 - rgb - k[..., None]) / np.maximum(1.0 - k[..., None], 1e-6)
    inks = [cmy[..., 0], cmy[..., 1], cmy[..., 2], k]
    h, w = k.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    offset = rng.random(2) * period
    out = []
    for ink, angle in zip(inks, (15, 75, 0, 45)):
        a = np.deg2rad(angle + rng.uniform(-2, 2))
        u = (xx * np.cos(a) + yy * np.sin(a) + offset[0]) * (2 * np.pi / period)
        v = (-xx * np.sin(a) + yy * np.cos(a) + offset[1]) * (2 * np.pi / period)
        screen = (np.cos(u) * np.cos(v) + 1) / 2  # 0..1 dot profile
        # A dot is printed where the screen lies under the ink coverage; soft edge ~1 px.
        out.append(np.clip((ink - (1 - screen)) * 4 + 0.5, 0, 1) * 0.9 + ink * 0.1)
    c, m, y, k = out
    res = np.stack([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], axis=2)
    return res


def simulate_scan(clean: np.ndarray, rng: np.random.Generator, back: np.ndarray | None = None,
                  families=("halftone", "bleed", "colour", "texture", "external", "internal"),
                  strength: float = 1.0) -> np.ndarray:
    """Print and scan an RGB uint8 page: returns a new degraded RGB uint8 image.

    Families (COMPETITION.md's taxonomy): 'halftone' CMYK dot screens; 'bleed' the mirrored back
    page (``back``, or a blurred copy of the page itself) showing through; 'colour' tone curve,
    saturation change and colour cast; 'texture' paper grain and wrinkles; 'external' dust dots and
    stains; 'internal' scanner line streaks. Scanner blur, sensor noise and JPEG always follow.
    ``strength`` scales every effect (0 leaves only the scanner).
    """
    _check_image(clean, "clean page")
    h, w = clean.shape[:2]
    s = min(h, w)
    img = clean.astype(np.float32) / 255.0
    if "bleed" in families:
        src = back if back is not None else cv2.GaussianBlur(clean, (0, 0), 3)
        mirrored = cv2.resize(src[:, ::-1], (w, h)).astype(np.float32) / 255.0
        mirrored = cv2.GaussianBlur(mirrored, (0, 0), 1.5)
        alpha = rng.uniform(0.05, 0.15) * strength
        img = img * (1 - alpha + alpha * mirrored)  # the back's ink darkens the paper
    if "halftone" in families and strength > 0:
        ht = _halftone((img * 255).astype(np.uint8), rng, period=rng.uniform(4.0, 7.0))
        img = img * (1 - min(1.0, strength)) + ht * min(1.0, strength)
    if "texture" in families:
        grain = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.8)
        fibres = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigmaX=6, sigmaY=0.7)
        tex = 1 + strength * (0.025 * grain + 0.04 * fibres)
        for _ in range(rng.integers(0, 3)):  # wrinkles: a soft shaded line across the page
            line = np.zeros((h, w), np.float32)
            p0, p1 = rng.integers(0, s, 2), rng.integers(0, s, 2)
            cv2.line(line, (int(p0[0]), 0), (int(p1[0]), h - 1), 1.0, max(1, s // 100))
            tex -= strength * 0.06 * cv2.GaussianBlur(line, (0, 0), max(1.0, s / 60))
        img = img * tex[..., None]
    if "colour" in families:
        gamma = np.exp(rng.uniform(-0.25, 0.25) * strength)
        img = np.clip(img, 0, 1) ** gamma
        grey = img.mean(axis=2, keepdims=True)
        sat = 1 + (rng.choice([rng.uniform(-0.5, -0.15), rng.uniform(0.15, 0.4)])) * strength
        img = grey + (img - grey) * sat
        gain = 1 + rng.uniform(-0.08, 0.08, 3) * strength
        paper = 1 - rng.uniform(0.0, 0.08, 3) * strength  # paper is never pure white in a scan
        lift = rng.uniform(0.0, 0.06) * strength  # blacks fade to grey
        img = lift + (paper - lift) * img * gain
    if "external" in families:
        for _ in range(int(rng.integers(1, 4) * strength)):  # stains
            stain = np.zeros((h, w), np.float32)
            c = rng.integers(0, s, 2)
            cv2.circle(stain, (int(c[0]), int(c[1])), int(rng.integers(s // 30, s // 8)), 1.0, -1)
            stain = cv2.GaussianBlur(stain, (0, 0), s / 40)[..., None]
            tint = np.array([0.85, 0.75, 0.55], np.float32)
            img = img * (1 - 0.3 * stain) + tint * img * 0.3 * stain
        dots = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(5, 30) * strength * (s / 256) ** 2)):  # dust
            c = rng.integers(0, s, 2)
            cv2.circle(dots, (int(c[0]), int(c[1])), int(rng.integers(0, max(1, s // 150) + 1)), 255, -1)
        dust = cv2.GaussianBlur(dots, (0, 0), 0.7).astype(np.float32)[..., None] / 255.0
        img = img * (1 - 0.8 * dust)
    if "internal" in families:
        for _ in range(int(rng.integers(1, 4) * strength)):  # scanner streaks ("laser" lines)
            color = rng.uniform(0.3, 1.0, 3).astype(np.float32)
            a = rng.uniform(0.2, 0.5)
            if rng.random() < 0.7:
                i = int(rng.integers(0, w))
                img[:, i:i + 1] = img[:, i:i + 1] * (1 - a) + color * a
            else:
                i = int(rng.integers(0, h))
                img[i:i + 1] = img[i:i + 1] * (1 - a) + color * a
    img = cv2.GaussianBlur(np.clip(img, 0, 1), (0, 0), rng.uniform(0.5, 1.0))  # scanner optics
    img = img + rng.normal(0, rng.uniform(1.5, 4.0) / 255.0, img.shape).astype(np.float32)  # sensor
    out = to_uint8(img)
    quality = int(rng.integers(80, 96))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


DEMO_TITLES = ("DemoMaking", "DemoHack", "DemoFrame", "DemoMag")


def make_demo_dataset(root, train_pages=40, test_pages=4, crops_per_page=2, crop=256, seed=0,
                      progress=True) -> dict:
    """Generate the synthetic demo set in the competition's layout, deterministically from ``seed``.

    Each page (1.5 x crop on a side) is printed and scanned with simulate_scan, then
    ``crops_per_page`` aligned crops are cut from clean and scan, named title.page.crop like the
    real files. Train files are .png, test scans .tif (both formats occur in the wild). A marker
    file labels the folder as demo data. Existing files are overwritten; nothing else is touched.
    """
    root = Path(root)
    page_size = crop * 3 // 2
    for sub in SPLITS.values():
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).write_text(
        "SYNTHETIC DEMO DATA made by `bash data_download.sh --demo` (helpers.make_demo_dataset).\n"
        "Procedural pages with a simulated print-and-scan; NOT the competition data.\n"
        f"seed={seed} train_pages={train_pages} test_pages={test_pages} crops_per_page={crops_per_page} "
        f"crop={crop}\n")
    jobs = [("train", i) for i in range(train_pages)] + [("test", i) for i in range(test_pages)]
    for split, i in _progress(jobs, "making demo pages", enabled=progress):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
        clean = make_page(rng, page_size, page_size)
        back = make_page(rng, page_size, page_size)
        scan = simulate_scan(clean, rng, back=back)
        title = DEMO_TITLES[i % len(DEMO_TITLES)]
        for c in range(crops_per_page):
            y, x = rng.integers(0, page_size - crop + 1, 2)
            page = i if split == "train" else train_pages + i  # test pages are other pages
            name = f"{title}.{page:05d}.{c + 1:02d}"
            win = (slice(y, y + crop), slice(x, x + crop))
            if split == "train":
                write_png(root / SPLITS["train_clean"] / f"{name}.png", clean[win])
                write_png(root / SPLITS["train_scan"] / f"{name}.png", scan[win])
            else:
                tif = root / SPLITS["test_scan"] / f"{name}.tif"
                ok = cv2.imwrite(str(tif), cv2.cvtColor(scan[win], cv2.COLOR_RGB2BGR))
                if not ok:
                    raise OSError(f"could not write {tif}")
    return {"train_pairs": train_pages * crops_per_page, "test_scans": test_pages * crops_per_page,
            "root": str(root)}


# --------------------------------------------------------------------------
# Models: small enough to read in one screen each; input and output are RGB in [0, 1]
# --------------------------------------------------------------------------

class DnCNN(nn.Module):
    """The slides' DnCNN (Zhang et al., 2017): conv+ReLU, (depth - 2) x conv+BN+ReLU, conv.

    It predicts the residual (scan - clean) of the normalised input; the normalisation
    (x - mean) / std is undone inside forward(), so the output is an image in [0, 1] again and
    inference cannot forget to de-normalise (the slides' defect). 559,363 parameters for RGB.
    """
    pad_multiple = 1

    def __init__(self, channels=3, width=64, depth=17, mean=0.5, std=0.5):
        super().__init__()
        self.mean, self.std = mean, std
        layers = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        z = (x - self.mean) / self.std
        return (z - self.body(z)) * self.std + self.mean


class Identity(nn.Module):
    """Gives back its input: the "do nothing" baseline, scored through the same code path."""
    pad_multiple = 1

    def forward(self, x):
        return x


class LayerNorm2d(nn.Module):
    """Layer norm over the channels of every pixel (as in NAFNet), for (N, C, H, W) tensors."""

    def __init__(self, c):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias)
        return x.permute(0, 3, 1, 2)


class AttnBlock(nn.Module):
    """A NAFNet block: depth-wise conv, a gate, and simplified channel attention (SCA: global
    average pool -> 1x1 conv -> per-channel scale), then a gated feed-forward; both residual."""

    def __init__(self, c):
        super().__init__()
        self.norm1, self.norm2 = LayerNorm2d(c), LayerNorm2d(c)
        self.expand = nn.Conv2d(c, 2 * c, 1)
        self.dw = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        self.project = nn.Conv2d(c, c, 1)
        self.ffn_in, self.ffn_out = nn.Conv2d(c, 2 * c, 1), nn.Conv2d(c, c, 1)
        self.beta, self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1)), nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x):
        a, b = self.dw(self.expand(self.norm1(x))).chunk(2, dim=1)
        y = a * b
        x = x + self.beta * self.project(y * self.sca(y))
        a, b = self.ffn_in(self.norm2(x)).chunk(2, dim=1)
        return x + self.gamma * self.ffn_out(a * b)


class AttentionUNet(nn.Module):
    """A small NAFNet-style U-Net with channel attention, plus a global colour path.

    Local path: encoder levels (``enc_blocks`` blocks each, width doubling), ``mid_blocks`` at the
    bottom, decoder levels with skip connections; it predicts a residual. Global path: the mean
    and standard deviation of the bottom features predict a 3x3 colour matrix and an offset that
    are applied to the whole input image (identity at initialisation), so global fading and
    colour casts (the error the metric sees) are corrected by a few numbers per image. Any input
    size works: restore() pads to ``pad_multiple``.
    """

    def __init__(self, width=32, enc_blocks=(1, 1, 2), mid_blocks=2, dec_blocks=(1, 1, 1), colour_path=True):
        super().__init__()
        enc_blocks, dec_blocks = tuple(enc_blocks), tuple(dec_blocks)
        self.pad_multiple = 2 ** len(enc_blocks)
        self.intro = nn.Conv2d(3, width, 3, padding=1)
        self.encoders, self.downs, self.ups, self.decoders = (nn.ModuleList() for _ in range(4))
        c = width
        for n in enc_blocks:
            self.encoders.append(nn.Sequential(*[AttnBlock(c) for _ in range(n)]))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = nn.Sequential(*[AttnBlock(c) for _ in range(mid_blocks)])
        for n in dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*[AttnBlock(c) for _ in range(n)]))
        self.outro = nn.Conv2d(width, 3, 3, padding=1)
        self.colour = None
        if colour_path:
            bottom = width * 2 ** len(enc_blocks)
            self.colour = nn.Sequential(nn.Linear(2 * bottom + 6, 64), nn.GELU(), nn.Linear(64, 12))
            nn.init.zeros_(self.colour[-1].weight)
            nn.init.zeros_(self.colour[-1].bias)

    def forward(self, x):
        feat, skips = self.intro(x), []
        for enc, down in zip(self.encoders, self.downs):
            feat = enc(feat)
            skips.append(feat)
            feat = down(feat)
        feat = self.middle(feat)
        bottom = feat
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            feat = dec(up(feat) + skip)
        base = x
        if self.colour is not None:
            stats = torch.cat([bottom.mean((2, 3)), bottom.std((2, 3), correction=0),
                               x.mean((2, 3)), x.std((2, 3), correction=0)], 1)
            p = self.colour(stats.float())
            matrix = torch.eye(3, device=x.device) + p[:, :9].view(-1, 3, 3)
            base = torch.einsum("nij,njhw->nihw", matrix.to(x.dtype), x) + p[:, 9:].view(-1, 3, 1, 1).to(x.dtype)
        return base + self.outro(feat)


MODELS = {"dncnn": DnCNN, "attention_unet": AttentionUNet}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name; a checkpoint stores exactly these two things."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_report(model: nn.Module, patch: int, channels: int = 3, limit: int = PARAM_LIMIT) -> int:
    """Print torchsummary's table at the training patch size, on the model's own device, and
    return the parameter count. Raises ValueError when the model has ``limit`` parameters or more.

    The count asserted is the larger of torchsummary's total and the exact sum over
    model.parameters() (torchsummary misses parameters that are not a layer's weight or bias).
    """
    exact = count_parameters(model)
    if exact >= limit:
        raise ValueError(f"{type(model).__name__} has {exact:,} parameters; the rule is fewer than "
                         f"{limit:,}. Make it narrower or shallower.")
    from torchsummary import summary
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        summary(model, (channels, patch, patch), device=device.type)
    model.train(was_training)
    text = buf.getvalue()
    lines = text.splitlines()
    print("\n".join(lines[:8] + ["..."] + lines[-12:]) if len(lines) > 40 else text)
    found = re.search(r"Total params: ([\d,]+)", text)
    reported = int(found.group(1).replace(",", "")) if found else 0
    count = max(exact, reported)
    print(f"parameters: {count:,} (torchsummary {reported:,}, exact {exact:,}); limit {limit:,}")
    if count >= limit:
        raise ValueError(f"{type(model).__name__} has {count:,} parameters; the rule is fewer than {limit:,}.")
    return count


# --------------------------------------------------------------------------
# Restoration: pad to a multiple, run (batched, AMP on CUDA), crop back, round to uint8
# --------------------------------------------------------------------------

def amp_dtype():
    """bf16 on GPUs with native bf16 (compute capability 8.0+: A100, L4, H100); fp16 before that
    (Colab's T4), where torch.cuda.is_bf16_supported() says True only because it can emulate it."""
    return torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16


def autocast(device):
    """Mixed precision on CUDA (bf16 or fp16, see amp_dtype); a no-op context on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype())


def images_to_tensor(images, device) -> torch.Tensor:
    """List of equal-size RGB uint8 arrays -> float tensor (N, 3, H, W) in [0, 1] on ``device``."""
    batch = torch.from_numpy(np.stack(images)).to(device, non_blocking=True)
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_images(batch: torch.Tensor) -> list[np.ndarray]:
    """(N, 3, H, W) float in [0, 1] -> RGB uint8 arrays, rounded exactly like to_uint8()."""
    out = batch.detach().float().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return list(out.permute(0, 2, 3, 1).cpu().numpy())


_DIHEDRAL = [(k, f) for f in (False, True) for k in range(4)]


def _forward_padded(model, x, multiple):
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    return model(x)[..., :h, :w]


@torch.no_grad()
def restore(model: nn.Module, images, device=None, batch_size=8, ensemble=False, progress=False):
    """Restore a list of RGB uint8 images of any size; returns RGB uint8 images of the same sizes.

    Images are padded (reflection) to the model's ``pad_multiple``, run in batches of equal-size
    images with mixed precision on CUDA, cropped back and rounded. ``ensemble=True`` averages the
    8 flips/rotations (x8 self-ensemble).
    """
    device = device or next(model.parameters(), torch.zeros(0)).device
    was_training = model.training
    model.eval()
    multiple = getattr(model, "pad_multiple", 1)
    out = [None] * len(images)
    by_size = {}
    for i, img in enumerate(images):
        by_size.setdefault(img.shape[:2], []).append(i)
    batches = [group[i:i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]
    for idx in _progress(batches, "restoring", enabled=progress):
        # channels-last measured faster on both CPU and GPU for these convolution stacks
        x = images_to_tensor([images[i] for i in idx], device).contiguous(memory_format=torch.channels_last)
        with autocast(device):
            if ensemble:
                y = 0
                for k, flip in _DIHEDRAL:
                    t = torch.rot90(x.flip(-1) if flip else x, k, (-2, -1))
                    r = torch.rot90(_forward_padded(model, t, multiple).float(), -k, (-2, -1))
                    y = y + (r.flip(-1) if flip else r)
                y = y / len(_DIHEDRAL)
            else:
                y = _forward_padded(model, x, multiple)
        for i, img in zip(idx, tensor_to_images(y)):
            out[i] = img
    model.train(was_training)
    return out


def validation_table(models: dict, pairs, device=None):
    """{name: model} -> a pandas table (score, pixel_y_mae, psnr per row) on the whole validation
    images of ``pairs``, through the same evaluate() that training validates with."""
    import pandas as pd
    images = [(read_rgb(p.scan), read_rgb(p.clean)) for p in pairs]
    return pd.DataFrame({name: evaluate(m, images, device) for name, m in models.items()}).T


def evaluate(model, pairs_or_images, device=None, batch_size=8, ensemble=False, progress=False) -> dict:
    """Validation figures on whole images: competition score, pixel Y MAE and PSNR (means).

    ``pairs_or_images`` is a list of (scan, clean) RGB uint8 arrays.
    """
    scans = [s for s, _ in pairs_or_images]
    restored = restore(model, scans, device, batch_size, ensemble, progress)
    per = [image_metrics(r, c) for r, (_, c) in zip(restored, pairs_or_images)]
    return {"score": competition_score([p["mean_y"] for p in per], [p["mean_y_clean"] for p in per]),
            "pixel_y_mae": float(np.mean([p["pixel_y_mae"] for p in per])),
            "psnr": float(np.mean([min(p["psnr"], 100.0) for p in per]))}


# --------------------------------------------------------------------------
# Training data: several aligned crops per decoded pair, seeded per item, in worker processes
# --------------------------------------------------------------------------

def dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations (k in 0..7) of an (H, W, C) array."""
    img = np.rot90(img, k % 4)
    return np.ascontiguousarray(img[:, ::-1] if k >= 4 else img)


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            return int(next(line for line in f if line.startswith("MemAvailable")).split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        return 0


class CropDataset(torch.utils.data.Dataset):
    """Item j of epoch e: one pair, decoded once, cut into ``crops_per_image`` aligned crops.

    An epoch is ``items_per_epoch`` items; pairs are visited in a seeded permutation. Every random
    choice of item j comes from a generator seeded with (seed, epoch, j), so the data does not
    depend on worker count, and training resumed mid-epoch sees exactly the crops it would have.
    ``cache``: decoded pairs kept in memory (filled before workers start, shared with them).
    ``degrade``: optional callable (scan, clean, rng) -> new scan, applied to the input only.
    """

    def __init__(self, pairs, patch, crops_per_image, items_per_epoch, seed=0, augment=True,
                 cache=None, degrade=None):
        self.pairs, self.patch, self.k = list(pairs), patch, crops_per_image
        self.items, self.seed, self.augment = items_per_epoch, seed, augment
        self.cache, self.degrade = cache, degrade
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0):
        self.epoch, self.start = epoch, start

    def __len__(self):
        return self.items - self.start

    def load(self, i):
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        pair = self.pairs[i]
        clean, scan = read_rgb(pair.clean), read_rgb(pair.scan)
        if clean.shape != scan.shape:
            raise DataError(f"pair {pair.name}: clean {clean.shape[:2]} and scan {scan.shape[:2]} differ "
                            "in size; run notebook 01's check again")
        return clean, scan

    def pair_index(self, j):
        n = len(self.pairs)
        key = (self.epoch, j // n)
        if getattr(self, "_perm_key", None) != key:  # one permutation per pass over the pairs
            self._perm_key = key
            self._perm = np.random.default_rng([self.seed, self.epoch, j // n, 7]).permutation(n)
        return int(self._perm[j % n])

    def __getitem__(self, idx):
        j = idx + self.start
        clean, scan = self.load(self.pair_index(j))
        rng = np.random.default_rng([self.seed, self.epoch, j])
        rng_degrade = np.random.default_rng([self.seed, self.epoch, j, 1])  # crops stay the same with or without
        cleans, scans = [], []
        for _ in range(self.k):
            c, s = random_crop_pair(clean, scan, self.patch, rng)
            if self.augment:
                k = int(rng.integers(0, 8))
                c, s = dihedral(c, k), dihedral(s, k)
            if self.degrade is not None:
                s = self.degrade(s, c, rng_degrade)
            cleans.append(c)
            scans.append(s)
        return torch.from_numpy(np.stack(scans)), torch.from_numpy(np.stack(cleans))


def _collate(items):
    return torch.cat([s for s, _ in items]), torch.cat([c for _, c in items])


def build_cache(pairs, max_fraction=0.4, progress=True):
    """Decode every pair into memory when that takes under ``max_fraction`` of the free RAM."""
    if not pairs:
        return None
    h, w = read_rgb(pairs[0].clean).shape[:2]
    need = len(pairs) * h * w * 3 * 2
    if need > max_fraction * _available_ram():
        print(f"decoded cache skipped: {need / 2**30:.1f} GiB would not fit in memory; decoding per item")
        return None
    return {i: (read_rgb(p.clean), read_rgb(p.scan))
            for i, p in _progress(list(enumerate(pairs)), "decoding into memory", enabled=progress)}


def default_workers(device) -> int:
    """Loader processes: none on a CPU (the model needs every core, and the decoded cache makes
    loading cheap); beside a GPU one per CPU core, at most 4."""
    return 0 if torch.device(device).type == "cpu" else min(4, os.cpu_count() or 1)


def make_loader(dataset, batch_items, workers, device):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_items, shuffle=False, num_workers=workers, collate_fn=_collate,
        pin_memory=device.type == "cuda", persistent_workers=False, drop_last=True,
        prefetch_factor=4 if workers else None)


# --------------------------------------------------------------------------
# Checkpoints: one format, written atomically, loaded with weights_only=True
# --------------------------------------------------------------------------

CHECKPOINT_FORMAT = "descanning-checkpoint-v1"


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt or not one of ours; the message says what to do."""


def save_checkpoint(state: dict, path) -> Path:
    """torch.save through a temporary file: an interruption never replaces a good checkpoint."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load one of our checkpoints safely (weights_only=True) or raise CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}. Run notebook 03 (DnCNN) or 04 (attention) "
                              "first, or set DESCAN_CHECKPOINT to an existing file.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint ({type(e).__name__}: "
                              f"{str(e)[:200]}). Move it aside and train again (nothing was deleted).") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        hint = " It looks like a bare state_dict." if isinstance(state, dict) and state and all(
            isinstance(v, torch.Tensor) for v in state.values()) else ""
        raise CheckpointError(f"{path} is not a descanning checkpoint (no '{CHECKPOINT_FORMAT}' "
                              f"marker).{hint} Use a file written by notebook 03 or 04.")
    return state


def model_from_checkpoint(path_or_state, device="cpu") -> nn.Module:
    """Rebuild the model from the file alone (name + constructor arguments + weights), in eval mode."""
    state = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state)
    if state.get("model_name") not in MODELS:
        raise CheckpointError(f"checkpoint names model {state.get('model_name')!r}, which this version "
                              f"of helpers.py does not know (known: {', '.join(sorted(MODELS))}).")
    model = build_model(state["model_name"], **state["model_kwargs"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                   *np_state[2:]],
            "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])


# --------------------------------------------------------------------------
# The training engine shared by notebooks 03 and 04
# --------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Every training knob. The defaults are the slides' DnCNN recipe."""
    epochs: int = 10
    crops_per_epoch: int = 64 * 400      # an epoch is a fixed number of crops, not a pass over images
    batch_size: int = 64
    patch: int = 128
    crops_per_image: int = 8             # crops cut from each decoded pair
    loss: str = "mse"                    # "mse" or "l1"
    mean_y_weight: float = 0.0           # extra loss on each image's mean Y (what the metric sees)
    optimizer: str = "adam"              # "adam" or "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"           # "constant" or "cosine" (with warm-up)
    warmup_steps: int = 0
    grad_clip: float = 0.0               # 0 = off
    ema_decay: float = 0.0               # 0 = off; else validate and save the averaged weights
    augment: bool = True                 # flips and 90-degree rotations
    degrade_prob: float = 0.0            # degradation augmentation probability
    budget_minutes: float = 0.0          # wall-clock training budget over the whole run; 0 = none
    checkpoint_minutes: float = 2.0      # also save `last` this often inside an epoch
    val_batch_size: int = 8
    workers: int = -1                    # -1 = automatic: none on a CPU, up to 4 beside a GPU
    seed: int = 0


# Fields that must match to resume a run; the others (epochs, budget, ...) may change between sessions.
_RESUME_KEYS = ("crops_per_epoch", "batch_size", "patch", "crops_per_image", "seed")


def _lr_factor(cfg: TrainConfig, step: int, total_steps: int, seconds: float) -> float:
    if cfg.schedule == "constant":
        return 1.0
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    progress = step / max(1, total_steps)
    if cfg.budget_minutes > 0:  # with a budget, the schedule ends when the budget does
        progress = max(progress, seconds / (cfg.budget_minutes * 60))
    return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def degradation_augment(prob: float):
    """Input-only augmentation: with probability ``prob`` degrade the scan crop further with a random
    subset of the simulator's families (never the target). Returns a callable for CropDataset."""
    families = ("bleed", "colour", "texture", "external", "internal")

    def degrade(scan, clean, rng):
        if rng.random() >= prob:
            return scan
        chosen = tuple(f for f in families if rng.random() < 0.5) or ("colour",)
        return simulate_scan(scan, rng, families=chosen, strength=float(rng.uniform(0.3, 1.0)))
    return degrade


def perceptual_loss(weight: float, device="cpu"):
    """``weight`` x L1 distance between VGG16 feature maps (up to relu2_2) of output and target.

    The VGG16 weights are ImageNet classification weights (a loss network, not a restoration
    model). They download once; when they cannot be loaded (offline), this prints one message and
    returns None, and training goes on without the term.
    """
    try:
        from torchvision.models import VGG16_Weights, vgg16
        vgg = vgg16(weights=VGG16_Weights.IMAGENET1K_V1).features[:9]
    except Exception as e:  # no network, no cache, or a broken download
        print(f"Perceptual loss skipped: the VGG16 weights could not be loaded ({type(e).__name__}: "
              f"{str(e)[:120]}). Training goes on with the other loss terms.")
        return None
    vgg = vgg.to(device).eval().requires_grad_(False)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def loss(out, target):
        return weight * F.l1_loss(vgg((out - mean) / std), vgg((target - mean) / std))
    return loss


class Trainer:
    """Train a registered model with validation, resumable checkpoints, AMP and a budget.

    Files in ``run_dir``: last.pt (full state, for resuming), best.pt (the weights with the best
    validation competition score), history.csv and history.png.
    """

    def __init__(self, model_name, model_kwargs, train_pairs, val_pairs, run_dir, cfg: TrainConfig,
                 device=None, data_kind="real", extra_loss=None):
        self.name, self.kwargs, self.cfg = model_name, dict(model_kwargs), cfg
        self.train_pairs, self.val_pairs = list(train_pairs), list(val_pairs)
        if not self.train_pairs or not self.val_pairs:
            raise DataError(f"need training and validation pairs, got {len(self.train_pairs)} and "
                            f"{len(self.val_pairs)}; check the split in notebook 01")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.data_kind, self.extra_loss = data_kind, extra_loss
        self.k = max(1, min(cfg.crops_per_image, cfg.batch_size))
        self.batch_items = max(1, cfg.batch_size // self.k)
        self.items_per_epoch = max(self.batch_items, cfg.crops_per_epoch // self.k)
        self.steps_per_epoch = self.items_per_epoch // self.batch_items
        seed_everything(cfg.seed)
        self.model = build_model(model_name, **model_kwargs).to(self.device)
        self.ema = None
        if cfg.ema_decay > 0:
            self.ema = build_model(model_name, **model_kwargs).to(self.device)
            self.ema.load_state_dict(self.model.state_dict())
            self.ema.requires_grad_(False)
        self.model = self.model.to(memory_format=torch.channels_last)  # faster on CPU and GPU alike
        opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.amp = self.device.type == "cuda"
        fp16 = self.amp and amp_dtype() == torch.float16  # fp16 needs loss scaling, bf16 does not
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.epoch = self.item = self.step = 0
        self.seconds, self.history = 0.0, []
        self._val_images = None

    # ---- state -------------------------------------------------------------
    def state(self) -> dict:
        return {"kind": "last", "model_name": self.name, "model_kwargs": self.kwargs,
                "model": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "item": self.item, "step": self.step, "seconds": self.seconds,
                "history": self.history, "config": asdict(self.cfg),
                "data_kind": self.data_kind, "data_id": self.data_id(), "rng": _rng_state()}

    @property
    def best_score(self) -> float:
        """The best validation competition score so far (inf before the first validation)."""
        return min((row["val_score"] for row in self.history), default=float("inf"))

    def data_id(self) -> str:
        """A fingerprint of the split: resuming on other training or validation pairs is refused."""
        names = [p.name for p in self.train_pairs] + ["|"] + [p.name for p in self.val_pairs]
        return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]

    def save_last(self):
        save_checkpoint(self.state(), self.run_dir / "last.pt")

    def try_resume(self) -> bool:
        path = self.run_dir / "last.pt"
        if not path.exists():
            return False
        state = load_checkpoint(path)
        old = state.get("config", {})
        changed = [k for k in _RESUME_KEYS if old.get(k) != getattr(self.cfg, k)]
        if state.get("data_id") != self.data_id():
            changed.append("training/validation pairs")
        if state.get("model_name") != self.name or state.get("model_kwargs") != self.kwargs or changed:
            raise CheckpointError(
                f"{path} belongs to a different run (model {state.get('model_name')} {state.get('model_kwargs')}, "
                f"settings {', '.join(changed) or 'same'} differ). Use another run name, or move that folder "
                "aside to start over.")
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.item, self.step = state["epoch"], state["item"], state["step"]
        self.seconds = state["seconds"]
        self.history = list(state["history"])
        _set_rng_state(state["rng"])
        print(f"Resuming {path}: epoch {self.epoch + 1}, step {self.step}, "
              f"{self.seconds / 60:.1f} min trained so far, best validation score {self.best_score:.4f}")
        return True

    # ---- pieces ---------------------------------------------------------------
    def val_images(self):
        if self._val_images is None:
            self._val_images = [(read_rgb(p.scan), read_rgb(p.clean)) for p in
                                _progress(self.val_pairs, "loading validation", enabled=True)]
        return self._val_images

    def validate(self) -> dict:
        model = self.ema if self.ema is not None else self.model
        return evaluate(model, self.val_images(), self.device, self.cfg.val_batch_size)

    def loss_fn(self, out, target):
        cfg = self.cfg
        out = out.float()
        loss = F.mse_loss(out, target) if cfg.loss == "mse" else F.l1_loss(out, target)
        if cfg.mean_y_weight > 0:
            w = torch.tensor([0.299, 0.587, 0.114], device=out.device).view(1, 3, 1, 1)
            loss = loss + cfg.mean_y_weight * ((out - target) * w).sum(1).mean((1, 2)).abs().mean()
        if self.extra_loss is not None:
            loss = loss + self.extra_loss(out, target)
        return loss

    @torch.no_grad()
    def _update_ema(self):
        """Average the weights; the decay warms up as (1 + step) / (10 + step), so early on the
        average is not dominated by the random initial weights."""
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.state_dict().values(), self.model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(p, 1 - decay)
            else:
                e.copy_(p)

    def _budget_left(self) -> bool:
        return self.cfg.budget_minutes <= 0 or self.seconds < self.cfg.budget_minutes * 60

    def _done(self) -> bool:
        return self.epoch >= self.cfg.epochs or not self._budget_left()

    # ---- the loop ---------------------------------------------------------------
    def fit(self, on_step=None) -> dict:
        """Train until the epochs or the budget are used up, resuming from last.pt when present.

        ``on_step(step)`` is called after every optimiser step (tests use it to simulate a crash).
        Returns {'best_score', 'epochs', 'steps', 'minutes', 'best_path'}.
        """
        cfg = self.cfg
        self.try_resume()
        if self._done():
            print(f"Nothing to train: {self.run_dir / 'last.pt'} has finished "
                  f"{'its epochs' if self.epoch >= cfg.epochs else 'its time budget'}. Raise "
                  "EPOCHS / DESCAN_TRAIN_MINUTES to continue it, or move the folder aside to start over.")
            return self._result()
        workers = cfg.workers if cfg.workers >= 0 else default_workers(self.device)
        cache = build_cache(self.train_pairs)  # None (decode per item) when it would not fit in memory
        degrade = degradation_augment(cfg.degrade_prob) if cfg.degrade_prob > 0 else None
        dataset = CropDataset(self.train_pairs, cfg.patch, self.k, self.items_per_epoch, cfg.seed,
                              cfg.augment, cache, degrade)
        total_steps = cfg.epochs * self.steps_per_epoch
        last_save = time.time()
        try:
            while not self._done():
                dataset.set_epoch(self.epoch, self.item)
                loader = make_loader(dataset, self.batch_items, workers, self.device)
                self.model.train()
                loss_sum, n_loss = torch.zeros((), device=self.device), 0
                bar = _progress(loader, f"epoch {self.epoch + 1}/{cfg.epochs}",
                                total=self.steps_per_epoch - self.item // self.batch_items)
                t_epoch, crops = time.time(), 0
                t_last = time.time()
                for scan, clean in bar:
                    x = scan.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
                    y = clean.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
                    x = x.contiguous(memory_format=torch.channels_last)
                    for g in self.optimizer.param_groups:
                        g["lr"] = cfg.lr * _lr_factor(cfg, self.step, total_steps, self.seconds)
                    with autocast(self.device):
                        out = self.model(x)
                    loss = self.loss_fn(out, y)
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                    if cfg.grad_clip > 0:
                        self.scaler.unscale_(self.optimizer)
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    if self.ema is not None:
                        self._update_ema()
                    loss_sum += loss.detach()
                    n_loss += 1
                    crops += x.shape[0]
                    self.step += 1
                    self.item += self.batch_items
                    now = time.time()
                    self.seconds += now - t_last
                    t_last = now
                    if self.step % 20 == 0 and hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss=f"{loss_sum.item() / n_loss:.4f}",
                                        crops_s=f"{crops / (now - t_epoch):.0f}")
                    if on_step is not None:
                        on_step(self.step)
                    if now - last_save >= cfg.checkpoint_minutes * 60:
                        self.save_last()
                        last_save = time.time()
                    if not self._budget_left():
                        break
                epoch_finished = self.item >= self.steps_per_epoch * self.batch_items
                self._end_epoch(loss_sum.item() / max(1, n_loss), crops / max(1e-9, time.time() - t_epoch),
                                epoch_finished)
                last_save = time.time()
        except KeyboardInterrupt:
            self.save_last()
            print(f"\nInterrupted: saved {self.run_dir / 'last.pt'} at step {self.step}. "
                  "Run this cell again to resume.")
            raise
        return self._result()

    def _end_epoch(self, train_loss, crops_per_s, finished):
        val = self.validate()
        row = {"epoch": self.epoch + 1, "step": self.step, "minutes": round(self.seconds / 60, 3),
               "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
               "val_score": val["score"], "val_pixel_y_mae": val["pixel_y_mae"], "val_psnr": val["psnr"],
               "crops_per_s": crops_per_s}
        improved = val["score"] < self.best_score
        self.history.append(row)
        if improved:
            model = self.ema if self.ema is not None else self.model
            save_checkpoint({"kind": "best", "model_name": self.name, "model_kwargs": self.kwargs,
                             "model": {k: v.contiguous() for k, v in model.state_dict().items()},
                             "val": val, "epoch": self.epoch + 1, "step": self.step,
                             "config": asdict(self.cfg), "data_kind": self.data_kind},
                            self.run_dir / "best.pt")
        if finished:
            self.epoch, self.item = self.epoch + 1, 0
        self.save_last()
        self.write_history()
        print(f"epoch {row['epoch']}: train loss {train_loss:.5f} | val score {val['score']:.4f} "
              f"| pixel Y MAE {val['pixel_y_mae']:.3f} | PSNR {val['psnr']:.2f} dB"
              f"{' | saved best.pt' if improved else ''}")

    def write_history(self):
        import pandas as pd
        df = pd.DataFrame(self.history)
        with atomic_path(self.run_dir / "history.csv") as tmp:
            df.to_csv(tmp, index=False)
        plot_history(df, self.run_dir / "history.png", title=f"{self.name} ({self.data_kind} data)")

    def _result(self) -> dict:
        return {"best_score": self.best_score, "epochs": self.epoch, "steps": self.step,
                "minutes": self.seconds / 60, "best_path": self.run_dir / "best.pt",
                "history": self.history}


def plot_history(history, path=None, title=""):
    """Training loss and validation metrics per epoch; saved to ``path`` when given."""
    import matplotlib.pyplot as plt
    import pandas as pd
    df = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, col, label in zip(axes, ("train_loss", "val_score", "val_psnr"),
                              ("training loss", "validation score (lower is better)", "validation PSNR (dB)")):
        if len(df):
            ax.plot(df["epoch"], df[col], marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return fig


# --------------------------------------------------------------------------
# Notebook data helpers: fetch the data, the manifest (the fixed split), per-image statistics
# --------------------------------------------------------------------------

MANIFEST_COLUMNS = ("name", "page", "clean", "scan", "split")


def has_data(data) -> bool:
    """True when ``data`` holds images in train/clean, train/scan and test/scan (not a full check)."""
    data = Path(data)
    return all((data / sub).is_dir() and bool(list_images(data / sub))
               for sub in SPLITS.values())


def download_data(data, demo=False) -> None:
    """Run ``bash data_download.sh [--demo] DATA``, showing its output as it comes.

    The script skips what is already complete. Raises DataError when it fails; its own message
    (printed above) says what to do.
    """
    import subprocess
    script = ROOT / "data_download.sh"
    if not script.is_file():
        raise DataError(f"{script} is missing; get the whole repository (git clone) and try again.")
    cmd = ["bash", str(script)] + (["--demo"] if demo else []) + [str(data)]
    env = dict(os.environ, PYTHON=sys.executable)  # the script runs helpers.py with this Python
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    while chunk := proc.stdout.read1(4096):
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()
    if proc.wait() != 0:
        raise DataError(f"`{' '.join(cmd)}` failed (exit status {proc.returncode}); "
                        "its message above says why and what to do.")


def warn_if_demo(data) -> str:
    """Return data_label(data); outside smoke mode, print a loud warning when the data is the demo set."""
    if dataset_kind(data) == "demo" and not smoke_mode():
        bar = "!" * 78
        print(f"{bar}\n!! WARNING: {data} holds the SYNTHETIC DEMO DATA, not the competition data.\n"
              "!! Every number and figure below describes the demo set. For the real data run\n"
              f"!! notebook 01 in full mode (or `bash data_download.sh`) and point DESCAN_DATA at it.\n{bar}")
    return data_label(data)


def title_of(name: str) -> str:
    """The magazine title of an image name: 'BookOfMaking.00012.02' -> 'BookOfMaking'."""
    return name.split(".")[0]


def make_manifest(data, val_fraction=0.1, seed=0):
    """The training pairs as a pandas DataFrame with columns MANIFEST_COLUMNS: name, page (page_id),
    clean and scan paths relative to ``data`` (POSIX style), and split ('train' | 'val', by page,
    from split_names). Sorted by name."""
    import pandas as pd
    data = Path(data)
    pairs = pair_files(data / SPLITS["train_clean"], data / SPLITS["train_scan"])
    split = split_names([p.name for p in pairs], val_fraction=val_fraction, seed=seed)
    return pd.DataFrame([{"name": p.name, "page": page_id(p.name),
                          "clean": p.clean.relative_to(data).as_posix(),
                          "scan": p.scan.relative_to(data).as_posix(), "split": split[p.name]}
                         for p in pairs], columns=list(MANIFEST_COLUMNS))


def read_manifest(path):
    """Read the manifest CSV written by notebook 01; DataError when it is missing or malformed."""
    import pandas as pd
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no manifest at {path}. Run notebook 01 first (it writes the manifest), "
                        "or set DESCAN_WORKSPACE to the workspace that holds it.")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing or df.empty or not set(df["split"]) <= {"train", "val"}:
        raise DataError(f"{path} is not a manifest made by notebook 01 (missing columns {missing}, "
                        "no rows, or unknown split names). Run notebook 01 again.")
    return df


def manifest_pairs(manifest, data, split=None) -> list[Pair]:
    """The Pairs of a manifest (optionally of one split), with paths under ``data``.

    Raises DataError naming examples when files are missing (data moved or not downloaded)."""
    data = Path(data)
    rows = manifest if split is None else manifest[manifest["split"] == split]
    pairs = [Pair(r.name, data / r.clean, data / r.scan) for r in rows.itertuples(index=False)]
    missing = [p.clean for p in pairs if not p.clean.is_file()] + [p.scan for p in pairs if not p.scan.is_file()]
    if missing:
        raise DataError(f"{len(missing)} files of the manifest are not in {data}: {_examples(missing)}. "
                        "Run notebook 01 again (it downloads the data and rewrites the manifest).")
    return pairs


def load_split(data, workspace):
    """(train_pairs, val_pairs) from the manifest that notebook 01 saved in the workspace.

    In smoke mode a missing demo set and manifest are made on the spot, so any notebook runs alone.
    """
    manifest_path = Path(workspace) / "manifest.csv"
    if smoke_mode() and not manifest_path.is_file():
        if not has_data(data):
            print(f"smoke mode: generating the DEMO DATA in {data}")
            make_demo_dataset(data, progress=False)
        manifest = make_manifest(data)
        with atomic_path(manifest_path) as tmp:
            manifest.to_csv(tmp, index=False)
    manifest = read_manifest(manifest_path)
    return manifest_pairs(manifest, data, "train"), manifest_pairs(manifest, data, "val")


def sample_items(items, n: int, seed: int = 0) -> list:
    """A deterministic random subset of ``n`` items, kept in their original order; n <= 0 or
    n >= len(items) returns all of them."""
    items = list(items)
    if n <= 0 or n >= len(items):
        return items
    keep = np.random.default_rng(seed).choice(len(items), size=n, replace=False)
    return [items[i] for i in sorted(keep)]


def pair_stats(pairs, progress=True):
    """Per-pair statistics of the scans against the clean images, as a pandas DataFrame: name,
    title, mean_y_clean, mean_y_scan, abs_mean_y_diff (what the metric sees), pixel_y_mae, psnr."""
    import pandas as pd
    rows = []
    for p in _progress(pairs, "per-image statistics", enabled=progress):
        m = image_metrics(read_rgb(p.scan), read_rgb(p.clean))
        rows.append({"name": p.name, "title": title_of(p.name), "mean_y_clean": m["mean_y_clean"],
                     "mean_y_scan": m["mean_y"], "abs_mean_y_diff": m["abs_mean_y_err"],
                     "pixel_y_mae": m["pixel_y_mae"], "psnr": m["psnr"]})
    return pd.DataFrame(rows, columns=["name", "title", "mean_y_clean", "mean_y_scan", "abs_mean_y_diff",
                                       "pixel_y_mae", "psnr"])


# --------------------------------------------------------------------------
# Submission: pick a checkpoint, restore a folder to PNGs, write the CSV, a local leaderboard
# --------------------------------------------------------------------------

def env_flag(name: str, default: bool) -> bool:
    """A yes/no switch from the environment: 1/true/yes/on or 0/false/no/off; unset or empty = default."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={os.environ[name]!r} is not a switch; use 1 or 0")


_RUN_FIRST = "Run notebook 03 (DnCNN) or 04 (attention) first, or set DESCAN_CHECKPOINT to a checkpoint file."


def _checkpoint_entry(path) -> dict:
    """What find_checkpoints reports about one file; 'error' says why it cannot be used (else None)."""
    path = Path(path)
    entry = {"run": path.parent.name, "path": path, "model_name": None, "data_kind": None,
             "val_score": math.inf, "epoch": None, "error": None}
    try:
        state = load_checkpoint(path)
    except CheckpointError as e:
        entry["error"] = str(e)
        return entry
    score = (state.get("val") or {}).get("score", math.inf)
    entry.update(model_name=state.get("model_name"), data_kind=state.get("data_kind"), epoch=state.get("epoch"),
                 val_score=float(score) if score is not None and math.isfinite(float(score)) else math.inf)
    if entry["model_name"] not in MODELS:
        entry["error"] = (f"{path} names model {entry['model_name']!r}, which this version of helpers.py does "
                          f"not know (known: {', '.join(sorted(MODELS))}). Update helpers.py or train again.")
    return entry


def find_checkpoints(workspace) -> list[dict]:
    """Every WORKSPACE/runs/*/best.pt, best recorded validation score first.

    One dict per file: run (its folder's name), path, model_name, data_kind ('demo' | 'real'),
    val_score (the validation competition score saved with it, ``state["val"]["score"]``; inf when
    it has none), epoch, and error: None, or why the file cannot be used (unreadable, unknown
    model). Unusable files come last and are never chosen automatically.
    """
    entries = [_checkpoint_entry(p) for p in sorted(Path(workspace).glob("runs/*/best.pt"))]
    return sorted(entries, key=lambda e: (e["error"] is not None, e["val_score"], e["run"]))


def choose_checkpoint(workspace, wanted=None) -> dict:
    """The checkpoint to submit with: a find_checkpoints entry plus 'reason' (why this one).

    ``wanted`` (notebook 05 passes $DESCAN_CHECKPOINT): None or "" = the lowest recorded validation
    score under WORKSPACE/runs; a path to a .pt file or to a run folder holding best.pt; or a name,
    matched first against run folders ('dncnn' -> runs/dncnn/best.pt), then against the model
    name saved in the checkpoints (the best score among them). Raises CheckpointError saying what
    to run when nothing fits.
    """
    runs = Path(workspace) / "runs"
    wanted = str(wanted).strip() if wanted is not None else ""
    found = find_checkpoints(workspace)
    usable = [e for e in found if e["error"] is None]
    if not wanted:
        if not usable:
            broken = "".join(f" Unusable: {e['error']}" for e in found)
            raise CheckpointError(f"no usable checkpoint under {runs}/*/best.pt.{broken} {_RUN_FIRST}")
        reason = (f"lowest recorded validation score of the {len(usable)} checkpoints under {runs}"
                  if len(usable) > 1 else f"the only checkpoint under {runs}")
        return {**usable[0], "reason": reason}
    path = Path(wanted).expanduser()
    if "/" in wanted or os.sep in wanted or path.suffix in (".pt", ".pth") or path.is_file():
        entry = _checkpoint_entry(path / "best.pt" if path.is_dir() else path)
        if entry["error"]:
            raise CheckpointError(entry["error"])
        return {**entry, "reason": f"asked for by path (DESCAN_CHECKPOINT={wanted})"}
    matches = [e for e in found if e["run"] == wanted] or [e for e in found if e["model_name"] == wanted]
    if not matches:
        have = ", ".join(f"{e['run']} ({e['model_name']})" for e in found) or "none"
        raise CheckpointError(f"no checkpoint named {wanted!r} under {runs} (run folders and model names "
                              f"found: {have}). {_RUN_FIRST}")
    good = [e for e in matches if e["error"] is None]
    if not good:
        raise CheckpointError(matches[0]["error"])
    how = "run folder" if good[0]["run"] == wanted else "model name"
    return {**good[0], "reason": f"asked for by {how} (DESCAN_CHECKPOINT={wanted})"}


def restore_folder(model, scan_paths, out_dir, device=None, batch_size=8, ensemble=False, progress=True,
                   chunk=None) -> list[Path]:
    """Restore every scan at full resolution and save out_dir/<stem>.png, as the scorer expects.

    The PNG's name is the scan's file name with its extension replaced by ``.png``
    ('BookOfMaking.00012.02.tif' -> 'BookOfMaking.00012.02.png'); images of any size keep it.
    Scans are read, restored by restore() (x8 self-ensemble when ``ensemble``) and written
    atomically ``chunk`` images at a time (default: 4 batches), so memory stays bounded.
    ``out_dir`` belongs to this function: the PNGs already in it are deleted first, so it never
    mixes two runs, and an interrupted run leaves missing files that make_submission refuses.
    Returns the written paths, in the order of ``scan_paths``.
    """
    scan_paths = [Path(p) for p in scan_paths]
    out_dir = Path(out_dir)
    if not scan_paths:
        raise DataError("no scans to restore")
    _by_stem(scan_paths, "the scans to restore")  # two scans may not share a name
    if any(p.parent.resolve() == out_dir.resolve() for p in scan_paths):
        raise DataError(f"{out_dir} holds the scans themselves; restore into another folder")
    targets = [out_dir / f"{p.stem}.png" for p in scan_paths]
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    chunk = max(1, chunk or 4 * batch_size)
    bar = None
    if progress:
        with contextlib.suppress(ImportError):
            from tqdm.auto import tqdm
            bar = tqdm(total=len(scan_paths), desc=f"restoring{' (x8)' if ensemble else ''}", unit="img",
                       leave=False)
    for i in range(0, len(scan_paths), chunk):
        images = [read_rgb(p) for p in scan_paths[i:i + chunk]]
        for target, img in zip(targets[i:i + chunk], restore(model, images, device, batch_size, ensemble)):
            write_png(target, img)
        if bar is not None:
            bar.update(len(images))
    if bar is not None:
        bar.close()
    return targets


def make_submission(restored_dir, test_scan_dir, csv_path):
    """Write the submission CSV from the restored PNGs and return it as a pandas DataFrame.

    Rows come from the saved uint8 PNGs exactly as the course's scorer computes them
    (submission_rows: cv2.imread, COLOR_BGR2YUV, mean of channel 0); they must be one per test
    scan (ids = the test files' names without extension), finite and in [0, 255], else ValueError
    and no file is written. The CSV replaces any previous one atomically and is read back.
    """
    import pandas as pd
    test = list_images(test_scan_dir)
    if not test:
        raise DataError(f"no test scans in {test_scan_dir}; run notebook 01 first")
    expected = sorted(_by_stem(test, test_scan_dir))
    write_submission(submission_rows(restored_dir), csv_path, expected)
    return pd.DataFrame(read_submission(csv_path, expected), columns=list(CSV_HEADER))


def score_restored(restored_dir, pairs) -> dict:
    """Score restored validation PNGs against the clean images of ``pairs``, as the leaderboard would.

    Each PNG's value is its CSV row (submission_rows); the clean image's is computed the same way
    (csv_mean_y), in sorted name order like ``python helpers.py score``, so both give the same
    number. The folder must hold exactly one PNG per pair (ValueError otherwise). Also returns
    the pixel Y MAE and PSNR of the PNGs (diagnostics the leaderboard ignores).
    """
    rows = submission_rows(restored_dir)
    by_name = {p.name: p for p in pairs}
    validate_submission(rows, list(by_name))
    names = sorted(by_name)
    pred = dict(rows)
    per = [(read_rgb(Path(restored_dir) / f"{n}.png"), read_rgb(by_name[n].clean)) for n in names]
    return {"images": len(names),
            "score": competition_score([pred[n] for n in names], [csv_mean_y(by_name[n].clean) for n in names]),
            "pixel_y_mae": float(np.mean([pixel_y_mae(r, c) for r, c in per])),
            "psnr": float(np.mean([min(psnr(r, c), 100.0) for r, c in per]))}


def local_leaderboard(models, pairs, out_root, device=None, batch_size=8, ensembles=(False, True),
                      progress=True):
    """A validation estimate of the leaderboard, through the submission's own code path.

    For every {entry name: model} and every value in ``ensembles``: restore_folder writes the
    validation scans as PNGs to out_root/<entry>[_x8]/, and score_restored scores those files
    against the clean images. Models without parameters (the "do nothing" Identity) get no x8
    row: flipping an identity changes nothing. Returns a pandas DataFrame, best score first, with
    columns entry, ensemble, images, score, pixel_y_mae, psnr, seconds, folder.
    """
    import pandas as pd
    scans = [p.scan for p in pairs]
    rows = []
    for name, model in models.items():
        for ens in ensembles:
            if ens and next(model.parameters(), None) is None:
                continue
            folder = Path(out_root) / (re.sub(r"[^\w.-]+", "_", name) + ("_x8" if ens else ""))
            t0 = time.time()
            restore_folder(model, scans, folder, device, batch_size, ens, progress)
            seconds = time.time() - t0
            rows.append({"entry": name, "ensemble": bool(ens), **score_restored(folder, pairs),
                         "seconds": round(seconds, 1), "folder": folder})
    return pd.DataFrame(rows).sort_values(["score", "entry"], kind="stable").reset_index(drop=True)


def plot_leaderboard(board, baseline="do nothing", title=None):
    """Horizontal bars of a local_leaderboard table (best at the top), the ``baseline`` entry in grey
    with a dashed line at its score. Returns the figure."""
    import matplotlib.pyplot as plt
    board = board.sort_values("score", ascending=False, kind="stable")
    labels = [f"{e} (x8)" if x else e for e, x in zip(board["entry"], board["ensemble"])]
    colours = ["0.6" if e == baseline else ("tab:orange" if x else "tab:blue")
               for e, x in zip(board["entry"], board["ensemble"])]
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.5 * len(board)))
    ax.barh(labels, board["score"], color=colours)
    for y, v in enumerate(board["score"]):
        ax.text(v, y, f" {v:.4f}", va="center", fontsize=9)
    base = board.loc[board["entry"] == baseline, "score"]
    if len(base):
        ax.axvline(float(base.iloc[0]), color="0.4", ls="--", lw=1)
    ax.set_xlim(0, float(board["score"].max()) * 1.2 + 1e-9)
    ax.set_xlabel("validation score: mean |mean Y(restored) - mean Y(clean)| (lower is better)")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig

# --------------------------------------------------------------------------
# Plots: image grids with zoomed crops, error maps, histograms, the mean-Y scatter
# --------------------------------------------------------------------------

def zoom_box(clean: np.ndarray, scan: np.ndarray, size: int) -> tuple[int, int, int]:
    """(top, left, size) of the size x size window where the scan adds the most fine detail that
    the clean image lacks (halftone dots, grain, dust): a good place to zoom in. Deterministic."""
    def fine(img):
        y = y_channel(img).astype(np.float32)
        return np.abs(y - cv2.GaussianBlur(y, (0, 0), 2.0))
    h, w = clean.shape[:2]
    size = min(size, h, w)
    gain = cv2.boxFilter(fine(scan) - fine(clean), -1, (size, size), borderType=cv2.BORDER_CONSTANT)
    r = size // 2  # keep the whole window inside the image
    inner = gain[r:h - size + r + 1, r:w - size + r + 1]
    top, left = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(top), int(left), size


def show_pairs(rows, titles=None, zoom=None, suptitle=None, cell=3.0):
    """Show a grid of RGB images, one list of images per row (e.g. [clean, scan] or
    [clean, scan, restored]), with ``titles`` of the same shape.

    ``zoom``: None; an int size (the box is chosen per row by zoom_box from the row's first two
    images); or a list with one (top, left, size) per row. Each image then gets a neighbour column
    with its crop, enlarged with nearest-neighbour pixels, and a box marks the crop. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    rows = [list(r) for r in rows]
    ncols = max(len(r) for r in rows) * (2 if zoom is not None else 1)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(cell * ncols, cell * len(rows)), squeeze=False)
    for i, images in enumerate(rows):
        box = None
        if zoom is not None:
            box = zoom_box(images[0], images[min(1, len(images) - 1)], zoom) if isinstance(zoom, int) else zoom[i]
        for j, img in enumerate(images):
            label = titles[i][j] if titles is not None else ""
            ax = axes[i, j * 2 if box else j]
            ax.imshow(img)
            ax.set_title(label, fontsize=9)
            if box:
                top, left, size = box
                ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, ec="yellow", lw=1.5))
                zax = axes[i, j * 2 + 1]
                zax.imshow(img[top:top + size, left:left + size], interpolation="nearest")
                zax.set_title(f"zoom ({size} px)", fontsize=9)
                for spine in zax.spines.values():
                    spine.set_edgecolor("yellow")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        if not ax.images:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_error_maps(rows, suptitle=None, cell=3.0):
    """One row per (label, clean, other) triple: the clean image, the other image (a scan or a
    restoration), the signed difference other - clean (mean over R, G, B: red = darker than clean,
    blue = lighter) and the Y error |Y(other) - Y(clean)| that the metric is built on. Colour scales are
    shared by all rows so they can be compared. Returns the figure."""
    import matplotlib.pyplot as plt
    signed = [other.astype(np.float32).mean(axis=2) - clean.astype(np.float32).mean(axis=2)
              for _, clean, other in rows]
    yerr = [np.abs(y_channel(other).astype(np.int16) - y_channel(clean)) for _, clean, other in rows]
    lim = max(1.0, max(float(np.percentile(np.abs(s), 95)) for s in signed))
    top = max(1.0, max(float(np.percentile(e, 99)) for e in yerr))
    fig, axes = plt.subplots(len(rows), 4, figsize=(cell * 4 + 1, cell * len(rows)), squeeze=False)
    for i, (label, clean, other) in enumerate(rows):
        my_c, my_o = mean_y(clean), mean_y(other)
        axes[i, 0].imshow(clean)
        axes[i, 0].set_title(f"clean\nmean Y {my_c:.1f}", fontsize=9)
        axes[i, 1].imshow(other)
        axes[i, 1].set_title(f"{label}\nmean Y {my_o:.1f}, |diff| {abs(my_o - my_c):.1f}", fontsize=9)
        im = axes[i, 2].imshow(signed[i], cmap="RdBu", vmin=-lim, vmax=lim)
        axes[i, 2].set_title("difference (RGB mean)\nred: darker, blue: lighter", fontsize=9)
        fig.colorbar(im, ax=axes[i, 2], fraction=0.046, pad=0.02)
        im = axes[i, 3].imshow(yerr[i], cmap="magma", vmin=0, vmax=top)
        axes[i, 3].set_title(f"|Y error|\npixel mean {yerr[i].mean():.1f}", fontsize=9)
        fig.colorbar(im, ax=axes[i, 3], fraction=0.046, pad=0.02)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_colour_histograms(groups, suptitle=None):
    """Histograms of R, G and B (fraction of pixels per value, log scale) for each group of images,
    e.g. {"clean": cleans, "scan": scans}; the first group (the reference) is drawn thin and light.
    Returns the figure."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), sharey=True)
    styles = ["-", "--", ":", "-."]
    for k, (label, images) in enumerate(groups.items()):
        hist = np.zeros((3, 256))
        for img in images:
            _check_image(img)
            for c in range(3):
                hist[c] += np.bincount(img[..., c].ravel(), minlength=256)
        hist /= max(1.0, hist[0].sum())
        for c, (ax, colour) in enumerate(zip(axes, ("red", "green", "blue"))):
            ax.plot(hist[c], color=colour, ls=styles[k % len(styles)], lw=0.8 if k == 0 else 1.8,
                    alpha=0.55 if k == 0 else 1.0, label=label)
    for ax, name in zip(axes, ("R", "G", "B")):
        ax.set_yscale("log")
        ax.set_xlim(0, 255)
        ax.set_xlabel(f"{name} value")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("fraction of pixels")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def show_mean_y_scatter(df, x="mean_y_clean", y="mean_y_scan", hue="title", title=None):
    """Scatter of each image's mean Y (``y`` column) against the clean image's (``x``), one colour
    per ``hue`` value, with the line y = x: the metric is the mean vertical distance to it.
    Returns the figure."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 5.8))
    groups = df.groupby(hue, sort=True) if hue else [("", df)]
    for key, g in groups:
        ax.scatter(g[x], g[y], s=10, alpha=0.6, label=str(key) if hue else None)
    lo = float(min(df[x].min(), df[y].min())) - 2
    hi = float(max(df[x].max(), df[y].max())) + 2
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x (perfect)")
    ax.set_xlim(lo, hi), ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel(f"{x} (0..255)"), ax.set_ylabel(f"{y} (0..255)")
    ax.legend(fontsize=8, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def _cli(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python helpers.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("score", help="competition score of restored images against clean ones")
    p.add_argument("pred_dir"), p.add_argument("clean_dir")
    p = sub.add_parser("demo", help="generate the synthetic demo dataset")
    p.add_argument("data_dir")
    p.add_argument("--train-pages", type=int, default=env_int("DESCAN_DEMO_PAGES", 40))
    p.add_argument("--test-pages", type=int, default=env_int("DESCAN_DEMO_TEST_PAGES", 4))
    p.add_argument("--crops-per-page", type=int, default=2)
    p.add_argument("--size", type=int, default=env_int("DESCAN_DEMO_SIZE", 256))
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("check-zip", help="exit 0 when a file is a complete zip")
    p.add_argument("zip")
    p = sub.add_parser("unpack", help="unpack the images of a zip flat into a folder")
    p.add_argument("zip"), p.add_argument("dest")
    p = sub.add_parser("check", help="check pairing, readability and sizes of a data folder")
    p.add_argument("data_dir")
    p = sub.add_parser("run-notebooks", help="execute the notebooks in order, saving executed copies")
    p.add_argument("notebooks", nargs="*", help="default: notebooks/*.ipynb")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "score":
            r = score_folders(args.pred_dir, args.clean_dir)
            print(f"competition score (mean |mean Y diff|) over {r['n_images']} images: {r['score']:.4f}")
        elif args.cmd == "demo":
            r = make_demo_dataset(args.data_dir, args.train_pages, args.test_pages, args.crops_per_page,
                                  args.size, args.seed)
            print(f"DEMO DATA (synthetic): {r['train_pairs']} training pairs and {r['test_scans']} test "
                  f"scans of {args.size}x{args.size} in {r['root']}")
        elif args.cmd == "check-zip":
            print(f"{args.zip}: complete zip, {check_zip(args.zip)} entries")
        elif args.cmd == "unpack":
            r = unpack_zip(args.zip, args.dest)
            print(f"{args.zip} -> {args.dest}: {r['written']} written, {r['skipped']} already there")
        elif args.cmd == "check":
            r = check_dataset(args.data_dir)
            print(f"{data_label(args.data_dir)} in {args.data_dir}: {r['train_pairs']} training pairs, "
                  f"{r['test_scans']} test scans, all paired and readable; sizes {r['train_sizes']}, "
                  f"test sizes {r['test_sizes']}")
        elif args.cmd == "run-notebooks":
            run_notebooks(args.notebooks)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def run_notebooks(paths=None, timeout=1800) -> list[Path]:
    """Execute notebooks in order in this Python environment; save executed copies in
    <workspace>/executed/ so their figures can be looked at."""
    import nbformat
    from nbclient import NotebookClient
    paths = [Path(p) for p in paths] if paths else sorted((ROOT / "notebooks").glob("*.ipynb"))
    out_dir = workspace_dir() / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for path in paths:
        t0 = time.time()
        print(f"running {path.name} ...", flush=True)
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute()
        finally:
            target = out_dir / path.name
            with atomic_path(target) as tmp:
                nbformat.write(nb, str(tmp))
        print(f"  ok in {time.time() - t0:.0f} s -> {target}", flush=True)
        done.append(target)
    return done


if __name__ == "__main__":
    sys.exit(_cli())
