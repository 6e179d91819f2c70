"""The recipe table: every training knob (TrainConfig) and the recipes of notebooks 03 and 04.

RECIPES is the single source of each notebook's recipe: the notebooks, benchmarks/ and the tests
all build their settings with ``recipe()``. A *batch* is the crops of one optimiser step
(``batch_size``); each decoded pair gives ``crops_per_image`` of them. No torch at import.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

from descan.settings import env_flag, env_number


@dataclass(frozen=True)
class TrainConfig:
    """Every training knob. The defaults are the slides' DnCNN recipe."""
    epochs: int = 10
    crops_per_epoch: int = 64 * 160      # an epoch is a fixed number of crops, not a pass over images
    batch_size: int = 64                 # crops per optimiser step
    patch: int = 128                     # side of a training crop, in pixels
    crops_per_image: int = 8             # crops cut from each decoded pair; batch_size is a multiple of it
    loss: str = "mse"                    # "mse" or "l1"
    mean_y_weight: float = 0.0           # extra loss on each crop's mean Y (what the metric sees)
    perceptual_weight: float = 0.0       # VGG16 feature loss (downloads ImageNet weights); 0 = off
    optimizer: str = "adam"              # "adam" or "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"           # "constant" or "cosine" (with warm-up)
    warmup_steps: int = 0
    grad_clip: float = 0.0               # 0 = off
    ema_decay: float = 0.0               # 0 = off; else validate and save the averaged weights
    augment: bool = True                 # flips and 90-degree rotations
    degrade_prob: float = 0.0            # degradation augmentation probability
    colour_jitter: float = 0.0           # probability of a random global colour response on an input crop
    rescan_prob: float = 0.0             # probability of training on a random scanner's simulated scan of the clean crop
    stats_weight: float = 0.0            # colour head: weight of the loss on its image's colour statistics
    budget_minutes: float = 0.0          # wall-clock training budget over the whole run; 0 = none
    checkpoint_minutes: float = 2.0      # also save `last` this often inside an epoch
    val_every_minutes: float = 0.0       # also validate this often inside an epoch (short budgets); 0 = no
    val_images_per_pass: int = 8         # whole validation images per forward pass
    workers: int = -1                    # -1 = automatic: none on a CPU, up to 4 beside a GPU
    seed: int = 0

    def __post_init__(self):
        if self.batch_size < 1 or self.crops_per_image < 1 or self.batch_size % self.crops_per_image:
            raise ValueError(f"batch_size={self.batch_size} (DESCAN_BATCH) must be a positive multiple of "
                             f"crops_per_image={self.crops_per_image} (DESCAN_CROPS_PER_IMAGE): every decoded "
                             "pair gives that many crops to a batch")
        if self.crops_per_epoch < self.batch_size:
            raise ValueError(f"crops_per_epoch={self.crops_per_epoch} must be at least batch_size={self.batch_size}")
        if self.patch < 8 or self.epochs < 1:
            raise ValueError(f"patch={self.patch} must be at least 8 and epochs={self.epochs} at least 1")
        if self.loss not in ("mse", "l1") or self.optimizer not in ("adam", "adamw") or \
                self.schedule not in ("constant", "cosine"):
            raise ValueError(f"unknown loss {self.loss!r}, optimizer {self.optimizer!r} or schedule {self.schedule!r}")


# The recipes of notebooks 03 and 04. "config" is the GPU recipe; "cpu" and "smoke" override it
# without a GPU (a step of the slides' 64 x 128 px took about a minute on 2 CPU cores, so smaller
# crops and a 10-minute budget) and in smoke mode; "smoke_model" overrides the model's arguments
# in smoke mode.
RECIPES = {
    "dncnn": {
        "model": "dncnn",
        "model_kwargs": dict(channels=3, width=64, depth=17, mean=0.5, std=0.5, levels=False),
        "config": dict(epochs=10, crops_per_epoch=64 * 160, batch_size=64, patch=128, crops_per_image=8,
                       loss="mse", optimizer="adam", lr=1e-3, schedule="constant", budget_minutes=0.0),
        "cpu": dict(batch_size=16, patch=64, budget_minutes=10.0, val_every_minutes=2.0),
        "smoke": dict(epochs=2, crops_per_epoch=32, batch_size=8, patch=48, crops_per_image=4, budget_minutes=0.0),
        "smoke_model": {},
    },
    "attention": {
        "model": "attention_unet",
        # colour head and colour jitter on (DESCAN_COLOUR_HEAD=0, DESCAN_COLOUR_JITTER=0): best on the
        # training scanners' pages, and better than without on unseen and held-out scanners at equal
        # time; auto-levels and rescans (off) did better on the unseen validation scanners but not on
        # the held-out ones (benchmarks/compare_models.py, README)
        "model_kwargs": dict(width=32, enc_blocks=(1, 1, 2), mid_blocks=2, dec_blocks=(1, 1, 1), colour_path=True,
                             colour_head=True, levels=False),
        "config": dict(epochs=40, crops_per_epoch=16 * 400, batch_size=16, patch=256, crops_per_image=4,
                       loss="l1", mean_y_weight=0.5, stats_weight=1.0, augment=True, degrade_prob=0.25,
                       colour_jitter=0.5, optimizer="adamw",
                       lr=1e-3, weight_decay=1e-4, schedule="cosine", warmup_steps=200, grad_clip=1.0,
                       ema_decay=0.999, budget_minutes=90.0),
        "cpu": dict(patch=64, budget_minutes=10.0, val_every_minutes=2.0),
        "smoke": dict(epochs=2, crops_per_epoch=32, batch_size=8, patch=48, warmup_steps=2, ema_decay=0.9,
                      budget_minutes=0.0),
        "smoke_model": dict(width=16, mid_blocks=1),
    },
}
# The colour head alone: a global colour correction learnt from the pairs, nothing local.
RECIPES["colour_head"] = {
    "model": "colour_head",
    "model_kwargs": dict(width=32, size=64),
    "config": {**RECIPES["attention"]["config"], "ema_decay": 0.0, "degrade_prob": 0.0, "colour_jitter": 0.0},
    # It judges whole images, so it trains on whole images (or 256 px crops): it shrinks them to
    # 64 px first and costs little at any size.
    "cpu": {**RECIPES["attention"]["cpu"], "patch": 256},
    "smoke": {**RECIPES["attention"]["smoke"], "ema_decay": 0.0},
    "smoke_model": dict(width=8, size=16),
}

