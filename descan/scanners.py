"""Scanner profiles and the print-and-scan simulator that makes the demo's scans (and degrades
training inputs further). No torch here.
"""
from __future__ import annotations

import cv2
import numpy as np

from helpers import check_image, to_uint8

# A scanner is a colour response (tone curve per channel, saturation, white and black points),
# optics (blur, sensor noise, JPEG quality), the print it sees (halftone period) and how often it
# streaks. The demo's training pairs come from the SEEN scanners; validation also has pairs from
# the UNSEEN_VAL ones (scanner03_000 ..., always held out); the test set adds scans from the
# TEST ones (scanner01_000 ...) that nothing in training or validation uses, as the real one does.
SCANNERS = {
    "flatbed_warm": dict(gamma=(0.95, 1.0, 1.1), saturation=0.85,
                         white=(0.96, 0.94, 0.88), black=(0.06, 0.05, 0.04),
                         blur=0.7, noise=2.0, period=5.0, streaks=0.3, jpeg=92),
    "flatbed_cool": dict(gamma=(1.1, 1.05, 0.95), saturation=1.1,
                         white=(0.92, 0.95, 0.98), black=(0.03, 0.04, 0.06),
                         blur=0.9, noise=3.0, period=6.0, streaks=0.6, jpeg=85),
    "sheetfed_dark": dict(gamma=(1.3, 1.25, 1.2), saturation=0.75,
                          white=(0.86, 0.85, 0.82), black=(0.09, 0.08, 0.08),
                          blur=1.0, noise=3.5, period=4.5, streaks=1.0, jpeg=82),
    "office_bright": dict(gamma=(0.8, 0.82, 0.85), saturation=1.25,
                          white=(1.0, 0.99, 0.96), black=(0.02, 0.02, 0.03),
                          blur=0.6, noise=1.5, period=6.5, streaks=0.2, jpeg=94),
    "aged_yellow": dict(gamma=(1.05, 1.1, 1.35), saturation=0.7,
                        white=(0.95, 0.92, 0.8), black=(0.08, 0.07, 0.05),
                        blur=0.8, noise=2.5, period=5.5, streaks=0.5, jpeg=88),
    "magenta_cast": dict(gamma=(1.0, 1.15, 0.95), saturation=1.0,
                         white=(0.97, 0.9, 0.95), black=(0.04, 0.05, 0.04),
                         blur=0.75, noise=2.2, period=5.2, streaks=0.4, jpeg=90),
}
SEEN_SCANNERS = ("flatbed_warm", "flatbed_cool")  # the demo's training pairs
UNSEEN_VAL_SCANNERS = {3: "sheetfed_dark", 4: "office_bright"}  # scanner03_*, 04_*: validation
TEST_SCANNERS = {1: "aged_yellow", 2: "magenta_cast"}  # scanner01_*, scanner02_*: test scans only


def scanner_variant(profile: dict, rng: np.random.Generator) -> dict:
    """One scan's settings: the profile varied a little (the same scanner on another day)."""
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
    black = np.asarray(scanner["black"], np.float32)
    white = np.asarray(scanner["white"], np.float32)
    return black + (white - black) * img


