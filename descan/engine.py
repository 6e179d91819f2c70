"""The training engine of notebooks 03 and 04: a run's recipe (recipes.py) in, best.pt out."""
from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from helpers import PARAM_LIMIT, DataError, read_rgb
from descan import checkpoints as ckpt
from descan import distributed as dist
from descan import colourmap, crops, data, demo, files, inference, losses, models, notebook
from descan import optim, plots


class Trainer:
    """Train a run's model with validation, resumable checkpoints, mixed precision and a budget.
    Writes in ``run_dir``: last.pt (all of the state, for resuming), best.pt (the weights of the
    best validation score, with the model's code), history.csv and history.png."""

    def __init__(self, run: dict, train_pairs, val_pairs, run_dir, device=None, data_kind="real"):
        self.run, self.cfg, spec = run, run["config"], run["model"]
        self.train_pairs, self.val_pairs = list(train_pairs), list(val_pairs)
        names = [p.name for p in self.train_pairs] + ["|"] + [p.name for p in self.val_pairs]
        # the split's fingerprint: a run resumes on the same pairs only
        self.data_id = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
        self.run_dir, self.data_kind = Path(run_dir), data_kind
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cfg = self.cfg  # a step takes crops_per_image crops from each of pairs_per_batch pairs
        dist.check_batch(cfg.batch_size, cfg.crops_per_image, dist.world_size())
        self.pairs_per_batch = cfg.batch_size // cfg.crops_per_image
        self.steps_per_epoch = cfg.crops_per_epoch // cfg.batch_size
        self.items_per_epoch = self.steps_per_epoch * self.pairs_per_batch
        notebook.seed_everything(cfg.seed)
        model = models.build(spec["code"], spec["name"], spec["kwargs"])
        if models.count_parameters(model) >= PARAM_LIMIT:  # the competition's rule
            raise ValueError(f"{spec['name']} has {models.count_parameters(model):,} parameters; "
                             f"the rule is fewer than {PARAM_LIMIT:,}.")
        layout = torch.channels_last if all(t.dim() < 5 for t in (*model.parameters(),
            *model.buffers())) else torch.preserve_format  # faster; PyTorch refuses it for 5-D
        self.model = model.to(self.device, memory_format=layout)
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if cfg.ema_decay > 0 else None
        self.optimizer = optim.make_optimizer(self.model.parameters(), cfg, self.device)
        self.train_model = inference.compile_model(dist.wrap(self.model, self.device), cfg.compile)
        scaling = inference.use_grad_scaler(self.device, cfg.amp)  # fp16 on a GPU
        self.scaler = torch.amp.GradScaler("cuda", enabled=scaling)
        self.loss_fn = losses.from_code(run["loss_code"])
        self.epoch = self.item = self.step = 0
        self.seconds, self.history, self.changed = 0.0, [], ""
        self.val_images = self.do_nothing = None

    def best(self) -> dict:
        """The history's row of the best validation score so far (of best.pt)."""
        return min(self.history, key=lambda row: row["val_score"],
                   default={"val_score": math.inf, "step": None})

    def out_of_time(self) -> bool:  # budget_minutes 0: no budget
        return 0 < self.cfg.budget_minutes * 60 <= self.seconds

    def save(self, kind: str, val: dict | None = None):
        """best.pt (the validated weights: the averaged ones with EMA) or last.pt (all)."""
        if not dist.is_main():
            return
        best = kind == "best"
        model = self.ema if best and self.ema is not None else self.model
        state = {"kind": kind, **{f"model_{k}": v for k, v in self.run["model"].items()},
                 "model": {k: v.contiguous() for k, v in model.state_dict().items()},
                 "epoch": self.epoch + best, "step": self.step, "config": asdict(self.cfg),
                 "data_kind": self.data_kind}
        if best:
            state["val"] = val
        else:
            state.update(ema=self.ema.state_dict() if self.ema is not None else None,
                         optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                         item=self.item, seconds=self.seconds, history=self.history,
                         data_id=self.data_id, rng=optim.rng_state())
        ckpt.save_checkpoint(state, self.run_dir / (ckpt.BEST if best else ckpt.LAST))

    def resume(self) -> bool:
        """Go on from last.pt, if any. Changed settings stop the run, naming the ways out: a new
        DESCAN_RUN_NAME, or DESCAN_RESUME=continue unless they decide the crops or the model."""
        path = self.run_dir / ckpt.LAST
        if not path.exists():
            return False
        state = ckpt.load_checkpoint(path, kind="last")
        diffs, fixed = optim.settings_changed(state, self.cfg, self.run["model"], self.data_id)
        self.changed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in diffs.items())
        if fixed or (diffs and os.environ.get("DESCAN_RESUME", "").strip().lower() != "continue"):
            tag = "-".join(f"{k.split('_')[0]}{new}" for k, (_, new) in list(diffs.items())[:2])
            name = f"{self.run_dir.name}-{tag or 'new'}".replace(" ", "")
            raise ckpt.CheckpointError(  # what changed, and the ways out
                f"{path} was trained with other settings: {self.changed or 'see below'}."
                + (f" {', '.join(fixed)} differ, so this run cannot go on." if fixed else "")
                + f"\n  - start a new run (suggested): DESCAN_RUN_NAME={name}"
                + ("" if fixed else "\n  - or go on with them (recorded): DESCAN_RESUME=continue")
                + "\n  - or set the settings back to the run's.")
        self.model.load_state_dict(state["model"])
        if self.ema is not None:  # an EMA switched on now starts from the trained weights
            self.ema.load_state_dict(state.get("ema") or state["model"])
        optim.load_optimizer_state(self.optimizer, state["optimizer"])
        if state["scaler"]:  # empty when saved without loss scaling
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.item, self.step = state["epoch"], state["item"], state["step"]
        self.seconds, self.history = state["seconds"], list(state["history"])
        optim.set_rng_state(state["rng"])
        print(f"Resuming {path}: epoch {self.epoch + 1}, step {self.step}, {self.seconds / 60:.1f} "
              f"min trained so far, best score {self.best()['val_score']:.4f}"
              + (f"; DESCAN_RESUME=continue: changed {self.changed}" if diffs else ""))
        return True

    def validate(self, model=None) -> dict:
        """Validation figures (metrics.group_figures); the seen scanners' choose best.pt."""
        if self.val_images is None:
            pairs = files.progress_bar(self.val_pairs, "loading validation", unit="pair")
            self.val_images = [(read_rgb(p.clean), read_rgb(p.scan)) for p in pairs]
        model = model if model is not None else (self.ema if self.ema is not None else self.model)
        groups = [data.scanner_group(p.name) for p in self.val_pairs]
        return inference.evaluate(model, self.val_images, self.device, self.cfg.val_images_per_pass,
                                  groups=groups, amp=self.cfg.amp)

    def train_step(self, clean, scan, total_steps: int) -> torch.Tensor:
        """One optimiser step on a batch of uint8 crops (N, H, W, 3); returns the loss."""
        cfg = self.cfg
        y, x = (t.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
                for t in (clean, scan))
        x = x.contiguous(memory_format=torch.channels_last)
        for g in self.optimizer.param_groups:
            g["lr"] = cfg.lr * optim.lr_factor(cfg, self.step, total_steps, self.seconds)
        with inference.autocast(self.device, cfg.amp):
            out = self.train_model(x)
        loss = self.loss_fn(out, y, self.model, cfg)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:  # the decay warms up, so that the random start fades fast
            decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
            optim.update_ema(self.ema, self.model, decay)
        return loss.detach()

    def start_from_colour_fit(self) -> None:
        """A ColourLUT starts fitted to the training pairs, else a ColourHead as their least-squares
        colour map: training adds what the fit cannot do. Every process fits the same pixels."""
        luts = [m for m in self.model.modules() if isinstance(m, models.ColourLUT)]
        heads = [m for m in self.model.modules() if isinstance(m, models.ColourHead) and not luts]
        if not luts and not heads:
            return
        pixels = colourmap.sample_pixels(self.train_pairs, max_images=200, show_progress=False)
        for lut in luts:
            lut.load_state_dict(colourmap.fit_lut(*pixels, lut.table.shape[-1]).state_dict())
        for head in heads:
            head.start_from(*colourmap.fit_affine(*pixels))
        if self.ema is not None:  # the average starts from the fitted model too
            self.ema.load_state_dict(self.model.state_dict())

    def fit(self, on_step=None) -> dict:
        """Train until the epochs or the budget run out, resuming from last.pt when present.
        ``on_step(step)`` runs after every optimiser step (tests crash there on purpose)."""
        cfg = self.cfg
        dist.main_first(self.resume)  # under torchrun every process restores the same
        finished = self.epoch >= cfg.epochs or self.out_of_time()
        if not finished:
            self._train(on_step)
        best = self.best()
        if finished or self.out_of_time():  # says so, and how to train further
            what = (f"Nothing to train: run '{self.run_dir.name}' has finished" if finished
                    else f"Budget of {cfg.budget_minutes:g} min spent")
            where = f"all of epoch {self.epoch}" if self.item == 0 else \
                f"{100 * self.item / self.items_per_epoch:.0f}% of epoch {self.epoch + 1}"
            print(f"{what} after {self.step} steps ({where}); best validation score "
                  f"{best['val_score']:.4f} at step {best['step']} (do nothing: "
                  f"{best.get('do_nothing_score', math.nan):.4f}). To train it further, raise "
                  f"epochs (now {cfg.epochs}) or the budget (DESCAN_TRAIN_MINUTES, now "
                  f"{cfg.budget_minutes:g}); to start over, set another DESCAN_RUN_NAME.")
        return {"best_score": best["val_score"], "epochs": self.epoch, "steps": self.step,
                "best_path": self.run_dir / ckpt.BEST, "history": self.history}

    def _train(self, on_step):
        """The crops, step 0's validation, then epochs until they or the budget run out."""
        cfg = self.cfg
        crops.check_patch(self.train_pairs, cfg.patch, cfg.batch_size)
        # None (decode per item) when it would not fit in memory; each torchrun process has a copy
        cache = crops.build_cache(self.train_pairs, 0.4 / dist.world_size(), dist.is_main())
        dataset = crops.CropDataset(self.train_pairs, cfg.patch, cfg.crops_per_image,
                                    self.items_per_epoch, cfg.seed, cfg.augment, cache,
                                    demo.input_augment(cfg.degrade_prob, cfg.colour_jitter))
        workers = cfg.workers if cfg.workers >= 0 else \
            crops.default_workers(self.device, dist.local_processes())
        try:
            if not self.history:  # a new run: step 0 is validated, a candidate
                self.start_from_colour_fit()
                self._end_epoch(None, 0.0)
            while self.epoch < cfg.epochs and not self.out_of_time():
                dataset.set_epoch(self.epoch, self.item)
                share = dist.shard(dataset, self.pairs_per_batch, dist.rank(), dist.world_size())
                loader = crops.make_loader(share, self.pairs_per_batch // dist.world_size(),
                                           workers, self.device)
                self._run_epoch(loader, on_step)
        except KeyboardInterrupt:
            self.save("last")
            print(f"\nInterrupted: saved {self.run_dir / ckpt.LAST} at step {self.step}. "
                  "Run this cell again to resume.")
            raise
        except RuntimeError as e:  # torch.cuda.OutOfMemoryError, or a CPU's "allocate memory"
            if not isinstance(e, torch.cuda.OutOfMemoryError) and "allocate memory" not in str(e):
                raise
            raise DataError(f"out of {self.device.type} memory with batch_size={cfg.batch_size} "
                            f"and patch={cfg.patch} (at step {self.step}): lower them, or the "
                            "model's size, in the notebook's cells.") from None

    def _run_epoch(self, loader, on_step):
        """Steps until the epoch or the budget ends, last.pt every checkpoint_minutes."""
        cfg, total_steps = self.cfg, self.cfg.epochs * self.steps_per_epoch
        self.model.train()
        loss_sum, n_loss = torch.zeros((), device=self.device), 0
        bar = files.progress_bar(loader, f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step",
                                 enabled=dist.is_main())
        t_epoch = t_last = last_save = time.time()
        for clean, scan in bar:
            loss_sum += self.train_step(clean, scan, total_steps)
            n_loss += 1
            self.step, self.item = self.step + 1, self.item + self.pairs_per_batch
            now = time.time()
            self.seconds = dist.average(self.seconds + now - t_last)  # one clock for all
            t_last, took = now, now - t_epoch
            if n_loss == 5 and cfg.budget_minutes > 0:  # the bar's length: what the budget allows
                can = n_loss + int((cfg.budget_minutes * 60 - self.seconds) / (took / n_loss))
                bar.total = max(n_loss, min(bar.total, can))
                bar.refresh()
            if self.step % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / n_loss:.4f}",
                                crops_s=f"{n_loss * cfg.batch_size / took:.0f}")
            if on_step is not None:
                on_step(self.step)
            if now - last_save >= cfg.checkpoint_minutes * 60:
                optim.stop_if_diverged(loss_sum.item(), self.step, cfg)
                self.save("last")
                last_save = time.time()
            if self.out_of_time():
                break
        bar.close()
        self._end_epoch(loss_sum.item() / n_loss if n_loss else None,
                        n_loss * cfg.batch_size / max(1e-9, time.time() - t_epoch))

    def _end_epoch(self, train_loss, crops_per_s):
        """Process 0 validates, saves best.pt when the score improved and records the history;
        then last.pt, history.csv and its plot. ``train_loss`` None: no step since the last one."""
        if train_loss is not None:  # the same in every process: they all resumed at one step
            train_loss = dist.average(train_loss)
            optim.stop_if_diverged(train_loss, self.step, self.cfg)
        val = self.validate() if dist.is_main() else None
        if val is not None:
            if self.do_nothing is None:
                self.do_nothing = self.validate(models.Identity())
            improved = val["score"] < self.best()["val_score"]
            self.history.append(dict(
                epoch=self.epoch + 1, step=self.step, minutes=round(self.seconds / 60, 3),
                lr=self.optimizer.param_groups[0]["lr"],
                train_loss=math.nan if train_loss is None else train_loss,
                crops_per_s=crops_per_s, settings_changed=self.changed,
                loss_name=(self.loss_fn.__doc__ or "loss").strip().split("\n")[0],
                **{f"val_{k}": v for k, v in val.items()},
                **{f"do_nothing_{k}": v for k, v in self.do_nothing.items()}))
            self.changed = ""
            if improved:
                self.save("best", val)
        if self.item >= self.items_per_epoch:  # the epoch is over
            self.epoch, self.item = self.epoch + 1, 0
        self.save("last")  # before history.csv, which therefore never runs ahead of last.pt
        if val is not None:
            df = pd.DataFrame(self.history)
            with files.atomic_path(self.run_dir / "history.csv") as tmp:
                df.to_csv(tmp, index=False)
            plots.plot_history(df, self.run_dir / "history.png",
                               title=f"{self.run['model']['name']} ({self.data_kind} data)")
            loss = "n/a (no step since the last validation)" if train_loss is None else \
                f"{train_loss:.5f}"
            unseen = f" | unseen scanners: score {val['unseen_score']:.4f}, pixel Y MAE " \
                f"{val['unseen_pixel_y_mae']:.3f}" if "unseen_score" in val else ""
            when = f"epoch {self.history[-1]['epoch']}" if self.step else "step 0 (the start)"
            print(f"{when}: train loss {loss} | val score {val['score']:.4f} | pixel Y MAE "
                  f"{val['pixel_y_mae']:.3f} | PSNR {val['psnr']:.2f} dB{unseen}"
                  + (" | saved best.pt" if improved else ""))
        self.history = dist.share(self.history)
