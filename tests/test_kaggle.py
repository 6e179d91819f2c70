"""Kaggle as a second home, on a fake /kaggle in a temp folder (DESCAN_KAGGLE_ROOT): detection, the
attached data used in place (read-only), the workspace under /kaggle/working."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from descan import notebook, data, demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    """A demo set laid out as the competition's files are (no demo marker: it stands for the real data)."""
    root = tmp_path_factory.mktemp("competition")
    demo.make_demo_dataset(root, train_pages=4, test_pages=1, crops_per_page=2, crop=48, show_progress=False,
                           unseen_pages=0)  # the real data has no unseen-scanner pairs
    for scan in (root / "test/scan").glob("scanner*"):
        scan.unlink()  # one seen-scanner page of test scans, as before the scanner profiles
    (root / "DEMO_DATA.txt").unlink()
    return root


def read_only(folder):
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        os.chmod(path, mode)


def writable(folder):
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, path.stat().st_mode | stat.S_IWUSR)


@pytest.fixture
def kaggle(tmp_path, monkeypatch, competition):
    """A fake /kaggle: input/<competition>/{train,test}/... read-only, working/ writable."""
    import shutil
    root = tmp_path / "kaggle"
    shutil.copytree(competition, root / "input" / "descanning-2023")
    (root / "input" / "other-dataset" / "weights").mkdir(parents=True)  # another input, without the layout
    (root / "working").mkdir()
    read_only(root / "input")
    monkeypatch.setenv("DESCAN_KAGGLE_ROOT", str(root))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delenv("DESCAN_DATA", raising=False)
    monkeypatch.delenv("DESCAN_WORKSPACE", raising=False)
    monkeypatch.setenv("DESCAN_SMOKE", "0")
    yield root
    writable(root / "input")


def test_detection(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setenv("DESCAN_KAGGLE_ROOT", str(tmp_path / "kaggle"))
    assert not notebook.is_kaggle() and notebook.hosted_defaults() == {}
    (tmp_path / "kaggle" / "working").mkdir(parents=True)
    assert notebook.is_kaggle()
    monkeypatch.setenv("DESCAN_KAGGLE_ROOT", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")  # what Kaggle sets in its notebooks
    assert notebook.is_kaggle()


def test_the_attached_data_is_used_in_place_read_only(kaggle, monkeypatch):
    found = kaggle / "input" / "descanning-2023"
    assert notebook.find_data(kaggle / "input") == found
    chosen = notebook.hosted_defaults()
    assert chosen == {"DESCAN_DATA": str(found), "DESCAN_WORKSPACE": str(kaggle / "working" / "workspace" / "real")}
    import helpers
    assert helpers.data_dir() == found and helpers.workspace_dir() == kaggle / "working" / "workspace" / "real"
    before = {str(p): p.stat().st_mtime_ns for p in found.rglob("*")}  # (root may write where chmod forbids)
    summary = data.ensure_data(helpers.data_dir(), helpers.workspace_dir())  # checks, writes only in the workspace
    assert summary["train_pairs"] == 8 and summary["test_scans"] == 2
    assert {str(p): p.stat().st_mtime_ns for p in found.rglob("*")} == before
    manifest = data.write_manifest(data.make_manifest(found), helpers.workspace_dir())
    assert manifest.parent == kaggle / "working" / "workspace" / "real"
    train, val = data.load_split(found, helpers.workspace_dir())
    assert train and val and all(str(p.clean).startswith(str(found)) for p in train)


def test_what_the_user_set_wins_and_smoke_mode_keeps_its_demo_data(kaggle, monkeypatch, tmp_path):
    monkeypatch.setenv("DESCAN_DATA", str(tmp_path / "mine"))
    assert notebook.hosted_defaults() == {"DESCAN_WORKSPACE": str(kaggle / "working" / "workspace" / "real")}
    monkeypatch.delenv("DESCAN_DATA")
    monkeypatch.delenv("DESCAN_WORKSPACE")
    monkeypatch.setenv("DESCAN_SMOKE", "1")
    assert notebook.hosted_defaults() == {"DESCAN_WORKSPACE": str(kaggle / "working" / "workspace" / "demo")}


def test_without_attached_data_it_goes_to_working(kaggle, monkeypatch, capsys):
    writable(kaggle / "input")
    import shutil
    shutil.rmtree(kaggle / "input" / "descanning-2023")
    monkeypatch.setattr(notebook, "NOTEBOOK_PACKAGES", {})  # nothing to install
    notebook.setup()
    out = capsys.readouterr().out
    assert os.environ["DESCAN_DATA"] == str(kaggle / "working" / "data")
    assert "no attached input with train/clean" in out and "Add Input" in out and "Kaggle setup done" in out


def test_the_notebooks_setup_cell_on_a_fake_kaggle(kaggle):
    """The first cell of the notebooks, run as it is in a fresh Python (from notebooks/, as Jupyter
    does), then the paths every notebook prints: the attached data, the workspace in working/."""
    cell = "".join(json.loads((ROOT / "notebooks" / "03_train_dncnn.ipynb").read_text())["cells"][1]["source"])
    code = cell + "\nprint('DATA', helpers.data_dir()); print('WORKSPACE', helpers.workspace_dir())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "notebooks",
                       env={**os.environ, "DESCAN_DRIVE": "1"}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"DATA {kaggle / 'input' / 'descanning-2023'}" in r.stdout
    assert "(the attached input, read in place)" in r.stdout
    assert f"WORKSPACE {kaggle / 'working' / 'workspace' / 'real'}" in r.stdout and "Drive" not in r.stdout
    assert "Kaggle setup done" in r.stdout and "device: cpu" in r.stdout
    # a notebook opened on its own (Kaggle does not share /kaggle/working) gets 01's split
    assert "made the page-grouped split as notebook 01 does" in r.stdout
    assert (kaggle / "working" / "workspace" / "real" / "manifest.csv").is_file()


def test_the_hosted_setup_does_nothing_elsewhere(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DESCAN_KAGGLE_ROOT", str(tmp_path))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    notebook.hosted_setup()
    assert capsys.readouterr().out == "" and not (tmp_path / "working").exists()
