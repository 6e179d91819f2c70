"""The notebooks' small face: paths and switches, setup, images and pairs, crops, split, the metric.

Everything else lives in the package ``descan/``, one module per concern. No torch at import time.
An *image* is a numpy uint8 (H, W, 3) RGB array, never modified by the functions given it; a *pair*
is ``Pair(name, clean, scan)`` (clean always before scan); relative paths in ``DESCAN_*`` variables
are taken from the repository root, wherever the code runs.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import os
import random
import re
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

fcntl = importlib.import_module("fcntl") if os.name == "posix" else None  # atomic_path's locks

ROOT = Path(__file__).resolve().parent
IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
PARAM_LIMIT = 10_000_000
DEMO_MARKER = "DEMO_DATA.txt"
SPLITS = {"train_clean": "train/clean", "train_scan": "train/scan", "test_scan": "test/scan"}


class DataError(Exception):
    """Something is wrong with the data on disk; the message says what and what to do."""


def examples(items, n=5) -> str:
    """The first ``n`` items joined for a message, with how many more there are."""
    items = list(items)
    return ", ".join(str(i) for i in items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def progress_bar(iterable=None, desc="", enabled=True, total=None, unit="it"):
    """A tqdm progress bar over ``iterable`` (or updated by hand); shows nothing unless ``enabled``."""
    if importlib.util.find_spec("ipywidgets"):  # widget bars in Colab and Jupyter with ipywidgets
        from tqdm.auto import tqdm
    else:  # text bars, without tqdm.auto's warning about the missing widgets
        from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False, unit=unit, disable=not enabled)


# ---- Switches and paths, from the environment -----------------------------------------------------

def is_colab() -> bool:
    return "google.colab" in sys.modules


def env_flag(name: str, default: bool) -> bool:
    """A yes/no switch: 1/true/yes/on or 0/false/no/off (any case); unset or empty = default.
    Anything else is refused with the variable's name (``DESCAN_SMOKE=maybe`` is not "off")."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        return default if not value else value in ("1", "true", "yes", "on")
    raise ValueError(f"{name}={os.environ[name]!r} is not a switch; use 1 or 0")


def env_number(name: str, default, minimum=None, maximum=None):
    """A number from the environment, an int when ``default`` is one; unset or empty = default. A bad
    or out-of-range value (also '1_0', which Python reads as 10, nan and inf) is refused naming the
    variable, its value and the allowed range (``minimum`` and ``maximum`` included)."""
    raw, kind = os.environ.get(name, "").strip(), int if isinstance(default, int) else float
    if not raw:
        return default
    bounds = " and ".join(b for b in (minimum is not None and f"at least {minimum}",
                                      maximum is not None and f"at most {maximum}") if b) or "a number"
    try:
        value = kind(raw.replace("_", "?"))
        if value * 0 != 0:  # nan or an infinity
            raise ValueError(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not {'an integer' if kind is int else 'a finite number'}; "
                         f"it must be {bounds}") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name}={raw} is out of range: it must be {bounds}")
    return value


def env_path(name: str) -> Path | None:
    """A path from the environment, absolute (a relative one is taken from the repository root); or None."""
    raw = os.environ.get(name, "").strip()
    return None if not raw else Path(raw).expanduser() if Path(raw).expanduser().is_absolute() else ROOT / raw


def smoke_mode() -> bool:  # DESCAN_SMOKE=1: a fast CPU run on the demo data (CI, machines without a GPU)
    return env_flag("DESCAN_SMOKE", False)


def data_dir() -> Path:
    """The unpacked images: $DESCAN_DATA; else ./data/demo in smoke mode, /content/data in Colab, ./data/real."""
    if env_path("DESCAN_DATA") is not None:
        return env_path("DESCAN_DATA")
    return ROOT / "data" / "demo" if smoke_mode() else Path("/content/data") if is_colab() else ROOT / "data/real"


def dataset_kind(data) -> str:
    """'demo' when the folder holds the demo set (its marker file), or is empty in smoke mode; else 'real'."""
    data = Path(data)
    if (data / DEMO_MARKER).exists():
        return "demo"
    if any((data / sub).is_dir() for sub in SPLITS.values()):
        return "real"
    return "demo" if smoke_mode() else "real"


def data_label(data) -> str:  # for titles and prints: says plainly when the data is the synthetic demo set
    return "DEMO DATA (synthetic)" if dataset_kind(data) == "demo" else "competition data"


