"""The notebooks' figures: each function draws one, closes it (shown once, as the cell's value)."""
import cv2
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch, Rectangle

from helpers import y_channel
from descan.files import atomic_path


def _done(fig, title=None):
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_history(df, path=None, title=""):
    """A run's history.csv (a DataFrame) by optimiser step, best.pt starred; saved to ``path``."""
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
    """A local_leaderboard: each entry's gain over "do nothing" as a bar, ``submitted`` outlined."""
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
