"""Every notebook's first cell: Colab (install what is missing, mount Google Drive), Kaggle (the
attached data in place, the workspace in /kaggle/working), then seeds, versions and the device."""
from __future__ import annotations

import importlib.util
import random
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from helpers import SPLITS, DataError, data_dir, env_flag, dataset_kind, env_path, is_colab, smoke_mode, workspace_dir
from descan.data import has_data

# import name -> pip name of what the notebooks need (nbval and pytest are for the tests only)
NOTEBOOK_PACKAGES = {"torch": "torch", "torchvision": "torchvision", "cv2": "opencv-python", "numpy": "numpy",
                     "pandas": "pandas", "matplotlib": "matplotlib", "tqdm": "tqdm", "gdown": "gdown",
                     "torchsummary": "torchsummary"}
NO_DRIVE = ("!! The workspace (manifest, checkpoints, submission.csv) is now on this runtime's disk,\n"
            "!! /content/workspace, and is LOST when the runtime ends. Download what you need, or run\n"
            "!! the notebook again and allow Drive. To skip the question: DESCAN_DRIVE=0.")


# ---- Kaggle ---------------------------------------------------------------------------------------

def kaggle_root() -> Path:
    """Kaggle's top folder: /kaggle, or $DESCAN_KAGGLE_ROOT (the tests use a fake one)."""
    return env_path("DESCAN_KAGGLE_ROOT") or Path("/kaggle")


def is_kaggle() -> bool:
    """True in a Kaggle notebook: Kaggle sets KAGGLE_KERNEL_RUN_TYPE, and has KAGGLE_ROOT/working."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or (kaggle_root() / "working").is_dir()


def find_data(inputs, depth: int = 3) -> Path | None:
    """The first folder (by name) under ``inputs``, at most ``depth`` levels down, that holds the
    competition's layout (train/clean, train/scan, test/scan with images); None when none does.
    On Kaggle, ``inputs`` is /kaggle/input, where "Add Input" attaches the competition's files."""
    level = [Path(inputs)] if Path(inputs).is_dir() else []
    for _ in range(depth + 1):
        for folder in level:
            if all((folder / sub).is_dir() for sub in SPLITS.values()) and has_data(folder):
                return folder
        level = sorted(d for f in level for d in f.iterdir() if d.is_dir() and not d.name.startswith(".")
                       and d.name not in ("clean", "scan"))
    return None


def hosted_defaults() -> dict:
    """On Kaggle, the defaults of DESCAN_DATA and DESCAN_WORKSPACE (set in the environment, so that
    helpers.data_dir and workspace_dir and the torchrun processes all see them), unless already set:
    the data is the attached input folder with the competition's layout, used in place (read-only
    is fine: nothing is written there), else KAGGLE/working/data (downloaded there); the workspace
    is KAGGLE/working/workspace/<demo|real>. Smoke mode keeps its demo data. Elsewhere: nothing.
    Returns {variable: value} of what it set."""
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


def kaggle_split(data, workspace) -> bool:
    """Kaggle gives every notebook its own /kaggle/working, so a notebook opened on its own finds no
    manifest from notebook 01: with the data in place, make the split that 01 makes (the same one:
    it is seeded by page). Returns True when it wrote it."""
    from descan.data import MANIFEST_FILE, make_manifest, write_manifest
    if (Path(workspace) / MANIFEST_FILE).is_file() or not has_data(data):
        return False
    write_manifest(make_manifest(data), workspace)
    print(f"Kaggle: no {MANIFEST_FILE} in {workspace}: made the page-grouped split as notebook 01 does")
    return True


def _kaggle_setup() -> None:
    chosen = hosted_defaults()
    data = Path(os.environ.get("DESCAN_DATA") or data_dir())
    attached = data.is_relative_to(kaggle_root() / "input")
    if "DESCAN_DATA" in chosen and not attached:
        print(f"Kaggle: no attached input with train/clean, train/scan and test/scan under {kaggle_root() / 'input'}; "
              f"the data goes to {data} (downloaded: Internet must be on). To use the competition's files in place, "
              "attach them with 'Add Input' and run this cell again.")
    else:
        print(f"Kaggle: data {data}" + (" (the attached input, read in place)" if attached else ""))
    workspace = Path(os.environ.get("DESCAN_WORKSPACE") or workspace_dir(data))
    print(f"Kaggle: workspace {workspace} (saved with the notebook's version: Save Version, then its Output)")
    if attached:
        workspace.mkdir(parents=True, exist_ok=True)
        kaggle_split(data, workspace)


