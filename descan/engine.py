"""The training engine of notebooks 03 and 04: one recipe table, the config, and the Trainer.

RECIPES is the single source of each notebook's recipe: the notebooks, benchmarks/ and the tests
all build their settings with ``recipe()``. A *batch* is the crops of one optimiser step
(``batch_size``); each decoded pair gives ``crops_per_image`` of them.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from helpers import DataError, atomic_path, env_flag, env_number, progress_bar, read_rgb, seed_everything
from descan import checkpoints as ckpt
from descan.crops import CropDataset, build_cache, default_workers, make_loader
from descan.demo import degradation_augment
from descan.inference import amp_dtype, autocast, evaluate
from descan.losses import make_loss
from descan.models import build_model
from descan.plots import plot_history


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
    budget_minutes: float = 0.0          # wall-clock training budget over the whole run; 0 = none
    checkpoint_minutes: float = 2.0      # also save `last` this often inside an epoch
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
# without a GPU (a step of the slides' 64 x 128 px took about a minute on 2 CPU cores) and in
# smoke mode; "smoke_model" overrides the model's arguments in smoke mode.
RECIPES = {
    "dncnn": {
        "model": "dncnn",
        "model_kwargs": dict(channels=3, width=64, depth=17, mean=0.5, std=0.5),
        "config": dict(epochs=10, crops_per_epoch=64 * 160, batch_size=64, patch=128, crops_per_image=8,
                       loss="mse", optimizer="adam", lr=1e-3, schedule="constant", budget_minutes=0.0),
        "cpu": dict(batch_size=16, patch=64),
        "smoke": dict(epochs=2, crops_per_epoch=32, batch_size=8, patch=48, crops_per_image=4),
        "smoke_model": {},
    },
    "attention": {
        "model": "attention_unet",
        "model_kwargs": dict(width=32, enc_blocks=(1, 1, 2), mid_blocks=2, dec_blocks=(1, 1, 1), colour_path=True),
        "config": dict(epochs=40, crops_per_epoch=16 * 400, batch_size=16, patch=256, crops_per_image=4,
                       loss="l1", mean_y_weight=0.5, augment=True, degrade_prob=0.25, optimizer="adamw",
                       lr=1e-3, weight_decay=1e-4, schedule="cosine", warmup_steps=200, grad_clip=1.0,
                       ema_decay=0.999, budget_minutes=90.0),
        "cpu": dict(patch=64),
        "smoke": dict(epochs=2, crops_per_epoch=32, batch_size=8, patch=48, warmup_steps=2, ema_decay=0.9,
                      budget_minutes=0.0),
        "smoke_model": dict(width=16, mid_blocks=1),
    },
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
    "DESCAN_EMA_DECAY": ("ema_decay", float, 0.0, 0.99999),
    "DESCAN_TRAIN_MINUTES": ("budget_minutes", float, 0.0, None),
    "DESCAN_CHECKPOINT_MINUTES": ("checkpoint_minutes", float, 0.0, None),
    "DESCAN_AUGMENT": ("augment", bool, None, None),
    "DESCAN_LOSS": ("loss", str, None, None),
}


def recipe(name: str, device="cpu", smoke: bool = False, use_env: bool = True, **overrides):
    """(model name, model kwargs, TrainConfig) of a RECIPES entry: the GPU recipe, then the CPU
    sizes when ``device`` is not a GPU, then smoke mode's, then the DESCAN_* variables of
    ENV_KNOBS (and DESCAN_WIDTH for the model's width) when ``use_env``, then ``overrides``."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    r = RECIPES[name]
    config, model_kwargs = dict(r["config"]), dict(r["model_kwargs"])
    if torch.device(device).type != "cuda":
        config.update(r["cpu"])
    if smoke:
        config.update(r["smoke"])
        model_kwargs.update(r["smoke_model"])
    if use_env:
        for var, (field, kind, lo, hi) in ENV_KNOBS.items():
            if kind is bool:
                config[field] = env_flag(var, config.get(field, True))
            elif kind is str:
                config[field] = os.environ.get(var, "").strip().lower() or config.get(field, "mse")
            else:
                default = config.get(field, TrainConfig.__dataclass_fields__[field].default)
                config[field] = env_number(var, kind(default), lo, hi)
        model_kwargs["width"] = env_number("DESCAN_WIDTH", model_kwargs["width"], 4, 512)
    config.update({k: v for k, v in overrides.items() if k in {f.name for f in fields(TrainConfig)}})
    unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown TrainConfig fields: {sorted(unknown)}")
    return r["model"], model_kwargs, TrainConfig(**config)


# Fields that must match to resume a run; the others (epochs, budget, ...) may change between sessions.
RESUME_KEYS = ("crops_per_epoch", "batch_size", "patch", "crops_per_image", "seed")


def lr_factor(cfg: TrainConfig, step: int, total_steps: int, seconds: float) -> float:
    """The learning-rate multiplier at ``step``: 1, or linear warm-up then cosine decay to 0 over
    the epochs, or over the budget when there is one and it ends first."""
    if cfg.schedule == "constant":
        return 1.0
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    progress = step / max(1, total_steps)
    if cfg.budget_minutes > 0:  # with a budget, the schedule ends when the budget does
        progress = max(progress, seconds / (cfg.budget_minutes * 60))
    return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Train a registered model with validation, resumable checkpoints, AMP and a budget.

    Files in ``run_dir``: last.pt (full state, for resuming), best.pt (the weights with the best
    validation competition score), history.csv and history.png.
    """

    def __init__(self, model_name, model_kwargs, train_pairs, val_pairs, run_dir, cfg: TrainConfig,
                 device=None, data_kind="real"):
        self.name, self.kwargs, self.cfg = model_name, dict(model_kwargs), cfg
        self.train_pairs, self.val_pairs = list(train_pairs), list(val_pairs)
        if not self.train_pairs or not self.val_pairs:
            raise DataError(f"need training and validation pairs, got {len(self.train_pairs)} and "
                            f"{len(self.val_pairs)}; check the split in notebook 01")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.data_kind = data_kind
        self.pairs_per_batch = cfg.batch_size // cfg.crops_per_image
        self.items_per_epoch = cfg.crops_per_epoch // cfg.crops_per_image
        self.steps_per_epoch = self.items_per_epoch // self.pairs_per_batch
        seed_everything(cfg.seed)
        self.model = build_model(model_name, **model_kwargs).to(self.device)
        self.ema = None
        if cfg.ema_decay > 0:
            self.ema = build_model(model_name, **model_kwargs).to(self.device)
            self.ema.load_state_dict(self.model.state_dict())
            self.ema.requires_grad_(False)
        self.model = self.model.to(memory_format=torch.channels_last)  # faster on CPU and GPU alike
        opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        fp16 = self.device.type == "cuda" and amp_dtype() == torch.float16  # fp16 needs loss scaling
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.loss_fn = make_loss(cfg.loss, cfg.mean_y_weight, cfg.perceptual_weight, self.device)
        self.epoch = self.item = self.step = 0
        self.seconds, self.history = 0.0, []
        self._val_images = None

    # ---- state -------------------------------------------------------------
    @property
    def best_score(self) -> float:
        """The best validation competition score so far (inf before the first validation)."""
        return min((row["val_score"] for row in self.history), default=float("inf"))

    def data_id(self) -> str:
        """A fingerprint of the split: resuming on other training or validation pairs is refused."""
        names = [p.name for p in self.train_pairs] + ["|"] + [p.name for p in self.val_pairs]
        return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]

    def _common(self, kind, model) -> dict:
        return {"kind": kind, "model_name": self.name, "model_kwargs": self.kwargs,
                "model": {k: v.contiguous() for k, v in model.state_dict().items()},
                "epoch": self.epoch, "step": self.step, "config": asdict(self.cfg), "data_kind": self.data_kind}

    def save_last(self):
        state = {**self._common("last", self.model), "ema": self.ema.state_dict() if self.ema else None,
                 "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                 "item": self.item, "seconds": self.seconds, "history": self.history,
                 "data_id": self.data_id(), "rng": ckpt.rng_state()}
        ckpt.save_checkpoint(state, self.run_dir / ckpt.LAST)

    def save_best(self, val: dict):
        model = self.ema if self.ema is not None else self.model
        ckpt.save_checkpoint({**self._common("best", model), "epoch": self.epoch + 1, "val": val},
                             self.run_dir / ckpt.BEST)

    def try_resume(self) -> bool:
        path = self.run_dir / ckpt.LAST
        if not path.exists():
            return False
        state = ckpt.load_checkpoint(path, kind="last")
        old = state.get("config", {})
        changed = [k for k in RESUME_KEYS if old.get(k) != getattr(self.cfg, k)]
        if state.get("data_id") != self.data_id():
            changed.append("training/validation pairs")
        if state.get("model_name") != self.name or state.get("model_kwargs") != self.kwargs or changed:
            raise ckpt.CheckpointError(
                f"{path} belongs to a different run (model {state.get('model_name')} {state.get('model_kwargs')}, "
                f"settings {', '.join(changed) or 'same'} differ). Use another run name (DESCAN_RUN_NAME), "
                "or move that folder aside to start over.")
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.item, self.step = state["epoch"], state["item"], state["step"]
        self.seconds = state["seconds"]
        self.history = list(state["history"])
        ckpt.set_rng_state(state["rng"])
        print(f"Resuming {path}: epoch {self.epoch + 1}, step {self.step}, "
              f"{self.seconds / 60:.1f} min trained so far, best validation score {self.best_score:.4f}")
        return True

    # ---- pieces ---------------------------------------------------------------
    def val_images(self):
        """The validation pairs as (clean, scan) arrays, read once."""
        if self._val_images is None:
            self._val_images = [(read_rgb(p.clean), read_rgb(p.scan)) for p in
                                progress_bar(self.val_pairs, "loading validation", unit="pair")]
        return self._val_images

    def validate(self) -> dict:
        model = self.ema if self.ema is not None else self.model
        return evaluate(model, self.val_images(), self.device, self.cfg.val_images_per_pass)

    @torch.no_grad()
    def _update_ema(self):
        """Average the weights; the decay warms up as (1 + step) / (10 + step), so early on the
        average is not dominated by the random initial weights."""
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.state_dict().values(), self.model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.lerp_(p, 1 - decay)
            else:
                e.copy_(p)

    def train_step(self, clean, scan, total_steps: int) -> torch.Tensor:
        """One optimiser step on a batch of uint8 crops (N, H, W, 3); returns the loss (detached)."""
        cfg = self.cfg
        y = clean.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        x = scan.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        x = x.contiguous(memory_format=torch.channels_last)
        for g in self.optimizer.param_groups:
            g["lr"] = cfg.lr * lr_factor(cfg, self.step, total_steps, self.seconds)
        with autocast(self.device):
            out = self.model(x)
        loss = self.loss_fn(out, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self._update_ema()
        return loss.detach()

    def _budget_left(self) -> bool:
        return self.cfg.budget_minutes <= 0 or self.seconds < self.cfg.budget_minutes * 60

    def _done(self) -> bool:
        return self.epoch >= self.cfg.epochs or not self._budget_left()

    # ---- the loop ---------------------------------------------------------------
    def fit(self, on_step=None) -> dict:
        """Train until the epochs or the budget are used up, resuming from last.pt when present.

        ``on_step(step)`` is called after every optimiser step (tests use it to simulate a crash).
        Returns {'best_score', 'epochs', 'steps', 'minutes', 'best_path', 'history'}.
        """
        cfg = self.cfg
        self.try_resume()
        if self._done():
            print(f"Nothing to train: {self.run_dir / ckpt.LAST} has finished "
                  f"{'its epochs' if self.epoch >= cfg.epochs else 'its time budget'}. Raise "
                  "DESCAN_EPOCHS / DESCAN_TRAIN_MINUTES to continue it, or set another DESCAN_RUN_NAME "
                  "(or move the folder aside) to start over.")
            return self._result()
        workers = cfg.workers if cfg.workers >= 0 else default_workers(self.device)
        cache = build_cache(self.train_pairs)  # None (decode per item) when it would not fit in memory
        degrade = degradation_augment(cfg.degrade_prob) if cfg.degrade_prob > 0 else None
        dataset = CropDataset(self.train_pairs, cfg.patch, cfg.crops_per_image, self.items_per_epoch, cfg.seed,
                              cfg.augment, cache, degrade)
        total_steps = cfg.epochs * self.steps_per_epoch
        last_save = time.time()
        try:
            while not self._done():
                dataset.set_epoch(self.epoch, self.item)
                loader = make_loader(dataset, self.pairs_per_batch, workers, self.device)
                self.model.train()
                loss_sum, n_loss = torch.zeros((), device=self.device), 0
                bar = progress_bar(loader, f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step",
                                   total=self.steps_per_epoch - self.item // self.pairs_per_batch)
                t_epoch = t_last = time.time()
                crops = 0
                for clean, scan in bar:
                    loss_sum += self.train_step(clean, scan, total_steps)
                    n_loss += 1
                    crops += clean.shape[0]
                    self.step += 1
                    self.item += self.pairs_per_batch
                    now = time.time()
                    self.seconds += now - t_last
                    t_last = now
                    if self.step % 20 == 0:
                        bar.set_postfix(loss=f"{loss_sum.item() / n_loss:.4f}",
                                        crops_s=f"{crops / (now - t_epoch):.0f}")
                    if on_step is not None:
                        on_step(self.step)
                    if now - last_save >= cfg.checkpoint_minutes * 60:
                        self.save_last()
                        last_save = time.time()
                    if not self._budget_left():
                        break
                epoch_finished = self.item >= self.steps_per_epoch * self.pairs_per_batch
                self._end_epoch(loss_sum.item() / max(1, n_loss), crops / max(1e-9, time.time() - t_epoch),
                                epoch_finished)
                last_save = time.time()
        except KeyboardInterrupt:
            self.save_last()
            print(f"\nInterrupted: saved {self.run_dir / ckpt.LAST} at step {self.step}. "
                  "Run this cell again to resume.")
            raise
        return self._result()

    def _end_epoch(self, train_loss, crops_per_s, finished):
        val = self.validate()
        row = {"epoch": self.epoch + 1, "step": self.step, "minutes": round(self.seconds / 60, 3),
               "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
               "val_score": val["score"], "val_pixel_y_mae": val["pixel_y_mae"], "val_psnr": val["psnr"],
               "crops_per_s": crops_per_s}
        improved = val["score"] < self.best_score
        self.history.append(row)
        if improved:
            self.save_best(val)
        if finished:
            self.epoch, self.item = self.epoch + 1, 0
        self.save_last()
        self.write_history()
        print(f"epoch {row['epoch']}: train loss {train_loss:.5f} | val score {val['score']:.4f} "
              f"| pixel Y MAE {val['pixel_y_mae']:.3f} | PSNR {val['psnr']:.2f} dB"
              f"{' | saved best.pt' if improved else ''}")

    def write_history(self):
        import pandas as pd
        df = pd.DataFrame(self.history)
        with atomic_path(self.run_dir / "history.csv") as tmp:
            df.to_csv(tmp, index=False)
        plot_history(df, self.run_dir / "history.png", title=f"{self.name} ({self.data_kind} data)")

    def _result(self) -> dict:
        return {"best_score": self.best_score, "epochs": self.epoch, "steps": self.step,
                "minutes": self.seconds / 60, "best_path": self.run_dir / ckpt.BEST, "history": self.history}

