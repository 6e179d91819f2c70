"""The kit's tiny shared module: paths, loading images and pairing them by name, random crops and
the competition's Y-channel metric. An *image* is a numpy uint8 (H, W, 3) RGB array, never changed
by the functions given it; a *pair* is ``Pair(name, clean, scan)``. The rest is in ``descan/``."""
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

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
    return ", ".join(map(str, items[:n])) + (f" (and {len(items) - n} more)" if items[n:] else "")


def is_colab() -> bool:  # Colab imports its own module before any cell runs
    return "google.colab" in sys.modules


def env_path(name: str) -> Path | None:
    """A path from the environment (a relative one is taken from the repository root), or None."""
    raw = Path(os.environ.get(name, "").strip()).expanduser()
    return None if raw == Path(".") else ROOT / raw  # ROOT / an absolute path is that path


def env_flag(name: str, default: bool) -> bool:
    """A yes/no switch: 1/true/yes/on or 0/false/no/off (any case), unset: default; else refused."""
    value = os.environ.get(name, "").strip().lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        raise ValueError(f"{name}={os.environ[name]!r} is not a switch; use 1 or 0")
    return default if not value else value in ("1", "true", "yes", "on")


def smoke_mode() -> bool:
    """DESCAN_SMOKE=1: a fast CPU run on the demo data (CI, machines without a GPU)."""
    return env_flag("DESCAN_SMOKE", False)


def data_dir() -> Path:
    """$DESCAN_DATA; else ./data/demo in smoke mode, /content/data in Colab, else ./data/real."""
    return env_path("DESCAN_DATA") or (ROOT / "data/demo" if smoke_mode() else
                                       Path("/content/data") if is_colab() else ROOT / "data/real")


def dataset_kind(data) -> str:
    """'demo' for a folder with the demo marker, or an empty one in smoke mode; else 'real'."""
    if (Path(data) / DEMO_MARKER).exists():
        return "demo"
    empty = not any((Path(data) / sub).is_dir() for sub in SPLITS.values())
    return "demo" if empty and smoke_mode() else "real"


def workspace_dir(data=None) -> Path:
    """Where notebooks hand each other files, created if missing: $DESCAN_WORKSPACE; else a folder
    per kind of data under MyDrive/descanning in Colab (/content/workspace without Drive)."""
    path, drive = env_path("DESCAN_WORKSPACE"), Path("/content/drive/MyDrive")
    if path is None:
        colab = drive / "descanning" if drive.is_dir() else Path("/content/workspace")
        base = colab if is_colab() else ROOT / "workspace"
        path = base / dataset_kind(data if data is not None else data_dir())
    if path.is_file():
        raise DataError(f"the workspace {path} is a file; DESCAN_WORKSPACE must name a folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_rgb(path) -> np.ndarray:
    """Read any image file as RGB uint8 (H, W, 3): grey, alpha and 16-bit files are converted
    (16-bit values scaled by 255/65535 and rounded; alpha dropped, not composited)."""
    data = np.fromfile(str(path), dtype=np.uint8) if Path(path).is_file() else None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data is not None and data.size else None
    if img is None:
        raise DataError(f"cannot read image {path}: the file is missing, empty, truncated or not "
                        "an image. Delete it and download or unpack the data again.")
    if img.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path} holds {img.dtype} pixels; expected an 8- or 16-bit image.")
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    grey, alpha = img.ndim == 2, img.ndim == 3 and img.shape[2] == 4
    return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB if grey else
                        cv2.COLOR_BGRA2RGB if alpha else cv2.COLOR_BGR2RGB)


