"""Several processes, one training run: torchrun's environment and DistributedDataParallel (the
launcher that notebooks 03 and 04 use with more than one GPU is in descan/launch.py).

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

import datetime
import os
import signal
import sys
import warnings

import torch
import torch.distributed as tdist

from helpers import DataError

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
                            "visible: give --nproc_per_node at most the number of GPUs (PROCESSES in the notebooks)")
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
        raise ValueError(f"batch_size={batch_size} must be a multiple of crops_per_image={crops_per_image}"
                         f" x processes={processes}: each process takes whole pairs of every batch. Change "
                         "the batch or the number of processes.")


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
