"""Colab's side of every notebook's first cell: install what is missing, mount Google Drive."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

from helpers import env_flag

# import name -> pip name of what the notebooks need (nbval and pytest are for the tests only)
NOTEBOOK_PACKAGES = {"torch": "torch", "torchvision": "torchvision", "cv2": "opencv-python", "numpy": "numpy",
                     "pandas": "pandas", "matplotlib": "matplotlib", "tqdm": "tqdm", "gdown": "gdown",
                     "torchsummary": "torchsummary"}
NO_DRIVE = ("!! The workspace (manifest, checkpoints, submission.csv) is now on this runtime's disk,\n"
            "!! /content/workspace, and is LOST when the runtime ends. Download what you need, or run\n"
            "!! the notebook again and allow Drive. To skip the question: DESCAN_DRIVE=0.")


def setup() -> None:
    """In Colab: pip-install what the notebooks need and cannot import (checked by import, not by a
    list of what Colab lacks), then mount Google Drive for the workspace unless DESCAN_DRIVE=0. A
    refused or failed mount prints what it means instead of a traceback."""
    t0 = time.time()
    missing = [pip for mod, pip in NOTEBOOK_PACKAGES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
        print(f"installed {', '.join(missing)}")
    if not env_flag("DESCAN_DRIVE", True):
        print(f"DESCAN_DRIVE=0: Google Drive not mounted.\n{NO_DRIVE}")
    elif not Path("/content/drive/MyDrive").is_dir():
        try:
            from google.colab import drive
            drive.mount("/content/drive")
        except Exception as e:  # refused in the dialog, timed out, or no Drive for this account
            print(f"Google Drive could not be mounted ({type(e).__name__}: {str(e)[:200]}).\n{NO_DRIVE}")
    print(f"Colab setup done in {time.time() - t0:.0f} s")
