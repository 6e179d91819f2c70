"""From restored images to the file uploaded to Kaggle, and a local leaderboard on validation."""
import csv
import math
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import cv2

from helpers import DataError, by_stem, examples, list_images, read_rgb
from descan.data import scanner_group
from descan.files import atomic_path, progress_bar, write_image
from descan.metrics import group_figures, image_metrics

CSV_HEADER = ("Image File", "Y Channel Value")


def csv_mean_y(png_path) -> float:
    """The mean Y of a saved image, computed as the course's code does (cv2.imread, BGR2YUV)."""
    bgr = cv2.imread(str(png_path))
    if bgr is None:
        raise DataError(f"cannot read {png_path} with OpenCV; save it again")
    return float(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)[:, :, 0].mean())


def submission_rows(restored_dir, constant_ok=False) -> list[tuple[str, float]]:
    """(id, mean Y) of every PNG in ``restored_dir`` but hidden ones ('._x.png'), sorted by id;
    DataError when all have the same mean Y (a model whose output is constant)."""
    files = sorted(p for p in Path(restored_dir).glob("*.png") if not p.name.startswith("."))
    if not files:
        raise DataError(f"no restored PNGs in {restored_dir}; restore the test set first")
    rows = [(path.stem, csv_mean_y(path)) for path in files]
    if len(rows) > 1 and len({value for _, value in rows}) == 1 and not constant_ok:
        raise DataError(f"every restored image in {restored_dir} has the same mean Y: the model's "
                        "output does not depend on its input (training diverged or collapsed). "
                        "Look at its history, train it again (e.g. with a lower lr), or choose "
                        "another checkpoint (DESCAN_CHECKPOINT). No CSV was written.")
    return rows


def validate_submission(rows, expected_ids) -> None:
    """ValueError unless ``rows`` (in any order) hold one finite value in [0, 255] per id."""
    def is_value(v):  # text with underscores is refused: Python reads '1_0' as 10
        try:
            return not (isinstance(v, str) and "_" in v) and 0.0 <= float(v) <= 255.0
        except (TypeError, ValueError):
            return False
    ids, expected = [r[0] for r in rows], set(expected_ids)
    missing, extra = sorted(expected - set(ids)), sorted(set(ids) - expected)
    problems = [f"{what}: {examples(found)}" for what, found in (
        ("duplicate ids", sorted(i for i, n in Counter(ids).items() if n > 1)),
        (f"{len(missing)} test images have no row", missing),
        (f"{len(extra)} rows are not test images", extra),
        ("values not finite numbers in [0, 255] (no underscores)",
         [f"{i}={v}" for i, v in rows if not is_value(v)])
    ) if found]
    if problems:
        raise ValueError("invalid submission: " + "; ".join(problems))


def write_submission(rows, path, expected_ids) -> Path:
    """Validate, then write the CSV atomically (UTF-8, the header, the rows sorted by id)."""
    validate_submission(rows, expected_ids)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(CSV_HEADER)
            for name, value in sorted(rows, key=lambda r: r[0]):
                w.writerow([name, repr(float(value))])
    return Path(path)


