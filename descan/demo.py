"""Synthetic data: procedural magazine pages, the demo set made from them by the scanners of
descan/scanners.py, and the synthetic augmentation of training inputs.

The demo set lets everything run without the competition data; a marker file in its folder labels
it. No torch here.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import cv2
import numpy as np

from helpers import DEMO_MARKER, SPLITS, to_uint8
from descan.files import progress_bar, write_png
from descan.scanners import (SCANNERS, SEEN_SCANNERS, TEST_SCANNERS, UNSEEN_VAL_SCANNERS,
                             scanner_variant, simulate_scan)

# The demo set's defaults: make_demo_dataset's and `python -m descan demo`'s.
DEMO_DEFAULTS = {"train_pages": 40, "unseen_pages": 8, "test_pages": 4, "crops_per_page": 2,
                 "crop": 256, "seed": 0}
DEMO_VERSION = 2  # 2: scanner profiles (seen, unseen validation, unseen test)
MARKER_TEXT = ("SYNTHETIC DEMO DATA made by `bash data_download.sh --demo` "
               "(descan.demo.make_demo_dataset).\n"
               "Procedural pages with a simulated print-and-scan by named scanner profiles; "
               "NOT the competition data.\n")


def settings_line(s: dict) -> str:
    """The line of the marker file that records the settings a demo folder was made with."""
    keys = ("seed", "train_pages", "unseen_pages", "test_pages", "crops_per_page", "crop")
    return f"version={DEMO_VERSION} " + " ".join(f"{k}={s[k]}" for k in keys)


# ---- Pages ---------------------------------------------------------------------------------------
_WORDS = ("raspberry pi make build code sensor robot light motor python game retro pixel "
          "circuit solder board camera screen sound wireless project guide maker hack").split()
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN)


def _smooth_field(rng, h, w, cells):
    """Random smooth RGB field in [0, 1]: coarse noise upsampled with cubic interpolation."""
    coarse = rng.random((cells, cells, 3)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(field, 0, 1).reshape(h, w, 3)


def _text_block(page, rng):
    """A block of 1 to 7 lines of words in one size, font and colour."""
    height, width = page.shape[:2]
    scale = float(rng.choice([0.3, 0.35, 0.45, 0.6, 0.9, 1.3])) * min(height, width) / 256
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


def make_page(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A magazine-like RGB uint8 page: a white or coloured background, photo-like regions and
    gradients, shapes, and blocks of text."""
    page = np.empty((height, width, 3), np.uint8)
    page[:] = np.array([255, 255, 255]) if rng.random() < 0.6 else rng.integers(150, 256, 3)
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
        corner = tuple(int(v) for v in rng.integers(0, s, 2))
        if rng.random() < 0.5:
            cv2.circle(page, corner, int(rng.integers(s // 20, s // 6)), color, -1, cv2.LINE_AA)
        else:
            dx, dy = int(rng.integers(5, s // 4)), int(rng.integers(3, s // 8))
            cv2.rectangle(page, corner, (corner[0] + dx, corner[1] + dy), color, -1)
    for _ in range(rng.integers(2, 5)):
        _text_block(page, rng)
    return page


# ---- The demo set --------------------------------------------------------------------------------
DEMO_TITLES = ("DemoMaking", "DemoHack", "DemoFrame", "DemoMag")
SPLIT_SEEDS = {"train": 0, "test": 1, "unseen": 2, "test_unseen": 3}


def _pages(s: dict) -> list[tuple[str, int]]:
    """Every demo page as (split, i). 'train': seen scanners; 'unseen': the unseen validation
    scanners; 'test': seen scanners; 'test_unseen': the test-only scanners. A page depends only
    on (seed, split, i), so changing one split's count leaves every other page as it was."""
    counts = {"train": s["train_pages"], "unseen": s["unseen_pages"],
              "test": s["test_pages"], "test_unseen": s["test_pages"]}
    return [(split, i) for split, n in counts.items() for i in range(n)]


def _page_scanner(split: str, i: int) -> tuple[int | None, dict]:
    """(file number, profile) of page i: the number of other scanners' files (3 for
    scanner03_000), None for the seen scanners' magazine-named files."""
    if split in ("train", "test"):  # every title on both seen scanners
        return None, SCANNERS[SEEN_SCANNERS[(i // len(DEMO_TITLES)) % 2]]
    group = UNSEEN_VAL_SCANNERS if split == "unseen" else TEST_SCANNERS
    number = sorted(group)[i % 2]
    return number, SCANNERS[group[number]]


def _crop_name(split: str, i: int, c: int, number: int | None, s: dict) -> str:
    """The file stem of crop c of page i, like the competition's: scanner03_007 or
    DemoMag.00012.01 (test pages are numbered after the training pages)."""
    if number is not None:
        return f"scanner{number:02d}_{(i // 2) * s['crops_per_page'] + c:03d}"
    page = i if split == "train" else s["train_pages"] + i
    return f"{DEMO_TITLES[i % len(DEMO_TITLES)]}.{page:05d}.{c + 1:02d}"


def _demo_page(root: Path, split: str, i: int, s: dict) -> None:
    """Make page i of a split and write its crops: pairs as .png, test scans as .tif."""
    crop, page_size = s["crop"], s["crop"] * 3 // 2
    rng = np.random.default_rng([s["seed"], SPLIT_SEEDS[split], i])
    clean = make_page(rng, page_size, page_size)
    back = make_page(rng, page_size, page_size)
    number, profile = _page_scanner(split, i)
    scan = simulate_scan(clean, rng, back=back, scanner=scanner_variant(profile, rng))
    for c in range(s["crops_per_page"]):
        y, x = rng.integers(0, page_size - crop + 1, 2)
        win = (slice(y, y + crop), slice(x, x + crop))
        name = _crop_name(split, i, c, number, s)
        if split in ("train", "unseen"):
            write_png(root / SPLITS["train_clean"] / f"{name}.png", clean[win])
            write_png(root / SPLITS["train_scan"] / f"{name}.png", scan[win])
            continue
        tif = root / SPLITS["test_scan"] / f"{name}.tif"
        if not cv2.imwrite(str(tif), cv2.cvtColor(scan[win], cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {tif}: is the disk full or the folder read-only?")


def make_demo_dataset(root, train_pages=40, test_pages=4, crops_per_page=2, crop=256, seed=0,
                      show_progress=True, workers=None, unseen_pages=8) -> dict:
    """Generate the synthetic demo set in the competition's layout, deterministically from ``seed``.

    Each page (1.5 x crop on a side) is printed and scanned by one of the SCANNERS, then
    ``crops_per_page`` aligned crops are cut from clean and scan. Training pairs: ``train_pages``
    pages from the seen scanners (named title.page.crop) and ``unseen_pages`` from the unseen
    validation scanners (scanner03_000 ..., always validation). Test scans: ``test_pages`` pages
    from the seen scanners and as many from the test-only scanners (scanner01_000 ...). The marker
    file is written first. Pages are made in ``workers`` processes (default: one per CPU core, at
    most 4); the files do not depend on it. Returns the counts of pairs and test scans.
    """
    root = Path(root)
    s = {"seed": seed, "train_pages": train_pages, "unseen_pages": unseen_pages,
         "test_pages": test_pages, "crops_per_page": crops_per_page, "crop": crop}
    for sub in SPLITS.values():
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).write_text(MARKER_TEXT + settings_line(s) + "\n")
    pages = _pages(s)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    bar = progress_bar(total=len(pages), desc="making demo pages", enabled=show_progress)
    if workers > 1 and len(pages) >= 8:
        with ProcessPoolExecutor(workers) as pool:
            for done in as_completed([pool.submit(_demo_page, root, *p, s) for p in pages]):
                done.result()
                bar.update(1)
    else:
        for split, i in pages:
            _demo_page(root, split, i, s)
            bar.update(1)
    bar.close()
    test_scans = sum(split.startswith("test") for split, _ in pages) * crops_per_page
    return {"train_pairs": (train_pages + unseen_pages) * crops_per_page,
            "unseen_pairs": unseen_pages * crops_per_page, "test_scans": test_scans,
            "root": str(root)}


# ---- Input-only augmentation of training crops ---------------------------------------------------
def colour_jitter(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A random global colour response on an RGB uint8 image: tone curve, white and black points
    and saturation, per channel around a common value. On training inputs, so that a model must
    read the scanner's colour from the image instead of learning the training scanners'."""
    gamma = np.exp(rng.normal(0, 0.15 * strength) + rng.normal(0, 0.05 * strength, 3))
    white = 1 - np.abs(rng.normal(0, 0.06 * strength)) + rng.normal(0, 0.02 * strength, 3)
    white = np.clip(white, 0.6, 1.05)
    black = np.abs(rng.normal(0, 0.03 * strength)) + rng.normal(0, 0.01 * strength, 3)
    black = np.clip(black, -0.02, 0.2)
    img = np.clip(img.astype(np.float32) / 255.0, 0, 1) ** gamma.astype(np.float32)
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * np.float32(np.exp(rng.normal(0, 0.12 * strength)))
    return to_uint8(black.astype(np.float32) + (white - black).astype(np.float32) * img)


def input_augment(degrade_prob: float = 0.0, jitter_prob: float = 0.0):
    """``augment(clean, scan, rng) -> new scan`` for training crops, or None when both
    probabilities are 0: with ``degrade_prob`` the scan degraded further by a random subset of
    the simulator's families, then with ``jitter_prob`` a colour_jitter. The target is never
    changed."""
    if degrade_prob <= 0 and jitter_prob <= 0:
        return None
    families = ("bleed", "colour", "texture", "external", "internal")

    def augment(clean, scan, rng):
        if degrade_prob > 0 and rng.random() < degrade_prob:
            chosen = tuple(f for f in families if rng.random() < 0.5) or ("colour",)
            scan = simulate_scan(scan, rng, families=chosen, strength=float(rng.uniform(0.3, 1.0)))
        if jitter_prob > 0 and rng.random() < jitter_prob:
            scan = colour_jitter(scan, rng)
        return scan
    return augment


def degradation_augment(prob: float):
    """input_augment with the degradation alone (probability ``prob``)."""
    return input_augment(degrade_prob=prob)
