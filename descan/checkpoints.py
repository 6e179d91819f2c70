"""Checkpoints: WORKSPACE/runs/<run>/best.pt (the weights of the best validation score) and last.pt
(all that resuming needs), dicts written atomically and read with weights_only=True."""
import math
from pathlib import Path

import torch

from helpers import DataError
from descan import models
from descan.files import atomic_path

FORMAT = "descanning-checkpoint-v1"
RUNS, BEST, LAST = "runs", "best.pt", "last.pt"
MODEL_KEYS = ("kind", "model_name", "model_kwargs", "model_code", "model", "epoch", "step",
              "config", "data_kind")
SCHEMAS = {"best": {*MODEL_KEYS, "val"},  # best.pt: what notebook 05 needs; last.pt: resuming
           "last": {*MODEL_KEYS, "ema", "optimizer", "scaler", "item", "seconds", "history",
                    "data_id", "rng"}}
RUN_FIRST = "Run notebook 03 or 04 first, or set DESCAN_CHECKPOINT to a checkpoint file."


class CheckpointError(DataError):
    """A checkpoint is missing, corrupt or not one of ours; the message says what to do."""


def run_dir(workspace, run: str) -> Path:
    """WORKSPACE/runs/<run>; a name that would leave runs/ is refused."""
    if not run or run in (".", "..") or "/" in run or "\\" in run:
        raise ValueError(f"run name {run!r} (DESCAN_RUN_NAME) must be a plain folder name")
    return Path(workspace) / RUNS / run


def best_path(workspace, run: str) -> Path:
    return run_dir(workspace, run) / BEST


def save_checkpoint(state: dict, path) -> Path:
    """torch.save ``state`` atomically, once its keys are those of its kind ('best' or 'last')."""
    kind = state.get("kind")
    keys = SCHEMAS.get(kind)
    if keys is None:
        raise ValueError(f"a checkpoint's 'kind' must be 'best' or 'last', got {kind!r}")
    if keys != set(state):
        raise ValueError(f"{kind} checkpoint: missing keys {sorted(keys - set(state))}, "
                         f"unknown keys {sorted(set(state) - keys)}")
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return Path(path)


def load_checkpoint(path, kind: str | None = None) -> dict:
    """One of our checkpoints (of ``kind``, when given), or CheckpointError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}. {RUN_FIRST}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint ({type(e).__name__}: "
                              f"{str(e)[:200]}); move it aside and train again (nothing was "
                              "deleted).") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        bare = isinstance(state, dict) and all(torch.is_tensor(v) for v in state.values())
        raise CheckpointError(f"{path} is not a descanning checkpoint (no '{FORMAT}' marker)"
                              f"{'; it looks like a bare state_dict' if bare else ''}. "
                              "Use a file written by notebook 03 or 04.")
    if kind is not None and state.get("kind") != kind:
        raise CheckpointError(f"{path} is a '{state.get('kind')}' checkpoint, expected '{kind}' "
                              f"({BEST} for submitting, {LAST} for resuming).")
    return state


def unknown_model(state: dict, where) -> str | None:
    """Why the model of a loaded checkpoint cannot be rebuilt, or None."""
    known = (*models.SHARED, *models.LEGACY)
    gone = [k for k in models.GONE if (state.get("model_kwargs") or {}).get(k)]
    if gone:
        return f"{where} uses {gone}, which the kit no longer has: train that model again"
    weights = (state.get("model") or {}).values()
    if any(w.is_floating_point() and not torch.isfinite(w).all() for w in weights):
        return f"{where} holds weights that are not finite (nan or inf): its training diverged"
    if state.get("model_code") is not None or state.get("model_name") in known:
        return None
    return (f"{where} names model {state.get('model_name')!r} but holds no code for it (models "
            f"known without code: {', '.join(known)}). Train it again with notebook 03 or 04.")


def model_from_checkpoint(path_or_state, device="cpu") -> torch.nn.Module:
    """The model of a checkpoint (a path, or a state from load_checkpoint), in eval mode."""
    state = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state)
    where = "the checkpoint" if isinstance(path_or_state, dict) else path_or_state
    if problem := unknown_model(state, where):
        raise CheckpointError(problem)
    try:
        return models.model_from_state(state).to(device)
    except Exception as e:  # the model's code, arguments and weights do not fit together
        raise CheckpointError(f"the model of {where} ({state.get('model_name')}) cannot be rebuilt"
                              f": {type(e).__name__}: {str(e)[:300]}. Train it again.") from e


def best_models(workspace, runs: dict, device="cpu") -> dict:
    """{label: model} for each {label: run name} whose best.pt exists, on ``device``."""
    return {label: model_from_checkpoint(best_path(workspace, run), device)
            for label, run in runs.items() if best_path(workspace, run).is_file()}


def _entry(path) -> dict:
    """What find_checkpoints reports about one file; 'error' says why it cannot be used."""
    try:
        state, error = load_checkpoint(path), None
    except CheckpointError as e:
        state, error = {}, str(e)
    score = float((state.get("val") or {}).get("score", math.inf))
    return {"run": Path(path).parent.name, "path": Path(path), "epoch": state.get("epoch"),
            "model_name": state.get("model_name"), "data_kind": state.get("data_kind"),
            "val_score": score if math.isfinite(score) else math.inf,
            "error": error or unknown_model(state, path)}


def find_checkpoints(workspace, data_kind=None) -> list[dict]:
    """Every runs/*/best.pt (of ``data_kind``, when given): usable ones first, by recorded score."""
    entries = [_entry(p) for p in sorted(Path(workspace).glob(f"{RUNS}/*/{BEST}"))]
    entries = [e for e in entries if data_kind in (None, e["data_kind"])]
    return sorted(entries, key=lambda e: (e["error"] is not None, e["val_score"], e["run"]))


