"""Every figure of the series. Each function draws one figure, closes it (so a notebook shows it
exactly once, as the cell's value) and returns it. No torch."""
from __future__ import annotations

import cv2
import numpy as np

from helpers import check_image, mean_y, y_channel
from descan.files import atomic_path


def _done(fig):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_history(history, path=None, title=""):
    """Training loss, validation score and PSNR against optimiser steps (epoch ends on the top
    axis), with the best checkpoint starred, "do nothing" as a dashed line and changed settings
    as vertical lines, from a run's history.csv (or its rows); saved to ``path`` when given."""
    import matplotlib.pyplot as plt
    import pandas as pd
    df = pd.DataFrame(history)
    loss = df["loss_name"].iloc[-1] if "loss_name" in df and len(df) else "loss"
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (("train_loss", f"training loss ({loss})", None),
              ("val_score", "validation score (lower is better)", "do_nothing_score"),
              ("val_psnr", "validation PSNR (dB, higher is better)", "do_nothing_psnr"))
    best = df["val_score"].idxmin() if len(df) else None
    for ax, (col, label, nothing) in zip(axes, panels):
        if len(df):
            ax.plot(df["step"], df[col], marker="o", ms=3, label="run")
            ax.plot(df["step"][best], df[col][best], "*", ms=14, color="tab:red", label="best.pt")
            if nothing in df:
                ax.axhline(df[nothing].iloc[-1], color="0.4", ls="--", lw=1, label="do nothing")
            for step in df.loc[df.get("settings_changed", pd.Series(dtype=str)).fillna("") != "", "step"]:
                ax.axvline(step, color="tab:purple", lw=1, label="settings changed")
            ends = df.groupby("epoch")["step"].max()  # the last validation of each epoch
            every = max(1, len(ends) // 8)
            top = ax.secondary_xaxis("top")
            top.set_xticks(list(ends), [str(e) if i % every == 0 else "" for i, e in enumerate(ends.index)])
            top.tick_params(labelsize=7)
            top.set_xlabel("epoch", fontsize=8)
        ax.set_xlabel("optimiser step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    if handles:
        axes[1].legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
    return _done(fig)


def plot_leaderboard(board, baseline="do nothing", submitted=None, title=None):
    """A local_leaderboard table as bars of each entry's gain over ``baseline`` (its score minus
    the entry's: longer is better, below zero is worse than doing nothing), single pass and x8 in
    two colours, the ``submitted`` (entry, ensemble) outlined, the scores written beside."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    base = float(board.loc[board["entry"] == baseline, "score"].iloc[0])
    rows = board[board["entry"] != baseline].sort_values("score", ascending=False, kind="stable")
    gains = base - rows["score"].to_numpy()
    labels = [f"{e} (x8)" if x else e for e, x in zip(rows["entry"], rows["ensemble"])]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.45 * max(1, len(rows))))
    colours = ["tab:orange" if x else "tab:blue" for x in rows["ensemble"]]
    bars = ax.barh(labels, gains, color=colours)
    span = max(1e-9, float(np.abs(gains).max()) if len(gains) else 1.0)
    for bar, g, sc, e, x in zip(bars, gains, rows["score"], rows["entry"], rows["ensemble"]):
        if submitted is not None and (e, bool(x)) == tuple(submitted):
            bar.set_edgecolor("black"), bar.set_linewidth(2.5)
        ax.text(g + (0.02 if g >= 0 else -0.02) * span, bar.get_y() + bar.get_height() / 2,
                f"score {sc:.4f}", va="center", ha="left" if g >= 0 else "right", fontsize=8)
    ax.axvline(0, color="0.3", lw=1)
    lo, hi = min(0.0, float(gains.min()) if len(gains) else 0.0), max(0.0, float(gains.max()) if len(gains) else 1.0)
    ax.set_xlim(lo - 0.35 * span * (lo < 0), hi + 0.35 * span)
    handles = [Patch(color="tab:blue", label="single pass"), Patch(color="tab:orange", label="x8 self-ensemble")]
    if submitted is not None:
        handles.append(Patch(facecolor="white", edgecolor="black", linewidth=2.5, label="submitted"))
    ax.legend(handles=handles, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    ax.set_xlabel(f"gain over '{baseline}' (its score {base:.4f} minus the entry's; longer is better)")
    if title:
        fig.suptitle(title, fontsize=10)
    return _done(fig)


def zoom_box(clean: np.ndarray, scan: np.ndarray, size: int) -> tuple[int, int, int]:
    """(top, left, size) of the size x size window where the scan adds the most fine detail that
    the clean image lacks (halftone dots, grain, dust): a good place to zoom in. Deterministic."""
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


def show_pairs(rows, titles=None, zoom=None, suptitle=None, cell=3.0):
    """Show a grid of RGB images, one list of images per row (e.g. [clean, scan] or
    [clean, scan, restored]), with ``titles`` of the same shape.

    ``zoom``: None; an int size (the box is chosen per row by zoom_box from the row's first two
    images); or a list with one (top, left, size) per row. Each image then gets a neighbour column
    with its crop, enlarged with nearest-neighbour pixels, and a box marks the crop. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    rows = [list(r) for r in rows]
    ncols = max(len(r) for r in rows) * (2 if zoom is not None else 1)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(cell * ncols, cell * len(rows)), squeeze=False)
    for i, images in enumerate(rows):
        box = None
        if zoom is not None:
            box = zoom_box(images[0], images[min(1, len(images) - 1)], zoom) if isinstance(zoom, int) else zoom[i]
        for j, img in enumerate(images):
            label = titles[i][j] if titles is not None else ""
            ax = axes[i, j * 2 if box else j]
            ax.imshow(img)
            ax.set_title(label, fontsize=9)
            if box:
                top, left, size = box
                ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, ec="yellow", lw=1.5))
                zax = axes[i, j * 2 + 1]
                zax.imshow(img[top:top + size, left:left + size], interpolation="nearest")
                zax.set_title(f"zoom ({size} px)", fontsize=9)
                for spine in zax.spines.values():
                    spine.set_edgecolor("yellow")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        if not ax.images:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    return _done(fig)


