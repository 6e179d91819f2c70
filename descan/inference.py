"""Running a model on whole images (restore, evaluate), with mixed precision and torch.compile."""
import contextlib

import numpy as np
import torch
from torch import nn

from helpers import read_rgb
from descan.data import scanner_group
from descan.metrics import group_figures, image_metrics

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def amp_dtype(amp="auto"):
    """The CUDA mixed-precision dtype of ``amp`` ("auto", "bf16", "fp16"; None for "off"). "auto":
    bf16 on GPUs with native bf16 (compute capability 8.0+), fp16 before (Colab's T4)."""
    if amp == "auto":
        old_gpu = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 8
        return torch.float16 if old_gpu else torch.bfloat16
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp={amp!r} is not one of auto, {', '.join(AMP_DTYPES)}")
    return AMP_DTYPES[amp]


def use_grad_scaler(device, amp="auto") -> bool:
    """fp16 training on CUDA needs loss scaling (a GradScaler); bf16 and fp32 do not."""
    return torch.device(device).type == "cuda" and amp_dtype(amp) == torch.float16


def autocast(device, amp="auto"):
    """Mixed precision on CUDA (see amp_dtype); a no-op context on a CPU and with amp="off"."""
    dtype = amp_dtype(amp)  # refuses a bad value on a CPU too
    if dtype is None or torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def compile_model(model: nn.Module, enabled=False) -> nn.Module:
    """torch.compile(model) when ``enabled``: it fails without a C++ compiler or on old GPUs."""
    return torch.compile(model) if enabled else model


def tensor_to_images(batch: torch.Tensor) -> list[np.ndarray]:
    """(N, 3, H, W) float in [0, 1] -> RGB uint8 arrays, rounded like helpers.to_uint8(). The
    clamp matters: a trained model puts some pixels above 1.0, and uint8 would wrap them."""
    out = batch.detach().float().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return list(out.permute(0, 2, 3, 1).cpu().numpy())


def _self_ensemble(model, x):
    """The mean of the model's outputs on the 8 flips and rotations of ``x``, turned back."""
    total = 0
    for flip in (False, True):
        for k in range(4):
            y = model(torch.rot90(x.flip(-1) if flip else x, k, (-2, -1))).float()
            y = torch.rot90(y, -k, (-2, -1))
            total = total + (y.flip(-1) if flip else y)
    return total / 8


@torch.no_grad()
def restore(model: nn.Module, images, device=None, images_per_pass=8, ensemble=False, amp="auto"):
    """Restore RGB uint8 images of any sizes: ``images_per_pass`` whole images of one size go
    through the model at once (channels-last, mixed precision on CUDA); ``ensemble``: x8."""
    if device is None:  # the model's own device (the CPU for a model without parameters)
        device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    by_size, out = {}, {}
    for i, img in enumerate(images):
        by_size.setdefault(img.shape[:2], []).append(i)
    for group in by_size.values():
        for idx in (group[i:i + images_per_pass] for i in range(0, len(group), images_per_pass)):
            x = torch.from_numpy(np.stack([images[i] for i in idx])).to(device).permute(0, 3, 1, 2)
            x = x.float().div_(255.0).contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                y = _self_ensemble(model, x) if ensemble else model(x)
            out.update(zip(idx, tensor_to_images(y)))
    model.train(was_training)
    return [out[i] for i in range(len(images))]


def evaluate(model, pairs, device=None, images_per_pass=8, groups=None, amp="auto") -> dict:
    """metrics.group_figures of the model on whole (clean, scan) pairs, 'seen' unless ``groups``."""
    restored = restore(model, [scan for _, scan in pairs], device, images_per_pass, amp=amp)
    per = [image_metrics(r, clean) for r, (clean, _) in zip(restored, pairs)]
    return group_figures(per, groups or ["seen"] * len(per))


def validation_table(models: dict, pairs, device=None, images_per_pass=8):
    """{name: model} -> a table of evaluate()'s figures on the whole images of ``pairs``."""
    import pandas as pd
    images = [(read_rgb(p.clean), read_rgb(p.scan)) for p in pairs]
    groups = [scanner_group(p.name) for p in pairs]
    return pd.DataFrame({name: evaluate(m, images, device, images_per_pass, groups)
                         for name, m in models.items()}).T
