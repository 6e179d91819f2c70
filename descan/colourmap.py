"""The classical baseline every model must beat: one global affine colour map for all images,
clean RGB ~ M @ scan RGB + b (12 numbers), fitted by least squares on pixels of training pairs. It
corrects global fading and colour casts, the error the metric sees, and nothing local."""
import numpy as np
import torch

from helpers import read_rgb
from descan import checkpoints
from descan.data import sample_items, scanner_group
from descan.files import progress_bar
from descan.inference import evaluate
from descan.models import ColourMap


def fit_affine(scan_pixels: np.ndarray, clean_pixels: np.ndarray):
    """Least-squares (matrix, offset) with clean ~ matrix @ scan + offset, from (N, 3) arrays."""
    a = np.concatenate([scan_pixels, np.ones((len(scan_pixels), 1))], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(a, clean_pixels.astype(np.float64), rcond=None)
    return coef[:3].T, coef[3]


def fit_pairs(pairs, pixels_per_image=4096, max_images=2000, show_progress=True):
    """The least-squares (matrix, offset) of random pixels of (up to ``max_images``) ``pairs``."""
    rng, scans, cleans = np.random.default_rng(0), [], []
    for p in progress_bar(sample_items(pairs, max_images), "sampling pixels",
                          enabled=show_progress, unit="pair"):
        clean, scan = read_rgb(p.clean).reshape(-1, 3), read_rgb(p.scan).reshape(-1, 3)
        idx = rng.choice(len(clean), min(pixels_per_image, len(clean)), replace=False)
        scans.append(scan[idx] / 255.0)
        cleans.append(clean[idx] / 255.0)
    return fit_affine(np.concatenate(scans), np.concatenate(cleans))


def fit_colour_map(train_pairs, val_pairs, workspace=None, data_kind="real", run="colour_map",
                   device="cpu", show_progress=True, pixels_per_image=4096, max_images=2000):
    """Fit the map on random pixels of (up to ``max_images``) ``train_pairs`` and score it on the
    whole ``val_pairs`` images as training validates; with a ``workspace``, save it as
    WORKSPACE/runs/<run>/best.pt (notebook 02 does). Returns (model, validation figures)."""
    matrix, offset = fit_pairs(train_pairs, pixels_per_image, max_images, show_progress)
    model = ColourMap()
    with torch.no_grad():
        model.matrix.copy_(torch.as_tensor(matrix, dtype=torch.float32))
        model.offset.copy_(torch.as_tensor(offset, dtype=torch.float32))
    val = evaluate(model, [(read_rgb(p.clean), read_rgb(p.scan)) for p in val_pairs], device,
                   groups=[scanner_group(p.name) for p in val_pairs])
    if workspace is not None:
        state = {"kind": "best", "model_name": "colour_map", "model_kwargs": {}, "model_code": None,
                 "model": model.state_dict(), "val": val, "epoch": 0, "step": 0,
                 "config": {"method": "least squares"}, "data_kind": data_kind}
        checkpoints.save_checkpoint(state, checkpoints.best_path(workspace, run))
    return model.eval(), val
