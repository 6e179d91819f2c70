"""Synthetic data: scanner profiles, a print-and-scan simulator, the demo set, augmentation."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from helpers import DEMO_MARKER, SPLITS, check_image, to_uint8
from descan.files import progress_bar, write_image

# The demo set's defaults (make_demo_dataset's and the demo command's), in the marker's order.
DEMO_DEFAULTS = {"seed": 0, "train_pages": 40, "unseen_pages": 8, "test_pages": 16,
                 "other_test_scans": 1, "crops_per_page": 2, "crop": 256}
FAMILIES = ("halftone", "bleed", "colour", "texture", "external", "internal")  # of degradation
MARKER_TEXT = ("SYNTHETIC DEMO DATA made by `bash data_download.sh --demo` (descan.demo.make_demo_"
               "dataset).\nProcedural pages with a simulated print-and-scan by named scanner "
               "profiles; NOT the competition data.\n")
DEMO_TITLES = ("DemoMaking", "DemoHack", "DemoFrame", "DemoMag")  # the demo's magazines
SPLIT_SEEDS = {"train": 0, "test": 1, "unseen": 2, "test_unseen": 3}  # page i: rng (seed, split, i)
_WORDS = ("raspberry pi make build code sensor robot light motor python game retro pixel "
          "circuit solder board camera screen sound wireless project guide maker hack").split()
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN)


def settings_line(s: dict) -> str:
    """The marker file's line of the settings a demo folder was made with (version 3: test mix)."""
    return "version=3 " + " ".join(f"{k}={s[k]}" for k in DEMO_DEFAULTS)


# A scanner: tone curve (gamma of R, G, B), saturation, white and black points (R, G, B), blur
# (sigma, pixels), sensor noise (of 255), halftone period (pixels), streak rate, JPEG quality.
_FIELDS = ("gamma", "saturation", "white", "black", "blur", "noise", "period", "streaks", "jpeg")
SCANNERS = {name: dict(zip(_FIELDS, row)) for name, row in {
    "flatbed_warm": ((.95, 1.0, 1.1), .85, (.96, .94, .88), (.06, .05, .04), .7, 2.0, 5.0, .3, 92),
    "flatbed_cool": ((1.1, 1.05, .95), 1.1, (.92, .95, .98), (.03, .04, .06), .9, 3.0, 6.0, .6, 85),
    "sheetfed_dark": ((1.3, 1.25, 1.2), .75, (.86, .85, .82), (.09, .08, .08), 1, 3.5, 4.5, 1, 82),
    "office_bright": ((.8, .82, .85), 1.25, (1.0, .99, .96), (.02, .02, .03), .6, 1.5, 6.5, .2, 94),
    "aged_yellow": ((1.05, 1.1, 1.35), .7, (.95, .92, .8), (.08, .07, .05), .8, 2.5, 5.5, .5, 88),
    "magenta_cast": ((1.0, 1.15, .95), 1.0, (.97, .9, .95), (.04, .05, .04), .75, 2.2, 5.2, .4, 90),
}.items()}
# Training pairs come from the SEEN scanners; validation also has pairs of the UNSEEN_VAL ones
# (scanner03_000 ...); as in the real test set, a few test scans are by TEST ones (scanner01_000).
SEEN_SCANNERS = ("flatbed_warm", "flatbed_cool")
UNSEEN_VAL_SCANNERS = {3: "sheetfed_dark", 4: "office_bright"}
TEST_SCANNERS = {1: "aged_yellow", 2: "magenta_cast"}


def scanner_variant(p: dict, rng: np.random.Generator) -> dict:
    """One scan's settings: the profile ``p`` varied a little (the same scanner on another day)."""
    return dict(p, gamma=tuple(g * float(np.exp(rng.normal(0, 0.04))) for g in p["gamma"]),
                saturation=p["saturation"] * float(np.exp(rng.normal(0, 0.05))),
                white=tuple(float(np.clip(w + rng.normal(0, 0.01), 0.5, 1.0)) for w in p["white"]),
                black=tuple(float(np.clip(b + rng.normal(0, 0.008), 0, 0.3)) for b in p["black"]),
                blur=p["blur"] * float(rng.uniform(0.85, 1.15)),
                noise=p["noise"] * float(rng.uniform(0.8, 1.2)))


