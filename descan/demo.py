"""Synthetic demo data: procedural magazine pages and a print-and-scan simulator.

The demo set exists so that everything runs and is tested without the competition data. It is
labelled as such everywhere (a marker file in its folder, "DEMO DATA (synthetic)" in prints and
figures) and never stands in for the real data silently. No torch here.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import cv2
import numpy as np

from helpers import DEMO_MARKER, SPLITS, check_image, env_number, progress_bar, to_uint8, write_png

# The demo set's defaults, read once here by `python -m descan demo`, data_download.sh and the notebooks.
DEMO_DEFAULTS = {"train_pages": 40, "test_pages": 4, "crops_per_page": 2, "crop": 256, "seed": 0}


def demo_settings() -> dict:
    """DEMO_DEFAULTS with DESCAN_DEMO_PAGES, DESCAN_DEMO_TEST_PAGES and DESCAN_DEMO_SIZE applied."""
    return {**DEMO_DEFAULTS, "train_pages": env_number("DESCAN_DEMO_PAGES", DEMO_DEFAULTS["train_pages"], 2),
            "test_pages": env_number("DESCAN_DEMO_TEST_PAGES", DEMO_DEFAULTS["test_pages"], 1),
            "crop": env_number("DESCAN_DEMO_SIZE", DEMO_DEFAULTS["crop"], 16)}


def settings_line(s: dict) -> str:
    """The line of the marker file that records the settings a demo folder was made with."""
    return " ".join(f"{k}={s[k]}" for k in ("seed", "train_pages", "test_pages", "crops_per_page", "crop"))

_WORDS = ("raspberry pi make build code sensor robot light motor python game retro pixel "
          "circuit solder board camera screen sound wireless project guide maker hack").split()
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN)


def _smooth_field(rng, h, w, cells, channels=3):
    """Random smooth colour field in [0, 1]: coarse noise upsampled with cubic interpolation."""
    coarse = rng.random((cells, cells, channels)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1).reshape(h, w, channels)


def make_page(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A magazine-like page: coloured or white background, photo-like regions, gradients, shapes
    and blocks of text in several sizes and colours. RGB uint8."""
    bg = np.array([255, 255, 255]) if rng.random() < 0.6 else rng.integers(150, 256, 3)
    page = np.empty((height, width, 3), np.uint8)
    page[:] = bg
    s = min(height, width)
    for _ in range(rng.integers(1, 4)):  # photo-like regions and gradients
        h, w = rng.integers(s // 5, s // 2, 2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        if rng.random() < 0.7:
            photo = _smooth_field(rng, h, w, int(rng.integers(3, 9)))
            photo = photo * 0.85 + 0.15 * _smooth_field(rng, h, w, int(rng.integers(12, 30)))
        else:
            t = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
            c0, c1 = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
            photo = np.broadcast_to(c0 * (1 - t) + c1 * t, (h, w, 3))
        page[y:y + h, x:x + w] = (photo * 255).astype(np.uint8)
    for _ in range(rng.integers(1, 5)):  # shapes
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        c = tuple(int(v) for v in rng.integers(0, s, 2))
        if rng.random() < 0.5:
            cv2.circle(page, c, int(rng.integers(s // 20, s // 6)), color, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(page, c, (c[0] + int(rng.integers(5, s // 4)), c[1] + int(rng.integers(3, s // 8))),
                          color, -1)
    for _ in range(rng.integers(2, 5)):  # text blocks
        scale = float(rng.choice([0.3, 0.35, 0.45, 0.6, 0.9, 1.3])) * s / 256
        font = int(rng.choice(_FONTS))
        dark = rng.random() < 0.75
        color = tuple(int(c) for c in (rng.integers(0, 90, 3) if dark else rng.integers(0, 256, 3)))
        thick = max(1, int(round(scale * (2 if rng.random() < 0.3 else 1))))
        line_h = max(6, int(22 * scale))
        x = int(rng.integers(0, max(1, width // 3)))
        y = int(rng.integers(line_h, height))
        for _ in range(rng.integers(1, 8)):
            text = " ".join(rng.choice(_WORDS, rng.integers(2, 7)))
            cv2.putText(page, text, (x, y), font, scale, color, thick, cv2.LINE_AA)
            y += line_h
            if y > height:
                break
    return page


def _halftone(img: np.ndarray, rng, period: float) -> np.ndarray:
    """CMYK halftone: each ink is screened with rotated round dots (classic 15/75/0/45 degrees)."""
    rgb = img.astype(np.float32) / 255.0
    k = 1.0 - rgb.max(axis=2)
    cmy = (1.0 - rgb - k[..., None]) / np.maximum(1.0 - k[..., None], 1e-6)
    inks = [cmy[..., 0], cmy[..., 1], cmy[..., 2], k]
    h, w = k.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    offset = rng.random(2) * period
    out = []
    for ink, angle in zip(inks, (15, 75, 0, 45)):
        a = np.deg2rad(angle + rng.uniform(-2, 2))
        u = (xx * np.cos(a) + yy * np.sin(a) + offset[0]) * (2 * np.pi / period)
        v = (-xx * np.sin(a) + yy * np.cos(a) + offset[1]) * (2 * np.pi / period)
        screen = (np.cos(u) * np.cos(v) + 1) / 2  # 0..1 dot profile
        # A dot is printed where the screen lies under the ink coverage; soft edge ~1 px.
        out.append(np.clip((ink - (1 - screen)) * 4 + 0.5, 0, 1) * 0.9 + ink * 0.1)
    c, m, y, k = out
    res = np.stack([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], axis=2)
    return res


def simulate_scan(clean: np.ndarray, rng: np.random.Generator, back: np.ndarray | None = None,
                  families=("halftone", "bleed", "colour", "texture", "external", "internal"),
                  strength: float = 1.0) -> np.ndarray:
    """Print and scan an RGB uint8 page: returns a new degraded RGB uint8 image.

    Families (COMPETITION.md's taxonomy): 'halftone' CMYK dot screens; 'bleed' the mirrored back
    page (``back``, or a blurred copy of the page itself) showing through; 'colour' tone curve,
    saturation change and colour cast; 'texture' paper grain and wrinkles; 'external' dust dots and
    stains; 'internal' scanner line streaks. Scanner blur, sensor noise and JPEG always follow.
    ``strength`` scales every effect (0 leaves only the scanner).
    """
    check_image(clean, "clean page")
    h, w = clean.shape[:2]
    s = min(h, w)
    img = clean.astype(np.float32) / 255.0
    if "bleed" in families:
        src = back if back is not None else cv2.GaussianBlur(clean, (0, 0), 3)
        mirrored = cv2.resize(src[:, ::-1], (w, h)).astype(np.float32) / 255.0
        mirrored = cv2.GaussianBlur(mirrored, (0, 0), 1.5)
        alpha = rng.uniform(0.05, 0.15) * strength
        img = img * (1 - alpha + alpha * mirrored)  # the back's ink darkens the paper
    if "halftone" in families and strength > 0:
        ht = _halftone((img * 255).astype(np.uint8), rng, period=rng.uniform(4.0, 7.0))
        img = img * (1 - min(1.0, strength)) + ht * min(1.0, strength)
    if "texture" in families:
        grain = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.8)
        fibres = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigmaX=6, sigmaY=0.7)
        tex = 1 + strength * (0.025 * grain + 0.04 * fibres)
        for _ in range(rng.integers(0, 3)):  # wrinkles: a soft shaded line across the page
            line = np.zeros((h, w), np.float32)
            p0, p1 = rng.integers(0, s, 2), rng.integers(0, s, 2)
            cv2.line(line, (int(p0[0]), 0), (int(p1[0]), h - 1), 1.0, max(1, s // 100))
            tex -= strength * 0.06 * cv2.GaussianBlur(line, (0, 0), max(1.0, s / 60))
        img = img * tex[..., None]
    if "colour" in families:
        gamma = np.exp(rng.uniform(-0.25, 0.25) * strength)
        img = np.clip(img, 0, 1) ** gamma
        grey = img.mean(axis=2, keepdims=True)
        sat = 1 + (rng.choice([rng.uniform(-0.5, -0.15), rng.uniform(0.15, 0.4)])) * strength
        img = grey + (img - grey) * sat
        gain = 1 + rng.uniform(-0.08, 0.08, 3) * strength
        paper = 1 - rng.uniform(0.0, 0.08, 3) * strength  # paper is never pure white in a scan
        lift = rng.uniform(0.0, 0.06) * strength  # blacks fade to grey
        img = lift + (paper - lift) * img * gain
    if "external" in families:
        for _ in range(int(rng.integers(1, 4) * strength)):  # stains
            stain = np.zeros((h, w), np.float32)
            c = rng.integers(0, s, 2)
            cv2.circle(stain, (int(c[0]), int(c[1])), int(rng.integers(s // 30, s // 8)), 1.0, -1)
            stain = cv2.GaussianBlur(stain, (0, 0), s / 40)[..., None]
            tint = np.array([0.85, 0.75, 0.55], np.float32)
            img = img * (1 - 0.3 * stain) + tint * img * 0.3 * stain
        dots = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(5, 30) * strength * (s / 256) ** 2)):  # dust
            c = rng.integers(0, s, 2)
            cv2.circle(dots, (int(c[0]), int(c[1])), int(rng.integers(0, max(1, s // 150) + 1)), 255, -1)
        dust = cv2.GaussianBlur(dots, (0, 0), 0.7).astype(np.float32)[..., None] / 255.0
        img = img * (1 - 0.8 * dust)
    if "internal" in families:
        for _ in range(int(rng.integers(1, 4) * strength)):  # scanner streaks ("laser" lines)
            color = rng.uniform(0.3, 1.0, 3).astype(np.float32)
            a = rng.uniform(0.2, 0.5)
            if rng.random() < 0.7:
                i = int(rng.integers(0, w))
                img[:, i:i + 1] = img[:, i:i + 1] * (1 - a) + color * a
            else:
                i = int(rng.integers(0, h))
                img[i:i + 1] = img[i:i + 1] * (1 - a) + color * a
    img = cv2.GaussianBlur(np.clip(img, 0, 1), (0, 0), rng.uniform(0.5, 1.0))  # scanner optics
    img = img + rng.normal(0, rng.uniform(1.5, 4.0) / 255.0, img.shape).astype(np.float32)  # sensor
    out = to_uint8(img)
    quality = int(rng.integers(80, 96))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


DEMO_TITLES = ("DemoMaking", "DemoHack", "DemoFrame", "DemoMag")


def _demo_page(root: Path, split: str, i: int, s: dict) -> None:
    """Make page ``i`` of ``split`` and write its crops (one job of make_demo_dataset)."""
    crop, page_size = s["crop"], s["crop"] * 3 // 2
    rng = np.random.default_rng([s["seed"], 0 if split == "train" else 1, i])
    clean = make_page(rng, page_size, page_size)
    back = make_page(rng, page_size, page_size)
    scan = simulate_scan(clean, rng, back=back)
    title = DEMO_TITLES[i % len(DEMO_TITLES)]
    for c in range(s["crops_per_page"]):
        y, x = rng.integers(0, page_size - crop + 1, 2)
        page = i if split == "train" else s["train_pages"] + i  # test pages are other pages
        name = f"{title}.{page:05d}.{c + 1:02d}"
        win = (slice(y, y + crop), slice(x, x + crop))
        if split == "train":
            write_png(root / SPLITS["train_clean"] / f"{name}.png", clean[win])
            write_png(root / SPLITS["train_scan"] / f"{name}.png", scan[win])
        else:
            tif = root / SPLITS["test_scan"] / f"{name}.tif"
            if not cv2.imwrite(str(tif), cv2.cvtColor(scan[win], cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {tif}")


def make_demo_dataset(root, train_pages=40, test_pages=4, crops_per_page=2, crop=256, seed=0,
                      show_progress=True, workers=None) -> dict:
    """Generate the synthetic demo set in the competition's layout, deterministically from ``seed``.

    Each page (1.5 x crop on a side) is printed and scanned with simulate_scan, then
    ``crops_per_page`` aligned crops are cut from clean and scan, named title.page.crop like the
    real files. Train files are .png, test scans .tif (both formats occur in the wild). A marker
    file, written first, labels the folder as demo data. Existing files are overwritten; nothing
    else is touched. Pages are made in ``workers`` processes (default: one per CPU core, at
    most 4); the files do not depend on it.
    """
    root = Path(root)
    s = {"seed": seed, "train_pages": train_pages, "test_pages": test_pages, "crops_per_page": crops_per_page,
         "crop": crop}
    for sub in SPLITS.values():
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).write_text(
        "SYNTHETIC DEMO DATA made by `bash data_download.sh --demo` (descan.demo.make_demo_dataset).\n"
        "Procedural pages with a simulated print-and-scan; NOT the competition data.\n"
        f"{settings_line(s)}\n")
    jobs = [("train", i) for i in range(train_pages)] + [("test", i) for i in range(test_pages)]
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    bar = progress_bar(total=len(jobs), desc="making demo pages", enabled=show_progress)
    if workers > 1 and len(jobs) >= 8:
        with ProcessPoolExecutor(workers) as pool:
            for f in as_completed([pool.submit(_demo_page, root, split, i, s) for split, i in jobs]):
                f.result()
                bar.update(1)
    else:
        for split, i in jobs:
            _demo_page(root, split, i, s)
            bar.update(1)
    bar.close()
    return {"train_pairs": train_pages * crops_per_page, "test_scans": test_pages * crops_per_page,
            "root": str(root)}


def degradation_augment(prob: float):
    """Input-only augmentation: with probability ``prob`` degrade the scan crop further with a random
    subset of the simulator's families (never the target). Returns a callable
    ``degrade(clean, scan, rng) -> new scan`` for the crop dataset."""
    families = ("bleed", "colour", "texture", "external", "internal")

    def degrade(clean, scan, rng):
        if rng.random() >= prob:
            return scan
        chosen = tuple(f for f in families if rng.random() < 0.5) or ("colour",)
        return simulate_scan(scan, rng, families=chosen, strength=float(rng.uniform(0.3, 1.0)))
    return degrade

