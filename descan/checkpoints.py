"""Checkpoints: one format, two explicit schemas, one place for their paths.

A run lives in ``WORKSPACE/runs/<run>/`` (run_dir): ``best.pt`` holds the weights with the best
validation competition score, ``last.pt`` everything needed to resume. Both are dicts written
atomically with torch.save and read with ``weights_only=True``; the keys of each are listed in
BEST_KEYS and LAST_KEYS and checked when a file is written.
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from helpers import DataError
from descan.files import atomic_path
from descan.models import LEGACY, SHARED, model_from_state

FORMAT = "descanning-checkpoint-v1"
RUNS, BEST, LAST = "runs", "best.pt", "last.pt"
# best.pt: what notebook 05 needs to rebuild and judge a model
BEST_KEYS = ("kind", "model_name", "model_kwargs", "model_code", "model", "val", "epoch", "step", "config", "data_kind")
# last.pt: the whole training state, for resuming
LAST_KEYS = ("kind", "model_name", "model_kwargs", "model_code", "model", "ema", "optimizer", "scaler", "epoch", "item",
             "step", "seconds", "history", "config", "data_kind", "data_id", "rng")
SCHEMAS = {"best": BEST_KEYS, "last": LAST_KEYS}
UNKNOWN_MODEL = "Train it again with this version of the kit (notebook 03 or 04)."
RUN_FIRST = "Run notebook 03 (DnCNN) or 04 (attention) first, or set DESCAN_CHECKPOINT to a checkpoint file."


class CheckpointError(DataError):
    """A checkpoint is missing, corrupt or not one of ours; the message says what to do."""


def run_dir(workspace, run: str) -> Path:
    """The folder of one training run: WORKSPACE/runs/<run>; a name that would leave runs/ is refused."""
    if not run or run in (".", "..") or "/" in run or "\\" in run:
        raise ValueError(f"run name {run!r} (DESCAN_RUN_NAME) must be a plain folder name, e.g. dncnn-lr0.0003")
    return Path(workspace) / RUNS / run


def best_path(workspace, run: str) -> Path:
    return run_dir(workspace, run) / BEST


def best_models(workspace, runs: dict, device="cpu") -> dict:
    """{label: model} for each {label: run name} whose WORKSPACE/runs/<run>/best.pt exists, rebuilt on
    ``device`` (runs not trained yet are left out)."""
    return {label: model_from_checkpoint(best_path(workspace, run), device)
            for label, run in runs.items() if best_path(workspace, run).is_file()}


def save_checkpoint(state: dict, path) -> Path:
    """Check ``state`` against its schema (state['kind'] is 'best' or 'last'), then torch.save it
    through a temporary file: an interruption never replaces a good checkpoint."""
    kind = state.get("kind")
    if kind not in SCHEMAS:
        raise ValueError(f"a checkpoint's 'kind' must be 'best' or 'last', got {kind!r}")
    missing, extra = set(SCHEMAS[kind]) - set(state), set(state) - set(SCHEMAS[kind])
    if missing or extra:
        raise ValueError(f"{kind} checkpoint: missing keys {sorted(missing)}, unknown keys {sorted(extra)}")
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return Path(path)


def load_checkpoint(path, kind: str | None = None, map_location="cpu") -> dict:
    """Load one of our checkpoints safely (weights_only=True) or raise CheckpointError naming it.
    With ``kind``, also refuse a checkpoint of the other kind."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}. {RUN_FIRST}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint ({type(e).__name__}: "
                              f"{str(e)[:200]}). Move it aside and train again (nothing was deleted).") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        hint = " It looks like a bare state_dict." if isinstance(state, dict) and state and all(
            isinstance(v, torch.Tensor) for v in state.values()) else ""
        raise CheckpointError(f"{path} is not a descanning checkpoint (no '{FORMAT}' "
                              f"marker).{hint} Use a file written by notebook 03 or 04.")
    if kind is not None and state.get("kind") != kind:
        raise CheckpointError(f"{path} is a '{state.get('kind')}' checkpoint, expected '{kind}' "
                              f"({BEST} for submitting, {LAST} for resuming).")
    return state


def model_from_checkpoint(path_or_state, device="cpu") -> nn.Module:
    """Rebuild the model from the file alone (name + constructor arguments + weights), in eval mode."""
    state = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state)
    try:
        return model_from_state(state).to(device)
    except Exception as e:  # the model's code, arguments or weights do not fit together
        raise CheckpointError(f"the model of this checkpoint ({state.get('model_name')}) cannot be rebuilt: "
                              f"{type(e).__name__}: {str(e)[:300]}. {UNKNOWN_MODEL}") from e


def rng_state() -> dict:
    """Python's, numpy's and torch's global RNG states, in a form weights_only loading accepts."""
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                   *np_state[2:]],
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])


