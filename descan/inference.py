"""Running a model on whole images: mixed precision, tensors <-> images, restore, evaluate.

``images_per_pass`` is how many whole images go through the model at once (a "batch" is only
ever the crops of one training step, see recipes.TrainConfig).
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from torch import nn

from helpers import competition_score, read_rgb
from descan.metrics import image_metrics
from descan.files import progress_bar
from descan.data import scanner_group

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def amp_dtype(amp: str = "auto"):
    """The mixed-precision dtype on CUDA for the setting ``amp``, or None for fp32 ("off"). "auto":
    bf16 on GPUs with native bf16 (compute capability 8.0+), fp16 before that (Colab's T4)."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp={amp!r} is not one of {', '.join(AMP_CHOICES)}")
    if amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def use_grad_scaler(device, amp: str = "auto") -> bool:
    """fp16 training needs loss scaling (a GradScaler); bf16 and fp32 do not."""
    return torch.device(device).type == "cuda" and amp_dtype(amp) == torch.float16


def autocast(device, amp: str = "auto"):
    """Mixed precision on CUDA (see amp_dtype); a no-op context on CPU and with amp="off"."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp={amp!r} is not one of {', '.join(AMP_CHOICES)}")
    if amp == "off" or torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype(amp))


class CompiledOrEager(nn.Module):
    """``model`` through torch.compile, or as it is where compiling fails (no C++ compiler, Windows,
    an old GPU): the first call compiles (tens of seconds; its time is printed), and an error there
    prints one line and falls back to the eager model for good. Wraps, never replaces: ``model``
    keeps its state_dict keys, so checkpoints do not change."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, 0
        try:
            self.compiled = torch.compile(model)
        except Exception as e:  # noqa: BLE001 - e.g. a Python this torch cannot compile for
            self._give_up(e)

    def _give_up(self, e: Exception):
        self.compiled = None
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        print(f"torch.compile failed ({type(e).__name__}: {first}); going on without it, as fast as "
              "without compile=True (set it to False to hide this message)")

    def forward(self, x):
        if self.compiled is None:
            return self.model(x)
        if self.calls:
            return self.compiled(x)
        t0 = time.perf_counter()
        try:
            out = self.compiled(x)
        except Exception as e:  # noqa: BLE001 - any compiler failure: train without it
            self._give_up(e)
            return self.model(x)
        self.calls += 1
        print(f"torch.compile: first call {time.perf_counter() - t0:.0f} s (compiling, once per process); "
              "later steps run the compiled model")
        return out


def compile_model(model: nn.Module, enabled: bool = False) -> nn.Module:
    """The model to train with: wrapped in CompiledOrEager when ``enabled`` (the setting compile),
    else ``model`` itself."""
    return CompiledOrEager(model) if enabled else model


def images_to_tensor(images, device) -> torch.Tensor:
    """List of equal-size RGB uint8 arrays -> float tensor (N, 3, H, W) in [0, 1] on ``device``."""
    batch = torch.from_numpy(np.stack(images)).to(device, non_blocking=True)
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def tensor_to_images(batch: torch.Tensor) -> list[np.ndarray]:
    """(N, 3, H, W) float in [0, 1] -> RGB uint8 arrays, rounded exactly like helpers.to_uint8().

    The clamp matters: a trained model puts some pixels above 1.0, and uint8 would wrap them to 0."""
    out = batch.detach().float().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return list(out.permute(0, 2, 3, 1).cpu().numpy())


DIHEDRAL = [(k, f) for f in (False, True) for k in range(4)]  # the 8 flips and rotations


def _model_device(model, device):
    if device is not None:
        return torch.device(device)
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def restore(model: nn.Module, images, device=None, images_per_pass=8, ensemble=False, show_progress=False,
            amp="auto"):
    """Restore a list of RGB uint8 images of any size; returns RGB uint8 images of the same sizes.

    Images of equal size go through the model ``images_per_pass`` at a time, with mixed precision
    on CUDA, and are rounded to uint8. ``ensemble=True`` averages the 8 flips/rotations (x8
    self-ensemble). The model handles any size itself (see models.py).
    """
    device = _model_device(model, device)
    was_training = model.training
    model.eval()
    out = [None] * len(images)
    by_size = {}
    for i, img in enumerate(images):
        by_size.setdefault(img.shape[:2], []).append(i)
    passes = [group[i:i + images_per_pass] for group in by_size.values()
              for i in range(0, len(group), images_per_pass)]
    for idx in progress_bar(passes, "restoring", enabled=show_progress):
        # channels-last measured faster on both CPU and GPU for these convolution stacks
        x = images_to_tensor([images[i] for i in idx], device).contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            if ensemble:
                y = 0
                for k, flip in DIHEDRAL:
                    t = torch.rot90(x.flip(-1) if flip else x, k, (-2, -1))
                    r = torch.rot90(model(t).float(), -k, (-2, -1))
                    y = y + (r.flip(-1) if flip else r)
                y = y / len(DIHEDRAL)
            else:
                y = model(x)
        for i, img in zip(idx, tensor_to_images(y)):
            out[i] = img
    model.train(was_training)
    return out


def _figures(per: list) -> dict:
    return {"score": competition_score([p["mean_y"] for p in per], [p["mean_y_clean"] for p in per]),
            "pixel_y_mae": float(np.mean([p["pixel_y_mae"] for p in per])),
            "psnr": float(np.mean([min(p["psnr"], 100.0) for p in per]))}


def evaluate(model, pairs, device=None, images_per_pass=8, ensemble=False, show_progress=False,
             groups=None, amp="auto") -> dict:
    """Validation figures on whole images: competition score, pixel Y MAE and PSNR (means).

    ``pairs`` is a list of (clean, scan) RGB uint8 arrays. ``groups`` (one 'seen' or 'unseen' per
    pair, see data.scanner_group): the main figures are those of the seen scanners' pairs, and
    those of the unseen scanners' pairs, when there are any, come as unseen_score,
    unseen_pixel_y_mae and unseen_psnr.
    """
    restored = restore(model, [scan for _, scan in pairs], device, images_per_pass, ensemble, show_progress, amp)
    per = [image_metrics(r, clean) for r, (clean, _) in zip(restored, pairs)]
    groups = list(groups) if groups is not None else ["seen"] * len(per)
    seen = [p for p, g in zip(per, groups) if g != "unseen"]
    unseen = [p for p, g in zip(per, groups) if g == "unseen"]
    out = _figures(seen or per)
    if unseen:
        out.update({f"unseen_{k}": v for k, v in _figures(unseen).items()})
    return out


def validation_table(models: dict, pairs, device=None, images_per_pass=8):
    """{name: model} -> a pandas table (score, pixel_y_mae, psnr per row, and unseen_* for pairs
    from unseen scanners) on the whole validation images of ``pairs`` (helpers.Pair), through the
    same evaluate() that training validates with."""
    import pandas as pd
    images = [(read_rgb(p.clean), read_rgb(p.scan)) for p in pairs]
    groups = [scanner_group(p.name) for p in pairs]
    return pd.DataFrame({name: evaluate(m, images, device, images_per_pass, groups=groups)
                         for name, m in models.items()}).T
