"""The training engine of notebooks 03 and 04: a run's recipe (descan/recipes.py) in, best.pt out.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from helpers import PARAM_LIMIT, DataError, read_rgb
from descan import checkpoints as ckpt
from descan import distributed as dist
from descan.colourmap import fit_affine, fit_lut, sample_pixels
from descan.crops import CropDataset, build_cache, check_patch, default_workers, make_loader
from descan.data import scanner_group
from descan.demo import input_augment
from descan.files import atomic_path, progress_bar
from descan.inference import autocast, compile_model, evaluate, use_grad_scaler
from descan.losses import from_code
from descan.models import ColourHead, ColourLUT, Identity, build, count_parameters
from descan.notebook import seed_everything
from descan.optim import lr_factor, make_optimizer, stop_if_diverged, update_ema
from descan.plots import plot_history
from descan.resume import resume, rng_state, split_id


class Trainer:
    """Train a run's model with validation, resumable checkpoints, mixed precision and a budget.

    Files in ``run_dir``: run.json (the recipe), last.pt (full state, for resuming), best.pt (the
    weights with the best validation competition score, and the model's code), history.csv/.png.
    """

    def __init__(self, run: dict, train_pairs, val_pairs, run_dir, device=None, data_kind="real"):
        self.run, self.cfg = run, run["config"]
        self.train_pairs, self.val_pairs = list(train_pairs), list(val_pairs)
        if not self.train_pairs or not self.val_pairs:
            raise DataError(f"need training and validation pairs, got {len(self.train_pairs)} and "
                            f"{len(self.val_pairs)}; check the split in notebook 01")
        self.run_dir, self.data_kind = Path(run_dir), data_kind
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cfg = self.cfg
        self.pairs_per_batch = cfg.batch_size // cfg.crops_per_image
        self.steps_per_epoch = cfg.crops_per_epoch // cfg.crops_per_image // self.pairs_per_batch
        self.items_per_epoch = self.steps_per_epoch * self.pairs_per_batch
        seed_everything(cfg.seed)
        self.model, self.ema = self.new_model(), None
        if count_parameters(self.model) >= PARAM_LIMIT:  # the competition's rule
            raise ValueError(f"{self.run['model']['name']} has {count_parameters(self.model):,} "
                             f"parameters; the rule is fewer than {PARAM_LIMIT:,}.")
        if cfg.ema_decay > 0:
            self.ema = self.new_model().to(memory_format=torch.channels_last)
            self.ema.load_state_dict(self.model.state_dict())
            self.ema.requires_grad_(False)
        self.model = self.model.to(memory_format=torch.channels_last)  # faster on CPU and GPU alike
        self.optimizer = make_optimizer(self.model.parameters(), cfg, self.device)
        self.train_model = compile_model(dist.wrap(self.model, self.device), cfg.compile)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_grad_scaler(self.device, cfg.amp))
        self.loss_fn = from_code(run["loss_code"])
        self.epoch = self.item = self.step = 0
        self.seconds, self.history = 0.0, []
        self._val_images, self.do_nothing, self.pending_change = None, None, ""

    def new_model(self):
        spec = self.run["model"]
        return build(spec["code"], spec["name"], spec["kwargs"]).to(self.device)

    @property
    def best_score(self) -> float:
        """The best validation competition score so far (inf before the first validation)."""
        return min((row["val_score"] for row in self.history), default=float("inf"))

    def save(self, kind: str, val: dict | None = None):
        """best.pt (the validated weights, the averaged ones with EMA) or last.pt (all of the
        state, for resuming; process 0 writes it under torchrun)."""
        if not dist.is_main():
            return
        spec, best = self.run["model"], kind == "best"
        model = self.ema if best and self.ema is not None else self.model
        state = {"kind": kind, "model_name": spec["name"], "model_kwargs": spec["kwargs"],
                 "model_code": spec["code"],
                 "model": {k: v.contiguous() for k, v in model.state_dict().items()},
                 "epoch": self.epoch + best, "step": self.step, "config": asdict(self.cfg),
                 "data_kind": self.data_kind}
        if best:
            state["val"] = val
        else:
            state.update(ema=self.ema.state_dict() if self.ema else None,
                         optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                         item=self.item, seconds=self.seconds, history=self.history,
                         data_id=split_id(self.train_pairs, self.val_pairs), rng=rng_state())
        ckpt.save_checkpoint(state, self.run_dir / (ckpt.BEST if best else ckpt.LAST))

    def validate(self, model=None) -> dict:
        """Figures on the seen scanners' validation pairs (best.pt is chosen by them) and, when
        there are pairs from unseen scanners, unseen_* figures (reported, never choosing)."""
        if self._val_images is None:
            self._val_images = [(read_rgb(p.clean), read_rgb(p.scan)) for p in
                                progress_bar(self.val_pairs, "loading validation", unit="pair")]
        model = model if model is not None else (self.ema if self.ema is not None else self.model)
        return evaluate(model, self._val_images, self.device, self.cfg.val_images_per_pass,
                        groups=[scanner_group(p.name) for p in self.val_pairs], amp=self.cfg.amp)

    def train_step(self, clean, scan, total_steps: int) -> torch.Tensor:
        """One optimiser step on a batch of uint8 crops (N, H, W, 3); returns the loss."""
        cfg = self.cfg
        y = clean.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        x = scan.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        x = x.contiguous(memory_format=torch.channels_last)
        for g in self.optimizer.param_groups:
            g["lr"] = cfg.lr * lr_factor(cfg, self.step, total_steps, self.seconds)
        with autocast(self.device, cfg.amp):
            out = self.train_model(x)
        loss = self.loss_fn(out, y, self.model, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            update_ema(self.ema, self.model, min(cfg.ema_decay, (1 + self.step) / (10 + self.step)))
        return loss.detach()

    def start_from_colour_fit(self) -> None:
        """A model with a ColourLUT starts with it fitted to the training pairs, else one with a
        ColourHead as their least-squares colour map: training adds what the fit cannot do. Every
        process fits the same (the same seeded pixels), so nothing needs to be shared."""
        found = [m for net in (self.model, self.ema) if net is not None for m in net.modules()]
        luts = [m for m in found if isinstance(m, ColourLUT)]
        heads = [] if luts else [m for m in found if isinstance(m, ColourHead)]
        if luts or heads:
            pixels = sample_pixels(self.train_pairs, max_images=200, show_progress=False)
        for lut in luts:
            lut.load_state_dict(fit_lut(*pixels, lut.table.shape[-1]).state_dict())
        for head in heads:
            head.start_from(*fit_affine(*pixels))

    def _budget_left(self) -> bool:
        return self.cfg.budget_minutes <= 0 or self.seconds < self.cfg.budget_minutes * 60

    def _done(self) -> bool:
        return self.epoch >= self.cfg.epochs or not self._budget_left()

    def _best(self) -> str:
        best = min(self.history, key=lambda r: r["val_score"], default={})
        score, step = best.get("val_score", math.nan), best.get("step")
        return f"best validation score {score:.4f} at step {step}"

    def _finished(self) -> str:
        cfg = self.cfg
        what = f"its {cfg.epochs} epochs" if self.epoch >= cfg.epochs else \
            f"its budget of {cfg.budget_minutes:g} min"
        return (f"Nothing to train: run '{self.run_dir.name}' ({self.run_dir}) has finished {what} "
                f"after {self.step} steps; {self._best()}. To train it further: raise epochs (now "
                f"{cfg.epochs}) or the budget (DESCAN_TRAIN_MINUTES, now {cfg.budget_minutes:g}). "
                "To start over: set another DESCAN_RUN_NAME, or move the folder aside.")

    def fit(self, on_step=None) -> dict:
        """Train until the epochs or the budget are used up, resuming from last.pt when present.
        ``on_step(step)`` is called after every optimiser step (tests use it to simulate a crash).
        Returns {'best_score', 'epochs', 'steps', 'minutes', 'best_path', 'history'}."""
        cfg = self.cfg
        dist.main_first(lambda: resume(self))  # under torchrun every process restores the same
        if self._done():
            print(self._finished())
            return self._result()
        workers = cfg.workers if cfg.workers >= 0 else default_workers(self.device,
                                                                       dist.local_processes())
        check_patch(self.train_pairs, cfg.patch, cfg.batch_size)
        # None (decode per item) when it would not fit in memory; each torchrun process has a copy
        cache = build_cache(self.train_pairs, 0.4 / dist.world_size(), dist.is_main())
        dataset = CropDataset(self.train_pairs, cfg.patch, cfg.crops_per_image,
                              self.items_per_epoch, cfg.seed, cfg.augment, cache,
                              input_augment(cfg.degrade_prob, cfg.colour_jitter))
        self.do_nothing = dist.share(self.validate(Identity()) if dist.is_main() else None)
        try:
            if self.step == 0 and not self.history:  # a new run: step 0 is validated, a candidate
                self.start_from_colour_fit()
                self._end_epoch(None, 0.0, False)
            while not self._done():
                dataset.set_epoch(self.epoch, self.item)
                share = dist.shard(dataset, self.pairs_per_batch)  # this process's share
                per_process = self.pairs_per_batch // dist.world_size()
                self._run_epoch(make_loader(share, per_process, workers, self.device), on_step)
        except KeyboardInterrupt:
            self.save("last")
            print(f"\nInterrupted: saved {self.run_dir / ckpt.LAST} at step {self.step}. "
                  "Run this cell again to resume.")
            raise
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if not isinstance(e, torch.cuda.OutOfMemoryError) and "allocate memory" not in str(e):
                raise
            raise DataError(f"out of {self.device.type} memory with batch_size={cfg.batch_size} "
                            f"and patch={cfg.patch} (at step {self.step}): lower them, or the "
                            "model's size, in the notebook's cells. last.pt keeps the last saved "
                            "state.") from None
        if not self._budget_left():
            where = f"all of epoch {self.epoch}" if self.item == 0 else \
                f"{100 * self.item / self.items_per_epoch:.0f}% of epoch {self.epoch + 1}"
            print(f"Budget of {cfg.budget_minutes:g} min spent after {self.step} steps ({where}); "
                  f"{self._best()} (do nothing: {self.do_nothing['score']:.4f}). "
                  "DESCAN_TRAIN_MINUTES sets the budget.")
        return self._result()

    def _run_epoch(self, loader, on_step):
        """Steps until the epoch or the budget ends; validates at its end, saves last.pt every
        ``checkpoint_minutes``."""
        cfg, total_steps = self.cfg, self.cfg.epochs * self.steps_per_epoch
        self.model.train()
        loss_sum, n_loss, crops = torch.zeros((), device=self.device), 0, 0
        left = self.steps_per_epoch - self.item // self.pairs_per_batch
        bar = progress_bar(loader, f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step", total=left,
                           enabled=dist.is_main())
        t_epoch = t_last = last_save = time.time()
        for clean, scan in bar:
            loss_sum += self.train_step(clean, scan, total_steps)
            n_loss, crops = n_loss + 1, crops + clean.shape[0]
            self.step, self.item = self.step + 1, self.item + self.pairs_per_batch
            now = time.time()
            self.seconds = dist.from_main(self.seconds + now - t_last)  # one clock for all
            t_last = now
            took = now - t_epoch
            if n_loss == 5 and cfg.budget_minutes > 0:  # the bar's length: what the budget allows
                can = n_loss + int((cfg.budget_minutes * 60 - self.seconds) / (took / n_loss))
                bar.total = max(n_loss, min(left, can))
                bar.refresh()
            if self.step % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / n_loss:.4f}",
                                crops_s=f"{crops / took:.0f}")
            if on_step is not None:
                on_step(self.step)
            if now - last_save >= cfg.checkpoint_minutes * 60:
                stop_if_diverged(loss_sum.item(), self.step, cfg)
                self.save("last")
                last_save = time.time()
            if not self._budget_left():
                break
        bar.close()
        finished = self.item >= self.items_per_epoch
        self._end_epoch(loss_sum.item() / n_loss if n_loss else None,
                        crops / max(1e-9, time.time() - t_epoch), finished)

    def _end_epoch(self, train_loss, crops_per_s, finished):
        """Validate, save best.pt when the score improved, then last.pt, then history.csv/.png.
        ``train_loss`` None: no step since the last validation (resumed at an epoch's end)."""
        crops_per_s *= dist.world_size()
        if train_loss is not None:  # the same on every process: they all resumed at one step
            train_loss = dist.average(train_loss)
            stop_if_diverged(train_loss, self.step, self.cfg)
        val = self.validate() if dist.is_main() else None
        if val is not None:  # process 0 validates and writes; the others take its history
            improved = val["score"] < self.best_score
            self.history.append({
                "epoch": self.epoch + 1, "step": self.step, "minutes": round(self.seconds / 60, 3),
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": math.nan if train_loss is None else train_loss,
                "val_score": val["score"], "val_pixel_y_mae": val["pixel_y_mae"],
                "val_psnr": val["psnr"], "crops_per_s": crops_per_s,
                "loss_name": (self.loss_fn.__doc__ or "loss").strip().split("\n")[0],
                "do_nothing_score": self.do_nothing["score"],
                "do_nothing_psnr": self.do_nothing["psnr"],
                "settings_changed": self.pending_change,
                "val_unseen_score": val.get("unseen_score", math.nan),
                "val_unseen_pixel_y_mae": val.get("unseen_pixel_y_mae", math.nan),
                "do_nothing_unseen_score": self.do_nothing.get("unseen_score", math.nan)})
            self.pending_change = ""
            if improved:
                self.save("best", val)
        if finished:
            self.epoch, self.item = self.epoch + 1, 0
        self.save("last")  # before history.csv, which therefore never runs ahead of last.pt
        if val is not None:
            df = pd.DataFrame(self.history)
            with atomic_path(self.run_dir / "history.csv") as tmp:
                df.to_csv(tmp, index=False)
            plot_history(df, self.run_dir / "history.png",
                         title=f"{self.run['model']['name']} ({self.data_kind} data)")
            unseen = f" | unseen scanners: score {val['unseen_score']:.4f}, pixel Y MAE " \
                f"{val['unseen_pixel_y_mae']:.3f}" if "unseen_score" in val else ""
            loss = "n/a (no step since the last validation)" if train_loss is None else \
                f"{train_loss:.5f}"
            when = f"epoch {self.history[-1]['epoch']}" if self.step else "step 0 (the start)"
            print(f"{when}: train loss {loss} | val score "
                  f"{val['score']:.4f} | pixel Y MAE {val['pixel_y_mae']:.3f} | PSNR "
                  f"{val['psnr']:.2f} dB{unseen}{' | saved best.pt' if improved else ''}")
        self.history = dist.share(self.history)

    def _result(self) -> dict:
        return {"best_score": self.best_score, "epochs": self.epoch, "steps": self.step,
                "minutes": self.seconds / 60, "best_path": self.run_dir / ckpt.BEST,
                "history": self.history}