def choose_checkpoint(workspace, wanted=None, data_kind=None) -> dict:
    """The find_checkpoints entry, plus 'reason', to submit with: ``wanted`` (DESCAN_CHECKPOINT: a
    file, a run folder or a run name), else the best score of those trained on ``data_kind``."""
    runs, wanted = Path(workspace) / RUNS, str(wanted or "").strip()
    if wanted:
        path = Path(wanted).expanduser()
        by_path = path.suffix in (".pt", ".pth") or len(path.parts) > 1 or path.is_file()
        path = path if by_path else runs / wanted
        if not by_path and not path.is_dir():
            have = ", ".join(f"{e['run']} ({e['model_name']})" for e in find_checkpoints(workspace))
            raise CheckpointError(f"no checkpoint named {wanted!r} under {runs} (run folders and "
                                  f"their models: {have or 'none'}). {RUN_FIRST}")
        entry = _entry(path / BEST if path.is_dir() else path)
        if entry["error"]:
            raise CheckpointError(entry["error"])
        how = "path" if by_path else "run folder"
        return {**entry, "reason": f"asked for by {how} (DESCAN_CHECKPOINT={wanted})"}
    found = find_checkpoints(workspace)
    usable = [e for e in found if e["error"] is None]
    if not usable:
        broken = "".join(f" Unusable: {e['error']}" for e in found)
        raise CheckpointError(f"no usable checkpoint under {runs}.{broken} {RUN_FIRST}")
    candidates = [e for e in usable if data_kind in (None, e["data_kind"])]
    if not candidates:
        have = ", ".join(f"{e['run']} ({e['data_kind'] or 'unrecorded'} data)" for e in usable)
        raise CheckpointError(f"no checkpoint under {runs} was trained on {data_kind} data, the "
                              f"kind in DATA (found: {have}). Train on this data first (notebook "
                              "03 or 04), or set DESCAN_CHECKPOINT to one of those runs.")
    kind = "" if data_kind is None else f" trained on {data_kind} data"
    reason = f"the lowest recorded validation score of {len(candidates)} checkpoint(s){kind}"
    return {**candidates[0], "reason": f"{reason} under {runs}"}
