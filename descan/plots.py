"""Every figure of the series. Each function draws one figure, closes it (so a notebook shows it
exactly once, as the cell's value) and returns it. No torch."""
from __future__ import annotations

import cv2
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch, Rectangle

from helpers import check_image, mean_y, y_channel
from descan.files import atomic_path


def _done(fig, title=None):
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _mark_epochs(ax, df):
    """Epoch numbers on the top axis, at each epoch's last validation (at most 8 labels)."""
    ends = df.groupby("epoch")["step"].max()
    every = max(1, len(ends) // 8)
    top = ax.secondary_xaxis("top")
    top.set_xticks(list(ends), [str(e) if i % every == 0 else "" for i, e in enumerate(ends.index)])
    top.tick_params(labelsize=7)
    top.set_xlabel("epoch", fontsize=8)


def plot_history(history, path=None, title=""):
    """Training loss, validation score and PSNR against optimiser steps, from a run's history.csv
    (or its rows): best.pt starred, "do nothing" dashed, changed settings as vertical lines.
    Saved to ``path`` when given."""
    import pandas as pd
    df = pd.DataFrame(history)
    loss = df["loss_name"].iloc[-1] if "loss_name" in df and len(df) else "loss"
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (("train_loss", f"training loss ({loss})", None),
              ("val_score", "validation score (lower is better)", "do_nothing_score"),
              ("val_psnr", "validation PSNR (dB, higher is better)", "do_nothing_psnr"))
    changed = df.get("settings_changed", pd.Series(dtype=str)).fillna("") != ""
    for ax, (col, label, nothing) in zip(axes, panels):
        if len(df):
            best = df["val_score"].idxmin()
            ax.plot(df["step"], df[col], marker="o", ms=3, label="run")
            ax.plot(df["step"][best], df[col][best], "*", ms=14, color="tab:red", label="best.pt")
            if nothing in df:
                ax.axhline(df[nothing].iloc[-1], color="0.4", ls="--", lw=1, label="do nothing")
            for step in df.loc[changed, "step"]:
                ax.axvline(step, color="tab:purple", lw=1, label="settings changed")
            _mark_epochs(ax, df)
        ax.set_xlabel("optimiser step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one entry per label
    if unique:
        axes[1].legend(unique.values(), unique.keys(), fontsize=8)
    fig = _done(fig, title)
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
    return fig


def plot_leaderboard(board, baseline="do nothing", submitted=None, title=None):
    """A local_leaderboard table as bars of each entry's gain over ``baseline`` (longer is better,
    below zero is worse than doing nothing), single pass and x8 in two colours, the ``submitted``
    (entry, ensemble) outlined."""
    base = float(board.loc[board["entry"] == baseline, "score"].iloc[0])
    rows = board[board["entry"] != baseline].sort_values("score", ascending=False, kind="stable")
    gains = base - rows["score"].to_numpy(dtype=float)
    labels = [f"{e} (x8)" if x else e for e, x in zip(rows["entry"], rows["ensemble"])]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.45 * max(1, len(rows))))
    colours = ["tab:orange" if x else "tab:blue" for x in rows["ensemble"]]
    bars = ax.barh(labels, gains, color=colours)
    ax.bar_label(bars, [f"score {score:.4f}" for score in rows["score"]], padding=4, fontsize=8)
    ax.margins(x=0.35)
    ax.axvline(0, color="0.3", lw=1)
    for bar, entry, x8 in zip(bars, rows["entry"], rows["ensemble"]):
        if submitted is not None and (entry, bool(x8)) == tuple(submitted):
            bar.set(edgecolor="black", linewidth=2.5)
    handles = [Patch(color="tab:blue", label="single pass"),
               Patch(color="tab:orange", label="x8 self-ensemble")]
    if submitted is not None:
        handles.append(Patch(facecolor="white", edgecolor="black", lw=2.5, label="submitted"))
    ax.legend(handles=handles, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3,
              frameon=False)
    ax.set_xlabel(f"gain over '{baseline}' (its score {base:.4f} minus the entry's)")
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
    """``image`` on ``ax`` without ticks, under ``title``; returns imshow's image."""
    shown = ax.imshow(image, **imshow)
    ax.set(xticks=[], yticks=[])
    ax.set_title(title, fontsize=9)
    return shown


