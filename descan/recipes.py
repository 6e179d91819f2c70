"""A training run's recipe: its settings (TrainConfig), its model and its loss, as code, from the
cells of notebook 03 or 04 (``from_notebook``) or a run folder's ``run.json``. No torch here."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import types
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path

from helpers import ROOT
from descan.files import atomic_path

NOTEBOOKS = {"dncnn": "03_train_dncnn.ipynb", "attention": "04_train_attention.ipynb"}
RUN_NAMES = {"dncnn": "dncnn", "attention": "attention_unet"}  # each notebook's run folder
MARKERS = {"config": "CFG = TrainConfig(", "model": "MODEL_CODE = notebook.this_cell()",
           "loss": "LOSS_CODE = notebook.this_cell()"}
# What a setting allows: a text one, one of its choices; a number, from lowest to highest (else
# from 1 for an integer, 0.0 for a float, no upper limit); a yes/no one, True or False.
ALLOWED = {"optimizer": ("adam", "adamw"), "schedule": ("constant", "cosine"),
           "amp": ("auto", "bf16", "fp16", "off"), "patch": (8, math.inf), "lr": (1e-8, 1.0),
           "workers": (-1, math.inf), "warmup_steps": (0, math.inf), "seed": (0, math.inf),
           "degrade_prob": (0.0, 1.0), "colour_jitter": (0.0, 1.0), "weight_decay": (0.0, 1.0),
           "ema_decay": (0.0, 0.99999)}
YES_NO = {"true": True, "1": True, "false": False, "0": False}  # how key=value writes True, False


@dataclass(frozen=True)
class TrainConfig:
    """Every training setting. A *batch* is the crops of one optimiser step."""
    epochs: int = 10
    crops_per_epoch: int = 64 * 160  # an epoch is a number of crops, not a pass over the images
    batch_size: int = 64             # crops per optimiser step
    patch: int = 128                 # side of a training crop, in pixels
    crops_per_image: int = 8         # crops cut from each decoded pair (batch_size: a multiple)
    mean_y_weight: float = 0.0       # loss weight of each crop's mean Y (what the metric sees)
    stats_weight: float = 0.0        # loss weight of a colour head's per-channel mean and spread
    optimizer: str = "adam"          # "adam" or "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"       # "constant" or "cosine" (with warm-up)
    warmup_steps: int = 0            # at most 5% of the steps the epochs or budget allow
    grad_clip: float = 0.0           # 0 = off
    ema_decay: float = 0.0           # 0 = off; else validate and save the averaged weights
    augment: bool = True             # flips and 90-degree rotations
    degrade_prob: float = 0.0        # probability of extra synthetic scan damage on an input
    colour_jitter: float = 0.0       # probability of a random global colour response on an input
    budget_minutes: float = 0.0      # wall-clock training budget over the whole run; 0 = none
    checkpoint_minutes: float = 2.0  # also save last.pt this often inside an epoch
    val_images_per_pass: int = 8     # whole validation images per forward pass
    workers: int = -1                # loader processes; -1: none on a CPU, up to 4 beside a GPU
    amp: str = "auto"                # GPU mixed precision: auto (bf16 where native, else fp16)
    compile: bool = False            # torch.compile the model (needs a C++ compiler)
    seed: int = 0

    def __post_init__(self):
        problems = [f"{f.name}={getattr(self, f.name)!r}: {why}" for f in fields(self)
                    if (why := _problem(f.name, getattr(self, f.name)))]
        if self.batch_size % max(1, self.crops_per_image):
            problems.append(f"batch_size={self.batch_size} must be a multiple of crops_per_image="
                            f"{self.crops_per_image} (each decoded pair gives that many crops)")
        if self.crops_per_epoch < self.batch_size:
            problems.append(f"crops_per_epoch={self.crops_per_epoch} must be at least "
                            f"batch_size={self.batch_size}")
        if problems:
            raise ValueError("bad training settings: " + "; ".join(problems))


def _problem(name: str, value) -> str:
    """Why ``value`` is not allowed for the setting ``name`` ('' when it is)."""
    kind = type(TrainConfig.__dataclass_fields__[name].default)
    if kind in (str, bool):
        choices = ALLOWED.get(name, (True, False))
        ok = value in choices and type(value) is kind
        return "" if ok else f"use one of {', '.join(map(str, choices))}"
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
        return f"must be {'an integer' if kind is int else 'a number'}"
    low, high = ALLOWED.get(name, (1 if kind is int else 0.0, math.inf))
    allowed = f"at least {low}" if high == math.inf else f"from {low} to {high}"
    return "" if math.isfinite(value) and low <= value <= high else f"must be {allowed}"


def parse_overrides(items, cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``key=value`` strings applied (``lr=3e-4``); a bad one refused saying why."""
    known = {f.name: type(f.default) for f in fields(TrainConfig)}
    changes = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"{item!r} is not a setting: write key=value, the key one of "
                             f"{', '.join(known)}")
        kind = known[key]
        try:  # a number with _ in it (Python reads 1_0 as 10) is refused
            changes[key] = YES_NO[raw.lower()] if kind is bool else \
                raw if kind is str else kind(raw.replace("_", "?"))
        except (ValueError, KeyError):
            raise ValueError(f"{key}={raw!r}: {_problem(key, raw)}") from None
    return replace(cfg, **changes)


