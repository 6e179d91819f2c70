"""Pieces of a training loss (a notebook cell's ``training_loss(out, target, model, cfg)``): each
crop's mean Y (the leaderboard's quantity) and a colour head's colour statistics."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from descan.models import image_mean_y, run_code


def mean_y_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of |mean Y(out) - mean Y(target)| per crop, on the 0..1 scale."""
    return (image_mean_y(out) - image_mean_y(target)).abs().mean()


def colour_stats_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 distance of the per-channel means and spreads of the images (global, as the metric)."""
    out, target = out.float().flatten(2), target.float().flatten(2)
    return (F.l1_loss(out.mean(2), target.mean(2))
            + 0.5 * F.l1_loss(out.std(2, correction=0), target.std(2, correction=0)))


def from_code(code: str):
    """The ``training_loss`` function that a loss cell's ``code`` defines."""
    namespace = run_code(code, "<loss code>")
    if not callable(namespace.get("training_loss")):
        raise ValueError("the loss cell must define training_loss(out, target, model, cfg)")
    return namespace["training_loss"]
