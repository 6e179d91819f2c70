"""The models: each small enough to read in one screen. Input and output are RGB in [0, 1].

Every model takes images of any size and returns the same size (the U-Net pads to its multiple
and crops back inside ``forward``). A checkpoint stores a model as its registered name plus its
constructor arguments, so ``build_model(name, **kwargs)`` rebuilds it from the file alone.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from helpers import PARAM_LIMIT


def pad_to_multiple(x: torch.Tensor, multiple: int):
    """Pad (N, C, H, W) on the bottom and right to a multiple of ``multiple`` (reflection where the
    image is large enough, else replication); returns the padded tensor and the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
    return x, (h, w)


LEVELS = (0.01, 0.99)  # auto_levels' quantiles: where the page's ink and paper are, per channel


def auto_levels(x: torch.Tensor, low: float = LEVELS[0], high: float = LEVELS[1], min_range: float = 0.2,
                max_side: int = 256) -> torch.Tensor:
    """Each image's own levels, per channel: the ``low`` and ``high`` quantiles of its values (ink
    and paper) go to 0 and 1. No parameters, nothing learnt: it undoes an unknown scanner's white
    and black points before a model sees the image. Quantiles are taken on every pixel of images
    up to ``max_side`` px, on a regular subsample of larger ones; the stretch is at most
    1/``min_range`` so that a nearly uniform image is not blown up into noise."""
    step = max(1, -(-max(x.shape[-2:]) // max_side))
    v = x.detach()[..., ::step, ::step].float().flatten(2)
    k = v.shape[-1]
    lo = v.kthvalue(max(1, round(low * k)), dim=-1).values
    hi = v.kthvalue(max(1, round(high * k)), dim=-1).values
    scale = 1.0 / (hi - lo).clamp_min(min_range)
    return ((x - lo[..., None, None].to(x.dtype)) * scale[..., None, None].to(x.dtype))


class DnCNN(nn.Module):
    """The slides' DnCNN (Zhang et al., 2017): conv+ReLU, (depth - 2) x conv+BN+ReLU, conv.

    It predicts the residual (scan - clean) of the normalised input; the normalisation
    (x - mean) / std is undone inside forward(), so the output is an image in [0, 1] again and
    inference cannot forget to de-normalise (the slides' defect). 559,363 parameters for RGB.
    """

    def __init__(self, channels=3, width=64, depth=17, mean=0.5, std=0.5, levels=False):
        super().__init__()
        self.mean, self.std, self.levels = mean, std, levels  # levels: auto_levels on the input first
        layers = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        if self.levels:
            x = auto_levels(x)
        z = (x - self.mean) / self.std
        return (z - self.body(z)) * self.std + self.mean


class Identity(nn.Module):
    """Gives back its input: the "do nothing" baseline, scored through the same code path."""

    def forward(self, x):
        return x


class LayerNorm2d(nn.Module):
    """Layer norm over the channels of every pixel (as in NAFNet), for (N, C, H, W) tensors.

    One fused F.layer_norm over the last axis of the (N, H, W, C) view: in channels-last memory
    (how the engine and restore() run the models) that view is already contiguous, so there is no
    copy and no hand-written mean/variance passes (tests/test_models.py checks both formulations
    agree)."""

    def __init__(self, c):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias)
        return x.permute(0, 3, 1, 2)


class AttnBlock(nn.Module):
    """A NAFNet block: depth-wise conv, a gate, and simplified channel attention (SCA: global
    average pool -> 1x1 conv -> per-channel scale), then a gated feed-forward; both residual."""

    def __init__(self, c):
        super().__init__()
        self.norm1, self.norm2 = LayerNorm2d(c), LayerNorm2d(c)
        self.expand = nn.Conv2d(c, 2 * c, 1)
        self.dw = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        self.project = nn.Conv2d(c, c, 1)
        self.ffn_in, self.ffn_out = nn.Conv2d(c, 2 * c, 1), nn.Conv2d(c, c, 1)
        self.beta, self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1)), nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x):
        a, b = self.dw(self.expand(self.norm1(x))).chunk(2, dim=1)
        y = a * b
        x = torch.addcmul(x, self.beta, self.project(y * self.sca(y)))  # x + beta * ..., one pass
        a, b = self.ffn_in(self.norm2(x)).chunk(2, dim=1)
        return torch.addcmul(x, self.gamma, self.ffn_out(a * b))


