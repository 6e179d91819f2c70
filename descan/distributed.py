"""Several processes, one training run: torchrun's environment, DistributedDataParallel, and the
launcher that notebooks 03 and 04 use when there is more than one GPU.

``torchrun --nproc_per_node=N -m descan train ...`` starts N copies of the command; each finds its
RANK, WORLD_SIZE and LOCAL_RANK in the environment and joins the process group (``init``). Process 0,
the *main* process, is the only one that validates, writes best.pt, last.pt and the history, and
prints (the others' stdout goes nowhere; their errors still reach stderr). Every step, each process
trains on its share of the recipe's batch: process r takes items r, r+N, r+2N ... of the very
sequence one process would draw (``shard``), so the global batch is the recipe's batch and the result
does not depend on N beyond floating point; DDP averages the gradients. Time-based decisions (the
budget, the learning-rate schedule, validation points) use process 0's clock, shared every step,
so all processes stop at the same step.

BatchNorm (DnCNN has it): on GPUs it becomes SyncBatchNorm, so its statistics are those of the whole
batch, as in one process. PyTorch's SyncBatchNorm does not run on CPUs, so on CPUs (gloo) each
process normalises with its own share's statistics: a small difference from one process, only
for models with BatchNorm, and only on CPUs.

Outside torchrun (WORLD_SIZE unset or 1) every function here is a no-op or returns its input.
"""
from __future__ import annotations

import codecs
import dataclasses
import datetime
import os
import signal
import subprocess
import sys
import warnings

import torch
import torch.distributed as tdist

from helpers import ROOT, DataError, smoke_mode
from descan.settings import env_number

TIMEOUT_MINUTES = 60  # how long a process waits for the others (process 0 validates while they wait)
_DEVICE = None        # this process's device, for the small tensors of the collectives


def launched() -> bool:
    """True in a process that torchrun started as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def local_processes() -> int:
    """Training processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size())) if world_size() > 1 else 1


def is_main() -> bool:
    """True in the process that validates, writes and prints (always, outside torchrun)."""
    return rank() == 0


def _interrupt_once(signum, frame):
    """Ctrl-C reaches every process, and torchrun passes it on once more: the first one interrupts
    (process 0 then saves last.pt), later ones are ignored so that they cannot break that save."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def init(device) -> torch.device:
    """Join torchrun's process group when started by it: NCCL with one GPU per process (by
    LOCAL_RANK), gloo on CPUs. Returns this process's device (``device`` outside torchrun)."""
    global _DEVICE
    device = torch.device(device)
    if not launched() or tdist.is_initialized():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise DataError(f"torchrun started process {local} but only {torch.cuda.device_count()} GPUs are "
                            "visible: give --nproc_per_node at most the number of GPUs (DESCAN_GPUS in the notebooks)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                             timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES))
    _DEVICE = device
    signal.signal(signal.SIGINT, _interrupt_once)
    if not is_main():  # one voice: only process 0 prints
        sys.stdout = open(os.devnull, "w")
    return device


def teardown() -> None:
    """Leave the process group after a run that ended normally."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def peer_failed(error: BaseException) -> bool:
    """True when ``error`` only says that another process of the run died (its own message is
    printed by that process, so this one should not add a second traceback)."""
    if world_size() == 1 or isinstance(error, DataError):
        return False
    text = str(error)
    return isinstance(error, getattr(tdist, "DistError", ())) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


# ---- collectives (no-ops in one process) -----------------------------------------------------------

def from_main(value: float) -> float:
    """Process 0's value of a number, in every process."""
    if world_size() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_DEVICE)
    tdist.broadcast(t, src=0)
    return float(t.item())


def average(value: float) -> float:
    """The mean of a number over the processes (e.g. each one's training loss on its share)."""
    if world_size() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_DEVICE)
    tdist.all_reduce(t)
    return float(t.item()) / world_size()


def share(obj):
    """Process 0's copy of a picklable object (the history, a validation result), in every process."""
    if world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def main_first(fn):
    """Run ``fn()`` in process 0 first and in the others only once it has succeeded there. A problem
    that every process would meet (no data, a settings mismatch on resume) is then reported once,
    by process 0; the others stop with it."""
    if world_size() == 1:
        return fn()
    if is_main():
        result = fn()
        tdist.barrier()
        return result
    tdist.barrier()
    return fn()


# ---- the model and the data --------------------------------------------------------------------

