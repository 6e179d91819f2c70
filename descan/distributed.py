"""Several processes, one training run (torchrun, DistributedDataParallel; docs/torchrun.md).
Outside torchrun every function here is a no-op or returns its input."""
import datetime
import os
import signal
import sys
import warnings

import torch
import torch.distributed as tdist

from helpers import DataError


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


def rank() -> int:
    return tdist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    """True in the process that validates, writes and prints (always, outside torchrun)."""
    return rank() == 0


def local_processes() -> int:
    """Training processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 outside torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size())) if world_size() > 1 else 1


def _interrupt_once(signum, frame):
    """Ctrl-C reaches every process, and torchrun passes it on again: the first one interrupts
    (process 0 saves last.pt), the later ones are ignored so that they cannot break that save."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def init(device) -> torch.device:
    """Join torchrun's process group when started by it: NCCL with one GPU per process (by
    LOCAL_RANK), gloo on CPUs. Only process 0 prints. Returns this process's device."""
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or tdist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index >= torch.cuda.device_count():
            raise DataError(f"torchrun started more processes than there are GPUs "
                            f"({torch.cuda.device_count()}): lower PROCESSES (--nproc_per_node)")
        torch.cuda.set_device(device)
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                             timeout=datetime.timedelta(minutes=60))  # while process 0 validates
    signal.signal(signal.SIGINT, _interrupt_once)
    if not is_main():
        sys.stdout = open(os.devnull, "w")
    return device


def teardown() -> None:
    if world_size() > 1:
        tdist.destroy_process_group()


def peer_failed(error: BaseException) -> bool:
    """True when ``error`` only says that another process of the run died (which printed why)."""
    if world_size() == 1 or isinstance(error, DataError):
        return False
    return isinstance(error, getattr(tdist, "DistError", ())) or any(s in str(error) for s in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def share(obj):
    """Process 0's copy of a picklable object (the history), in every process: they wait for it."""
    box = [obj]
    if world_size() > 1:
        tdist.broadcast_object_list(box, src=0)
    return box[0]


def average(value: float) -> float:
    """The mean of a number over the processes, the same in each (a training loss, the clock): one
    small all-reduce, cheap enough for every step."""
    if world_size() == 1:
        return value
    gpu = tdist.get_backend() == "nccl"  # NCCL sends only GPU tensors (init set this one's GPU)
    t = torch.tensor([value], dtype=torch.float64, device="cuda" if gpu else "cpu")
    tdist.all_reduce(t)
    return t.item() / world_size()


def main_first(fn):
    """``fn()`` in process 0, then in the others: a problem they would all meet is told once."""
    if not is_main():
        tdist.barrier()
    result = fn()
    if world_size() > 1 and is_main():
        tdist.barrier()
    return result


def wrap(model, device):
    """``model`` in one process, else DistributedDataParallel around it (the same parameters)."""
    if world_size() == 1:
        return model
    # channels-last (1, C, 1, 1) weights: both layouts are the same memory; the warning is empty
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    gpu = [torch.device(device).index] if torch.device(device).type == "cuda" else None
    if gpu:
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the children in place
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=gpu)


def check_batch(batch_size: int, crops_per_image: int, processes: int) -> None:
    """ValueError unless every process gets whole pairs of every batch."""
    if batch_size % (crops_per_image * processes):
        raise ValueError(f"batch_size={batch_size} must be a multiple of crops_per_image="
                         f"{crops_per_image} x processes={processes}: each process takes whole "
                         "pairs of every batch. Change the batch or the number of processes.")


def shard(dataset, pairs_per_batch: int, rank_: int, processes: int):
    """Process r's items r, r+N, r+2N ... of the whole batches: N processes' step s together is
    one process's step s."""
    if processes == 1:
        return dataset
    whole = len(dataset) // pairs_per_batch * pairs_per_batch
    return torch.utils.data.Subset(dataset, range(rank_, whole, processes))