# ---- The print-and-scan simulator: one function per family of degradation ---------------------
def _halftone(img, rng, strength, scanner):
    """CMYK halftone: each ink screened with rotated round dots (classic 15/75/0/45 degrees), of
    the scanner's period or a random one; ``strength`` (at most 1) mixes it in."""
    period = scanner["period"] * rng.uniform(0.95, 1.05) if scanner else rng.uniform(4.0, 7.0)
    rgb = (img * 255).astype(np.uint8).astype(np.float32) / 255.0
    k = 1.0 - rgb.max(axis=2)
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
    fibre_noise = rng.standard_normal((h, w)).astype(np.float32)
    fibres = cv2.GaussianBlur(fibre_noise, (0, 0), sigmaX=6, sigmaY=0.7)
    tex = 1 + strength * (0.025 * grain + 0.04 * fibres)
    for _ in range(rng.integers(0, 3)):
        line = np.zeros((h, w), np.float32)
        p0, p1 = rng.integers(0, s, 2), rng.integers(0, s, 2)
        cv2.line(line, (int(p0[0]), 0), (int(p1[0]), h - 1), 1.0, max(1, s // 100))
        tex -= strength * 0.06 * cv2.GaussianBlur(line, (0, 0), max(1.0, s / 60))
    return img * tex[..., None]


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


def _stains_and_dust(img, rng, strength):
    """Stains (soft brownish discs) and dust (small dark dots)."""
    h, w = img.shape[:2]
    s = min(h, w)
    tint = np.array([0.85, 0.75, 0.55], np.float32)
    for _ in range(int(rng.integers(1, 4) * strength)):
        stain = np.zeros((h, w), np.float32)
        c = rng.integers(0, s, 2)
        cv2.circle(stain, (int(c[0]), int(c[1])), int(rng.integers(s // 30, s // 8)), 1.0, -1)
        stain = cv2.GaussianBlur(stain, (0, 0), s / 40)[..., None]
        img = img * (1 - 0.3 * stain) + tint * img * 0.3 * stain
    dots = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(5, 30) * strength * (s / 256) ** 2)):
        c = rng.integers(0, s, 2)
        radius = int(rng.integers(0, max(1, s // 150) + 1))
        cv2.circle(dots, (int(c[0]), int(c[1])), radius, 255, -1)
    dust = cv2.GaussianBlur(dots, (0, 0), 0.7).astype(np.float32)[..., None] / 255.0
    return img * (1 - 0.8 * dust)


def _streaks(img, rng, strength, rate):
    """Scanner line streaks ("laser" lines): mostly columns, some rows; ``rate`` is the
    scanner's streak rate."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(1, 4) * strength * rate)):
        color = rng.uniform(0.3, 1.0, 3).astype(np.float32)
        a = rng.uniform(0.2, 0.5)
        if rng.random() < 0.7:
            i = int(rng.integers(0, w))
            img[:, i:i + 1] = img[:, i:i + 1] * (1 - a) + color * a
        else:
            i = int(rng.integers(0, h))
            img[i:i + 1] = img[i:i + 1] * (1 - a) + color * a
    return img


def _scanner_optics(img, rng, scanner):
    """Blur, sensor noise and JPEG compression: the scanner's, or random ones. RGB uint8."""
    blur = scanner["blur"] if scanner else rng.uniform(0.5, 1.0)
    noise = scanner["noise"] if scanner else rng.uniform(1.5, 4.0)
    img = cv2.GaussianBlur(np.clip(img, 0, 1), (0, 0), blur)
    img = to_uint8(img + rng.normal(0, noise / 255.0, img.shape).astype(np.float32))
    quality = scanner["jpeg"] + rng.integers(-2, 3) if scanner else rng.integers(80, 96)
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, int(np.clip(quality, 50, 100))]
    _, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), jpeg)
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def simulate_scan(clean: np.ndarray, rng: np.random.Generator, back: np.ndarray | None = None,
                  families=("halftone", "bleed", "colour", "texture", "external", "internal"),
                  strength: float = 1.0, scanner: dict | None = None) -> np.ndarray:
    """Print and scan an RGB uint8 page: returns a new degraded RGB uint8 image.

    Families: 'halftone' CMYK dot screens; 'bleed' the mirrored back page (``back``, or a blurred
    copy of the page itself) showing through; 'colour' tone curve, saturation and colour cast;
    'texture' paper grain and wrinkles; 'external' stains and dust; 'internal' scanner streaks.
    Scanner blur, sensor noise and JPEG always follow. ``strength`` scales every effect (0 leaves
    only the scanner). ``scanner`` (a SCANNERS profile, usually through scanner_variant) fixes the
    colour response, screen, optics and streak rate; without one they are drawn at random.
    """
    check_image(clean, "clean page")
    img = clean.astype(np.float32) / 255.0
    if "bleed" in families:  # the mirrored back page shows through: its ink darkens the paper
        src = back if back is not None else cv2.GaussianBlur(clean, (0, 0), 3)
        mirrored = cv2.resize(src[:, ::-1], clean.shape[1::-1]).astype(np.float32) / 255.0
        alpha = rng.uniform(0.05, 0.15) * strength
        img = img * (1 - alpha + alpha * cv2.GaussianBlur(mirrored, (0, 0), 1.5))
    if "halftone" in families and strength > 0:
        img = _halftone(img, rng, strength, scanner)
    if "texture" in families:
        img = _paper_texture(img, rng, strength)
    if "colour" in families and scanner is not None:
        img = colour_response(img, scanner)
    elif "colour" in families:
        img = _random_colour(img, rng, strength)
    if "external" in families:
        img = _stains_and_dust(img, rng, strength)
    if "internal" in families:
        img = _streaks(img, rng, strength, scanner["streaks"] if scanner else 1.0)
    return _scanner_optics(img, rng, scanner)
