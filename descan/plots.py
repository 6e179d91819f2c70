"""The notebooks' figures. Each function draws one figure, closes it (so a notebook shows it once,
as the cell's value) and returns it. No torch."""
import cv2
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch, Rectangle

from helpers import mean_y, y_channel
from descan.files import atomic_path


def _done(fig, title=None):
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_history(df, path=None, title=""):
    """Training loss, validation score and PSNR against optimiser steps, from a run's history.csv
    as a DataFrame, best.pt starred, "do nothing" dashed; saved to ``path`` when given."""
    best = df["val_score"].idxmin()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = {"train_loss": "training loss", "val_score": "validation score (lower is better)",
              "val_psnr": "validation PSNR (dB, higher is better)"}
    for ax, (col, label) in zip(axes, panels.items()):
        ax.plot(df["step"], df[col], marker="o", ms=3, label="run")
        ax.plot(df["step"][best], df[col][best], "*", ms=14, color="tab:red", label="best.pt")
        if col != "train_loss":  # do_nothing_score, do_nothing_psnr
            nothing = df[col.replace("val_", "do_nothing_")].iloc[-1]
            ax.axhline(nothing, color="0.4", ls="--", lw=1, label="do nothing")
        ax.set(xlabel="optimiser step", title=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig = _done(fig, title)
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
    return fig


def plot_leaderboard(board, submitted, title=None):
    """A local_leaderboard table as bars of each entry's gain over "do nothing" (below zero: worse
    than it), single pass and x8 in two colours, the ``submitted`` (entry, ensemble) outlined."""
    nothing = board["entry"] == "do nothing"
    base = float(board.loc[nothing, "score"].iloc[0])
    rows = board[~nothing].sort_values("score", ascending=False, kind="stable")
    labels = [f"{e} (x8)" if x else e for e, x in zip(rows["entry"], rows["ensemble"])]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.45 * max(1, len(rows))))
    bars = ax.barh(labels, base - rows["score"].to_numpy(dtype=float),
                   color=["tab:orange" if x else "tab:blue" for x in rows["ensemble"]])
    ax.bar_label(bars, [f"score {score:.4f}" for score in rows["score"]], padding=4, fontsize=8)
    ax.margins(x=0.35)
    ax.axvline(0, color="0.3", lw=1)
    label = f"{submitted[0]} (x8)" if submitted[1] else submitted[0]
    bars[labels.index(label)].set(edgecolor="black", linewidth=2.5)
    handles = [Patch(color="tab:blue", label="single pass"),
               Patch(color="tab:orange", label="x8 self-ensemble"),
               Patch(facecolor="white", edgecolor="black", lw=2.5, label="submitted")]
    ax.legend(handles=handles, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3,
              frameon=False)
    ax.set_xlabel(f"gain over 'do nothing' (its score {base:.4f} minus the entry's)")
    return _done(fig, title)


def zoom_box(clean: np.ndarray, scan: np.ndarray, size: int) -> tuple[int, int, int]:
    """(top, left, size) of the size x size window where the scan adds the most fine detail that
    the clean image lacks (halftone dots, grain, dust): a good place to zoom in."""
    def fine(img):
        y = y_channel(img).astype(np.float32)
        return np.abs(y - cv2.GaussianBlur(y, (0, 0), 2.0))
    h, w = clean.shape[:2]
    size = min(size, h, w)
    gain = cv2.boxFilter(fine(scan) - fine(clean), -1, (size, size), borderType=cv2.BORDER_CONSTANT)
    r = size // 2  # keep the whole window inside the image
    inner = gain[r:h - size + r + 1, r:w - size + r + 1]
    top, left = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(top), int(left), size


def _show(ax, image, title, **imshow):
    """``image`` on ``ax`` without ticks, under ``title``."""
    ax.imshow(image, **imshow)
    ax.set(xticks=[], yticks=[])
    ax.set_title(title, fontsize=9)


