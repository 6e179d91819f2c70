"""Starting a training run, as notebooks 03 and 04 and ``python -m descan train`` do: in this
process, or under torchrun with one process per GPU, each reading the run's recipe from run.json."""
from __future__ import annotations

import codecs
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from helpers import ROOT, DataError, dataset_kind
from descan import checkpoints, data, distributed, engine, recipes


def processes_for(device) -> int:
    """How many training processes a notebook starts by default: one per visible GPU, else one."""
    return max(1, torch.cuda.device_count()) if torch.device(device).type == "cuda" else 1


def train(run: dict, data_dir, workspace, run_name: str, device, processes: int = 1) -> dict | None:
    """Save ``run`` (a recipe from recipes.make_run) in WORKSPACE/runs/RUN_NAME/run.json and train
    it: here with one process, else under torchrun with ``processes`` (its output streams here).
    Returns the Trainer's result (None under torchrun: read the run folder's files)."""
    folder = checkpoints.run_dir(workspace, run_name)
    distributed.check_batch(run["config"].batch_size, run["config"].crops_per_image, processes)
    recipes.save_run(run, folder)
    if processes > 1:
        return launch(folder, processes, data_dir, workspace)
    return train_saved(folder, data_dir, workspace, device)


def train_saved(folder, data_dir, workspace, device) -> dict:
    """Train the recipe saved in ``folder``: what every process does (under torchrun, too)."""
    run = recipes.load_run(folder)
    run["config"] = recipes.with_env(run["config"])
    train_pairs, val_pairs = distributed.main_first(lambda: data.load_split(data_dir, workspace))
    procs = distributed.world_size()
    print(f"training {run['model']['name']} {run['model']['kwargs']} on {len(train_pairs)} pairs "
          f"({dataset_kind(data_dir)} data), validating on {len(val_pairs)}, device {device}"
          + (f" x {procs} processes (torchrun)" if procs > 1 else "")
          + f", run {folder}\n{run['config']}")
    trainer = engine.Trainer(run, train_pairs, val_pairs, folder, device, dataset_kind(data_dir))
    return trainer.fit()


def torchrun_command(folder, processes: int, data_dir, workspace) -> list[str]:
    """``python -m torch.distributed.run --nproc_per_node=N -m descan train --run-dir ...``"""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", "-m", "descan", "train", "--run-dir", str(folder),
            "--data", str(data_dir), "--workspace", str(workspace)]


def launch(folder, processes: int, data_dir, workspace) -> None:
    """Train the recipe saved in ``folder`` with ``processes`` processes under torchrun, streaming
    their output. Stopping the notebook (or Ctrl-C) sends SIGINT to all of them and waits: process 0
    saves last.pt once, and running the cell again resumes. A second Ctrl-C stops them at once."""
    cmd = torchrun_command(Path(folder), processes, data_dir, workspace)
    print("$ torchrun " + " ".join(cmd[3:]), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    interrupted = False
    with proc.stdout:
        while True:
            try:  # the output as it comes, progress bars' carriage returns included
                if not (chunk := os.read(proc.stdout.fileno(), 4096)):
                    break
                sys.stdout.write(decoder.decode(chunk))
                sys.stdout.flush()
            except KeyboardInterrupt:  # the first: process 0 saves last.pt; a second: stop now
                os.killpg(proc.pid, signal.SIGKILL if interrupted else signal.SIGINT)
                interrupted = True
    code = proc.wait()
    if interrupted:
        raise KeyboardInterrupt
    if code != 0:
        raise DataError(f"training with {processes} processes stopped (exit code {code}); the "
                        "reason is in the output above. Run the cell again to resume from last.pt, "
                        "or set PROCESSES = 1 to train in this process.")