def wrap(model, device):
    """The model to train with: ``model`` itself in one process; else DistributedDataParallel
    around it (on GPUs, its BatchNorm layers become SyncBatchNorm, in place). ``model`` keeps its
    parameters and state_dict keys, so checkpoints do not change."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    # channels-last weights of shape (1, C, 1, 1) have strides that DDP calls mismatched; for sizes of
    # 1 both layouts are the same memory, so its warning says nothing here
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    device = torch.device(device)
    if device.type == "cuda":
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the children in place
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def check_batch(batch_size: int, crops_per_image: int, processes: int) -> None:
    """ValueError unless every process gets whole pairs of every batch."""
    if batch_size % (crops_per_image * processes):
        raise ValueError(f"batch_size={batch_size} (DESCAN_BATCH) must be a multiple of crops_per_image="
                         f"{crops_per_image} (DESCAN_CROPS_PER_IMAGE) x processes={processes} (--nproc_per_node, "
                         "DESCAN_GPUS): each process takes whole pairs of every batch. Change the batch or the "
                         "number of processes.")


class Shard(torch.utils.data.Dataset):
    """Process r's items of a dataset: r, r+N, r+2N ... of its first whole batches. With batches of
    ``pairs_per_batch / N`` items, step s of process r holds items s*B + r, s*B + r + N ... (B =
    pairs_per_batch): together, exactly the items of step s in one process."""

    def __init__(self, dataset, pairs_per_batch: int, rank_: int, processes: int):
        self.dataset, self.rank, self.n = dataset, rank_, processes
        self.per_rank = pairs_per_batch // processes
        self.pairs_per_batch = pairs_per_batch

    def __len__(self):
        return len(self.dataset) // self.pairs_per_batch * self.per_rank

    def __getitem__(self, i):
        return self.dataset[i * self.n + self.rank]


def shard(dataset, pairs_per_batch: int):
    """This process's share of ``dataset`` (the dataset itself in one process)."""
    if world_size() == 1:
        return dataset
    check_batch(pairs_per_batch, 1, world_size())
    return Shard(dataset, pairs_per_batch, rank(), world_size())


# ---- notebooks: how many processes, and the launcher ---------------------------------------------------

def gpu_count_wanted() -> int:
    """How many training processes the notebooks start: DESCAN_GPUS when set (0 or 1: train in the
    notebook's own process; N: torchrun with N processes, one per GPU, or on the CPU without GPUs),
    else the number of GPUs visible."""
    gpus = torch.cuda.device_count()
    wanted = env_number("DESCAN_GPUS", -1, 0, 64)
    if wanted < 0:
        return gpus
    if gpus and wanted > gpus:
        raise ValueError(f"DESCAN_GPUS={wanted} but only {gpus} GPUs are visible: set it to at most {gpus}, "
                         "or unset it to use them all")
    return wanted


def torchrun_command(recipe: str, processes: int, data=None, workspace=None, run_name=None) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N -m descan train --recipe R ...``"""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "descan", "train", "--recipe", recipe]
    for flag, value in (("--data", data), ("--workspace", workspace), ("--run-name", run_name)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def _check_same_recipe(recipe: str, cfg, model, device) -> None:
    """The processes build their model and settings from RECIPES and DESCAN_*; refuse a notebook's own changes."""
    from descan.recipes import recipe as build
    name, kwargs, theirs = build(recipe, device, smoke_mode())
    if model is not None and (model[0], dict(model[1])) != (name, kwargs):
        raise ValueError(f"the notebook trains {model[0]} {dict(model[1])}, but the torchrun processes train the "
                         f"recipe's {name} {kwargs}. Train your model in this process: DESCAN_GPUS=1.")
    changed = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(theirs, f.name)] \
        if cfg is not None else []
    if changed:
        raise ValueError(f"CFG was changed in the notebook ({', '.join(changed)}), but the torchrun processes "
                         "read their settings from RECIPES and the DESCAN_* variables only. Set the DESCAN_* "
                         "variables instead (README), or train in this process: DESCAN_GPUS=1.")


def _stream(proc) -> None:
    """Copy the process's output here as it comes (progress bars' carriage returns included)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while chunk := os.read(proc.stdout.fileno(), 4096):
        sys.stdout.write(decoder.decode(chunk))
        sys.stdout.flush()


def launch(recipe: str, processes: int, data=None, workspace=None, run_name=None, cfg=None, model=None,
           device="cuda") -> None:
    """Train a recipe with ``processes`` processes under torchrun, its output streaming here.

    ``cfg`` and ``model`` ((name, kwargs)), when given, must be the recipe's (with the DESCAN_*
    variables): the processes build their own from those. Stopping the notebook (or Ctrl-C) sends
    SIGINT to all of them and waits: process 0 saves
    last.pt once, as in one process, and running the cell again resumes. A failure raises DataError
    with the exit code; the message is in the output above it.
    """
    if cfg is not None or model is not None:
        _check_same_recipe(recipe, cfg, model, device)
    cmd = torchrun_command(recipe, processes, data, workspace, run_name)
    print("$ torchrun " + " ".join(cmd[3:]), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _stream(proc)
        code = proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGINT)  # torchrun and its processes: process 0 saves last.pt
        try:
            _stream(proc)
            proc.wait()
        except KeyboardInterrupt:  # a second interrupt: stop at once
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    finally:
        proc.stdout.close()
    if code != 0:
        raise DataError(f"training with {processes} processes stopped (exit code {code}); the reason is in the "
                        "output above. Run the cell again to resume from last.pt, or set DESCAN_GPUS=1 to train "
                        "in this process.")