def show_error_maps(rows, suptitle=None, cell=3.0):
    """One row per (label, clean, other) triple: the clean image, the other image (a scan or a
    restoration), the signed difference other - clean (mean over R, G, B: red = darker than clean,
    blue = lighter) and the Y error |Y(other) - Y(clean)| that the metric is built on. Colour scales are
    shared by all rows so they can be compared. Returns the figure."""
    import matplotlib.pyplot as plt
    signed = [other.astype(np.float32).mean(axis=2) - clean.astype(np.float32).mean(axis=2)
              for _, clean, other in rows]
    yerr = [np.abs(y_channel(other).astype(np.int16) - y_channel(clean)) for _, clean, other in rows]
    lim = max(1.0, max(float(np.percentile(np.abs(s), 95)) for s in signed))
    top = max(1.0, max(float(np.percentile(e, 99)) for e in yerr))
    fig, axes = plt.subplots(len(rows), 4, figsize=(cell * 4 + 1, cell * len(rows)), squeeze=False)
    for i, (label, clean, other) in enumerate(rows):
        my_c, my_o = mean_y(clean), mean_y(other)
        axes[i, 0].imshow(clean)
        axes[i, 0].set_title(f"clean\nmean Y {my_c:.1f}", fontsize=9)
        axes[i, 1].imshow(other)
        axes[i, 1].set_title(f"{label}\nmean Y {my_o:.1f}, |diff| {abs(my_o - my_c):.1f}", fontsize=9)
        im = axes[i, 2].imshow(signed[i], cmap="RdBu", vmin=-lim, vmax=lim)
        axes[i, 2].set_title(f"difference (RGB mean, 0..255)\nred: darker, blue: lighter; clipped at ±{lim:.0f}",
                             fontsize=9)
        fig.colorbar(im, ax=axes[i, 2], fraction=0.046, pad=0.02)
        im = axes[i, 3].imshow(yerr[i], cmap="magma", vmin=0, vmax=top)
        axes[i, 3].set_title(f"|Y error| (0..255), clipped at {top:.0f}\npixel mean {yerr[i].mean():.1f}", fontsize=9)
        fig.colorbar(im, ax=axes[i, 3], fraction=0.046, pad=0.02)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle)
    return _done(fig)


def show_colour_histograms(groups, suptitle=None):
    """Histograms of R, G and B (fraction of pixels per value, log scale) for each group of images,
    e.g. {"clean": cleans, "scan": scans}; the first group (the reference) is drawn thin and light.
    Returns the figure."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), sharey=True)
    styles = ["-", "--", ":", "-."]
    for k, (label, images) in enumerate(groups.items()):
        hist = np.zeros((3, 256))
        for img in images:
            check_image(img)
            for c in range(3):
                hist[c] += np.bincount(img[..., c].ravel(), minlength=256)
        hist /= max(1.0, hist[0].sum())
        for c, (ax, colour) in enumerate(zip(axes, ("red", "green", "blue"))):
            ax.plot(hist[c], color=colour, ls=styles[k % len(styles)], lw=0.8 if k == 0 else 1.8,
                    alpha=0.55 if k == 0 else 1.0, label=label)
    for ax, name in zip(axes, ("R", "G", "B")):
        ax.set_yscale("log")
        ax.set_xlim(0, 255)
        ax.set_xlabel(f"{name} value")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("fraction of pixels")
    if suptitle:
        fig.suptitle(suptitle)
    return _done(fig)


def show_mean_y_scatter(df, x="mean_y_clean", y="mean_y_scan", hue="title", title=None, mark=None,
                        xlabel="mean Y of the clean image", ylabel="mean Y of the scan"):
    """Scatter of each image's mean Y (``y`` column) against the clean image's (``x``), one colour
    per ``hue`` value, with the line y = x: the metric is the mean vertical distance to it.
    ``mark``: a boolean column whose True rows get a black ring (e.g. the validation images).
    Returns the figure."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 5.8))
    groups = df.groupby(hue, sort=True) if hue else [("", df)]
    for key, g in groups:
        ax.scatter(g[x], g[y], s=12, alpha=0.7, label=str(key) if hue else None)
    if mark is not None and df[mark].any():
        m = df[df[mark]]
        ax.scatter(m[x], m[y], s=40, facecolors="none", edgecolors="black", lw=0.8, label="validation (held out)")
    lo = float(min(df[x].min(), df[y].min())) - 2
    hi = float(max(df[x].max(), df[y].max())) + 2
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x (score 0)")
    ax.set_xlim(lo, hi), ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel(f"{xlabel} (0..255)"), ax.set_ylabel(f"{ylabel} (0..255)")
    ax.legend(fontsize=8, loc="upper left")
    if title:
        ax.set_title(title, fontsize=10)
    return _done(fig)
