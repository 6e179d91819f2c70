"""Training under torchrun: 2 processes on the CPU (gloo), as CI can run it.

The processes are started as the notebooks start them (launch.train, launch.launch, or the torchrun
command), on a tiny demo set, with notebook 04's recipe in smoke mode (batch 8 = 2 pairs x 4 crops:
one pair per process per step). The model's code travels with the run and is run in every process,
so test hooks ride in it: each process saves its final weights, or one process fails on purpose.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from builders import notebook_run
from descan import checkpoints, data, demo, distributed, engine, launch, recipes
from helpers import DataError

ROOT = Path(__file__).resolve().parents[1]

HOOKS = '''

# ---- test hooks, run in every process with the model's code
import os
from descan import engine

if not hasattr(engine.Trainer, "test_hooked"):  # the code runs once per model built
    _fit, _step = engine.Trainer.fit, engine.Trainer.train_step

    def fit(self, *args, **kwargs):  # each process saves its own final weights
        result = _fit(self, *args, **kwargs)
        torch.save(self.model.state_dict(), self.run_dir / f"rank{os.environ['RANK']}.weights")
        return result

    def train_step(self, *args, **kwargs):  # the process named by TEST_FAIL_RANK fails at step 2
        if os.environ.get("TEST_FAIL_RANK") == os.environ["RANK"] and self.step == 2:
            raise RuntimeError("deliberate failure " + "in process " + os.environ["RANK"])
        return _step(self, *args, **kwargs)

    engine.Trainer.fit, engine.Trainer.train_step, engine.Trainer.test_hooked = fit, train_step, True
'''


def hooked_run(**settings):
    """Notebook 04's recipe (smoke mode, CPU) with the hooks above in its model code."""
    run = notebook_run("attention", **settings)
    run["model"]["code"] += HOOKS
    return run


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(data, workspace): 6 demo pages x 2 crops of 64 px and the split."""
    root = tmp_path_factory.mktemp("ddp")
    demo.make_demo_dataset(root / "data", train_pages=6, test_pages=1, crops_per_page=2, crop=64, show_progress=False)
    (root / "ws").mkdir()
    data.write_manifest(data.make_manifest(root / "data", 0.2), root / "ws")
    return root / "data", root / "ws"


def run_env(**extra):
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def test_two_processes_match_one(folders, capsys):
    """Both processes end with identical weights, the files are written once (by process 0), and
    the weights are close to one process's with the same global batch and seed.

    Tolerance: process r takes items r, r+2 ... of the very sequence of crops one process draws, so
    both runs see the same crops in every step; what differs is floating point only (each process
    averages the loss over 4 crops and DDP averages the two gradients, instead of one mean over 8;
    the sums run in another order). After 8 AdamW steps those ~1e-8 differences stay below 1e-4 of
    each tensor's norm, or of 0.01 for a smaller tensor (measured: at most 1.4e-5, for the output
    bias, whose norm is 7e-4 after starting at zero; else at most 1.2e-6). Other crops from the same initial
    weights (a sharding bug) move the tensors by 2e-4 to 1.1 of their norm (median 9e-3).
    """
    data_dir, ws = folders
    assert launch.train(hooked_run(), data_dir, ws, "two", "cpu", processes=2) is None  # output streamed here
    out = capsys.readouterr().out
    run = ws / "runs" / "two"
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "history.csv", "history.png", "last.pt",
                                                      "rank0.weights", "rank1.weights", "run.json"]
    assert out.count("epoch 1: train loss") == 1 and out.count("best validation score") == 1  # process 0 speaks
    assert "x 2 processes (torchrun)" in out and "$ torchrun " in out
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [1, 1, 2] and list(history["step"]) == [0, 4, 8]
    w0, w1 = (torch.load(run / f"rank{r}.weights", weights_only=True) for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    last = checkpoints.load_checkpoint(run / "last.pt", kind="last")
    assert all(torch.equal(last["model"][k], w0[k]) for k in w0)

    plain = notebook_run("attention")  # the same model and settings, without the hooks
    assert recipes.load_run(run)["config"] == plain["config"]
    train, val = data.load_split(data_dir, ws)
    one = engine.Trainer(plain, train, val, ws / "runs" / "one", "cpu", "demo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1)
    try:
        one.fit()
    finally:
        torch.set_num_threads(threads)
    for k, v in one.model.state_dict().items():
        if v.is_floating_point():
            rel = (v - w0[k]).norm() / v.norm().clamp_min(1e-2)  # outro.bias starts at 0: ~7e-4
            assert rel < 1e-4, (k, float(rel))
    assert history["val_score"].tolist() == pytest.approx([r["val_score"] for r in one.history], rel=1e-3)


def test_interrupt_then_kill_then_resume(folders):
    """Stopping the notebook (SIGINT to the kernel running launch.launch, as Jupyter sends it)
    saves last.pt once; a kill -9 of the whole job loses only the steps since the last save; the
    same command then resumes and finishes."""
    data_dir, ws = folders
    folder = checkpoints.run_dir(ws, "cut")
    recipes.save_run(hooked_run(epochs=6, checkpoint_minutes=0.0), folder)
    cmd = launch.torchrun_command(folder, 2, data_dir, ws)
    # as a Jupyter kernel, Ctrl-C raises KeyboardInterrupt, even when pytest runs in the background
    notebook = [sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
                f"from descan import launch; launch.launch({str(folder)!r}, 2, {str(data_dir)!r}, {str(ws)!r})"]
    history = folder / "history.csv"
    for command, stop in ((notebook, lambda p: os.kill(p.pid, signal.SIGINT)),
                          (cmd, lambda p: os.killpg(p.pid, signal.SIGKILL))):
        rows = len(pd.read_csv(history)) if history.exists() else 0
        proc = subprocess.Popen(command, cwd=ROOT, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        deadline = time.time() + 120
        while (not history.exists() or len(pd.read_csv(history)) <= rows) and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            time.sleep(0.05)
        stop(proc)
        out = proc.communicate(timeout=120)[0]
        assert proc.returncode != 0, out[-3000:]
        if command is notebook:
            assert out.count("Interrupted: saved") == 1 and "KeyboardInterrupt" in out, out[-3000:]
    r = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("Resuming ") == 1
    assert list(pd.read_csv(history)["epoch"]) == [1, *range(1, 7)]  # step 0, then the 6 epochs
    assert checkpoints.load_checkpoint(folder / "last.pt", kind="last")["step"] == 24


def test_a_budget_stops_every_process_at_the_same_step(folders):
    """Process 0's clock decides for all: they stop after the same step, with the same weights."""
    data_dir, ws = folders
    folder = checkpoints.run_dir(ws, "budget")
    recipes.save_run(hooked_run(epochs=1000), folder)
    cmd = launch.torchrun_command(folder, 2, data_dir, ws)
    r = subprocess.run(cmd, cwd=ROOT, env=run_env(DESCAN_TRAIN_MINUTES="0.02"), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("Budget of 0.02 min spent after") == 1
    w0, w1 = (torch.load(folder / f"rank{r}.weights", weights_only=True) for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert 0 < checkpoints.load_checkpoint(folder / "last.pt", kind="last")["step"] < 4000


def test_a_failing_process_ends_the_run_with_its_message_once(folders, capsys, monkeypatch):
    data_dir, ws = folders
    monkeypatch.setenv("TEST_FAIL_RANK", "1")
    with pytest.raises(DataError, match=r"2 processes stopped \(exit code 1\).*PROCESSES = 1"):
        launch.train(hooked_run(), data_dir, ws, "fails", "cpu", processes=2)
    out = capsys.readouterr().out
    assert out.count("deliberate failure in process 1") == 1, out[-4000:]


def test_a_batch_that_does_not_split_is_refused_by_name(folders):
    with pytest.raises(ValueError, match=r"batch_size=12 must be a multiple of crops_per_image=4 x processes=2"):
        distributed.check_batch(12, 4, 2)
    distributed.check_batch(16, 4, 2)
    run = notebook_run("attention", batch_size=12, crops_per_image=4)  # refused before anything starts
    with pytest.raises(ValueError, match=r"batch_size=12 .*processes=2.*Change the batch or the number"):
        launch.train(run, *folders, "odd", "cpu", processes=2)
    assert not checkpoints.run_dir(folders[1], "odd").exists()


def test_one_process_is_left_alone(monkeypatch):
    """Outside torchrun nothing changes: no process group, the model itself, the dataset itself."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    model = torch.nn.Conv2d(3, 3, 1)
    assert distributed.init("cpu") == torch.device("cpu") and distributed.world_size() == 1
    assert distributed.wrap(model, "cpu") is model and distributed.shard([1, 2], 2, 0, 1) == [1, 2]
    assert distributed.share(2.5) == 2.5 and distributed.share({"a": 1}) == {"a": 1}  # the history
    assert distributed.average(2.5) == 2.5  # a loss, the clock


def test_the_shards_together_are_one_process_batches():
    items = list(range(22))  # 5 whole batches of 4 pairs, then 2 left over (dropped, as one process does)
    shards = [distributed.shard(items, 4, r, 2) for r in (0, 1)]
    steps = [[shards[r][2 * s + k] for r in (0, 1) for k in (0, 1)] for s in range(5)]
    assert [sorted(s) for s in steps] == [items[4 * s:4 * s + 4] for s in range(5)]
    assert len(shards[0]) == len(shards[1]) == 10


def test_the_number_of_processes_and_the_torchrun_command(tmp_path):
    """The notebooks start one process per GPU (one on a CPU); torchrun's processes run this Python
    on the recipe saved in the run folder."""
    assert launch.processes_for("cpu") == 1
    assert launch.processes_for("cuda") == max(1, torch.cuda.device_count())
    cmd = launch.torchrun_command(tmp_path / "runs" / "r", 2, tmp_path / "d", tmp_path / "w")
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc_per_node=2" in cmd
    assert cmd[cmd.index("--run-dir") + 1] == str(tmp_path / "runs" / "r")


def test_loader_workers_are_shared_out_among_the_processes_of_a_machine(monkeypatch):
    from descan import crops
    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # Kaggle's 4 cores beside its 2 GPUs
    assert crops.default_workers("cuda") == 4 and crops.default_workers("cuda", processes=2) == 2
    assert crops.default_workers("cuda", processes=8) == 1 and crops.default_workers("cpu", processes=2) == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.local_processes() == 1  # outside a process group: one process
    monkeypatch.setattr(distributed, "world_size", lambda: 4)  # two machines of two processes
    assert distributed.local_processes() == 2