def read_submission(path, expected_ids=None) -> list[tuple[str, float]]:
    """The rows of a submission CSV, checked (else ValueError naming the file): UTF-8, the header,
    two fields a row, ids in sorted order, and validate_submission's checks (of ``expected_ids``
    when given, else of the file's own ids)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # a byte-order mark is fine
            lines = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at "
                         f"offset {e.start}); save it as UTF-8 (plain ASCII is fine)") from None
    while lines and not "".join(lines[-1]).strip():  # blank lines at the end
        lines.pop()
    if not lines or tuple(lines[0]) != CSV_HEADER:
        raise ValueError(f"{path}: header must be {','.join(CSV_HEADER)!r}, "
                         f"got {lines[0] if lines else None}")
    rows = lines[1:]
    for n, row in enumerate(rows, start=2):
        if len(row) != 2:
            blank = "" if "".join(row).strip() else " (a blank line inside the file)"
            raise ValueError(f"{path}: row {n} has {len(row)} fields, expected 2{blank}")
    late = [n for n, (a, b) in enumerate(zip(rows, rows[1:]), start=3) if b[0] < a[0]]
    if late:
        raise ValueError(f"{path}: the ids are not in sorted order ({len(late)} rows out of order; "
                         f"first: row {late[0]} {rows[late[0] - 2][0]!r} comes after row "
                         f"{late[0] - 1} {rows[late[0] - 3][0]!r}). write_submission sorts them.")
    try:
        validate_submission(rows, [r[0] for r in rows] if expected_ids is None else expected_ids)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return [(name, float(value)) for name, value in rows]


def restore_folder(model, scan_paths, out_dir, device=None, images_per_pass=8, ensemble=False,
                   show_progress=True, chunk=None) -> list[Path]:
    """Restore the scans into out_dir/<stem>.png, its only files, ``chunk`` at a time, written to
    ``.<name>.new`` beside it, which then replaces it: a failure leaves the old folder."""
    from descan.inference import restore
    scan_paths, out_dir = [Path(p) for p in scan_paths], Path(out_dir)
    if not scan_paths:
        raise DataError(f"no scans to restore into {out_dir}: the list of scans is empty. If it "
                        "comes from an empty test folder, run notebook 01 again to unpack it.")
    by_stem(scan_paths, "the scans to restore")  # two scans may not share a name
    if any(p.parent.resolve() == out_dir.resolve() for p in scan_paths):
        raise DataError(f"{out_dir} holds the scans themselves; restore into another folder")
    new, old = out_dir.parent / f".{out_dir.name}.new", out_dir.parent / f".{out_dir.name}.old"
    if not out_dir.exists() and old.is_dir():  # a swap cut short: the previous folder comes back
        old.rename(out_dir)
    folders = sorted(p.name for p in out_dir.glob("[!.]*") if p.is_dir())
    if folders:
        raise DataError(f"{out_dir} holds folders ({examples(folders)}), so it is not a folder of "
                        "restored images; restore into a folder of its own (nothing was changed).")
    shutil.rmtree(new, ignore_errors=True)  # left by an earlier run cut short
    new.mkdir(parents=True)
    chunk = max(1, chunk or 4 * images_per_pass)
    try:
        for i in progress_bar(range(0, len(scan_paths), chunk), f"restoring {chunk} scans at a "
                              f"time{' (x8)' if ensemble else ''}", enabled=show_progress):
            paths = scan_paths[i:i + chunk]
            images = restore(model, [read_rgb(p) for p in paths], device, images_per_pass, ensemble)
            for p, img in zip(paths, images):
                write_image(new / f"{p.stem}.png", img)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if out_dir.exists():  # the swap: two renames; a kill between them is undone by the next run
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    new.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return [out_dir / f"{p.stem}.png" for p in scan_paths]


def make_submission(restored_dir, test_scans, csv_path):
    """Write the CSV of the restored PNGs, a row per test scan; return it, read back, as a table."""
    import pandas as pd
    expected = sorted(Path(p).stem for p in test_scans)
    if not expected:
        raise DataError("the list of test scans is empty; run notebook 01 first")
    write_submission(submission_rows(restored_dir), csv_path, expected)
    return pd.DataFrame(read_submission(csv_path, expected), columns=list(CSV_HEADER))


def score_restored(restored_dir, clean) -> dict:
    """metrics.group_figures of restored PNGs by the CSV's mean Ys. ``clean``: validation pairs,
    one PNG each; or a folder with a clean image of each PNG's name (others are ignored)."""
    rows = submission_rows(restored_dir, constant_ok=True)
    if isinstance(clean, (str, Path)):
        found = by_stem(list_images(clean), clean)
        missing = [name for name, _ in rows if name not in found]
        if missing:
            raise DataError(f"{len(missing)} restored images have no clean image in {clean}: "
                            f"{examples(missing)}")
    else:
        found = {p.name: p.clean for p in clean}
        validate_submission(rows, list(found))
    per = []
    for name, value in rows:
        figures = image_metrics(read_rgb(Path(restored_dir) / f"{name}.png"), read_rgb(found[name]))
        per.append({**figures, "mean_y": value, "mean_y_clean": csv_mean_y(found[name])})
    return {"images": len(per), **group_figures(per, [scanner_group(n) for n, _ in rows])}