def show_pairs(rows, titles, zoom=None, suptitle=None, cell=3.0):
    """A grid of RGB images, one list per row (e.g. [clean, scan]), ``titles`` of the same shape.
    ``zoom``: None; a size (zoom_box of each row's first two images); or one (top, left, size) per
    row: then each image gets a boxed area and, beside it, that area enlarged."""
    step = 1 if zoom is None else 2
    fig, axes = plt.subplots(len(rows), len(rows[0]) * step, squeeze=False,
                             figsize=(cell * len(rows[0]) * step, cell * len(rows)))
    for i, images in enumerate(rows):
        box = zoom_box(images[0], images[1], zoom) if isinstance(zoom, int) else zoom and zoom[i]
        for j, img in enumerate(images):
            ax = axes[i, j * step]
            _show(ax, img, titles[i][j])
            if box:
                top, left, size = box
                ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False,
                                       ec="yellow", lw=1.5))
                _show(axes[i, j * step + 1], img[top:top + size, left:left + size],
                      f"zoom ({size} px)", interpolation="nearest")
    return _done(fig, suptitle)


def show_error_maps(rows, suptitle=None, cell=3.0):
    """One row per (label, clean, other): clean, other, the signed difference other - clean (RGB
    mean) and the Y error |Y(other) - Y(clean)| the metric is built on; one scale for all rows."""
    signed = [o.mean(axis=2) - c.mean(axis=2) for _, c, o in rows]
    yerr = [np.abs(y_channel(o).astype(np.int16) - y_channel(c)) for _, c, o in rows]
    lim = max(1.0, max(float(np.percentile(np.abs(s), 95)) for s in signed))
    top = max(1.0, max(float(np.percentile(e, 99)) for e in yerr))
    fig, axes = plt.subplots(len(rows), 4, figsize=(cell * 4, cell * len(rows)), squeeze=False)
    for i, (label, clean, other) in enumerate(rows):
        _show(axes[i, 0], clean, f"clean\nmean Y {mean_y(clean):.1f}")
        _show(axes[i, 1], other, f"{label}\nmean Y {mean_y(other):.1f}")
        _show(axes[i, 2], signed[i], f"difference, red: darker\n(RGB mean, clipped at ±{lim:.0f})",
              cmap="RdBu", vmin=-lim, vmax=lim)
        _show(axes[i, 3], yerr[i], f"|Y error|, mean {yerr[i].mean():.1f}\n(clipped at {top:.0f})",
              cmap="magma", vmin=0, vmax=top)
    return _done(fig, suptitle)


def show_colour_histograms(groups, suptitle=None):
    """R, G and B histograms (fraction of pixels, log scale) of each group of images, e.g.
    {"clean": cleans, "scan": scans}."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), sharey=True)
    for k, (label, images) in enumerate(groups.items()):
        hist = np.zeros((3, 256))
        for img in images:
            hist += np.stack([np.bincount(img[..., c].ravel(), minlength=256) for c in range(3)])
        for ax, h, colour in zip(axes, hist / max(1.0, hist[0].sum()), ("red", "green", "blue")):
            ax.plot(h, color=colour, ls=["-", "--", ":", "-."][k % 4], label=label)
    for ax, name in zip(axes, "RGB"):
        ax.set(yscale="log", xlim=(0, 255), xlabel=f"{name} value")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("fraction of pixels")
    return _done(fig, suptitle)


def show_mean_y_scatter(df, mark=None, title=None):
    """Each image's mean Y, scan (column mean_y_scan) against clean (mean_y_clean), a colour per
    title, and y = x: the score is the mean vertical distance to it. ``mark``: a boolean column
    whose rows get a black ring (e.g. the validation images)."""
    x, y = "mean_y_clean", "mean_y_scan"
    fig, ax = plt.subplots(figsize=(6, 5.8))
    for key, g in df.groupby("title", sort=True):
        ax.scatter(g[x], g[y], s=12, alpha=0.7, label=str(key))
    if mark is not None and df[mark].any():
        ax.scatter(df[df[mark]][x], df[df[mark]][y], s=40, facecolors="none", edgecolors="black",
                   lw=0.8, label="validation (held out)")
    lo, hi = float(df[[x, y]].min().min()) - 2, float(df[[x, y]].max().max()) + 2
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x (score 0)")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", xlabel="mean Y of the clean image",
           ylabel="mean Y of the scan")
    ax.legend(fontsize=8, loc="upper left")
    return _done(fig, title)
