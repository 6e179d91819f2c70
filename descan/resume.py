"""Resuming a run: what changed since its last.pt, and whether it may go on."""
from __future__ import annotations

import hashlib
from dataclasses import asdict

from descan.checkpoints import CheckpointError
from descan.recipes import DATA_KEYS, FREE_KEYS


def settings_changed(state: dict, cfg, spec: dict, data_id: str) -> tuple[dict, list]:
    """(changed settings {name: (old, new)}, what forbids going on) between a last.pt's ``state``
    and a run's settings ``cfg``, model ``spec`` and split fingerprint ``data_id``."""
    old = state.get("config", {})
    diffs = {k: (old[k], v) for k, v in asdict(cfg).items() if k in old and k not in FREE_KEYS and old[k] != v}
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


def refuse(path, run_name: str, diffs: dict, fixed: list):
    """Raise CheckpointError: what changed since ``path`` was saved, and the ways out."""
    said = ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in diffs.items())
    tag = "-".join(f"{k.split('_')[0]}{n}" for k, (o, n) in list(diffs.items())[:2] if k != "model")
    why = f" {', '.join(fixed)} differ, so this run cannot go on." if fixed else ""
    new_name = f"{run_name}-{tag or 'new'}".replace(" ", "")
    raise CheckpointError(
        f"{path} was trained with other settings: {said or 'see below'}.{why}\n"
        f"  - start a new run with the new settings (suggested): DESCAN_RUN_NAME={new_name}\n"
        + ("" if fixed else "  - or carry on this run with the new settings (recorded in its history): "
           "DESCAN_RESUME=continue\n") + "  - or set the settings back to the run's.")


def split_id(train_pairs, val_pairs) -> str:
    """A fingerprint of the split: resuming on other training or validation pairs is refused."""
    names = [p.name for p in train_pairs] + ["|"] + [p.name for p in val_pairs]
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