def local_leaderboard(models, pairs, out_root, device=None, images_per_pass=8, x8=(),
                      show_progress=True):
    """A validation estimate of the leaderboard by the submission's own path, best first: each
    {entry: model} (and each entry in ``x8``, with x8) restored into out_root/<entry>[_x8]."""
    import pandas as pd
    rows = []
    for name, ensemble in [(name, False) for name in models] + [(name, True) for name in x8]:
        folder = Path(out_root) / (re.sub(r"[^\w.-]+", "_", name) + ("_x8" if ensemble else ""))
        t0 = time.time()
        restore_folder(models[name], [p.scan for p in pairs], folder, device, images_per_pass,
                       ensemble, show_progress)
        seconds = round(time.time() - t0, 1)
        rows.append({"entry": name, "ensemble": ensemble, **score_restored(folder, pairs),
                     "seconds": seconds, "folder": folder})
    return pd.DataFrame(rows).sort_values(["score", "entry"], kind="stable").reset_index(drop=True)


def leaderboard_candidates(found, chosen, model, device=None):
    """({entry: model}, the chosen one's entry) for local_leaderboard: "do nothing", the other
    usable checkpoints of ``found`` by run, and ``model``, the ``chosen`` one's."""
    from descan.checkpoints import model_from_checkpoint
    from descan.models import Identity
    mine = chosen["path"].resolve()
    out = {"do nothing": Identity(), **{e["run"]: model_from_checkpoint(e["path"], device)
                                        for e in found if e["error"] is None
                                        and e["path"].resolve() != mine}}
    name = chosen["run"] + (" (DESCAN_CHECKPOINT)" if chosen["run"] in out else "")
    return {**out, name: model}, name


def leaderboard_notes(board, chosen: str, asked=False) -> list[str]:
    """The chosen entry's estimate against doing nothing, and a better entry if there is one.
    DataError when it does worse than doing nothing, unless it was ``asked`` for by name."""
    nothing = float(board.loc[(board["entry"] == "do nothing"), "score"].iloc[0])
    mine, best = board[board["entry"] == chosen].iloc[0], board.iloc[0]  # the board is sorted
    if mine["score"] > nothing and not asked:
        raise DataError(f"{chosen} scores {mine['score']:.4f} on the validation images, worse than "
                        f"doing nothing ({nothing:.4f}): its submission would score worse than "
                        "the scans themselves (a diverged or too short training? see its "
                        "history). Train it further, choose another checkpoint, or set "
                        f"DESCAN_CHECKPOINT={chosen.split()[0]} to submit it anyway.")
    weighted = mine.get("weighted_score", math.nan)
    notes = [f"validation estimate of {chosen}: {mine['score']:.4f} "
             f"({'x8' if mine['ensemble'] else 'single pass'})   do nothing: {nothing:.4f}"
             + ("" if math.isnan(weighted) else f"   weighted as the leaderboard: {weighted:.4f}")]
    if best["entry"] == "do nothing":
        notes.append("note: on these images no checkpoint beats doing nothing; the models need "
                     "more (or better) training before a submission is worth one of the day's 3")
    elif best["entry"] != chosen:
        notes.append(f"note: on these images {best['entry']}{' (x8)' if best['ensemble'] else ''} "
                     f"scores better ({best['score']:.4f}); set DESCAN_CHECKPOINT={best['entry']} "
                     "to submit with it")
    return notes


def decide_ensemble(board, entry: str, ensemble="auto", min_gain: float = 0.05):
    """(use x8, why) for the test set. ``ensemble``: True or False forces it; "auto" uses x8 when
    it beats the single pass on validation by more than ``min_gain`` (less is noise)."""
    if ensemble not in ("auto", True, False):
        raise ValueError(f"ensemble={ensemble!r} must be 'auto', True or False")
    mine = board[board["entry"] == entry]
    single, x8 = (float(mine.loc[mine["ensemble"] == e, "score"].min()) for e in (False, True))
    gain = single - x8  # nan when a row is missing: then "auto" keeps the single pass
    use = bool(gain > min_gain) if ensemble == "auto" else ensemble
    how = f"x8 is used for a gain above {min_gain:g}" if ensemble == "auto" else "as asked"
    measured = ("x8 not measured" if math.isnan(gain) else
                f"x8 gains {gain:+.4f} on validation: {single:.4f} -> {x8:.4f}")
    return use, f"{'x8 self-ensemble' if use else 'single pass'} ({measured}; {how})"