class AttentionUNet(nn.Module):
    """A small NAFNet-style U-Net with channel attention, plus a global colour path.

    Local path: encoder levels (``enc_blocks`` blocks each, width doubling), ``mid_blocks`` at the
    bottom, decoder levels with skip connections; it predicts a residual. Global path: the mean
    and standard deviation of the bottom features predict a 3x3 colour matrix and an offset that
    are applied to the whole input image (identity at initialisation), so global fading and
    colour casts (the error the metric sees) are corrected by a few numbers per image. Any input
    size works: forward() pads to ``pad_multiple`` and crops the result back.
    """

    def __init__(self, width=32, enc_blocks=(1, 1, 2), mid_blocks=2, dec_blocks=(1, 1, 1), colour_path=True,
                 colour_head=False, mean_y_shift=False, levels=False):
        super().__init__()
        # levels: auto_levels on the input first; colour_head: a ColourHead corrects the whole
        # image's colour (its estimate is also trained on its own); mean_y_shift: the output's mean
        # Y is then set to the head's.
        self.levels = levels
        self.head = ColourHead() if colour_head else None
        self.mean_y_shift = mean_y_shift and colour_head
        self.global_estimate = None
        enc_blocks, dec_blocks = tuple(enc_blocks), tuple(dec_blocks)
        self.pad_multiple = 2 ** len(enc_blocks)
        self.intro = nn.Conv2d(3, width, 3, padding=1)
        self.encoders, self.downs, self.ups, self.decoders = (nn.ModuleList() for _ in range(4))
        c = width
        for n in enc_blocks:
            self.encoders.append(nn.Sequential(*[AttnBlock(c) for _ in range(n)]))
            self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
            c *= 2
        self.middle = nn.Sequential(*[AttnBlock(c) for _ in range(mid_blocks)])
        for n in dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.PixelShuffle(2)))
            c //= 2
            self.decoders.append(nn.Sequential(*[AttnBlock(c) for _ in range(n)]))
        self.outro = nn.Conv2d(width, 3, 3, padding=1)
        self.colour = None
        if colour_path:
            bottom = width * 2 ** len(enc_blocks)
            self.colour = nn.Sequential(nn.Linear(2 * bottom + 6, 64), nn.GELU(), nn.Linear(64, 12))
            nn.init.zeros_(self.colour[-1].weight)
            nn.init.zeros_(self.colour[-1].bias)

    def forward(self, x):
        if self.levels:
            x = auto_levels(x)
        if self.head is not None:
            x = self.global_estimate = self.head(x)
        x, (h, w) = pad_to_multiple(x, self.pad_multiple)
        feat, skips = self.intro(x), []
        for enc, down in zip(self.encoders, self.downs):
            feat = enc(feat)
            skips.append(feat)
            feat = down(feat)
        feat = self.middle(feat)
        bottom = feat
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            feat = dec(up(feat) + skip)
        base = x
        if self.colour is not None:
            stats = torch.cat([bottom.mean((2, 3)), bottom.std((2, 3), correction=0),
                               x.mean((2, 3)), x.std((2, 3), correction=0)], 1)
            p = self.colour(stats.float())
            matrix = torch.eye(3, device=x.device) + p[:, :9].view(-1, 3, 3)
            base = torch.einsum("nij,njhw->nihw", matrix.to(x.dtype), x) + p[:, 9:].view(-1, 3, 1, 1).to(x.dtype)
        out = (base + self.outro(feat))[..., :h, :w]
        if self.mean_y_shift:
            out = shift_mean_y(out, image_mean_y(self.global_estimate.float()).to(out.dtype))
        return out


Y_WEIGHTS = (0.299, 0.587, 0.114)  # the metric's luma weights (OpenCV's BGR2YUV); they sum to 1


def image_mean_y(x: torch.Tensor) -> torch.Tensor:
    """Mean luma of each image of (N, 3, H, W) in [0, 1]: shape (N,)."""
    return (x * x.new_tensor(Y_WEIGHTS).view(1, 3, 1, 1)).sum(1).mean((1, 2))


