"""The classical baselines every model must beat, one colour correction for all images fitted on
pixels of training pairs: an affine map, clean RGB ~ M @ scan RGB + b (12 numbers, least squares),
or a 3D lookup table. They fix global fading, colour casts and tones: the error the metric sees."""
import numpy as np
import torch

from helpers import read_rgb
from descan import checkpoints
from descan.data import sample_items, scanner_group
from descan.files import progress_bar
from descan.inference import evaluate
from descan.models import ColourLUT, ColourMap


def fit_affine(scan_pixels: np.ndarray, clean_pixels: np.ndarray):
    """Least-squares (matrix, offset) with clean ~ matrix @ scan + offset, from (N, 3) arrays."""
    a = np.concatenate([scan_pixels, np.ones((len(scan_pixels), 1))], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(a, clean_pixels.astype(np.float64), rcond=None)
    return coef[:3].T, coef[3]


def sample_pixels(pairs, pixels_per_image=4096, max_images=2000, show_progress=True):
    """(scan, clean): random pixels of (up to ``max_images``) ``pairs``, (N, 3) arrays in [0, 1]."""
    rng, scans, cleans = np.random.default_rng(0), [], []
    for p in progress_bar(sample_items(pairs, max_images), "sampling pixels",
                          enabled=show_progress, unit="pair"):
        clean, scan = read_rgb(p.clean).reshape(-1, 3), read_rgb(p.scan).reshape(-1, 3)
        idx = rng.choice(len(clean), min(pixels_per_image, len(clean)), replace=False)
        scans.append(scan[idx])
        cleans.append(clean[idx])
    return np.concatenate(scans) / np.float32(255), np.concatenate(cleans) / np.float32(255)


def fit_lut(scan_pixels, clean_pixels, size=17, shrink=1.0):
    """A ColourLUT of (N, 3) pixel arrays: each pixel adds its clean value to the 8 vertices around
    its scan value with trilinear weights, the affine fit its value at each vertex with ``shrink``
    times a vertex's mean weight; a vertex is the weighted mean (affine where no pixel reaches)."""
    # shrink, measured on demo data (288 training pairs, 0.3 to 4.7 million pixels): seen scanners
    # scored best at 1 to 2 (3.7; affine 4.9; 0: 4.3), unseen ones and pixel error best near 0
    lut, (matrix, offset) = ColourLUT(size), fit_affine(scan_pixels, clean_pixels)
    k = shrink * len(scan_pixels) / size ** 3
    vertices = lut.table.detach().reshape(3, -1).double().numpy()  # the identity: each one's RGB
    sums, weights = k * (matrix @ vertices + offset[:, None]), np.full(size ** 3, k)
    pos = np.clip(scan_pixels.T, 0, 1) * np.float32(size - 1)  # (3, N): R, G, B in grid steps
    low = np.minimum(np.floor(pos), size - 2)
    near = np.stack([1 - pos + low, pos - low])  # (2, 3, N): the weights of the lower, upper vertex
    base = low.T.astype(np.intp) @ np.array([1, size, size * size])  # flat (B, G, R) vertex index
    for r, g, b in np.ndindex(2, 2, 2):  # the 8 vertices around each pixel
        w = near[r, 0] * near[g, 1] * near[b, 2]
        flat = base + r + g * size + b * size * size
        weights += np.bincount(flat, w, size ** 3)
        sums += [np.bincount(flat, w * c, size ** 3) for c in clean_pixels.T]
    lut.load_state_dict({"table": torch.as_tensor(sums / weights).view_as(lut.table)})
    return lut


def fit_colour_map(train_pairs, val_pairs, workspace=None, data_kind="real", show_progress=True,
                   lut_size=0, pixels=None):
    """Fit the affine map (``lut_size``: a ColourLUT) on ``pixels`` (sample_pixels' output, by
    default of ``train_pairs``), score it on ``val_pairs``; with a ``workspace``, save it as
    WORKSPACE/runs/<model>/best.pt. Returns (model, validation figures)."""
    scan, clean = pixels or sample_pixels(train_pairs, show_progress=show_progress)
    if lut_size:
        name, kwargs, model = "colour_lut", {"size": lut_size}, fit_lut(scan, clean, lut_size)
    else:
        name, kwargs, model = "colour_map", {}, ColourMap()
        matrix, offset = fit_affine(scan, clean)
        model.load_state_dict({"matrix": torch.tensor(matrix), "offset": torch.tensor(offset)})
    val = evaluate(model, [(read_rgb(p.clean), read_rgb(p.scan)) for p in val_pairs], "cpu",
                   groups=[scanner_group(p.name) for p in val_pairs])
    if workspace is not None:
        state = dict(kind="best", model_name=name, model_kwargs=kwargs, model_code=None, val=val,
                     model=model.state_dict(), epoch=0, step=0, data_kind=data_kind,
                     config={"method": "trilinear binning" if lut_size else "least squares"})
        checkpoints.save_checkpoint(state, checkpoints.best_path(workspace, name))
    return model.eval(), val
