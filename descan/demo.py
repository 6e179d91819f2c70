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

from helpers import DEMO_MARKER, SPLITS, check_image, to_uint8
from descan.settings import env_number
from descan.files import progress_bar, write_png

# The demo set's defaults, read once here by `python -m descan demo`, data_download.sh and the notebooks.
DEMO_DEFAULTS = {"train_pages": 40, "unseen_pages": 8, "test_pages": 4, "crops_per_page": 2, "crop": 256, "seed": 0}
DEMO_VERSION = 2  # 2: scanner profiles (seen, unseen validation, unseen test)


def demo_settings() -> dict:
    """DEMO_DEFAULTS with DESCAN_DEMO_PAGES, DESCAN_DEMO_UNSEEN_PAGES, DESCAN_DEMO_TEST_PAGES and
    DESCAN_DEMO_SIZE applied."""
    return {**DEMO_DEFAULTS, "train_pages": env_number("DESCAN_DEMO_PAGES", DEMO_DEFAULTS["train_pages"], 2),
            "unseen_pages": env_number("DESCAN_DEMO_UNSEEN_PAGES", DEMO_DEFAULTS["unseen_pages"], 0),
            "test_pages": env_number("DESCAN_DEMO_TEST_PAGES", DEMO_DEFAULTS["test_pages"], 1),
            "crop": env_number("DESCAN_DEMO_SIZE", DEMO_DEFAULTS["crop"], 16)}


def settings_line(s: dict) -> str:
    """The line of the marker file that records the settings a demo folder was made with."""
    keys = ("seed", "train_pages", "unseen_pages", "test_pages", "crops_per_page", "crop")
    return f"version={DEMO_VERSION} " + " ".join(f"{k}={s[k]}" for k in keys)

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


# ---- Scanner profiles -----------------------------------------------------------------------------
# A scanner is a consistent colour response (per-channel tone curve, saturation, white and black
# points) and optics (blur, sensor noise, JPEG quality), plus the print it sees (halftone screen)
# and how often it streaks. Each scan varies a little around its profile. The demo's training
# pairs come from the two SEEN profiles; validation also has pairs from two UNSEEN ones (named like
# the competition's other-scanner files, scanner03_000, always held out), and the test set mixes
# magazine-style names (seen scanners) with scanner01_/scanner02_ images from two more profiles
# that nothing in training or validation uses, as the real test set does.
SCANNERS = {
    "flatbed_warm": dict(gamma=(0.95, 1.0, 1.1), saturation=0.85, white=(0.96, 0.94, 0.88),
                         black=(0.06, 0.05, 0.04), blur=0.7, noise=2.0, period=5.0, streaks=0.3, jpeg=92),
    "flatbed_cool": dict(gamma=(1.1, 1.05, 0.95), saturation=1.1, white=(0.92, 0.95, 0.98),
                         black=(0.03, 0.04, 0.06), blur=0.9, noise=3.0, period=6.0, streaks=0.6, jpeg=85),
    "sheetfed_dark": dict(gamma=(1.3, 1.25, 1.2), saturation=0.75, white=(0.86, 0.85, 0.82),
                          black=(0.09, 0.08, 0.08), blur=1.0, noise=3.5, period=4.5, streaks=1.0, jpeg=82),
    "office_bright": dict(gamma=(0.8, 0.82, 0.85), saturation=1.25, white=(1.0, 0.99, 0.96),
                          black=(0.02, 0.02, 0.03), blur=0.6, noise=1.5, period=6.5, streaks=0.2, jpeg=94),
    "aged_yellow": dict(gamma=(1.05, 1.1, 1.35), saturation=0.7, white=(0.95, 0.92, 0.8),
                        black=(0.08, 0.07, 0.05), blur=0.8, noise=2.5, period=5.5, streaks=0.5, jpeg=88),
    "magenta_cast": dict(gamma=(1.0, 1.15, 0.95), saturation=1.0, white=(0.97, 0.9, 0.95),
                         black=(0.04, 0.05, 0.04), blur=0.75, noise=2.2, period=5.2, streaks=0.4, jpeg=90),
}
SEEN_SCANNERS = ("flatbed_warm", "flatbed_cool")          # the demo's training pairs
UNSEEN_VAL_SCANNERS = {3: "sheetfed_dark", 4: "office_bright"}  # scanner03_*, scanner04_*: validation only
TEST_SCANNERS = {1: "aged_yellow", 2: "magenta_cast"}   # scanner01_*, scanner02_*: demo test scans only


def scanner_variant(profile: dict, rng: np.random.Generator) -> dict:
    """One scan's settings: the profile with small random variation (the same scanner on another day)."""
    v = dict(profile)
    v["gamma"] = tuple(g * float(np.exp(rng.normal(0, 0.04))) for g in profile["gamma"])
    v["saturation"] = profile["saturation"] * float(np.exp(rng.normal(0, 0.05)))
    v["white"] = tuple(float(np.clip(w + rng.normal(0, 0.01), 0.5, 1.0)) for w in profile["white"])
    v["black"] = tuple(float(np.clip(b + rng.normal(0, 0.008), 0.0, 0.3)) for b in profile["black"])
    v["blur"] = profile["blur"] * float(rng.uniform(0.85, 1.15))
    v["noise"] = profile["noise"] * float(rng.uniform(0.8, 1.2))
    return v


