"""pytest setup for the unit tests and the notebooks (nbval).

Every test session is self-contained: it runs in smoke mode (fast, CPU, synthetic demo data) with
its own temporary data folder and workspace, so the README's pipeline command, a user's own runs
and the tests never see each other's files, and the notebooks always train from scratch.
Figures are drawn without a display.
"""
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
_SESSION = Path(tempfile.mkdtemp(prefix="descan-tests-"))
os.environ["DESCAN_SMOKE"] = "1"
os.environ["DESCAN_DATA"] = str(_SESSION / "data")
os.environ["DESCAN_WORKSPACE"] = str(_SESSION / "workspace")
os.environ.setdefault("MPLBACKEND", "Agg")
for name in list(os.environ):  # a user's own settings must not leak into the tests
    if name.startswith("DESCAN") and name not in ("DESCAN_SMOKE", "DESCAN_DATA", "DESCAN_WORKSPACE"):
        del os.environ[name]
sys.path.insert(0, str(ROOT))


def pytest_collection_modifyitems(session, config, items):
    """Notebooks 02-05 read what 01 writes. When 01 is not among the collected notebooks (e.g.
    `pytest notebooks/03_train_dncnn.ipynb`), do 01's part here: demo data and the manifest."""
    notebooks = {Path(str(item.fspath)).name for item in items if str(item.fspath).endswith(".ipynb")}
    if notebooks and "01_download.ipynb" not in notebooks:
        from helpers import data_dir, workspace_dir
        from descan.data import ensure_data, make_manifest, write_manifest
        ensure_data(data_dir(), workspace_dir(data_dir()))
        write_manifest(make_manifest(data_dir()), workspace_dir(data_dir()))


def pytest_unconfigure(config):
    import shutil
    shutil.rmtree(_SESSION, ignore_errors=True)
