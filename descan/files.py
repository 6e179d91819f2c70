"""Writing files safely (atomically; clear disk-full and read-only errors) and progress bars."""
import contextlib
import errno
import importlib.util
import os
import re
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np

from helpers import check_image

fcntl = importlib.import_module("fcntl") if os.name == "posix" else None  # atomic_path's locks
PARTIAL = re.compile(r"\..+\.[0-9a-f]{8}\.partial")  # .<name>.<8 hex>.partial
_PARTIALS: dict = {}  # big folder -> the partial files in it when this process first wrote there
WRITE_ERRORS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk full (quota exceeded)",
                 errno.EROFS: "read-only", errno.EACCES: "read-only (permission denied)",
                 errno.EPERM: "read-only (not permitted)", errno.EISDIR: "a folder"}


def progress_bar(iterable, desc="", enabled=True, total=None, unit="it"):
    """A tqdm bar over ``iterable``; shows nothing unless ``enabled``."""
    if importlib.util.find_spec("ipywidgets"):  # widget bars in Colab and Jupyter
        from tqdm.auto import tqdm
    else:  # text bars, without tqdm.auto's warning about the missing widgets
        from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False, unit=unit, disable=not enabled)


def size_text(size: int) -> str:
    """A file or disk size for a message: MB, or bytes under one MB."""
    return f"{size / 2 ** 20:,.1f} MB" if size >= 2 ** 20 else f"{size:,} bytes"


def _write_error(e, path, tmp):
    """The OSError saying "disk full" (the space needed and free) or "read-only", with ``path``, for
    a failed write of ``tmp``; None for other errors."""
    code = getattr(e, "errno", None)
    if code is None:  # numpy's short write and torch's zip writer carry no errno: free space tells
        with contextlib.suppress(OSError):
            code = errno.ENOSPC if shutil.disk_usage(path.parent).free < 2 ** 20 else None
    what = WRITE_ERRORS.get(code)
    if what is None:
        return None
    todo = "Use a writable folder"
    if "disk" in what:
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        written = tmp.stat().st_size if tmp.is_file() else 0
        todo = (f"It needs more than the {size_text(written)} it had written; "
                f"{size_text(free)} are free there: free some space")
    return OSError(code, f"{what}: could not write {path}. {todo}; any previous {path.name} is "
                         "unchanged.")


def _remove_stale(path: Path) -> None:
    """Remove the partial files of ``path`` that killed writers left (live writers hold a lock)."""
    names = _PARTIALS.get(path.parent)
    if names is None:
        listing = os.listdir(path.parent)
        names = [n for n in listing if PARTIAL.fullmatch(n)]
        if len(listing) > 1000:  # a big folder (unpacked images) is listed once a process
            _PARTIALS[path.parent] = names
    for name in [n for n in names if n.rsplit(".", 2)[0] == f".{path.name}"]:
        names.remove(name)
        with contextlib.suppress(OSError, AttributeError), open(path.parent / name, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a live writer holds it
            os.remove(path.parent / name)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` that replaces it in one step at the end: an error or
    a kill before then leaves any previous file untouched."""
    path, fd = Path(path), None
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{path} is a folder: a file cannot be saved there. "
                                "Move the folder aside, or save under another name.")
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.partial"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(path)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # open(path, "w")'s mode
        with contextlib.suppress(OSError, AttributeError):
            fcntl.flock(fd, fcntl.LOCK_EX)  # held to the end: no other process takes it for stale
        yield tmp
        os.fsync(fd)  # the data written through any handle of tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        error = _write_error(e, path, tmp)
        if error is None:
            raise
        raise error from e
    finally:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            os.close(fd)


def write_image(path, rgb: np.ndarray) -> None:
    """Save an RGB uint8 image in the format of its extension (.png, .tif, ...), atomically."""
    check_image(rgb, "image to save")
    ok, buf = cv2.imencode(Path(path).suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"OpenCV could not encode {path}")
    with atomic_path(path) as tmp:
        buf.tofile(str(tmp))
