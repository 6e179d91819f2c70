"""The classical baseline every model must beat: one global affine colour map for all images.

clean RGB ~ M @ scan RGB + b (a 3x3 matrix and an offset: 12 numbers), fitted by least squares
on pixels of the training pairs. It corrects global fading and colour casts, the error the
metric sees, and nothing local. As a model (``colour_map``) it is restored, scored and submitted
like any checkpoint: notebook 02 fits it and saves WORKSPACE/runs/colour_map/best.pt. With
``levels`` it is fitted on each scan's own levels (models.auto_levels) instead of its raw colours:
still 12 numbers, and it follows a scanner's white and black points.
"""
from __future__ import annotations

import numpy as np
import torch

from helpers import read_rgb, to_uint8
from descan.files import progress_bar
from descan import checkpoints
from descan.data import scanner_group
from descan.inference import evaluate
from descan.models import ColourMap


def fit_affine(scan_pixels: np.ndarray, clean_pixels: np.ndarray):
    """Least-squares (matrix, offset) with clean ~ matrix @ scan + offset, from (N, 3) arrays in [0, 1]."""
    a = np.concatenate([scan_pixels, np.ones((len(scan_pixels), 1))], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(a, clean_pixels.astype(np.float64), rcond=None)
    return coef[:3].T, coef[3]


def sample_pixels(pairs, per_image=4096, max_images=2000, seed=0, show_progress=True, levels=False):
    """(scan, clean) pixel arrays (N, 3) in [0, 1]: ``per_image`` random aligned pixels from each
    of up to ``max_images`` pairs (a fixed random subset); with ``levels``, of each scan's levelled()."""
    rng = np.random.default_rng(seed)
    pairs = list(pairs)
    if len(pairs) > max_images:
        pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), max_images, replace=False))]
    scans, cleans = [], []
    for p in progress_bar(pairs, "sampling pixels", enabled=show_progress, unit="pair"):
        clean, scan = read_rgb(p.clean).reshape(-1, 3) / 255.0, read_rgb(p.scan)
        scan = (scan / 255.0).reshape(-1, 3)
        idx = rng.choice(len(clean), min(per_image, len(clean)), replace=False)
        scans.append(scan[idx]), cleans.append(clean[idx])
    return np.concatenate(scans), np.concatenate(cleans)


def apply(matrix, offset, rgb: np.ndarray) -> np.ndarray:
    """The colour map applied to an RGB uint8 image, rounded to uint8 as a saved PNG would be."""
    return to_uint8(rgb.reshape(-1, 3) / 255.0 @ np.asarray(matrix).T + np.asarray(offset)).reshape(rgb.shape)


def fit_colour_map(train_pairs, val_pairs, workspace=None, data_kind="real", run="colour_map", device="cpu",
                   show_progress=True, levels=False):
    """Fit the map on ``train_pairs``, score it on whole ``val_pairs`` images (as training validates:
    seen scanners, and unseen_* figures for the pairs of unseen scanners),
    and, with a ``workspace``, save it as WORKSPACE/runs/<run>/best.pt. Returns (model, val figures)."""
    scan_px, clean_px = sample_pixels(train_pairs, show_progress=show_progress, levels=levels)
    matrix, offset = fit_affine(scan_px, clean_px)
    model = ColourMap()
    with torch.no_grad():
        model.matrix.copy_(torch.as_tensor(matrix, dtype=torch.float32))
        model.offset.copy_(torch.as_tensor(offset, dtype=torch.float32))
    val = evaluate(model, [(read_rgb(p.clean), read_rgb(p.scan)) for p in val_pairs], device,
                   groups=[scanner_group(p.name) for p in val_pairs])
    if workspace is not None:
        checkpoints.save_checkpoint({"kind": "best", "model_name": "colour_map", "model_kwargs": {}, "model_code": None,
                                     "model": model.state_dict(), "val": val, "epoch": 0, "step": 0,
                                     "config": {"method": "least squares", "pixels": len(scan_px)},
                                     "data_kind": data_kind}, checkpoints.best_path(workspace, run))
    return model.eval(), val