# Environment variables that override a recipe: name -> (TrainConfig field, kind, minimum, maximum)
ENV_KNOBS = {
    "DESCAN_EPOCHS": ("epochs", int, 1, None),
    "DESCAN_CROPS_PER_EPOCH": ("crops_per_epoch", int, 1, None),
    "DESCAN_BATCH": ("batch_size", int, 1, None),
    "DESCAN_PATCH": ("patch", int, 8, None),
    "DESCAN_CROPS_PER_IMAGE": ("crops_per_image", int, 1, None),
    "DESCAN_LR": ("lr", float, 1e-8, 1.0),
    "DESCAN_MEAN_Y_WEIGHT": ("mean_y_weight", float, 0.0, None),
    "DESCAN_PERCEPTUAL_WEIGHT": ("perceptual_weight", float, 0.0, None),
    "DESCAN_DEGRADE_PROB": ("degrade_prob", float, 0.0, 1.0),
    "DESCAN_COLOUR_JITTER": ("colour_jitter", float, 0.0, 1.0),
    "DESCAN_RESCAN_PROB": ("rescan_prob", float, 0.0, 1.0),
    "DESCAN_STATS_WEIGHT": ("stats_weight", float, 0.0, None),
    "DESCAN_EMA_DECAY": ("ema_decay", float, 0.0, 0.99999),
    "DESCAN_TRAIN_MINUTES": ("budget_minutes", float, 0.0, None),
    "DESCAN_CHECKPOINT_MINUTES": ("checkpoint_minutes", float, 0.0, None),
    "DESCAN_VAL_EVERY_MINUTES": ("val_every_minutes", float, 0.0, None),
    "DESCAN_WEIGHT_DECAY": ("weight_decay", float, 0.0, 1.0),
    "DESCAN_WARMUP_STEPS": ("warmup_steps", int, 0, None),
    "DESCAN_GRAD_CLIP": ("grad_clip", float, 0.0, None),
    "DESCAN_AUGMENT": ("augment", bool, None, None),
    "DESCAN_LOSS": ("loss", str, ("l1", "mse"), None),
    "DESCAN_OPTIMIZER": ("optimizer", str, ("adam", "adamw"), None),
    "DESCAN_SCHEDULE": ("schedule", str, ("constant", "cosine"), None),
}


def recipe(name: str, device="cpu", smoke: bool = False, use_env: bool = True, **overrides):
    """(model name, model kwargs, TrainConfig) of a RECIPES entry: the GPU recipe, then the CPU
    sizes when ``device`` is not a GPU, then smoke mode's, then the DESCAN_* variables of
    ENV_KNOBS (and DESCAN_WIDTH for the model's width, DESCAN_COLOUR_HEAD for the attention model's
    colour head, DESCAN_LEVELS for auto-levels) when ``use_env``, then ``overrides``."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    r = RECIPES[name]
    config, model_kwargs = dict(r["config"]), dict(r["model_kwargs"])
    if str(device).split(":")[0] != "cuda":
        config.update(r["cpu"])
    if smoke:
        config.update(r["smoke"])
        model_kwargs.update(r["smoke_model"])
    if use_env:
        for var, (field, kind, lo, hi) in ENV_KNOBS.items():
            if kind is bool:
                config[field] = env_flag(var, config.get(field, True))
            elif kind is str:
                value = os.environ.get(var, "").strip().lower()
                if value and value not in lo:
                    raise ValueError(f"{var}={value!r} is not one of {', '.join(lo)}")
                config[field] = value or config.get(field, TrainConfig.__dataclass_fields__[field].default)
            else:
                default = config.get(field, TrainConfig.__dataclass_fields__[field].default)
                config[field] = env_number(var, kind(default), lo, hi)
        model_kwargs["width"] = env_number("DESCAN_WIDTH", model_kwargs["width"], 4, 512)
        if "colour_head" in model_kwargs:
            model_kwargs["colour_head"] = env_flag("DESCAN_COLOUR_HEAD", model_kwargs["colour_head"])
        if "levels" in model_kwargs:
            model_kwargs["levels"] = env_flag("DESCAN_LEVELS", model_kwargs["levels"])
    config.update({k: v for k, v in overrides.items() if k in {f.name for f in fields(TrainConfig)}})
    unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
    return r["model"], model_kwargs, TrainConfig(**config)


# Settings that may change between sessions of one run without a word: how long and how often.
FREE_KEYS = ("epochs", "budget_minutes", "checkpoint_minutes", "val_every_minutes", "workers", "val_images_per_pass")
# Settings that decide which crops each step sees: a run cannot go on with other values.
DATA_KEYS = ("crops_per_epoch", "batch_size", "patch", "crops_per_image", "seed")