def workspace_dir(data=None) -> Path:
    """Where notebooks hand each other files (manifest, checkpoints, CSVs), created if missing:
    $DESCAN_WORKSPACE; else a folder per kind of data (``demo``/``real``, by the data's marker, not the
    smoke switch) under Google Drive in Colab when mounted (runtimes do not share /content),
    /content/workspace in Colab without Drive, ./workspace elsewhere."""
    path, drive = env_path("DESCAN_WORKSPACE"), Path("/content/drive/MyDrive")
    if path is None:
        colab = drive / "descanning" if drive.is_dir() else Path("/content/workspace")
        base = colab if is_colab() else ROOT / "workspace"
        path = base / dataset_kind(data if data is not None else data_dir())
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- Notebook setup -------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed Python's random, numpy and (when it is loaded or installed) torch, CPU and CUDA."""
    random.seed(seed), np.random.seed(seed)
    if importlib.util.find_spec("torch") is not None:
        import torch
        torch.manual_seed(seed)  # also seeds every CUDA device


def setup_notebook(seed: int = 0):
    """The first cell of every notebook (after descan.colab.setup() in Colab): seed everything and
    report versions, the device and the mode. Returns the torch device."""
    import torch
    seed_everything(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"python {sys.version.split()[0]} | torch {torch.__version__} | opencv {cv2.__version__} "
          f"| numpy {np.__version__}\ndevice: " + (f"cuda ({torch.cuda.get_device_name(0)})" if device.type == "cuda"
          else "cpu" + ("" if smoke_mode() else "  -- no GPU found. In Colab: Runtime > Change runtime type > "
                        "GPU (Kaggle: Settings > Accelerator), then run all again.")))
    print("mode:", "SMOKE (fast CPU run on demo data, DESCAN_SMOKE=1)" if smoke_mode() else "full")
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is not None:  # in a notebook the kit's errors show their message, not a traceback (%tb shows it)
        shell.set_custom_exc((DataError,), lambda sh, et, ev, tb, tb_offset=None: sh.showtraceback(
            (et, ev, tb), tb_offset=tb_offset, exception_only=True))
    return device


# ---- Files: atomic writes, image reading, pairing by name -----------------------------------------

_STALE: dict = {}  # atomic_path: {big folder: the .partial files found there when it was first listed}
_WRITE_ERRORS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk full (quota exceeded)", errno.EROFS: "read-only",
                 errno.EACCES: "read-only (permission denied)", errno.EPERM: "read-only (not permitted)"}


