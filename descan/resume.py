"""Resuming a run: what changed since its last.pt, whether it may go on, going on, RNG states."""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
from dataclasses import asdict

import numpy as np
import torch

from descan import checkpoints as ckpt
from descan.checkpoints import CheckpointError
from descan.optim import load_optimizer_state
from descan.recipes import DATA_KEYS, FREE_KEYS


def settings_changed(state: dict, cfg, spec: dict, data_id: str) -> tuple[dict, list]:
    """(changed settings {name: (old, new)}, what forbids going on) between a last.pt's ``state``
    and a run's settings ``cfg``, model ``spec`` and split fingerprint ``data_id``."""
    old = state.get("config", {})
    diffs = {k: (old[k], v) for k, v in asdict(cfg).items()
             if k in old and k not in FREE_KEYS and old[k] != v}
    fixed = [k for k in diffs if k in DATA_KEYS]
    if state.get("data_id") != data_id:
        fixed.append("training/validation pairs")
    saved = (state.get("model_name"), state.get("model_kwargs"), state.get("model_code"))
    if saved != (spec["name"], spec["kwargs"], spec["code"]):
        fixed.append(f"the model ({spec['name']}: its arguments or its code)")
        was = saved[1] or {}
        diffs.update({k: (was.get(k), v) for k, v in spec["kwargs"].items() if was.get(k) != v})
        if saved[0] != spec["name"] or saved[2] != spec["code"]:
            diffs["model"] = (saved[0], spec["name"] if saved[0] != spec["name"] else "edited code")
    return diffs, fixed


def refuse(path, run_name: str, diffs: dict, fixed: list, said: str):
    """Raise CheckpointError: what changed (``said``) since ``path`` was saved, and the ways out."""
    tag = "-".join(f"{k.split('_')[0]}{n}" for k, (o, n) in list(diffs.items())[:2] if k != "model")
    why = f" {', '.join(fixed)} differ, so this run cannot go on." if fixed else ""
    new_name = f"{run_name}-{tag or 'new'}".replace(" ", "")
    raise CheckpointError(
        f"{path} was trained with other settings: {said or 'see below'}.{why}\n"
        f"  - start a new run with the new settings (suggested): DESCAN_RUN_NAME={new_name}\n"
        + ("" if fixed else "  - or carry on this run with the new settings (recorded in its "
           "history): DESCAN_RESUME=continue\n") + "  - or set the settings back to the run's.")


def split_id(train_pairs, val_pairs) -> str:
    """A fingerprint of the split: resuming on other training or validation pairs is refused."""
    names = [p.name for p in train_pairs] + ["|"] + [p.name for p in val_pairs]
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def rng_state() -> dict:
    """Python's, numpy's and torch's global RNG states, in a form weights_only loading accepts."""
    name, keys, *rest = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), *rest]}


def set_rng_state(state: dict) -> None:
    """Set the global RNG states saved by rng_state()."""
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])


def resume(trainer) -> bool:
    """Go on from last.pt when there is one. A run trained with other settings stops with what
    changed and the ways out: a new DESCAN_RUN_NAME, or DESCAN_RESUME=continue (not for settings
    that decide the crops or the model), which records the change in the history."""
    path = trainer.run_dir / ckpt.LAST
    if not path.exists():
        return False
    state = ckpt.load_checkpoint(path, kind="last")
    split = split_id(trainer.train_pairs, trainer.val_pairs)
    diffs, fixed = settings_changed(state, trainer.cfg, trainer.run["model"], split)
    said = ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in diffs.items())
    if fixed or (diffs and os.environ.get("DESCAN_RESUME", "").strip().lower() != "continue"):
        refuse(path, trainer.run_dir.name, diffs, fixed, said)
    trainer.model.load_state_dict(state["model"])
    if trainer.ema is not None:  # an EMA switched on now starts from the trained weights
        trainer.ema.load_state_dict(state["ema"] if state.get("ema") else state["model"])
    with contextlib.suppress(ValueError):  # another optimiser: it starts afresh (recorded)
        load_optimizer_state(trainer.optimizer, state["optimizer"])
    if state["scaler"]:  # empty when saved without loss scaling
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch, trainer.item, trainer.step = state["epoch"], state["item"], state["step"]
    trainer.seconds = state["seconds"]
    trainer.history = list(state["history"])
    set_rng_state(state["rng"])
    if diffs:
        trainer.pending_change = said
        print(f"DESCAN_RESUME=continue: going on with changed settings ({said})")
    print(f"Resuming {path}: epoch {trainer.epoch + 1}, step {trainer.step}, "
          f"{trainer.seconds / 60:.1f} min trained so far, best score {trainer.best_score:.4f}")
    return True