def colour_response(img: np.ndarray, scanner: dict) -> np.ndarray:
    """A scanner's colour response on float RGB in [0, 1]: tone curve per channel, saturation,
    then the black and white points (paper tint)."""
    img = np.clip(img, 0, 1) ** np.asarray(scanner["gamma"], np.float32)
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * scanner["saturation"]
    black, white = np.asarray(scanner["black"], np.float32), np.asarray(scanner["white"], np.float32)
    return black + (white - black) * img


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
                  strength: float = 1.0, scanner: dict | None = None) -> np.ndarray:
    """Print and scan an RGB uint8 page: returns a new degraded RGB uint8 image.

    Families (COMPETITION.md's taxonomy): 'halftone' CMYK dot screens; 'bleed' the mirrored back
    page (``back``, or a blurred copy of the page itself) showing through; 'colour' tone curve,
    saturation change and colour cast; 'texture' paper grain and wrinkles; 'external' dust dots and
    stains; 'internal' scanner line streaks. Scanner blur, sensor noise and JPEG always follow.
    ``strength`` scales every effect (0 leaves only the scanner). ``scanner`` (a SCANNERS profile,
    usually through scanner_variant) fixes the colour response, screen, optics and streak rate;
    without one they are drawn at random for each call.
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
        period = scanner["period"] * rng.uniform(0.95, 1.05) if scanner else rng.uniform(4.0, 7.0)
        ht = _halftone((img * 255).astype(np.uint8), rng, period=period)
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
    if "colour" in families and scanner is not None:
        img = colour_response(img, scanner)
    elif "colour" in families:
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
        rate = scanner["streaks"] if scanner else 1.0
        for _ in range(int(rng.integers(1, 4) * strength * rate)):  # scanner streaks ("laser" lines)
            color = rng.uniform(0.3, 1.0, 3).astype(np.float32)
            a = rng.uniform(0.2, 0.5)
            if rng.random() < 0.7:
                i = int(rng.integers(0, w))
                img[:, i:i + 1] = img[:, i:i + 1] * (1 - a) + color * a
            else:
                i = int(rng.integers(0, h))
                img[i:i + 1] = img[i:i + 1] * (1 - a) + color * a
    blur, noise = (scanner["blur"], scanner["noise"]) if scanner else (rng.uniform(0.5, 1.0), rng.uniform(1.5, 4.0))
    img = cv2.GaussianBlur(np.clip(img, 0, 1), (0, 0), blur)  # scanner optics
    img = img + rng.normal(0, noise / 255.0, img.shape).astype(np.float32)  # sensor
    out = to_uint8(img)
    quality = int(np.clip(scanner["jpeg"] + rng.integers(-2, 3), 50, 100)) if scanner else int(rng.integers(80, 96))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


DEMO_TITLES = ("DemoMaking", "DemoHack", "DemoFrame", "DemoMag")


SPLIT_SEEDS = {"train": 0, "test": 1, "unseen": 2, "test_unseen": 3}


def _demo_page(root: Path, split: str, i: int, s: dict) -> None:
    """Make page ``i`` of ``split`` and write its crops (one job of make_demo_dataset). Splits:
    'train' (seen scanners, magazine names), 'unseen' (pairs from the unseen validation scanners,
    scanner03_000 ...), 'test' (seen scanners) and 'test_unseen' (the test-only scanners,
    scanner01_000 ...)."""
    crop, page_size = s["crop"], s["crop"] * 3 // 2
    rng = np.random.default_rng([s["seed"], SPLIT_SEEDS[split], i])
    clean = make_page(rng, page_size, page_size)
    back = make_page(rng, page_size, page_size)
    if split in ("unseen", "test_unseen"):
        scanners = UNSEEN_VAL_SCANNERS if split == "unseen" else TEST_SCANNERS
        number = sorted(scanners)[i % 2]
        profile = SCANNERS[scanners[number]]
    else:
        number, profile = None, SCANNERS[SEEN_SCANNERS[(i // len(DEMO_TITLES)) % 2]]  # every title on both
    scan = simulate_scan(clean, rng, back=back, scanner=scanner_variant(profile, rng))
    title = DEMO_TITLES[i % len(DEMO_TITLES)]
    for c in range(s["crops_per_page"]):
        y, x = rng.integers(0, page_size - crop + 1, 2)
        if number is not None:  # other scanners' files are named like the competition's: scanner03_007
            name = f"scanner{number:02d}_{(i // 2) * s['crops_per_page'] + c:03d}"
        else:
            page = i if split == "train" else s["train_pages"] + i  # test pages are other pages
            name = f"{title}.{page:05d}.{c + 1:02d}"
        win = (slice(y, y + crop), slice(x, x + crop))
        if split in ("train", "unseen"):
            write_png(root / SPLITS["train_clean"] / f"{name}.png", clean[win])
            write_png(root / SPLITS["train_scan"] / f"{name}.png", scan[win])
        else:
            tif = root / SPLITS["test_scan"] / f"{name}.tif"
            if not cv2.imwrite(str(tif), cv2.cvtColor(scan[win], cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {tif}")


def make_demo_dataset(root, train_pages=40, test_pages=4, crops_per_page=2, crop=256, seed=0,
                      show_progress=True, workers=None, unseen_pages=None) -> dict:
    """Generate the synthetic demo set in the competition's layout, deterministically from ``seed``.

    Each page (1.5 x crop on a side) is printed and scanned with simulate_scan by one of the
    SCANNERS, then ``crops_per_page`` aligned crops are cut from clean and scan. Training pairs:
    ``train_pages`` pages from the two seen scanners, named title.page.crop like the real files,
    and ``unseen_pages`` (default DEMO_DEFAULTS') from two unseen scanners, named scanner03_000 /
    scanner04_000 (the manifest always puts these in validation). Test scans: ``test_pages`` pages
    from the seen scanners and as many from two test-only scanners (scanner01_000, scanner02_000).
    Train files are .png, test scans .tif (both formats occur in the wild). A marker file, written
    first, labels the folder as demo data. Existing files are overwritten; nothing else is
    touched. Pages are made in ``workers`` processes (default: one per CPU core, at most 4); the
    files do not depend on it.
    """
    root = Path(root)
    unseen_pages = DEMO_DEFAULTS["unseen_pages"] if unseen_pages is None else unseen_pages
    s = {"seed": seed, "train_pages": train_pages, "unseen_pages": unseen_pages, "test_pages": test_pages,
         "crops_per_page": crops_per_page, "crop": crop}
    for sub in SPLITS.values():
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).write_text(
        "SYNTHETIC DEMO DATA made by `bash data_download.sh --demo` (descan.demo.make_demo_dataset).\n"
        "Procedural pages with a simulated print-and-scan by named scanner profiles; NOT the competition data.\n"
        f"{settings_line(s)}\n")
    jobs = ([("train", i) for i in range(train_pages)] + [("unseen", i) for i in range(unseen_pages)]
            + [("test", i) for i in range(test_pages)] + [("test_unseen", i) for i in range(test_pages)])
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
    return {"train_pairs": (train_pages + unseen_pages) * crops_per_page,
            "unseen_pairs": unseen_pages * crops_per_page, "test_scans": 2 * test_pages * crops_per_page,
            "root": str(root)}


def colour_jitter(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A random global colour response on an RGB uint8 image: a tone curve (gamma), white and black
    points and a saturation change, per channel around a common value. Used on training inputs so
    that a model cannot learn the training scanners' colour by heart and must read it from the
    image (its target, the clean image, is never changed)."""
    gamma = np.exp(rng.normal(0, 0.15 * strength) + rng.normal(0, 0.05 * strength, 3))
    white = np.clip(1 - np.abs(rng.normal(0, 0.06 * strength)) + rng.normal(0, 0.02 * strength, 3), 0.6, 1.05)
    black = np.clip(np.abs(rng.normal(0, 0.03 * strength)) + rng.normal(0, 0.01 * strength, 3), -0.02, 0.2)
    img = np.clip(img.astype(np.float32) / 255.0, 0, 1) ** gamma.astype(np.float32)
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * np.float32(np.exp(rng.normal(0, 0.12 * strength)))
    return to_uint8(black.astype(np.float32) + (white - black).astype(np.float32) * img)


def rescan(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fresh simulated scan of a clean crop by a *random* scanner: every family, and the colour
    response, screen, blur, noise, streaks and JPEG quality drawn anew for each call from the
    simulator's own ranges (simulate_scan without a profile; those ranges were written before the
    scanner profiles existed, so they were not chosen to cover the unseen ones)."""
    return simulate_scan(clean, rng)


def input_augment(degrade_prob: float = 0.0, jitter_prob: float = 0.0, rescan_prob: float = 0.0):
    """The input-only augmentation of training crops, or None when every probability is 0: a
    callable ``(clean, scan, rng) -> new scan`` that first, with ``rescan_prob``, replaces the scan
    by a rescan of the clean crop (a random scanner's, see rescan), then degrades further
    (degradation_augment) and applies a random colour_jitter, each with its probability. The
    target, the clean crop, is never changed."""
    if degrade_prob <= 0 and jitter_prob <= 0 and rescan_prob <= 0:
        return None
    degrade = degradation_augment(degrade_prob) if degrade_prob > 0 else None

    def augment(clean, scan, rng):
        if rescan_prob > 0 and rng.random() < rescan_prob:
            scan = rescan(clean, rng)
        if degrade is not None:
            scan = degrade(clean, scan, rng)
        if jitter_prob > 0 and rng.random() < jitter_prob:
            scan = colour_jitter(scan, rng)
        return scan
    return augment


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