def with_env(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with DESCAN_TRAIN_MINUTES, when set, as the training budget (minutes; 0 = none)."""
    raw = os.environ.get("DESCAN_TRAIN_MINUTES", "").strip()
    if not raw:
        return cfg
    if not raw.replace(".", "", 1).isdigit():  # digits and one point at most: no sign, nan, inf
        raise ValueError(f"DESCAN_TRAIN_MINUTES={raw!r} is not a number of minutes (0 or more)")
    return replace(cfg, budget_minutes=float(raw))


# ---- recipes in notebooks ------------------------------------------------------------------------

def code_above(cell: str, marker: str) -> str:
    """The lines of ``cell`` above the line holding ``marker``: what a model or loss cell keeps."""
    lines = cell.splitlines()
    at = next((i for i, line in enumerate(lines) if marker in line), len(lines))
    return "\n".join(lines[:at]).rstrip() + "\n"


def notebook_cell(notebook, marker: str) -> str:
    """The source of the first code cell of ``notebook`` that holds ``marker``."""
    for cell in json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and marker in source:
            return source
    raise ValueError(f"{notebook} has no code cell with {marker!r}: get it from the repository")


def from_notebook(recipe: str, device, smoke: bool, overrides=()) -> dict:
    """The recipe of notebook 03 (``dncnn``) or 04 (``attention``) as its cells define it on
    ``device`` (a torch.device), in smoke mode or not, with ``key=value`` overrides."""
    if recipe not in NOTEBOOKS:
        raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(NOTEBOOKS)}")
    path, ns = ROOT / "notebooks" / NOTEBOOKS[recipe], {"DEVICE": device, "SMOKE": smoke}
    for marker in MARKERS.values():
        source = notebook_cell(path, marker)
        ns["notebook"] = types.SimpleNamespace(this_cell=partial(code_above, source, marker))
        with contextlib.redirect_stdout(io.StringIO()):  # the cells' prints belong to the notebook
            exec(compile(source, f"<cell with {marker}>", "exec"), ns)
    cfg = parse_overrides(overrides, ns["CFG"])
    return make_run(recipe, cfg, ns["MODEL"], ns["MODEL_KWARGS"], ns["MODEL_CODE"], ns["LOSS_CODE"])


def make_run(recipe, cfg: TrainConfig, model: str, kwargs: dict, model_code: str, loss_code: str):
    """A run's recipe: settings, model (class name, arguments, code) and the loss's code."""
    return {"recipe": recipe, "config": cfg, "loss_code": loss_code,
            "model": {"name": model, "kwargs": dict(kwargs), "code": model_code}}


def save_run(run: dict, run_dir) -> None:
    """Write a run's recipe to RUN_DIR/run.json (atomically), where torchrun's processes read it."""
    with atomic_path(Path(run_dir) / "run.json") as tmp:
        tmp.write_text(json.dumps({**run, "config": asdict(run["config"])}, indent=1))


def load_run(run_dir) -> dict:
    """The recipe saved in a run folder (run.json), with its settings as a TrainConfig."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise ValueError(f"no run.json in {run_dir}: start the run from notebook 03 or 04, or "
                         "`python -m descan train --recipe NAME`")
    run = json.loads(path.read_text())
    kwargs = run["model"]["kwargs"]  # JSON wrote a tuple as a list
    run["model"]["kwargs"] = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return {**run, "config": TrainConfig(**run["config"])}


# Settings that may change between sessions of one run without a word: how long and how often.
FREE_KEYS = ("epochs", "budget_minutes", "checkpoint_minutes", "workers", "val_images_per_pass",
             "amp", "compile")
# Settings that decide which crops each step sees: a run cannot go on with other values.
DATA_KEYS = ("crops_per_epoch", "batch_size", "patch", "crops_per_image", "seed")
