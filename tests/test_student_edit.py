"""A student edits notebook 04 (the learning rate, the model's width, two processes), trains it, and
submits with notebook 05 in a fresh runtime: the edits reach torchrun's processes, the checkpoint and
the submission. Both notebooks run with nbclient, as Jupyter runs them, in smoke mode on the CPU."""
import csv
import json
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from builders import notebook_run
from descan import checkpoints, data, download, models, optim, recipes

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SMALL = dict(train_pages=6, unseen_pages=2, test_pages=1, crop=64)  # a demo set made in seconds


def edit(nb, marker: str, old: str, new: str, regex=False):
    """Change ``old`` to ``new`` in the one code cell holding ``marker``, as a student types it."""
    cells = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert len(cells) == 1, f"one code cell should hold {marker!r}"
    source, n = re.subn(old, new, cells[0].source, flags=re.M) if regex else \
        (cells[0].source.replace(old, new), cells[0].source.count(old))
    assert n == 1, f"{old!r} should be in the cell with {marker!r} once:\n{cells[0].source}"
    cells[0].source = source


def execute(nb, saved: Path):
    """Run ``nb`` in a new kernel (a new process) as if it sat in notebooks/, and keep the executed
    copy in ``saved``; returns the text the cells printed."""
    client = NotebookClient(nb, timeout=600, kernel_name="python3", extra_arguments=["--log-level=ERROR"],
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, str(saved))
    return "\n".join(out.get("text", "") for c in nb.cells if c.cell_type == "code" for out in c.get("outputs", [])
                     if out.get("output_type") == "stream")


def check_the_edits_reached_the_run(run_dir: Path) -> int:
    """The run folder records lr 3e-4 and width 24; returns the edited model's parameter count."""
    saved = json.loads((run_dir / "run.json").read_text())
    assert saved["config"]["lr"] == 3e-4 and saved["model"]["kwargs"]["width"] == 24
    cfg = recipes.load_run(run_dir)["config"]
    history = pd.read_csv(run_dir / "history.csv").query("step > 0")  # step 0: the start, no step
    assert 0 < history["lr"].max() <= 3e-4  # warm-up and cosine: never above the edited lr
    total = cfg.epochs * (cfg.crops_per_epoch // cfg.batch_size)
    want = [cfg.lr * optim.lr_factor(cfg, step - 1, total, 0.0) for step in history["step"]]
    assert history["lr"].tolist() == pytest.approx(want)  # the lr of each row's last step
    best = checkpoints.load_checkpoint(run_dir / checkpoints.BEST, kind="best")
    assert best["model_kwargs"]["width"] == 24 and best["config"]["lr"] == 3e-4
    edited = models.count_parameters(checkpoints.model_from_checkpoint(best))
    default = notebook_run("attention")["model"]
    assert default["kwargs"]["width"] == 16
    assert edited != models.count_parameters(models.build(default["code"], default["name"], default["kwargs"]))
    return edited


def test_a_student_edits_04_trains_with_two_processes_and_05_submits_it(tmp_path, monkeypatch):
    first_data, workspace = tmp_path / "data", tmp_path / "workspace"
    for name, value in {"DESCAN_SMOKE": "1", "DESCAN_DATA": str(first_data), "DESCAN_WORKSPACE": str(workspace)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DESCAN_RUN_NAME", raising=False)
    monkeypatch.delenv("DESCAN_CHECKPOINT", raising=False)
    download.get_demo(first_data, **SMALL)  # what notebook 01 does (a small demo set), and the split
    data.write_manifest(data.make_manifest(first_data), workspace)

    nb = nbformat.read(NOTEBOOKS / "04_train_attention.ipynb", as_version=4)
    edit(nb, recipes.MARKERS["config"], "lr=1e-3", "lr=3e-4")
    edit(nb, recipes.MARKERS["model"], "update(width=16", "update(width=24")
    edit(nb, "launch.train(", r"^PROCESSES = .*$", "PROCESSES = 2", regex=True)
    out = execute(nb, tmp_path / "04_edited.ipynb")
    assert "$ torchrun " in out and "x 2 processes (torchrun)" in out, out[-3000:]

    run_dir = checkpoints.run_dir(workspace, "attention_unet")
    edited = check_the_edits_reached_the_run(run_dir)

    # notebook 05 in a fresh runtime: a new data folder (the same demo set made again), the same
    # workspace, and the student asks for the run by name
    new_data = tmp_path / "fresh_runtime_data"
    download.get_demo(new_data, **SMALL)
    monkeypatch.setenv("DESCAN_DATA", str(new_data))
    monkeypatch.setenv("DESCAN_CHECKPOINT", "attention_unet")
    nb = nbformat.read(NOTEBOOKS / "05_submit.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(  # a probe: which model 05 rebuilt
        'print("REBUILT", type(model).__name__, sum(p.numel() for p in model.parameters()), chosen["path"])'))
    out = execute(nb, tmp_path / "05_executed.ipynb")
    rebuilt = re.search(r"^REBUILT (\w+) (\d+) (.+)$", out, re.M)
    assert rebuilt, out[-3000:]
    assert rebuilt.groups() == ("AttentionUNet", str(edited), str(run_dir / checkpoints.BEST))
    assert str(run_dir / checkpoints.BEST) in out.replace(rebuilt.group(0), "")  # 05 names it

    with open(workspace / "submission.csv", newline="") as f:
        rows = list(csv.reader(f))
    test_ids = sorted(p.stem for p in (new_data / "test" / "scan").iterdir())
    assert rows[0] == ["Image File", "Y Channel Value"] and test_ids
    assert [r[0] for r in rows[1:]] == test_ids
    assert all(0 <= float(r[1]) <= 255 for r in rows[1:])
