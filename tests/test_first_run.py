"""The user's first run: one rule for paths, workspaces kept apart by the kind of data, files
written with normal permissions, and every notebook starting in a fresh runtime."""
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import helpers  # noqa: E402
from builders import png_bytes  # noqa: E402
from descan import recipes, submit  # noqa: E402
from descan import files  # noqa: E402


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESCAN")}
    env.update(extra)
    return env


def workspace_seen_from(cwd, env):
    r = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import helpers; "
                        "print(helpers.workspace_dir())", str(ROOT)], capture_output=True, text=True, cwd=cwd,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_relative_workspace_is_the_same_folder_from_a_notebook_and_the_command_line(tmp_path):
    rel = f"workspace/test-{tmp_path.name}"
    env = clean_env(DESCAN_WORKSPACE=rel)
    try:
        seen = {workspace_seen_from(cwd, env) for cwd in (ROOT, ROOT / "notebooks", tmp_path)}
        assert seen == {str(ROOT / rel)}
        assert not (ROOT / "notebooks" / "workspace").exists()
    finally:
        import shutil
        shutil.rmtree(ROOT / rel, ignore_errors=True)


def test_the_workspace_follows_the_kind_of_data_not_the_smoke_switch(tmp_path, monkeypatch):
    monkeypatch.delenv("DESCAN_WORKSPACE")
    demo, real = tmp_path / "demo", tmp_path / "real"
    (demo / "train/clean").mkdir(parents=True)
    (demo / helpers.DEMO_MARKER).write_text("demo")
    (real / "train/clean").mkdir(parents=True)
    monkeypatch.setattr(helpers, "ROOT", tmp_path)  # keep the folders it creates out of the repository
    for smoke in ("0", "1"):
        monkeypatch.setenv("DESCAN_SMOKE", smoke)
        assert helpers.workspace_dir(demo) == tmp_path / "workspace" / "demo"
        assert helpers.workspace_dir(real) == tmp_path / "workspace" / "real"
    # an empty data folder holds what the mode will put there
    assert helpers.workspace_dir(tmp_path / "empty") == tmp_path / "workspace" / "demo"
    monkeypatch.setenv("DESCAN_SMOKE", "0")
    assert helpers.workspace_dir(tmp_path / "empty") == tmp_path / "workspace" / "real"


@pytest.mark.parametrize("value, expected", [("1", True), ("on", True), ("YES", True), ("0", False), ("off", False),
                                             ("", False)])
def test_one_truthiness_rule_for_every_switch(monkeypatch, value, expected):
    monkeypatch.setenv("DESCAN_SMOKE", value)
    assert helpers.smoke_mode() is expected
    monkeypatch.setenv("DESCAN_DRIVE", value)
    assert helpers.env_flag("DESCAN_DRIVE", False) is expected


def test_bad_settings_are_refused_by_name(monkeypatch):
    monkeypatch.setenv("DESCAN_SMOKE", "maybe")
    with pytest.raises(ValueError, match="DESCAN_SMOKE='maybe' is not a switch"):
        helpers.smoke_mode()
    monkeypatch.setenv("DESCAN_TRAIN_MINUTES", "abc")
    with pytest.raises(ValueError, match="DESCAN_TRAIN_MINUTES='abc' is not a number of minutes"):
        recipes.with_env(recipes.TrainConfig())
    monkeypatch.setenv("DESCAN_TRAIN_MINUTES", "-1")
    with pytest.raises(ValueError, match=r"DESCAN_TRAIN_MINUTES='-1' is not a number of minutes "
                                         r"\(0 or more\)"):
        recipes.with_env(recipes.TrainConfig())


def test_files_get_the_permissions_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain.csv"
    with open(plain, "w") as f:
        f.write("x")
    csv = submit.write_submission([("a", 1.0)], tmp_path / "submission.csv", ["a"])
    png = tmp_path / "x.png"
    files.write_image(png, np.zeros((2, 2, 3), np.uint8))
    mode = stat.S_IMODE(plain.stat().st_mode)
    assert stat.S_IMODE(csv.stat().st_mode) == mode and stat.S_IMODE(png.stat().st_mode) == mode


# ---------------------------------------------------------------- a fresh runtime

FAKE_GDOWN = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
echo "fake gdown: no download may happen in this test" >&2
exit 3
"""


def competition_zips(cache):
    """Three small zips in the competition's layout (real data: no demo marker): 8 pages x 2 crops."""
    rng = np.random.default_rng(0)
    names = [f"Mag{p:02d}.{p:05d}.{c:02d}" for p in range(8) for c in (1, 2)]
    files = {"train_clean.zip": [], "train_scan.zip": [], "test_scan.zip": []}
    for n in names:
        clean = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        scan = np.clip(clean.astype(int) * 0.8 + 30, 0, 255).astype(np.uint8)
        files["train_clean.zip"].append((f"{n}.png", png_bytes(clean)))
        files["train_scan.zip"].append((f"{n}.png", png_bytes(scan)))
    for i in range(2):
        files["test_scan.zip"].append((f"scanner01_{i:03d}.png", png_bytes(rng.integers(0, 256, (64, 64, 3),
                                                                                         dtype=np.uint8))))
    cache.mkdir(parents=True)
    for name, entries in files.items():
        with zipfile.ZipFile(cache / name, "w") as zf:
            for arc, data in entries:
                zf.writestr(arc, data)