def _checkpoint_entry(path) -> dict:
    """What find_checkpoints reports about one file; 'error' says why it cannot be used (else None)."""
    path = Path(path)
    entry = {"run": path.parent.name, "path": path, "model_name": None, "data_kind": None,
             "val_score": math.inf, "epoch": None, "error": None}
    try:
        state = load_checkpoint(path)
    except CheckpointError as e:
        entry["error"] = str(e)
        return entry
    score = (state.get("val") or {}).get("score", math.inf)
    entry.update(model_name=state.get("model_name"), data_kind=state.get("data_kind"), epoch=state.get("epoch"),
                 val_score=float(score) if score is not None and math.isfinite(float(score)) else math.inf)
    if state.get("model_code") is None and entry["model_name"] not in (*SHARED, *LEGACY):
        entry["error"] = f"{path} names model {entry['model_name']!r} but holds no code for it. {UNKNOWN_MODEL}"
    return entry


def find_checkpoints(workspace, data_kind=None) -> list[dict]:
    """Every WORKSPACE/runs/*/best.pt, best recorded validation score first.

    One dict per file: run (its folder's name), path, model_name, data_kind ('demo' | 'real'),
    val_score (the validation competition score saved with it, ``state["val"]["score"]``; inf when
    it has none), epoch, and error: None, or why the file cannot be used (unreadable, unknown
    model). Unusable files come last and are never chosen automatically. With ``data_kind``
    ('demo' | 'real'), only the checkpoints recorded as trained on that kind of data.
    """
    entries = [_checkpoint_entry(p) for p in sorted(Path(workspace).glob(f"{RUNS}/*/{BEST}"))]
    if data_kind is not None:
        entries = [e for e in entries if e["data_kind"] == data_kind]
    return sorted(entries, key=lambda e: (e["error"] is not None, e["val_score"], e["run"]))


def choose_checkpoint(workspace, wanted=None, data_kind=None) -> dict:
    """The checkpoint to submit with: a find_checkpoints entry plus 'reason' (why this one).

    ``wanted`` (notebook 05 passes $DESCAN_CHECKPOINT): None or "" = the lowest recorded validation
    score under WORKSPACE/runs; a path to a .pt file or to a run folder holding best.pt; or a name,
    matched first against run folders ('dncnn' -> runs/dncnn/best.pt), then against the model
    name saved in the checkpoints (the best score among them). Raises CheckpointError saying what
    to run when nothing fits.

    ``data_kind`` ('demo' | 'real', notebook 05 passes the kind of DATA): without ``wanted``, only
    checkpoints trained on that kind of data are candidates, and CheckpointError says so when
    none is. A ``wanted`` checkpoint is taken whatever its data (among several of one model name,
    those of ``data_kind`` first).
    """
    runs = Path(workspace) / RUNS
    wanted = str(wanted).strip() if wanted is not None else ""
    found = find_checkpoints(workspace)
    usable = [e for e in found if e["error"] is None]
    if not wanted:
        if not usable:
            broken = "".join(f" Unusable: {e['error']}" for e in found)
            raise CheckpointError(f"no usable checkpoint under {runs}/*/best.pt.{broken} {RUN_FIRST}")
        if data_kind is not None:
            others = [e for e in usable if e["data_kind"] != data_kind]
            usable = [e for e in usable if e["data_kind"] == data_kind]
            if not usable:
                have = ", ".join(f"{e['run']} ({e['data_kind'] or 'unrecorded'} data)" for e in others)
                raise CheckpointError(
                    f"no checkpoint under {runs} was trained on {data_kind} data, the kind of data this "
                    f"notebook uses (found: {have}). Train on this data first (notebook 03 or 04), or set "
                    f"DESCAN_CHECKPOINT to one of those runs to submit with it anyway.")
        kind = f" trained on {data_kind} data" if data_kind is not None else ""
        reason = (f"lowest recorded validation score of the {len(usable)} checkpoints{kind} under {runs}"
                  if len(usable) > 1 else f"the only checkpoint{kind} under {runs}")
        return {**usable[0], "reason": reason}
    path = Path(wanted).expanduser()
    if "/" in wanted or os.sep in wanted or path.suffix in (".pt", ".pth") or path.is_file():
        entry = _checkpoint_entry(path / BEST if path.is_dir() else path)
        if entry["error"]:
            raise CheckpointError(entry["error"])
        return {**entry, "reason": f"asked for by path (DESCAN_CHECKPOINT={wanted})"}
    matches = [e for e in found if e["run"] == wanted] or [e for e in found if e["model_name"] == wanted]
    if not matches:
        have = ", ".join(f"{e['run']} ({e['model_name']})" for e in found) or "none"
        raise CheckpointError(f"no checkpoint named {wanted!r} under {runs} (run folders and model names "
                              f"found: {have}). {RUN_FIRST}")
    good = [e for e in matches if e["error"] is None]
    if not good:
        raise CheckpointError(matches[0]["error"])
    if data_kind is not None:  # one model name trained on both kinds of data: this kind first
        good = [e for e in good if e["data_kind"] == data_kind] or good
    how = "run folder" if good[0]["run"] == wanted else "model name"
    return {**good[0], "reason": f"asked for by {how} (DESCAN_CHECKPOINT={wanted})"}