def _write_error(e, path):
    """The OSError saying "disk full" or "read-only" with the path for a failed write, or None."""
    code = getattr(e, "errno", None)
    if code is None:  # numpy's short write and torch's zip writer carry no errno: the free space tells
        with contextlib.suppress(OSError):
            code = errno.ENOSPC if shutil.disk_usage(path.parent).free < 2 ** 20 else None
    todo = "Free some space (old runs, zips)" if code in (errno.ENOSPC, errno.EDQUOT) else "Use a writable folder"
    return code in _WRITE_ERRORS and OSError(code, f"{_WRITE_ERRORS[code]}: could not write {path}. {todo}; "
                                                   f"any previous {path.name} is unchanged.")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    An exception (or a kill) before the end leaves any previous file at ``path`` untouched. The file
    gets the permissions of a plain ``open(path, "w")``. A write that fails for want of space or
    permission says "disk full" or "read-only" and the path. The ``.<name>.<8 hex>.partial`` files
    that a killed writer of ``path`` left are removed first; a live writer's stays (it holds a lock).
    """
    path, fd = Path(path), None
    tmp, folder = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.partial", str(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        names = _STALE.get(folder)
        if names is None:  # a big folder (unpacked images) is listed once a process, others each time
            listing = os.listdir(folder)
            names = [n for n in listing if re.fullmatch(r"\..+\.[0-9a-f]{8}\.partial", n)]
            _STALE.update({folder: names} if len(listing) > 1000 else {})
        for name in [n for n in names if fcntl and n.rsplit(".", 2)[0] == f".{path.name}"]:
            names.remove(name)
            with contextlib.suppress(OSError), open(path.parent / name, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a live writer holds it
                os.remove(path.parent / name)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        with contextlib.suppress(OSError, AttributeError):
            fcntl.flock(fd, fcntl.LOCK_EX)  # held to the end, so that no other process takes it for stale
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if not _write_error(e, path):
            raise
        raise _write_error(e, path) from e
    finally:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            os.close(fd)


def read_rgb(path) -> np.ndarray:
    """Read any image file as RGB uint8 (H, W, 3): grey, alpha and 16-bit files are converted
    (16-bit values scaled by 255/65535 and rounded; alpha dropped, not composited)."""
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
    check_image(rgb, "image to save")
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


def by_stem(files, folder) -> dict[str, Path]:
    """{file name without extension: path}; DataError when two files share a name."""
    out, dups = {}, []
    for p in files:
        if p.stem in out:
            dups.append(f"{out[p.stem].name} / {p.name}")
        out[p.stem] = p
    if dups:
        raise DataError(f"{folder}: {len(dups)} image names appear twice with different extensions: "
                        f"{examples(dups)}. Keep one file per name.")
    return out


@dataclass(frozen=True)
class Pair:
    name: str
    clean: Path
    scan: Path


def pair_files(clean_dir, scan_dir) -> list[Pair]:
    """Pair clean and scan images by file name (extension ignored), sorted by name. DataError with
    examples when a folder is missing or empty, a name appears twice, or an image has no partner."""
    clean_files, scan_files = list_images(clean_dir), list_images(scan_dir)
    for folder, files in ((clean_dir, clean_files), (scan_dir, scan_files)):
        if not files:
            raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}. "
                            "Unpack the data again (notebook 01).")
    clean, scan = by_stem(clean_files, clean_dir), by_stem(scan_files, scan_dir)
    only_clean, only_scan = sorted(set(clean) - set(scan)), sorted(set(scan) - set(clean))
    msg = ([f"{len(only_clean)} clean images have no scan in {scan_dir}: "
            f"{examples(clean[n].name for n in only_clean)}"] if only_clean else []) + \
          ([f"{len(only_scan)} scans have no clean image in {clean_dir}: "
            f"{examples(scan[n].name for n in only_scan)}"] if only_scan else [])
    if msg:
        raise DataError("unpaired images. " + "; ".join(msg) +
                        ". A clean image and its scan must share a file name; re-unpack the data.")
    return [Pair(n, clean[n], scan[n]) for n in sorted(clean)]


# ---- Cropping and the train/validation split ------------------------------------------------------

def random_crop_pair(clean: np.ndarray, scan: np.ndarray, size: int, rng: np.random.Generator):
    """The same random size x size window from both images of a pair, as new arrays (clean, scan).
    Images smaller than ``size`` are first padded by reflection on the bottom/right."""
    if clean.shape[:2] != scan.shape[:2]:
        raise ValueError(f"pair sizes differ: clean {clean.shape[:2]}, scan {scan.shape[:2]}")
    h, w = clean.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        border = cv2.BORDER_REFLECT_101 if min(h, w) > 1 else cv2.BORDER_REPLICATE
        clean = cv2.copyMakeBorder(clean, 0, ph, 0, pw, border)
        scan = cv2.copyMakeBorder(scan, 0, ph, 0, pw, border)
        h, w = clean.shape[:2]
    top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    window = (slice(top, top + size), slice(left, left + size))
    return clean[window].copy(), scan[window].copy()


def page_id(name: str) -> str:
    """The source page of a crop: 'BookOfMaking.00012.02' -> 'BookOfMaking.00012'. Names without a
    title.page.crop pattern (e.g. 'scanner01_100') are their own page."""
    parts = Path(name).stem.split(".") if Path(name).suffix.lower() in IMAGE_EXTS else name.split(".")
    return ".".join(parts[:-1]) if len(parts) >= 3 else ".".join(parts)


def split_names(names, val_fraction=0.1, seed=0) -> dict[str, str]:
    """Deterministic train/validation split by source page: {name: 'train' | 'val'}. All crops of a
    page land on one side, whatever the order of ``names``; with two pages or more, each side gets one."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be between 0 and 1 (exclusive)")
    names = sorted(set(names))
    pages = sorted({page_id(n) for n in names})
    ranked = sorted(pages, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())  # stable everywhere
    n_val = int(round(val_fraction * len(pages)))
    if len(pages) >= 2:
        n_val = min(max(n_val, 1), len(pages) - 1)
    val_pages = set(ranked[:n_val])
    return {n: ("val" if page_id(n) in val_pages else "train") for n in names}


# ---- The metric, exactly as the course scores it --------------------------------------------------

def check_image(img, what="image"):
    """TypeError unless ``img`` is an RGB uint8 array of shape (H, W, 3)."""
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
    check_image(rgb)
    return cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2YUV)[..., 0]


def mean_y(rgb: np.ndarray) -> float:
    """The number the leaderboard sees for one image: the mean of its uint8 Y channel."""
    return float(y_channel(rgb).mean())


def competition_score(restored, clean) -> float:
    """Mean over images of |mean Y(restored) - mean Y(clean)|; lower is better, 0 is perfect. Both are
    equal-length sequences of RGB uint8 images (or of mean-Y values, as floats)."""
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
    check_image(restored), check_image(clean)
    mse = np.mean((restored.astype(np.float64) - clean.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def image_metrics(restored: np.ndarray, clean: np.ndarray) -> dict:
    """Per-image figures: both mean Ys, their absolute difference, pixel Y MAE and PSNR."""
    my_r, my_c = mean_y(restored), mean_y(clean)
    return {"mean_y": my_r, "mean_y_clean": my_c, "abs_mean_y_err": abs(my_r - my_c),
            "pixel_y_mae": pixel_y_mae(restored, clean), "psnr": psnr(restored, clean)}
