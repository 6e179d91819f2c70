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
import math
import os
import random
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

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


def image_size(path) -> tuple[int, int]:
    """(height, width) of an image, read from its header when OpenCV can."""
    return read_rgb(path).shape[:2]


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
        ht = _halftone((img * 255).astype(np.uint8), rng, period=rng.uniform(3.5, 5.5) * s / 512 * 2)
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


def make_demo_dataset(root, train_pages=24, test_pages=4, crops_per_page=2, crop=256, seed=0,
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
            name = f"{title}.{i:05d}.{c + 1:02d}"
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
# Command line
# --------------------------------------------------------------------------

def _cli(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python helpers.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("score", help="competition score of restored images against clean ones")
    p.add_argument("pred_dir"), p.add_argument("clean_dir")
    p = sub.add_parser("demo", help="generate the synthetic demo dataset")
    p.add_argument("data_dir")
    p.add_argument("--train-pages", type=int, default=env_int("DESCAN_DEMO_PAGES", 24))
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