# ---- both ---------------------------------------------------------------------------------------

def setup(seed: int = 0):
    """Every notebook's first cell: the hosted setup (below), then seeds, versions, the device and
    the mode (setup_notebook). Returns the torch device."""
    hosted_setup()
    return setup_notebook(seed)


def hosted_setup() -> None:
    """Nothing outside Colab and Kaggle. There: pip-install what the notebooks need and cannot
    import. Then on Kaggle: the data and workspace defaults (hosted_defaults); in Colab: mount Google
    Drive for the workspace unless DESCAN_DRIVE=0 (a refused or failed mount says what it means)."""
    if not (is_colab() or is_kaggle()):
        return
    t0 = time.time()
    missing = [pip for mod, pip in NOTEBOOK_PACKAGES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
        print(f"installed {', '.join(missing)}")
    if is_kaggle():
        _kaggle_setup()
    elif not env_flag("DESCAN_DRIVE", True):
        print(f"DESCAN_DRIVE=0: Google Drive not mounted.\n{NO_DRIVE}")
    elif not Path("/content/drive/MyDrive").is_dir():
        try:
            from google.colab import drive
            drive.mount("/content/drive")
        except Exception as e:  # refused in the dialog, timed out, or no Drive for this account
            print(f"Google Drive could not be mounted ({type(e).__name__}: {str(e)[:200]}).\n{NO_DRIVE}")
    print(f"{'Kaggle' if is_kaggle() else 'Colab'} setup done in {time.time() - t0:.0f} s")


def seed_everything(seed: int) -> None:
    """Seed Python's random, numpy and (when it is loaded or installed) torch, CPU and CUDA."""
    random.seed(seed), np.random.seed(seed)
    if importlib.util.find_spec("torch") is not None:
        import torch
        torch.manual_seed(seed)  # also seeds every CUDA device


def setup_notebook(seed: int = 0):
    """Seed everything and report versions, the device and the mode. Returns the torch device."""
    import torch
    seed_everything(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"python {sys.version.split()[0]} | torch {torch.__version__} | opencv {cv2.__version__} "
          f"| numpy {np.__version__}\ndevice: " + (f"cuda ({torch.cuda.get_device_name(0)})" if device.type == "cuda"
          else "cpu" + ("" if smoke_mode() else "  -- no GPU found. In Colab: Runtime > Change runtime type > "
                        "GPU (Kaggle: Settings > Accelerator), then run all again.")))
    print("mode:", "SMOKE (fast CPU run on demo data, DESCAN_SMOKE=1)" if smoke_mode() else "full")
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is not None and _remember_cell not in shell.events.callbacks["pre_run_cell"]:
        shell.events.register("pre_run_cell", _remember_cell)
    if shell is not None:  # in a notebook the kit's errors show their message, not a traceback (%tb shows it)
        shell.set_custom_exc((DataError,), lambda sh, et, ev, tb, tb_offset=None: sh.showtraceback(
            (et, ev, tb), tb_offset=tb_offset, exception_only=True))
    return device


def this_cell() -> str:
    """The code of the notebook cell that is running, above the line that calls this: a model or
    loss cell keeps it this way, and it travels with the run folder and the checkpoint."""
    from descan.recipes import code_above
    if _CELL["source"] is None:
        raise RuntimeError("notebook.this_cell() works in a notebook cell, after notebook.setup()")
    return code_above(_CELL["source"], "notebook.this_cell()")


_CELL = {"source": None}  # the cell being run (IPython's pre_run_cell event), for this_cell()


def _remember_cell(info) -> None:
    _CELL["source"] = info.raw_cell
