"""Small builders shared by the tests: images written with plain OpenCV, zips, file listings.

Kept independent of the code under test, so a bug there cannot hide in the expected values."""
import zipfile
from pathlib import Path

import cv2
import numpy as np


def uniform(rgb, h=4, w=5):
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rgb
    return img


def imwrite_rgb(path, rgb):
    """Write an RGB image with plain OpenCV (independent of files.write_image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


def png_bytes(rgb):
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return buf.tobytes()


def coord_image(h, w):
    """Every pixel encodes its position: R = y, G = x, B = (7y + x) mod 251 (< 255 so +1 fits)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy % 251, xx % 251, (7 * yy + xx) % 251], axis=2).astype(np.uint8)


def make_zip(path, entries):
    """entries: list of (arcname, bytes). Written in the given order, stored uncompressed."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def files_under(folder):
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def pair_dirs(tmp_path, clean_names, scan_names, size=(8, 8)):
    c, s = tmp_path / "clean", tmp_path / "scan"
    for n in clean_names:
        imwrite_rgb(c / n, uniform((1, 2, 3), *size))
    for n in scan_names:
        imwrite_rgb(s / n, uniform((4, 5, 6), *size))
    c.mkdir(exist_ok=True), s.mkdir(exist_ok=True)
    return c, s


def notebook_run(recipe, cfg=None, model_kwargs=None, **settings):
    """A notebook's recipe (recipes.from_notebook, smoke mode, CPU) as a run dict, with ``cfg`` (a
    TrainConfig) or ``settings`` replacing its settings and ``model_kwargs`` its model's arguments."""
    import dataclasses
    import torch
    from descan import recipes
    run = recipes.from_notebook(recipe, torch.device("cpu"), smoke=True)
    run["config"] = dataclasses.replace(cfg or run["config"], **settings)
    if model_kwargs is not None:
        run["model"]["kwargs"] = dict(model_kwargs)
    return run


def notebook_model(recipe, **kwargs):
    """The model of notebook 03 (``dncnn``) or 04 (``attention``), built from its model cell."""
    from descan import models
    spec = notebook_run(recipe)["model"]
    return models.build(spec["code"], spec["name"], kwargs)
