"""Every notebook's first cell: Colab (install what is missing, mount Google Drive), Kaggle (the
attached data in place, the workspace in /kaggle/working), then seeds, versions and the device."""
import importlib.util
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from helpers import (DataError, data_dir, dataset_kind, env_flag, env_path, is_colab, smoke_mode,
                     workspace_dir)
from descan.data import MANIFEST_FILE, has_data, make_manifest, write_manifest
from descan.recipes import code_above

NOTEBOOK_PACKAGES = {"cv2": "opencv-python", **{name: name for name in (  # import -> pip name
    "torch", "torchvision", "numpy", "pandas", "matplotlib", "tqdm", "gdown", "torchsummary")}}
NO_DRIVE = ("!! The workspace is on this runtime's disk (/content/workspace), LOST when it ends:\n"
            "!! download what you need, or run this again and allow Drive (or set DESCAN_DRIVE=0).")
_CELL = {"source": None}  # the cell being run (IPython's pre_run_cell event), for this_cell()


def kaggle_root() -> Path:
    """Kaggle's top folder: /kaggle, or $DESCAN_KAGGLE_ROOT (the tests use a fake one)."""
    return env_path("DESCAN_KAGGLE_ROOT") or Path("/kaggle")


def is_kaggle() -> bool:
    """A Kaggle notebook: KAGGLE_KERNEL_RUN_TYPE is set, or KAGGLE_ROOT/working exists."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or (kaggle_root() / "working").is_dir()


def find_data(inputs) -> Path | None:
    """The first folder with the competition's layout and images: ``inputs`` (Kaggle's
    /kaggle/input) or, level by level and by name, one up to 3 levels under it; else None."""
    levels = ([Path(inputs)], *(Path(inputs).glob("*/" * depth) for depth in (1, 2, 3)))
    return next((folder for level in levels for folder in sorted(level) if has_data(folder)), None)


def hosted_defaults() -> dict:
    """On Kaggle, set DESCAN_DATA (the attached data, else working/data; not in smoke mode) and
    DESCAN_WORKSPACE (working/workspace/<demo|real>) unless they are set; returns what it set."""
    if not is_kaggle():
        return {}
    root, chosen = kaggle_root(), {}
    if not os.environ.get("DESCAN_DATA", "").strip() and not smoke_mode():
        chosen["DESCAN_DATA"] = str(find_data(root / "input") or root / "working" / "data")
    if not os.environ.get("DESCAN_WORKSPACE", "").strip():
        kind = dataset_kind(chosen.get("DESCAN_DATA") or data_dir())
        chosen["DESCAN_WORKSPACE"] = str(root / "working" / "workspace" / kind)
    os.environ.update(chosen)
    return chosen


def ensure_split(data, workspace) -> None:
    """Notebook 01's split unless the workspace has one (each Kaggle notebook has its own)."""
    if not (Path(workspace) / MANIFEST_FILE).is_file() and has_data(data):
        print(f"no {MANIFEST_FILE} in {workspace}: making the page-grouped split as notebook "
              "01 does")
        write_manifest(make_manifest(data), workspace)


def hosted_setup() -> None:
    """In Colab and on Kaggle: install what is missing, then Kaggle's paths or Colab's Drive."""
    if not (is_colab() or is_kaggle()):
        return
    t0 = time.time()
    missing = [pip for module, pip in NOTEBOOK_PACKAGES.items()
               if importlib.util.find_spec(module) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
        print(f"installed {', '.join(missing)}")
    if is_kaggle():  # Kaggle's paths, said; with attached data, notebook 01's split
        chosen, data = hosted_defaults(), data_dir()
        attached = data.is_relative_to(kaggle_root() / "input")
        print(f"Kaggle: workspace {workspace_dir(data)} (kept when you Save Version)")
        print(f"Kaggle: data {data}" + (" (the attached input, read in place)" if attached else ""))
        if attached:
            ensure_split(data, workspace_dir(data))
        elif "DESCAN_DATA" in chosen:
            print("Kaggle: no attached input with train/clean, train/scan and test/scan: the data "
                  "is downloaded (Internet must be on). To use the competition's files in place, "
                  "attach them with 'Add Input' and run this again.")
    elif not env_flag("DESCAN_DRIVE", True):
        print(f"DESCAN_DRIVE=0: Google Drive not mounted.\n{NO_DRIVE}")
    elif not Path("/content/drive/MyDrive").is_dir():
        try:
            from google.colab import drive
            drive.mount("/content/drive")
        except Exception as e:  # refused in the dialog, timed out, or no Drive for this account
            print(f"Google Drive could not be mounted ({type(e).__name__}: {str(e)[:200]}).\n"
                  f"{NO_DRIVE}")
    print(f"{'Kaggle' if is_kaggle() else 'Colab'} setup done in {time.time() - t0:.0f} s")


def seed_everything(seed: int) -> None:
    """Seed Python's random, numpy and torch (CPU and every CUDA device)."""
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(seed: int = 0):
    """Every notebook's first cell: hosted_setup, seeds, versions, the device (returned) and the
    mode; in IPython, this_cell() and the kit's errors shown without a traceback."""
    hosted_setup()
    import torch
    seed_everything(seed)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    where = f"cuda ({torch.cuda.get_device_name(0)})" if gpu else "cpu"
    if not gpu and not smoke_mode():
        where += ("  -- no GPU found. In Colab: Runtime > Change runtime type > GPU (Kaggle: "
                  "Settings > Accelerator), then run all again.")
    mode = "SMOKE (fast CPU run on demo data, DESCAN_SMOKE=1)" if smoke_mode() else "full"
    print(f"python {sys.version.split()[0]} | torch {torch.__version__} | opencv "
          f"{cv2.__version__} | numpy {np.__version__}\ndevice: {where}\nmode: {mode}")
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is not None:
        if _remember_cell not in shell.events.callbacks["pre_run_cell"]:
            shell.events.register("pre_run_cell", _remember_cell)
        shell.set_custom_exc((DataError,), lambda sh, et, ev, tb, tb_offset=None: sh.showtraceback(
            (et, ev, tb), tb_offset=tb_offset, exception_only=True))  # the message; %tb: the rest
    return device


def _remember_cell(info) -> None:
    _CELL["source"] = info.raw_cell


def this_cell() -> str:
    """The code of the running notebook cell above the line that calls this (a model or loss)."""
    if _CELL["source"] is None:
        raise RuntimeError("notebook.this_cell() works in a notebook cell, after notebook.setup()")
    return code_above(_CELL["source"], "notebook.this_cell()")
