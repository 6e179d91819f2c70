"""Training losses: L1 or MSE, a term on each crop's mean Y (the leaderboard's quantity), and an
optional perceptual term on VGG16 features."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from descan.models import image_mean_y


def mean_y_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of |mean Y(out) - mean Y(target)| per crop, on the 0..1 scale."""
    return (image_mean_y(out) - image_mean_y(target)).abs().mean()


def colour_stats_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 distance between the per-channel means and spreads of each image (a colour head's loss:
    the global statistics the metric depends on, not the pixels)."""
    out, target = out.float().flatten(2), target.float().flatten(2)
    return (F.l1_loss(out.mean(2), target.mean(2))
            + 0.5 * F.l1_loss(out.std(2, correction=0), target.std(2, correction=0)))


def perceptual_loss(weight: float, device="cpu"):
    """``weight`` x L1 distance between VGG16 feature maps (up to relu2_2) of output and target.

    The VGG16 weights are ImageNet classification weights (a loss network, not a restoration
    model). They download once; when they cannot be loaded (offline), this prints one message and
    returns None, and training goes on without the term.
    """
    try:
        from torchvision.models import VGG16_Weights, vgg16
        vgg = vgg16(weights=VGG16_Weights.IMAGENET1K_V1).features[:9]
    except Exception as e:  # no network, no cache, or a broken download
        print(f"Perceptual loss skipped: the VGG16 weights could not be loaded ({type(e).__name__}: "
              f"{str(e)[:120]}). Training goes on with the other loss terms.")
        return None
    vgg = vgg.to(device).eval().requires_grad_(False)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def loss(out, target):
        return weight * F.l1_loss(vgg((out - mean) / std), vgg((target - mean) / std))
    return loss


def make_loss(kind: str = "l1", mean_y_weight: float = 0.0, perceptual_weight: float = 0.0, device="cpu"):
    """The training loss ``loss(out, target)`` in fp32: L1 or MSE, plus ``mean_y_weight`` x
    mean_y_error, plus the perceptual term when ``perceptual_weight`` > 0 and VGG16 loads."""
    if kind not in ("l1", "mse"):
        raise ValueError(f"loss must be 'l1' or 'mse', got {kind!r}")
    base = F.l1_loss if kind == "l1" else F.mse_loss
    extra = perceptual_loss(perceptual_weight, device) if perceptual_weight > 0 else None

    def loss(out, target):
        out = out.float()
        value = base(out, target)
        if mean_y_weight > 0:
            value = value + mean_y_weight * mean_y_error(out, target)
        if extra is not None:
            value = value + extra(out, target)
        return value
    return loss