def show_pairs(rows, titles=None, zoom=None, suptitle=None, cell=3.0):
    """A grid of RGB images, one list per row (e.g. [clean, scan]), ``titles`` of the same shape.
    ``zoom``: None; a size (zoom_box of each row's first two images); or one (top, left, size) per
    row: then each image gets a boxed area and, beside it, that area enlarged."""
    rows = [list(r) for r in rows]
    ncols = max(len(r) for r in rows) * (2 if zoom is not None else 1)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(cell * ncols, cell * len(rows)),
                             squeeze=False)
    for i, images in enumerate(rows):
        if isinstance(zoom, int):
            box = zoom_box(images[0], images[min(1, len(images) - 1)], zoom)
        else:
            box = None if zoom is None else zoom[i]
        for j, img in enumerate(images):
            ax = axes[i, j * 2 if box else j]
            _show(ax, img, titles[i][j] if titles is not None else "")
            if box:
                top, left, size = box
                ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False,
                                       ec="yellow", lw=1.5))
                zoomed = img[top:top + size, left:left + size]
                _show(axes[i, j * 2 + 1], zoomed, f"zoom ({size} px)", interpolation="nearest")
                plt.setp(axes[i, j * 2 + 1].spines.values(), edgecolor="yellow")
    for ax in axes.flat:
        if not ax.images:
            ax.axis("off")
    return _done(fig, suptitle)


def show_error_maps(rows, suptitle=None, cell=3.0):
    """One row per (label, clean, other): clean, other, the signed difference other - clean (RGB
    mean; red: darker) and the Y error |Y(other) - Y(clean)| the metric is built on, on colour
    scales shared by all rows."""
    signed = [o.astype(np.float32).mean(axis=2) - c.astype(np.float32).mean(axis=2)
              for _, c, o in rows]
    yerr = [np.abs(y_channel(o).astype(np.int16) - y_channel(c)) for _, c, o in rows]
    lim = max(1.0, max(float(np.percentile(np.abs(s), 95)) for s in signed))
    top = max(1.0, max(float(np.percentile(e, 99)) for e in yerr))
    fig, axes = plt.subplots(len(rows), 4, figsize=(cell * 4 + 1, cell * len(rows)), squeeze=False)
    for i, (label, clean, other) in enumerate(rows):
        diff = abs(mean_y(other) - mean_y(clean))
        _show(axes[i, 0], clean, f"clean\nmean Y {mean_y(clean):.1f}")
        _show(axes[i, 1], other, f"{label}\nmean Y {mean_y(other):.1f}, |diff| {diff:.1f}")
        im = _show(axes[i, 2], signed[i], "difference (RGB mean, 0..255)\nred: darker, blue: "
                   f"lighter; clipped at ±{lim:.0f}", cmap="RdBu", vmin=-lim, vmax=lim)
        fig.colorbar(im, ax=axes[i, 2], fraction=0.046, pad=0.02)
        im = _show(axes[i, 3], yerr[i], f"|Y error| (0..255), clipped at {top:.0f}\npixel mean "
                   f"{yerr[i].mean():.1f}", cmap="magma", vmin=0, vmax=top)
        fig.colorbar(im, ax=axes[i, 3], fraction=0.046, pad=0.02)
    return _done(fig, suptitle)


def show_colour_histograms(groups, suptitle=None):
    """R, G and B histograms (fraction of pixels, log scale) of each group of images, e.g.
    {"clean": cleans, "scan": scans}; the first group, the reference, thin and light."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), sharey=True)
    for k, (label, images) in enumerate(groups.items()):
        hist = np.zeros((3, 256))
        for img in images:
            check_image(img)
            hist += np.stack([np.bincount(img[..., c].ravel(), minlength=256) for c in range(3)])
        hist /= max(1.0, hist[0].sum())
        for ax, h, colour in zip(axes, hist, ("red", "green", "blue")):
            ax.plot(h, color=colour, ls=["-", "--", ":", "-."][k % 4], lw=0.8 if k == 0 else 1.8,
                    alpha=0.55 if k == 0 else 1.0, label=label)
    for ax, name in zip(axes, "RGB"):
        ax.set(yscale="log", xlim=(0, 255), xlabel=f"{name} value")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("fraction of pixels")
    return _done(fig, suptitle)


def show_mean_y_scatter(df, x="mean_y_clean", y="mean_y_scan", hue="title", title=None, mark=None,
                        xlabel="mean Y of the clean image", ylabel="mean Y of the scan"):
    """Each image's mean Y (column ``y``) against the clean image's (``x``), a colour per ``hue``,
    and y = x: the score is the mean vertical distance to it. ``mark``: a boolean column whose
    rows get a black ring (e.g. the validation images)."""
    fig, ax = plt.subplots(figsize=(6, 5.8))
    for key, g in (df.groupby(hue, sort=True) if hue else [(None, df)]):
        ax.scatter(g[x], g[y], s=12, alpha=0.7, label=None if key is None else str(key))
    if mark is not None and df[mark].any():
        m = df[df[mark]]
        ax.scatter(m[x], m[y], s=40, facecolors="none", edgecolors="black", lw=0.8,
                   label="validation (held out)")
    lo = float(min(df[x].min(), df[y].min())) - 2
    hi = float(max(df[x].max(), df[y].max())) + 2
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x (score 0)")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", xlabel=f"{xlabel} (0..255)",
           ylabel=f"{ylabel} (0..255)")
    ax.legend(fontsize=8, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    return _done(fig)
