"""Starting a training run, as notebooks 03 and 04 and ``python -m descan train`` do: in this
process, or under torchrun with one process per GPU, each reading the run's recipe from run.json."""
from __future__ import annotations

import codecs
import os
import signal
import subprocess
import sys

import torch

from helpers import ROOT, DataError, dataset_kind
from descan import checkpoints, data, distributed, engine, recipes


def processes_for(device) -> int:
    """How many training processes a notebook starts by default: one per visible GPU, else one."""
    return max(1, torch.cuda.device_count()) if torch.device(device).type == "cuda" else 1


def train(run: dict, data_dir, workspace, run_name: str, device, processes: int = 1) -> dict | None:
    """Save ``run`` as its folder's run.json and train it: here, or under torchrun (then None)."""
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
    procs, kind = distributed.world_size(), dataset_kind(data_dir)
    print(f"training {run['model']['name']} {run['model']['kwargs']} on {len(train_pairs)} pairs "
          f"({kind} data), validating on {len(val_pairs)}, device {device}"
          + (f" x {procs} processes (torchrun)" if procs > 1 else "") + f", run {folder}\n"
          + str(run["config"]))
    return engine.Trainer(run, train_pairs, val_pairs, folder, device, kind).fit()


def torchrun_command(folder, processes: int, data_dir, workspace) -> list[str]:
    """``python -m torch.distributed.run --nproc_per_node=N -m descan train --run-dir ...``"""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", "-m", "descan", "train", "--run-dir", str(folder),
            "--data", str(data_dir), "--workspace", str(workspace)]


def launch(folder, processes: int, data_dir, workspace) -> None:
    """Train the recipe saved in ``folder`` under torchrun, its output streamed here. Stopping the
    notebook (Ctrl-C) passes SIGINT on and waits while process 0 saves last.pt; a second one
    stops the processes at once. Running the cell again resumes."""
    cmd = torchrun_command(folder, processes, data_dir, workspace)
    print("$ torchrun " + " ".join(cmd[3:]), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    decoder, interrupted = codecs.getincrementaldecoder("utf-8")("replace"), False
    with proc.stdout:
        while True:
            try:  # as it comes, progress bars' carriage returns included
                if not (chunk := os.read(proc.stdout.fileno(), 4096)):
                    break
                print(decoder.decode(chunk), end="", flush=True)
            except KeyboardInterrupt:
                os.killpg(proc.pid, signal.SIGKILL if interrupted else signal.SIGINT)
                interrupted = True
    code = proc.wait()
    if interrupted:
        raise KeyboardInterrupt
    if code != 0:
        raise DataError(f"training with {processes} processes stopped (exit code {code}); the "
                        "reason is in the output above. Run the cell again to resume from last.pt, "
                        "or set PROCESSES = 1 to train in this process.")
