"""Training crops per second with 1 and 2 (or more) processes under torchrun, measured in one run.

Each row runs the same command a user runs, ``python -m descan train --recipe R --processes N``
with the settings as key=value (torchrun with N processes when N > 1), on the same synthetic demo
data with the same recipe and global batch, in a fresh run folder, and reads the engine's own
figure (history.csv's crops_per_s of the last epoch: training crops of all processes per second,
validation excluded). On a CPU, one process uses every core (torch's threads); torchrun gives
each of N processes one thread (OMP_NUM_THREADS=1), as it does by default. On GPUs, one GPU per
process. Without GPUs it also measures one process with one thread (OMP_NUM_THREADS=1): on a
busy machine, threads that wait for each other can make the all-threads row misleadingly slow.

    python benchmarks/ddp_scaling.py                       # attention recipe, 1 vs 2 processes
    python benchmarks/ddp_scaling.py --recipe dncnn --processes 1 2 4
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from descan import data, demo  # noqa: E402


def measure(recipe, processes, data_dir, workspace, env, settings, threads=None) -> dict:
    """One run of the command; ``threads`` sets OMP_NUM_THREADS (None: torchrun's default)."""
    name = f"ddp-{processes}-{threads}"
    cmd = [sys.executable, "-m", "descan", "train", "--recipe", recipe, "--processes", str(processes),
           "--data", str(data_dir), "--workspace", str(workspace), *settings]
    env = {**env, "DESCAN_RUN_NAME": name, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{processes} processes failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    history = pd.read_csv(Path(workspace) / "runs" / name / "history.csv")
    each = threads or (torch.get_num_threads() if processes == 1 else 1)
    return {"processes": processes, "threads": "1 GPU" if torch.cuda.is_available() else each,
            "crops_per_s": float(history["crops_per_s"].iloc[-1]), "wall_s": time.time() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="attention", choices=("dncnn", "attention"))
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--pages", type=int, default=12, help="demo training pages (2 crops each)")
    p.add_argument("--size", type=int, default=256, help="side of the demo images")
    p.add_argument("--steps", type=int, default=20, help="optimiser steps per epoch (2 epochs)")
    p.add_argument("--batch", type=int, default=16, help="global batch, crops per step")
    p.add_argument("--patch", type=int, default=64)
    args = p.parse_args()
    gpus = torch.cuda.device_count()
    where = f"{gpus} x {torch.cuda.get_device_name(0)}" if gpus else f"CPU, {os.cpu_count()} cores"
    with tempfile.TemporaryDirectory(prefix="ddp-scaling-") as tmp:
        tmp = Path(tmp)
        demo.make_demo_dataset(tmp / "data", train_pages=args.pages, test_pages=1, crop=args.size, show_progress=False)
        (tmp / "ws").mkdir()
        data.write_manifest(data.make_manifest(tmp / "data", 0.2), tmp / "ws")
        # the notebook's settings on this machine, the sizes changed, and no budget
        settings = ["epochs=2", f"crops_per_epoch={args.steps * args.batch}", f"batch_size={args.batch}",
                    f"patch={args.patch}", "budget_minutes=0"]
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("DESCAN")}, "DESCAN_SMOKE": "0",
               "PYTHONUNBUFFERED": "1"}
        rows = [measure(args.recipe, n, tmp / "data", tmp / "ws", env, settings) for n in args.processes]
        if not gpus and torch.get_num_threads() > 1 and args.processes[0] == 1:  # also 1 process x 1 thread
            rows.insert(1, measure(args.recipe, 1, tmp / "data", tmp / "ws", env, settings, threads=1))
    base = rows[0]["crops_per_s"]
    print(f"{args.recipe} recipe, global batch {args.batch} crops of {args.patch} px, {args.steps} steps per epoch, "
          f"last of 2 epochs; {where}")
    print(f"| processes | threads each | training crops/s | vs {rows[0]['processes']} | command wall time (s) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['processes']} | {r['threads']} | {r['crops_per_s']:.0f} | {r['crops_per_s'] / base:.2f}x "
              f"| {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