def shift_mean_y(x: torch.Tensor, target: torch.Tensor, steps: int = 24) -> torch.Tensor:
    """Add one value d to every pixel and channel of each image, clamped to [0, 1], so that its mean
    Y becomes ``target`` (N,). Y's weights sum to 1, so without clamping d = target - mean Y; with
    clamping mean Y still grows with d, and d is found by bisection (``steps`` halvings of [-1, 1])."""
    target = target.to(x.dtype).clamp(0, 1)
    lo, hi = torch.full_like(target, -1.0), torch.full_like(target, 1.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        low = image_mean_y((x + mid.view(-1, 1, 1, 1)).clamp(0, 1)) < target
        lo, hi = torch.where(low, mid, lo), torch.where(low, hi, mid)
    return (x + ((lo + hi) / 2).view(-1, 1, 1, 1)).clamp(0, 1)


class ColourHead(nn.Module):
    """Metric-first global colour correction, applied before the local restorer.

    It looks at the whole scan shrunk to ``size`` x ``size`` (a few strided convolutions, global
    pooling, and the scan's per-channel mean, spread and 5/50/95% quantiles) and predicts one 3x3
    colour matrix and offset for the whole image (the identity at initialisation). Training adds a
    direct loss on the corrected image's per-channel mean and spread (losses.colour_stats_loss), so
    the head learns what the metric sees, each image's global tone, first. ``global_estimate`` keeps
    the last corrected image for that loss. Alone it is a model too (``colour_head``: 66,316 parameters).
    """

    def __init__(self, width=32, size=64):
        super().__init__()
        self.size = size
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GELU())
        self.predict = nn.Sequential(nn.Linear(4 * width + 15, 64), nn.GELU(), nn.Linear(64, 12))
        nn.init.zeros_(self.predict[-1].weight)
        nn.init.zeros_(self.predict[-1].bias)
        self.global_estimate = None

    def forward(self, x):
        small = F.adaptive_avg_pool2d(x.float(), self.size)
        feat = self.features(small)
        flat = small.flatten(2)
        stats = torch.cat([feat.mean((2, 3)), feat.amax((2, 3)), flat.mean(2), flat.std(2, correction=0),
                           torch.quantile(flat, flat.new_tensor([0.05, 0.5, 0.95]), dim=2).permute(1, 2, 0).flatten(1)],
                          1)
        p = self.predict(stats)
        matrix = torch.eye(3, device=x.device) + p[:, :9].view(-1, 3, 3)
        out = torch.einsum("nij,njhw->nihw", matrix.to(x.dtype), x) + p[:, 9:].view(-1, 3, 1, 1).to(x.dtype)
        self.global_estimate = out
        return out


class ColourMap(nn.Module):
    """The classical baseline: out = matrix @ rgb + offset for every pixel (12 parameters), fitted by
    least squares in descan/colourmap.py; the identity until fitted. ``levels``: on each image's
    auto_levels instead of its raw colours."""

    def __init__(self, levels=False):
        super().__init__()
        self.levels = levels
        self.matrix = nn.Parameter(torch.eye(3))
        self.offset = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        if self.levels:
            x = auto_levels(x)
        return torch.einsum("ij,njhw->nihw", self.matrix.to(x.dtype), x) + self.offset.to(x.dtype).view(1, 3, 1, 1)


MODELS = {"dncnn": DnCNN, "attention_unet": AttentionUNet, "colour_map": ColourMap, "colour_head": ColourHead}
USER_MODELS = "my_models.py"  # in the workspace: a student's own models, found by every notebook


def register(name: str):
    """Class decorator: make a model buildable by ``name`` (build_model, checkpoints, notebook 05).

    Put your model in WORKSPACE/my_models.py (``from descan.models import register`` and
    ``@register("mynet")`` above the class): the workspace is on Drive in Colab, so the notebooks
    of every runtime find it with load_user_models(WORKSPACE). Its forward() takes and returns
    RGB in [0, 1], any size (pad inside, as AttentionUNet does)."""
    def add(cls):
        if name in MODELS and MODELS[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"a model named {name!r} exists already ({MODELS[name].__qualname__}); pick another name")
        MODELS[name] = cls
        return cls
    return add


def load_user_models(workspace) -> list[str]:
    """Import WORKSPACE/my_models.py when it exists; returns the model names known afterwards that
    it added. Errors in the file are shown as they are, with the file's name."""
    path = Path(workspace) / USER_MODELS
    if not path.is_file():
        return []
    before = set(MODELS)
    spec = importlib.util.spec_from_file_location("descan_user_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    added = sorted(set(MODELS) - before)
    print(f"{path}: your models {', '.join(added) or '(none new)'}; all models: {', '.join(sorted(MODELS))}")
    return added


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name; a checkpoint stores exactly these two things."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_report(model: nn.Module, patch: int, channels: int = 3, limit: int = PARAM_LIMIT) -> int:
    """Print torchsummary's table at the training patch size, on the model's own device, and
    return the parameter count. Raises ValueError when the model has ``limit`` parameters or more.

    The count asserted is the larger of torchsummary's total and the exact sum over
    model.parameters() (torchsummary misses parameters that are not a layer's weight or bias).
    """
    exact = count_parameters(model)
    if exact >= limit:
        raise ValueError(f"{type(model).__name__} has {exact:,} parameters; the rule is fewer than "
                         f"{limit:,}. Make it narrower or shallower.")
    from torchsummary import summary
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        summary(model, (channels, patch, patch), device=device.type)
    model.train(was_training)
    text = buf.getvalue()
    lines = text.splitlines()
    print("\n".join(lines[:8] + ["..."] + lines[-12:]) if len(lines) > 40 else text)
    found = re.search(r"Total params: ([\d,]+)", text)
    reported = int(found.group(1).replace(",", "")) if found else 0
    count = max(exact, reported)
    print(f"parameters: {count:,} (torchsummary {reported:,}, exact {exact:,}); limit {limit:,}")
    if count >= limit:
        raise ValueError(f"{type(model).__name__} has {count:,} parameters; the rule is fewer than {limit:,}.")
    return count


