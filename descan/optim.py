"""The optimiser, the learning-rate schedule and the weights' moving average of a training run;
and what resuming it checks and restores besides: changed settings, the random generators."""
from __future__ import annotations

import math
import random
from dataclasses import asdict

import numpy as np
import torch

from helpers import DataError
from descan.recipes import DATA_KEYS, FREE_KEYS


def make_optimizer(params, cfg, device) -> torch.optim.Optimizer:
    """Adam or AdamW of the recipe: one fused kernel on CUDA, else the multi-tensor one."""
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    fast = {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}
    return opt(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict):
    """Load a saved optimiser's moments and last lr; the other settings stay this run's."""
    groups = [{**now, "params": saved["params"], "lr": saved["lr"]}
              for saved, now in zip(state["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({**state, "param_groups": groups})


def lr_factor(cfg, step: int, total_steps: int, seconds: float) -> float:
    """The learning-rate multiplier at ``step``: 1, or a linear warm-up (warmup_steps, at most 5%
    of the steps the run will make) then a cosine decay to 0 at the end of the epochs or budget."""
    if cfg.schedule == "constant":
        return 1.0
    progress = step / max(1, total_steps)
    if cfg.budget_minutes > 0:
        progress = max(progress, seconds / (cfg.budget_minutes * 60))
    run_steps = step / progress if step and progress else total_steps
    warmup = min(cfg.warmup_steps, math.ceil(0.05 * run_steps))
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def update_ema(ema, model, decay: float):
    """Move ``ema``'s weights towards ``model``'s by 1 - ``decay`` (integer buffers are copied)."""
    pairs = list(zip(ema.state_dict().values(), model.state_dict().values()))
    floats = [(e, p) for e, p in pairs if e.dtype.is_floating_point]
    if floats:  # a few kernels, not one per tensor
        torch._foreach_lerp_([e for e, _ in floats], [p for _, p in floats], 1 - decay)
    for e, p in pairs:
        if not e.dtype.is_floating_point:
            e.copy_(p)


def stop_if_diverged(loss: float, step: int, cfg) -> None:
    """DataError when the training loss is not finite: nothing of it is then saved or validated."""
    if not math.isfinite(loss):
        raise DataError(f"training diverged: the loss is {loss} by step {step}. Likely causes: "
                        f"a learning rate too high (lr={cfg.lr:g}), or fp16 mixed precision "
                        f"overflowing (amp={cfg.amp!r}; on a GPU try 'bf16' or 'off'). last.pt and "
                        "best.pt keep the last good state: start a new run (DESCAN_RUN_NAME).")


def settings_changed(state: dict, cfg, spec: dict, data_id: str) -> tuple[dict, list]:
    """({setting: (old, new)}, what forbids going on) between a last.pt's ``state`` and a run."""
    old, was = state["config"], state["model_kwargs"] or {}
    diffs = {k: (old[k], v) for k, v in asdict(cfg).items()
             if k in old and k not in FREE_KEYS and old[k] != v}
    fixed = [k for k in diffs if k in DATA_KEYS]
    if state["data_id"] != data_id:
        fixed.append("training/validation pairs")
    diffs.update({k: (was.get(k), v) for k, v in spec["kwargs"].items() if was.get(k) != v})
    if any(state[f"model_{k}"] != spec[k] for k in ("name", "kwargs", "code")):
        fixed.append(f"the model ({spec['name']}: its arguments or its code)")
    return diffs, fixed


def rng_state() -> dict:
    """Python's, numpy's and torch's global RNG states, in a form weights_only loading accepts."""
    name, keys, *rest = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), *rest]}


def set_rng_state(state: dict) -> None:
    """Set the global RNG states that rng_state() saved."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
