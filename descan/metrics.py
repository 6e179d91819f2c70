"""Figures beside the competition score (helpers.competition_score): pixel Y MAE and PSNR."""
import numpy as np

from helpers import check_image, competition_score, mean_y, y_channel


def pixel_y_mae(restored: np.ndarray, clean: np.ndarray) -> float:
    """Pixel-wise mean |Y(restored) - Y(clean)|, 0..255 (a diagnostic, not the score)."""
    return float(np.abs(y_channel(restored).astype(np.int16) - y_channel(clean)).mean())


def psnr(restored: np.ndarray, clean: np.ndarray) -> float:
    """PSNR in dB over the RGB uint8 pixels (peak 255); inf for identical images."""
    check_image(restored), check_image(clean)
    mse = np.mean((restored.astype(np.float64) - clean.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def image_metrics(restored: np.ndarray, clean: np.ndarray) -> dict:
    """Per-image figures: both mean Ys, their absolute difference, pixel Y MAE and PSNR."""
    my_r, my_c = mean_y(restored), mean_y(clean)
    return {"mean_y": my_r, "mean_y_clean": my_c, "abs_mean_y_err": abs(my_r - my_c),
            "pixel_y_mae": pixel_y_mae(restored, clean), "psnr": psnr(restored, clean)}


SEEN_SHARE = 483 / 500  # the leaderboard's test set: 483 of its 500 ids are training scanners'


def group_figures(per: list, groups) -> dict:
    """Score, pixel Y MAE and PSNR (capped at 100 dB) of the seen images' image_metrics (of all
    when none is), the unseen ones' as unseen_*, and with both, the leaderboard's weighted_score."""
    def figures(ps):
        return {"score": competition_score([p["mean_y"] for p in ps],
                                           [p["mean_y_clean"] for p in ps]),
                "pixel_y_mae": float(np.mean([p["pixel_y_mae"] for p in ps])),
                "psnr": float(np.mean([min(p["psnr"], 100.0) for p in ps]))}
    unseen = [p for p, g in zip(per, groups) if g == "unseen"]
    out = figures([p for p, g in zip(per, groups) if g != "unseen"] or per)
    if unseen:
        other = figures(unseen)
        out.update({"unseen_images": len(unseen), **{f"unseen_{k}": v for k, v in other.items()}})
        if len(unseen) < len(per):  # both groups: weighed as the leaderboard does
            out["weighted_score"] = SEEN_SHARE * out["score"] + (1 - SEEN_SHARE) * other["score"]
    return out