# ---- The print-and-scan simulator: one function per family of degradation -----------------------
def _tone(img, gamma, saturation, black, span):
    """Tone curve per channel, saturation, then black point and span to white, on float RGB."""
    img = np.clip(img, 0, 1) ** np.asarray(gamma, np.float32)
    grey = (img[..., 0] + img[..., 1] + img[..., 2])[..., None] / 3  # = mean(axis=2), faster
    return black + span * (grey + (img - grey) * saturation)


def _random_colour(img, rng, strength):
    """A random colour response: tone curve, saturation, per-channel gain, paper tint, faded ink."""
    img = np.clip(img, 0, 1) ** np.exp(rng.uniform(-0.25, 0.25) * strength)
    grey = img.mean(axis=2, keepdims=True)
    sat = 1 + (rng.choice([rng.uniform(-0.5, -0.15), rng.uniform(0.15, 0.4)])) * strength
    img = grey + (img - grey) * sat
    gain = 1 + rng.uniform(-0.08, 0.08, 3) * strength
    paper = 1 - rng.uniform(0.0, 0.08, 3) * strength  # paper is never pure white in a scan
    lift = rng.uniform(0.0, 0.06) * strength  # blacks fade to grey
    return lift + (paper - lift) * img * gain


def _halftone(img, rng, strength, scanner):
    """CMYK halftone: each ink screened with round dots at 15/75/0/45 degrees (classic angles)."""
    period = scanner["period"] * rng.uniform(0.95, 1.05) if scanner else rng.uniform(4.0, 7.0)
    rgb = (img * 255).astype(np.uint8).astype(np.float32) / 255.0
    k = 1.0 - np.maximum.reduce([rgb[..., 0], rgb[..., 1], rgb[..., 2]])  # = max(axis=2), faster
    cmy = (1.0 - rgb - k[..., None]) / np.maximum(1.0 - k[..., None], 1e-6)
    yy, xx = np.mgrid[0:k.shape[0], 0:k.shape[1]].astype(np.float32)
    offset = rng.random(2) * period
    out = []
    for ink, angle in zip((cmy[..., 0], cmy[..., 1], cmy[..., 2], k), (15, 75, 0, 45)):
        a = np.deg2rad(angle + rng.uniform(-2, 2))
        u = (xx * np.cos(a) + yy * np.sin(a) + offset[0]) * (2 * np.pi / period)
        v = (-xx * np.sin(a) + yy * np.cos(a) + offset[1]) * (2 * np.pi / period)
        screen = (np.cos(u) * np.cos(v) + 1) / 2  # 0..1 dot profile
        # A dot is printed where the screen lies under the ink coverage; soft edge ~1 px.
        out.append(np.clip((ink - (1 - screen)) * 4 + 0.5, 0, 1) * 0.9 + ink * 0.1)
    printed = np.stack([(1 - ink) * (1 - out[3]) for ink in out[:3]], axis=2)
    return img * (1 - min(1.0, strength)) + printed * min(1.0, strength)