def list_images(folder) -> list[Path]:
    """Image files in ``folder`` (not recursive), sorted by name; hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist. Run notebook 01 (or `bash "
                        "data_download.sh`, `--demo` for demo data) first, or set DESCAN_DATA.")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)


def by_stem(files, folder) -> dict[str, Path]:
    """{file name without extension: path}; DataError when two files share a name."""
    out = {p.stem: p for p in files}
    if len(out) < len(files):
        twice = sorted(p.name for p in files if [q.stem for q in files].count(p.stem) > 1)
        raise DataError(f"{folder}: {len(twice)} image names appear twice with other extensions, "
                        f"e.g. {examples(twice)}. Keep one file per name.")
    return out


@dataclass(frozen=True)
class Pair:
    name: str
    clean: Path
    scan: Path


def pair_files(clean_dir, scan_dir) -> list[Pair]:
    """Clean and scan images paired by file name (extension ignored), sorted; DataError naming
    examples for a missing or empty folder, a name twice, or an image with no partner."""
    clean, scan = (by_stem(list_images(folder), folder) for folder in (clean_dir, scan_dir))
    for folder, found in ((clean_dir, clean), (scan_dir, scan)):
        if not found:
            raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}. "
                            "Unpack the data again (notebook 01).")
    sides = ((sorted(set(clean) - set(scan)), clean, "clean images have no scan", scan_dir),
             (sorted(set(scan) - set(clean)), scan, "scans have no clean image", clean_dir))
    msg = [f"{len(alone)} {what} in {there}: {examples(files[n].name for n in alone)}"
           for alone, files, what, there in sides if alone]
    if msg:
        raise DataError("unpaired images. " + "; ".join(msg) +
                        ". A clean image and its scan must share a file name; re-unpack the data.")
    return [Pair(n, clean[n], scan[n]) for n in sorted(clean)]


def random_crop_pair(clean: np.ndarray, scan: np.ndarray, size: int, rng: np.random.Generator):
    """Copies of one random size x size window of both images (padded by reflection if smaller)."""
    if clean.shape[:2] != scan.shape[:2]:
        raise ValueError(f"pair sizes differ: clean {clean.shape[:2]}, scan {scan.shape[:2]}")
    h, w = clean.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        border = cv2.BORDER_REFLECT_101 if min(h, w) > 1 else cv2.BORDER_REPLICATE
        clean, scan = (cv2.copyMakeBorder(x, 0, ph, 0, pw, border) for x in (clean, scan))
    top, left = (int(rng.integers(0, n - size + 1)) for n in clean.shape[:2])
    window = (slice(top, top + size), slice(left, left + size))
    return clean[window].copy(), scan[window].copy()


def check_image(img, what="image"):
    """TypeError unless ``img`` is an RGB uint8 array of shape (H, W, 3)."""
    array = isinstance(img, np.ndarray)
    if not array or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        got = f"{img.dtype} {img.shape}" if array else type(img).__name__
        raise TypeError(f"{what} must be an RGB uint8 array of shape (H, W, 3), got {got}. "
                        "Convert float images with to_uint8() first.")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8 the way saving a PNG does: clip, scale by 255, round."""
    return np.clip(np.rint(np.asarray(img, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def y_channel(rgb: np.ndarray) -> np.ndarray:
    """Luma Y of an RGB uint8 image exactly as the scorer gets it: OpenCV's COLOR_BGR2YUV channel
    0 (Y = 0.299 R + 0.587 G + 0.114 B, rounded by OpenCV to uint8), as a new uint8 (H, W) array."""
    check_image(rgb)
    return cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2YUV)[..., 0]


def mean_y(rgb: np.ndarray) -> float:
    """The number the leaderboard sees for one image: the mean of its uint8 Y channel."""
    return float(y_channel(rgb).mean())


def competition_score(restored, clean) -> float:
    """Mean |mean Y(restored) - mean Y(clean)| over two sequences of RGB uint8 images or mean Ys."""
    a, b = ([x if isinstance(x, (float, int, np.floating)) else mean_y(x) for x in images]
            for images in (restored, clean))
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same, non-zero number of images, got {len(a)} and {len(b)}")
    return float(np.mean(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
