"""Models as code: the small models the notebooks share, the parameter rule, and building a model
from its code (a checkpoint keeps the code of the models of notebooks 03 and 04). Every model maps
RGB in [0, 1], any size, to RGB."""
from __future__ import annotations

import contextlib
import io
import linecache
import re

import torch
import torch.nn.functional as F
from torch import nn

from helpers import PARAM_LIMIT, ROOT
from descan.recipes import MARKERS, code_above, notebook_cell

Y_WEIGHTS = (0.299, 0.587, 0.114)  # the metric's luma weights (OpenCV's BGR2YUV); they sum to 1


def image_mean_y(x: torch.Tensor) -> torch.Tensor:
    """Mean luma of each image of (N, 3, H, W) in [0, 1]: shape (N,)."""
    return (x * x.new_tensor(Y_WEIGHTS).view(1, 3, 1, 1)).sum(1).mean((1, 2))


def pad_to_multiple(x: torch.Tensor, multiple: int):
    """Pad (N, C, H, W) at the bottom and right to a multiple of ``multiple`` (reflection where the
    image is large enough, else replication); returns the padded tensor and the original (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def affine_colour(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Per-image colour maps: ``p`` (N, 12), a 3x3 matrix (minus the identity) and an offset."""
    matrix = torch.eye(3, device=x.device) + p[:, :9].view(-1, 3, 3)
    offset = p[:, 9:].view(-1, 3, 1, 1).to(x.dtype)
    return torch.einsum("nij,njhw->nihw", matrix.to(x.dtype), x) + offset


Identity = nn.Identity  # gives back its input: the "do nothing" baseline, scored the same way


class ColourMap(nn.Module):
    """The classical baseline: out = matrix @ rgb + offset (12 numbers; identity until fitted)."""

    def __init__(self):
        super().__init__()
        self.matrix = nn.Parameter(torch.eye(3))
        self.offset = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        offset = self.offset.to(x.dtype).view(1, 3, 1, 1)
        return torch.einsum("ij,njhw->nihw", self.matrix.to(x.dtype), x) + offset


class ColourLUT(nn.Module):
    """A 3D colour lookup table: a size^3 grid of colours read by trilinear interpolation (the
    identity until fitted in colourmap.py). Unlike ColourMap it bends each colour on its own."""

    def __init__(self, size=17):
        super().__init__()
        v = torch.linspace(0, 1, size)  # vertex i is i / (size - 1); table[:, b, g, r]: D, H, W
        self.table = nn.Parameter(torch.stack(torch.meshgrid(v, v, v, indexing="ij")[::-1]))

    def forward(self, x):  # the grid is RGB in order: grid[..., 0] indexes the last dim, R
        grid = x.to(self.table.dtype).clamp(0, 1).permute(0, 2, 3, 1).unsqueeze(1) * 2 - 1
        table = self.table[None].expand(len(x), -1, -1, -1, -1)
        return F.grid_sample(table, grid, mode="bilinear", align_corners=True)[:, :, 0]  # trilinear


class ColourHead(nn.Module):
    """A learnt global colour correction: a 3x3 matrix and offset per image (the identity at first)
    from the scan shrunk to ``size`` px; ``global_estimate``: the last output, for the loss."""

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

    @torch.no_grad()
    def start_from(self, matrix, offset) -> None:
        """Start as one fixed colour map (e.g. the least-squares fit): what it predicts at first."""
        p = torch.cat([torch.as_tensor(matrix).flatten() - torch.eye(3).flatten(),
                       torch.as_tensor(offset).flatten()]).float()
        self.predict[-1].weight.zero_()
        self.predict[-1].bias.copy_(p)

    def forward(self, x):
        small = F.adaptive_avg_pool2d(x.float(), self.size)
        feat, flat = self.features(small), small.flatten(2)
        levels = flat.new_tensor([0.05, 0.5, 0.95])
        quantiles = torch.quantile(flat, levels, dim=2).permute(1, 2, 0).flatten(1)
        stats = torch.cat([feat.mean((2, 3)), feat.amax((2, 3)), flat.mean(2),
                           flat.std(2, correction=0), quantiles], 1)
        self.global_estimate = affine_colour(x, self.predict(stats))
        return self.global_estimate


# ---- building models from code -------------------------------------------------------------------

SHARED = {"colour_map": ColourMap, "colour_lut": ColourLUT, "identity": Identity,
          "colour_head": ColourHead}
# checkpoints saved before models were kept as code: the notebook cell of each, arguments now gone
LEGACY = {"dncnn": ("03_train_dncnn.ipynb", "DnCNN"),
          "attention_unet": ("04_train_attention.ipynb", "AttentionUNet")}
GONE = ("levels", "mean_y_shift")


def run_code(code: str, filename: str) -> dict:
    """Run a cell's code in a fresh namespace and return it; tracebacks show the code's lines."""
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    namespace = {"__name__": "cell_code"}
    exec(compile(code, filename, "exec"), namespace)
    return namespace


def build(code: str | None, name: str, kwargs: dict) -> nn.Module:
    """Class ``name`` of a model cell's ``code`` (None: of SHARED) built with ``kwargs``."""
    namespace = SHARED if code is None else run_code(code, f"<model code of {name}>")
    if not isinstance(namespace.get(name), type):
        defined = [k for k, v in namespace.items() if isinstance(v, type)]
        source = "the model code" if code is not None else "descan.models (without code)"
        raise ValueError(f"{source} defines no class {name!r}, only {defined}")
    return namespace[name](**kwargs)


def model_from_state(state: dict) -> nn.Module:
    """The model of a checkpoint's state, weights loaded, in eval mode (on the CPU). Arguments the
    kit no longer has (GONE) are dropped; checkpoints.unknown_model refuses those set to a value."""
    code, name = state.get("model_code"), state["model_name"]
    if code is None and name in LEGACY:
        cell = notebook_cell(ROOT / "notebooks" / LEGACY[name][0], MARKERS["model"])
        code, name = code_above(cell, MARKERS["model"]), LEGACY[name][1]
    model = build(code, name, {k: v for k, v in state["model_kwargs"].items() if k not in GONE})
    model.load_state_dict(state["model"])
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def parameter_report(model: nn.Module, patch: int) -> int:
    """Print torchsummary's table on the model's device; the larger of its total and the exact
    count (it misses bare parameters), or ValueError at PARAM_LIMIT or more."""
    from torchsummary import summary
    count, buf, was_training = count_parameters(model), io.StringIO(), model.training
    if count < PARAM_LIMIT:  # a model over the limit is refused without running its summary
        with contextlib.redirect_stdout(buf):
            summary(model.eval(), (3, patch, patch), device=next(model.parameters()).device.type)
        model.train(was_training)
        lines = buf.getvalue().splitlines()
        print("\n".join(lines if len(lines) <= 40 else lines[:8] + ["..."] + lines[-12:]))
        total = re.search(r"Total params: ([\d,]+)", buf.getvalue()).group(1)
        count = max(count, int(total.replace(",", "")))
        print(f"parameters: {count:,}; limit {PARAM_LIMIT:,}")
    if count >= PARAM_LIMIT:
        raise ValueError(f"{type(model).__name__} has {count:,} parameters; the rule is fewer than "
                         f"{PARAM_LIMIT:,}. Make it narrower or shallower.")
    return count