def _paper_texture(img, rng, strength):
    """Paper grain and fibres, and up to 2 wrinkles (soft shaded lines across the page)."""
    h, w = img.shape[:2]
    s = min(h, w)
    grain = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.8)
    fibres = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 6, sigmaY=0.7)
    tex = 1 + strength * (0.025 * grain + 0.04 * fibres)
    for _ in range(rng.integers(0, 3)):
        line = np.zeros((h, w), np.float32)
        p0, p1 = rng.integers(0, s, 2), rng.integers(0, s, 2)
        cv2.line(line, (int(p0[0]), 0), (int(p1[0]), h - 1), 1.0, max(1, s // 100))
        tex -= strength * 0.06 * cv2.GaussianBlur(line, (0, 0), max(1.0, s / 60))
    return img * tex[..., None]


def _stains_and_dust(img, rng, strength):
    """Stains (soft brownish discs) and dust (small dark dots)."""
    h, w = img.shape[:2]
    s = min(h, w)
    for _ in range(int(rng.integers(1, 4) * strength)):
        stain = np.zeros((h, w), np.float32)
        c = rng.integers(0, s, 2)
        cv2.circle(stain, (int(c[0]), int(c[1])), int(rng.integers(s // 30, s // 8)), 1.0, -1)
        stain = cv2.GaussianBlur(stain, (0, 0), s / 40)[..., None]
        img = img * (1 - 0.3 * stain) + np.float32([0.85, 0.75, 0.55]) * img * 0.3 * stain
    dots = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(5, 30) * strength * (s / 256) ** 2)):
        centre = tuple(map(int, rng.integers(0, s, 2)))
        cv2.circle(dots, centre, int(rng.integers(0, max(1, s // 150) + 1)), 255, -1)
    dust = cv2.GaussianBlur(dots, (0, 0), 0.7).astype(np.float32)[..., None] / 255.0
    return img * (1 - 0.8 * dust)


def simulate_scan(clean: np.ndarray, rng: np.random.Generator, back: np.ndarray | None = None,
                  families=FAMILIES, strength: float = 1.0, scanner: dict | None = None):
    """Print and scan an RGB uint8 page into a new one: the chosen ``families`` of damage, then
    blur, noise and JPEG. A ``scanner`` (scanner_variant) fixes colour, dots, optics and streaks."""
    check_image(clean, "clean page")
    img = clean.astype(np.float32) / 255.0
    if "bleed" in families:  # the back page's ink darkens the paper
        src = back if back is not None else cv2.GaussianBlur(clean, (0, 0), 3)
        mirrored = cv2.resize(src[:, ::-1], clean.shape[1::-1]).astype(np.float32) / 255.0
        alpha = rng.uniform(0.05, 0.15) * strength
        img = img * (1 - alpha + alpha * cv2.GaussianBlur(mirrored, (0, 0), 1.5))
    if "halftone" in families and strength > 0:
        img = _halftone(img, rng, strength, scanner)
    if "texture" in families:
        img = _paper_texture(img, rng, strength)
    if "colour" in families and scanner is not None:
        black = np.asarray(scanner["black"], np.float32)
        span = np.asarray(scanner["white"], np.float32) - black
        img = _tone(img, scanner["gamma"], scanner["saturation"], black, span)
    elif "colour" in families:
        img = _random_colour(img, rng, strength)
    if "external" in families:
        img = _stains_and_dust(img, rng, strength)
    if "internal" in families:  # scanner streaks ("laser" lines): mostly columns, some rows
        rate = scanner["streaks"] if scanner else 1.0
        for _ in range(int(rng.integers(1, 4) * strength * rate)):
            color, a = rng.uniform(0.3, 1.0, 3).astype(np.float32), rng.uniform(0.2, 0.5)
            lines = img.transpose(1, 0, 2) if rng.random() < 0.7 else img
            i = int(rng.integers(0, lines.shape[0]))
            lines[i] = lines[i] * (1 - a) + color * a
    blur = scanner["blur"] if scanner else rng.uniform(0.5, 1.0)  # the optics
    noise = scanner["noise"] if scanner else rng.uniform(1.5, 4.0)
    img = cv2.GaussianBlur(np.clip(img, 0, 1), (0, 0), blur)
    img = to_uint8(img + rng.normal(0, noise / 255.0, img.shape).astype(np.float32))
    quality = scanner["jpeg"] + rng.integers(-2, 3) if scanner else rng.integers(80, 96)
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, int(np.clip(quality, 50, 100))]
    _, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), jpeg)
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# ---- Pages and the demo set ----------------------------------------------------------------------
def _smooth_field(rng, h, w, cells):
    """Random smooth RGB field in [0, 1]: coarse noise upsampled with cubic interpolation."""
    coarse = rng.random((cells, cells, 3)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC), 0, 1)


def make_page(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A magazine-like RGB uint8 page: background, photos and gradients, shapes, text blocks."""
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
    for _ in range(rng.integers(2, 5)):  # blocks of lines in one size, font and colour
        scale = float(rng.choice([0.3, 0.35, 0.45, 0.6, 0.9, 1.3])) * s / 256
        font = int(rng.choice(_FONTS))
        color = tuple(int(c) for c in rng.integers(0, 90 if rng.random() < 0.75 else 256, 3))
        thick = max(1, int(round(scale * (2 if rng.random() < 0.3 else 1))))
        line_h = max(6, int(22 * scale))
        x, y = int(rng.integers(0, max(1, width // 3))), int(rng.integers(line_h, height))
        for _ in range(rng.integers(1, 8)):
            text = " ".join(rng.choice(_WORDS, rng.integers(2, 7)))
            cv2.putText(page, text, (x, y), font, scale, color, thick, cv2.LINE_AA)
            y += line_h
            if y > height:
                break
    return page


def _demo_page(root: Path, split: str, i: int, s: dict) -> None:
    """Make page i of a split (seeded by seed, split and i alone) and write its named crops."""
    crop, size = s["crop"], s["crop"] * 3 // 2
    n = 1 if split == "test_unseen" else s["crops_per_page"]  # other scanners' tests: 1 crop
    if split in ("train", "test"):  # every title on both seen scanners
        stem = f"{DEMO_TITLES[i % 4]}.{i if split == 'train' else s['train_pages'] + i:05d}"
        names = [f"{stem}.{c + 1:02d}" for c in range(n)]
        profile = SCANNERS[SEEN_SCANNERS[(i // 4) % 2]]
    else:
        group = UNSEEN_VAL_SCANNERS if split == "unseen" else TEST_SCANNERS
        number = sorted(group)[i % 2]
        names = [f"scanner{number:02d}_{(i // 2) * n + c:03d}" for c in range(n)]
        profile = SCANNERS[group[number]]
    rng = np.random.default_rng([s["seed"], SPLIT_SEEDS[split], i])
    clean, back = make_page(rng, size, size), make_page(rng, size, size)
    scan = simulate_scan(clean, rng, back=back, scanner=scanner_variant(profile, rng))
    for name in names:
        y, x = rng.integers(0, size - crop + 1, 2)
        win = (slice(y, y + crop), slice(x, x + crop))
        if split in ("train", "unseen"):
            write_image(root / SPLITS["train_clean"] / f"{name}.png", clean[win])
            write_image(root / SPLITS["train_scan"] / f"{name}.png", scan[win])
        else:
            write_image(root / SPLITS["test_scan"] / f"{name}.tif", scan[win])


def make_demo_dataset(root, show_progress=True, **settings) -> dict:
    """The demo set in the competition's layout (DEMO_DEFAULTS updated by ``settings``); counts."""
    root, s = Path(root), {**DEMO_DEFAULTS, **settings}
    if len(s) > len(DEMO_DEFAULTS):
        raise TypeError(f"unknown demo settings: {sorted(set(s) - set(DEMO_DEFAULTS))}")
    for sub in SPLITS.values():
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).write_text(MARKER_TEXT + settings_line(s) + "\n")
    counts = [s[k] for k in ("train_pages", "test_pages", "unseen_pages", "other_test_scans")]
    jobs = [(root, split, i, s) for split, n in zip(SPLIT_SEEDS, counts) for i in range(n)]
    for job in progress_bar(jobs, "making demo pages", show_progress):
        _demo_page(*job)
    return demo_counts(s)


def demo_counts(s: dict) -> dict:
    """How many pairs (unseen ones among them) and test scans the demo settings ``s`` make."""
    n, unseen = s["crops_per_page"], s["unseen_pages"] * s["crops_per_page"]
    return {"train_pairs": s["train_pages"] * n + unseen, "unseen_pairs": unseen,
            "test_scans": s["test_pages"] * n + s["other_test_scans"]}


# ---- Input-only augmentation of training crops ---------------------------------------------------
def colour_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random global colour response, so that a model must read a scan's colour from it."""
    gamma = np.exp(rng.normal(0, 0.15) + rng.normal(0, 0.05, 3))
    white = np.clip(1 - np.abs(rng.normal(0, 0.06)) + rng.normal(0, 0.02, 3), 0.6, 1.05)
    black = np.clip(np.abs(rng.normal(0, 0.03)) + rng.normal(0, 0.01, 3), -0.02, 0.2)
    saturation, span = np.float32(np.exp(rng.normal(0, 0.12))), (white - black).astype(np.float32)
    img = img.astype(np.float32) / 255.0
    return to_uint8(_tone(img, gamma, saturation, black.astype(np.float32), span))


def input_augment(degrade_prob: float = 0.0, jitter_prob: float = 0.0):
    """``augment(clean, scan, rng) -> new scan``, degraded further by some families, then
    colour-jittered, with these probabilities; None if both are 0."""
    if degrade_prob <= 0 and jitter_prob <= 0:
        return None

    def augment(clean, scan, rng):
        if degrade_prob > 0 and rng.random() < degrade_prob:
            chosen = tuple(f for f in FAMILIES[1:] if rng.random() < 0.5) or ("colour",)
            scan = simulate_scan(scan, rng, families=chosen, strength=float(rng.uniform(0.3, 1.0)))
        if jitter_prob > 0 and rng.random() < jitter_prob:
            scan = colour_jitter(scan, rng)
        return scan
    return augment