def run_notebooks(names, env):
    r = subprocess.run([sys.executable, "-m", "descan", "run-notebooks",
                        *[str(ROOT / "notebooks" / n) for n in names]],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_a_fresh_runtime_unpacks_the_data_from_the_zip_cache_without_downloading(tmp_path):
    """Notebook 01, then the runtime is replaced (the data folder is gone; workspace and zip cache
    survive, as on Drive), then notebook 03: it unpacks the zips again and trains."""
    data, workspace, cache = tmp_path / "data", tmp_path / "workspace", tmp_path / "drive_zips"
    competition_zips(cache)
    fake = tmp_path / "bin" / "gdown"  # first on PATH: any download would run it
    fake.parent.mkdir()
    fake.write_text(FAKE_GDOWN)
    fake.chmod(0o755)
    env = clean_env(DESCAN_SMOKE="1", DESCAN_DATA=str(data), DESCAN_WORKSPACE=str(workspace),
                    DESCAN_ZIP_CACHE=str(cache), FAKE_LOG=str(tmp_path / "calls"), MPLBACKEND="Agg",
                    PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    run_notebooks(["01_download.ipynb"], env)
    assert (workspace / "manifest.csv").is_file() and len(list((data / "train/clean").iterdir())) == 16
    import shutil
    shutil.rmtree(data)  # a new Colab runtime: /content is empty
    r = run_notebooks(["03_train_dncnn.ipynb"], env)
    assert not (tmp_path / "calls").exists(), "a download was attempted"
    assert len(list((data / "train/scan").iterdir())) == 16 and len(list((data / "test/scan").iterdir())) == 2
    assert not (data / helpers.DEMO_MARKER).exists()
    assert (workspace / "runs/dncnn/best.pt").is_file() and (workspace / "runs/dncnn/history.csv").is_file()
    assert "ok in" in r.stdout and "WARNING" not in r.stdout + r.stderr
    # quiet notebooks: no warnings (e.g. tqdm's about missing widgets) in the executed outputs
    for nb in (workspace / "executed").glob("*.ipynb"):
        outputs = [o for c in json.loads(nb.read_text())["cells"] for o in c.get("outputs", [])]
        text = json.dumps(outputs)
        assert "Warning" not in text and "Traceback" not in text, nb.name


def test_a_failing_notebook_says_its_error_first(tmp_path):
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('the data is gone')")]
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, str(path))
    env = clean_env(DESCAN_WORKSPACE=str(tmp_path / "ws"), DESCAN_DATA=str(tmp_path / "data"))
    r = subprocess.run([sys.executable, "-m", "descan", "run-notebooks", str(path)], capture_output=True,
                       text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 1
    assert r.stderr.startswith("error: broken.ipynb stopped: ValueError: the data is gone"), r.stderr[:500]
    assert "Traceback" not in r.stderr and (tmp_path / "ws/executed/broken.ipynb").is_file()


def test_in_a_notebook_the_kits_errors_show_their_message_not_a_traceback(tmp_path):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"import sys; sys.path.insert(0, {str(ROOT)!r})\nfrom descan import notebook\n"
                                          "notebook.setup()\nfrom descan import data"),
                nbformat.v4.new_code_cell(f"data.read_manifest({str(tmp_path / 'manifest.csv')!r})")]
    with pytest.raises(CellExecutionError) as e:  # still an error: Run all stops there
        NotebookClient(nb, kernel_name="python3", extra_arguments=["--log-level=ERROR"]).execute()
    assert e.value.ename == "DataError"
    shown = "".join(nb.cells[1].outputs[-1]["traceback"])
    assert "no manifest at" in shown and "Run notebook 01 first" in shown and "read_manifest" not in shown


def test_training_as_a_command_writes_what_the_notebook_does(tmp_path):
    """A small demo set first (the default one trains the same, only slower), then the command."""
    env = clean_env(DESCAN_SMOKE="1", MPLBACKEND="Agg")
    subprocess.run([sys.executable, "-m", "descan", "download", "--demo", "--pages", "6", "--size", "64",
                    str(tmp_path / "data")], capture_output=True, cwd=ROOT, env=env, check=True)
    r = subprocess.run([sys.executable, "-m", "descan", "train", "--recipe", "dncnn", "epochs=1",
                        "--data", str(tmp_path / "data"), "--workspace", str(tmp_path / "ws")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "split as notebook 01 does" in r.stdout and "best validation score" in r.stdout
    for name in ("best.pt", "last.pt", "history.csv", "history.png"):
        assert (tmp_path / "ws/runs/dncnn" / name).is_file()
    assert (tmp_path / "ws/manifest.csv").is_file() and (tmp_path / "data" / helpers.DEMO_MARKER).is_file()
