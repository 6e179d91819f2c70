"""The training engine of notebooks 03 and 04: the Trainer (settings: descan/recipes.py)."""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from helpers import DataError, read_rgb
from descan.files import atomic_path, progress_bar
from descan.notebook import seed_everything
from descan import checkpoints as ckpt
from descan.data import scanner_group
from descan.crops import CropDataset, build_cache, default_workers, make_loader
from descan.demo import input_augment
from descan import distributed as dist
from descan.inference import amp_dtype, autocast, compile_model, evaluate
from descan.losses import colour_stats_loss, make_loss
from descan.models import Identity, build_model
from descan.plots import plot_history
from descan.recipes import DATA_KEYS, FREE_KEYS, TrainConfig


def make_optimizer(params, cfg: TrainConfig, device) -> torch.optim.Optimizer:
    """Adam or AdamW of the recipe, as one fused kernel on CUDA (AdamW's per-tensor loop cost 18%
    of the attention model's GPU step), else the multi-tensor ("foreach") implementation."""
    opt = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    fast = {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}
    return opt(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict):
    """Load a saved optimiser state, keeping this machine's fused/foreach choice (a last.pt from a
    CPU, or from before the fused optimiser, would otherwise switch it off)."""
    state = {**state, "param_groups": [{**saved, **{k: now[k] for k in ("fused", "foreach") if k in now}}
                                       for saved, now in zip(state["param_groups"], optimizer.param_groups)]}
    optimizer.load_state_dict(state)


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
            self.ema = build_model(model_name, **model_kwargs).to(self.device, memory_format=torch.channels_last)
            self.ema.load_state_dict(self.model.state_dict())
            self.ema.requires_grad_(False)
        self.model = self.model.to(memory_format=torch.channels_last)  # faster on CPU and GPU alike
        self.optimizer = make_optimizer(self.model.parameters(), cfg, self.device)
        # DistributedDataParallel under torchrun, then DESCAN_COMPILE=1; self.model keeps the weights' names
        self.train_model = compile_model(dist.wrap(self.model, self.device))
        fp16 = self.device.type == "cuda" and amp_dtype() == torch.float16  # fp16 needs loss scaling
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.loss_fn = make_loss(cfg.loss, cfg.mean_y_weight, cfg.perceptual_weight, self.device)
        self.epoch = self.item = self.step = 0
        self.seconds, self.history = 0.0, []
        self._val_images, self.do_nothing, self.pending_change = None, None, ""

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
        if not dist.is_main():  # under torchrun, process 0 writes
            return
        state = {**self._common("last", self.model), "ema": self.ema.state_dict() if self.ema else None,
                 "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                 "item": self.item, "seconds": self.seconds, "history": self.history,
                 "data_id": self.data_id(), "rng": ckpt.rng_state()}
        ckpt.save_checkpoint(state, self.run_dir / ckpt.LAST)

    def save_best(self, val: dict):
        model = self.ema if self.ema is not None else self.model
        ckpt.save_checkpoint({**self._common("best", model), "epoch": self.epoch + 1, "val": val},
                             self.run_dir / ckpt.BEST)

    def settings_changed(self, state) -> tuple[dict, list]:
        """(changed settings {name: (old, new)}, what forbids going on) between a last.pt and now."""
        old = state.get("config", {})
        diffs = {k: (old[k], v) for k, v in asdict(self.cfg).items() if k in old and k not in FREE_KEYS
                 and old[k] != v}
        fixed = [k for k in diffs if k in DATA_KEYS]
        if state.get("data_id") != self.data_id():
            fixed.append("training/validation pairs")
        if state.get("model_name") != self.name or state.get("model_kwargs") != self.kwargs:
            fixed.append(f"model {state.get('model_name')} {state.get('model_kwargs')}")
            diffs.update({k: (state.get("model_kwargs", {}).get(k), v) for k, v in self.kwargs.items()
                          if state.get("model_kwargs", {}).get(k) != v})
        return diffs, fixed

    def try_resume(self) -> bool:
        """Go on from last.pt when there is one. A run trained with other settings stops with what
        changed and the two ways out: a new DESCAN_RUN_NAME, or DESCAN_RESUME=continue (not for
        settings that decide the crops or the model), which records the change in the history."""
        path = self.run_dir / ckpt.LAST
        if not path.exists():
            return False
        state = ckpt.load_checkpoint(path, kind="last")
        diffs, fixed = self.settings_changed(state)
        said = ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in diffs.items())
        go_on = os.environ.get("DESCAN_RESUME", "").strip().lower() == "continue"
        if fixed or (diffs and not go_on):
            tag = "-".join(f"{k.split('_')[0]}{n}" for k, (o, n) in list(diffs.items())[:2]) or "new"
            new_name = f"{self.run_dir.name}-{tag}".replace(" ", "")
            why = (f" {', '.join(fixed)} differ, so this run cannot go on: those decide the crops or the model."
                   if fixed else "")
            raise ckpt.CheckpointError(
                f"{path} was trained with other settings: {said or 'see below'}.{why}\n"
                f"  - start a new run with the new settings (suggested): DESCAN_RUN_NAME={new_name}\n"
                + ("" if fixed else "  - or carry on this run with the new settings (recorded in its history): "
                   "DESCAN_RESUME=continue\n") + "  - or set the settings back to the run's.")
        self.model.load_state_dict(state["model"])
        if self.ema is not None:  # an EMA switched on now starts from the trained weights, not random ones
            self.ema.load_state_dict(state["ema"] if state.get("ema") else state["model"])
        try:
            load_optimizer_state(self.optimizer, state["optimizer"])
        except ValueError:  # another optimiser: it starts afresh (the change is recorded below)
            pass
        if state["scaler"]:  # empty when saved without loss scaling (bf16, fp32): DESCAN_AMP may change
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.item, self.step = state["epoch"], state["item"], state["step"]
        self.seconds = state["seconds"]
        self.history = list(state["history"])
        ckpt.set_rng_state(state["rng"])
        if diffs:
            self.pending_change = said
            print(f"DESCAN_RESUME=continue: going on with changed settings ({said}); recorded in the history.")
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

    def val_groups(self) -> list[str]:
        """'seen' or 'unseen' scanner for each validation pair (data.scanner_group)."""
        return [scanner_group(p.name) for p in self.val_pairs]

    def validate(self, model=None) -> dict:
        """Figures on the seen scanners' validation pairs (best.pt is chosen by them) and, when there
        are pairs from unseen scanners, unseen_* figures, which are reported but never choose."""
        model = model if model is not None else (self.ema if self.ema is not None else self.model)
        return evaluate(model, self.val_images(), self.device, self.cfg.val_images_per_pass, groups=self.val_groups())

    @torch.no_grad()
    def _update_ema(self):
        """Average the weights; the decay warms up as (1 + step) / (10 + step), so early on the
        average is not dominated by the random initial weights."""
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        pairs = list(zip(self.ema.state_dict().values(), self.model.state_dict().values()))
        floats = [(e, p) for e, p in pairs if e.dtype.is_floating_point]
        if floats:  # a few kernels, not one per tensor
            torch._foreach_lerp_([e for e, _ in floats], [p for _, p in floats], 1 - decay)
        for e, p in pairs:
            if not e.dtype.is_floating_point:
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
            out = self.train_model(x)
        loss = self.loss_fn(out, y)
        estimate = getattr(self.model, "global_estimate", None)  # a colour head's image (models.ColourHead)
        if estimate is not None and cfg.stats_weight > 0:
            loss = loss + cfg.stats_weight * colour_stats_loss(estimate, y)
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
    def _best_row(self) -> dict:
        return min(self.history, key=lambda r: r["val_score"], default={})

    def loss_name(self) -> str:
        cfg = self.cfg
        return cfg.loss.upper() + (f" + {cfg.mean_y_weight} x mean-Y" if cfg.mean_y_weight else "") + \
            (f" + {cfg.perceptual_weight} x VGG" if cfg.perceptual_weight else "") + \
            (f" + {cfg.stats_weight} x colour stats" if cfg.stats_weight and self.kwargs.get("colour_head", self.name == "colour_head") else "")

    def fit(self, on_step=None) -> dict:
        """Train until the epochs or the budget are used up, resuming from last.pt when present.

        ``on_step(step)`` is called after every optimiser step (tests use it to simulate a crash).
        Returns {'best_score', 'epochs', 'steps', 'minutes', 'best_path', 'history'}.
        """
        cfg = self.cfg
        dist.main_first(self.try_resume)  # under torchrun every process restores the same state
        if self._done():
            best = self._best_row()
            print(f"Nothing to train: run '{self.run_dir.name}' ({self.run_dir}) has finished "
                  + (f"its {cfg.epochs} epochs" if self.epoch >= cfg.epochs else
                     f"its budget of {cfg.budget_minutes:g} min") +
                  f" after {self.step} steps; best validation score {best.get('val_score', math.nan):.4f} at step "
                  f"{best.get('step')}. To train it further: raise DESCAN_EPOCHS (now {cfg.epochs}) or "
                  f"DESCAN_TRAIN_MINUTES (now {cfg.budget_minutes:g}). To start over: set another "
                  "DESCAN_RUN_NAME, or move the folder aside.")
            return self._result()
        workers = cfg.workers if cfg.workers >= 0 else default_workers(self.device, dist.local_processes())
        # None (decode per item) when it would not fit in memory; under torchrun each process holds a copy
        cache = build_cache(self.train_pairs, 0.4 / dist.world_size(), dist.is_main())
        degrade = input_augment(cfg.degrade_prob, cfg.colour_jitter)
        dataset = CropDataset(self.train_pairs, cfg.patch, cfg.crops_per_image, self.items_per_epoch, cfg.seed,
                              cfg.augment, cache, degrade)
        self.do_nothing = dist.share(self.validate(Identity()) if dist.is_main() else None)
        total_steps = cfg.epochs * self.steps_per_epoch
        last_save, last_val = time.time(), self.seconds
        try:
            while not self._done():
                dataset.set_epoch(self.epoch, self.item)
                loader = make_loader(dist.shard(dataset, self.pairs_per_batch),  # this process's share
                                     self.pairs_per_batch // dist.world_size(), workers, self.device)
                self.model.train()
                loss_sum, n_loss = torch.zeros((), device=self.device), 0
                left_in_epoch = self.steps_per_epoch - self.item // self.pairs_per_batch
                bar = progress_bar(loader, f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step", total=left_in_epoch,
                                   enabled=dist.is_main())
                t_epoch = t_last = time.time()
                crops = 0
                for clean, scan in bar:
                    loss_sum += self.train_step(clean, scan, total_steps)
                    n_loss += 1
                    crops += clean.shape[0]
                    self.step += 1
                    self.item += self.pairs_per_batch
                    now = time.time()
                    self.seconds = dist.from_main(self.seconds + now - t_last)  # one clock for all processes
                    t_last = now
                    if n_loss == 5 and cfg.budget_minutes > 0:  # size the bar to what the budget allows
                        per_step = (now - t_epoch) / n_loss
                        can = n_loss + int((cfg.budget_minutes * 60 - self.seconds) / per_step)
                        bar.total = max(n_loss, min(left_in_epoch, can))
                        bar.refresh()
                    if self.step % 20 == 0:
                        bar.set_postfix(loss=f"{loss_sum.item() / n_loss:.4f}",
                                        crops_s=f"{crops / (now - t_epoch):.0f}")
                    if on_step is not None:
                        on_step(self.step)
                    if cfg.val_every_minutes > 0 and self.seconds - last_val >= cfg.val_every_minutes * 60 \
                            and self.item < self.steps_per_epoch * self.pairs_per_batch and self._budget_left():
                        # a short budget gets several candidates for best.pt, not only the epoch ends
                        self._end_epoch(loss_sum.item() / n_loss, crops / max(1e-9, now - t_epoch), False)
                        self.model.train()
                        last_val, last_save, t_last = self.seconds, time.time(), time.time()
                    elif now - last_save >= cfg.checkpoint_minutes * 60:
                        self.save_last()
                        last_save = time.time()
                    if not self._budget_left():
                        break
                bar.close()
                epoch_finished = self.item >= self.steps_per_epoch * self.pairs_per_batch
                self._end_epoch(loss_sum.item() / max(1, n_loss), crops / max(1e-9, time.time() - t_epoch),
                                epoch_finished)
                last_save, last_val = time.time(), self.seconds
                if not self._budget_left():
                    best = self._best_row()
                    done = 100 * (self.item / self.pairs_per_batch) / self.steps_per_epoch
                    where = f"100% of epoch {self.epoch}" if epoch_finished else \
                        f"{done:.0f}% of epoch {self.epoch + 1}"
                    print(f"Budget of {cfg.budget_minutes:g} min spent after {self.step} steps ({where}); best "
                          f"validation score {best['val_score']:.4f} at step {best['step']} (do nothing: "
                          f"{self.do_nothing['score']:.4f}). DESCAN_TRAIN_MINUTES sets the budget.")
        except KeyboardInterrupt:
            self.save_last()
            print(f"\nInterrupted: saved {self.run_dir / ckpt.LAST} at step {self.step}. "
                  "Run this cell again to resume.")
            raise
        return self._result()

    def _end_epoch(self, train_loss, crops_per_s, finished):
        train_loss, crops_per_s = dist.average(train_loss), crops_per_s * dist.world_size()
        if not dist.is_main():  # under torchrun, process 0 validates and writes; the others take its history
            if finished:
                self.epoch, self.item = self.epoch + 1, 0
            self.history = dist.share(self.history)
            return
        val = self.validate()
        row = {"epoch": self.epoch + 1, "step": self.step, "minutes": round(self.seconds / 60, 3),
               "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
               "val_score": val["score"], "val_pixel_y_mae": val["pixel_y_mae"], "val_psnr": val["psnr"],
               "crops_per_s": crops_per_s, "loss_name": self.loss_name(),
               "do_nothing_score": self.do_nothing["score"], "do_nothing_psnr": self.do_nothing["psnr"],
               "settings_changed": self.pending_change,
               "val_unseen_score": val.get("unseen_score", math.nan),
               "val_unseen_pixel_y_mae": val.get("unseen_pixel_y_mae", math.nan),
               "do_nothing_unseen_score": self.do_nothing.get("unseen_score", math.nan)}
        self.pending_change = ""
        improved = val["score"] < self.best_score
        self.history.append(row)
        if improved:
            self.save_best(val)
        if finished:
            self.epoch, self.item = self.epoch + 1, 0
        self.save_last()
        self.write_history()
        unseen = f" | unseen scanners: score {val['unseen_score']:.4f}, pixel Y MAE {val['unseen_pixel_y_mae']:.3f}" \
            if "unseen_score" in val else ""
        print(f"epoch {row['epoch']}: train loss {train_loss:.5f} | val score {val['score']:.4f} "
              f"| pixel Y MAE {val['pixel_y_mae']:.3f} | PSNR {val['psnr']:.2f} dB{unseen}"
              f"{' | saved best.pt' if improved else ''}")
        dist.share(self.history)

    def write_history(self):
        import pandas as pd
        df = pd.DataFrame(self.history)
        with atomic_path(self.run_dir / "history.csv") as tmp:
            df.to_csv(tmp, index=False)
        plot_history(df, self.run_dir / "history.png", title=f"{self.name} ({self.data_kind} data)")

    def _result(self) -> dict:
        return {"best_score": self.best_score, "epochs": self.epoch, "steps": self.step,
                "minutes": self.seconds / 60, "best_path": self.run_dir / ckpt.BEST, "history": self.history}

