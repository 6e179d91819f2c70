"""From restored images to the file uploaded to Kaggle, and a local leaderboard on validation.

The CSV is computed exactly as the course's code does: each restored image saved as a uint8 PNG,
read back with OpenCV, its mean Y (COLOR_BGR2YUV channel 0) written under the header
``Image File,Y Channel Value``, one row per test scan in sorted file-name order. torch is only
imported by the functions that run a model.
"""
from __future__ import annotations

import csv
import math
import re
import time
from pathlib import Path

import cv2
import numpy as np

from helpers import DataError, by_stem, competition_score, examples, list_images, read_rgb
from descan.metrics import pixel_y_mae, psnr
from descan.files import progress_bar, write_png, atomic_path
from descan.data import scanner_group

CSV_HEADER = ("Image File", "Y Channel Value")


def csv_mean_y(png_path) -> float:
    """Mean Y of a saved image, computed exactly as the course's code does (cv2.imread, BGR2YUV)."""
    bgr = cv2.imread(str(png_path))
    if bgr is None:
        raise DataError(f"cannot read {png_path} with OpenCV; save it again")
    return float(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)[:, :, 0].mean())


def submission_rows(restored_dir) -> list[tuple[str, float]]:
    """(id, mean Y) for every PNG in ``restored_dir``, in sorted file-name order; hidden files
    (e.g. macOS's '._<name>.png') are skipped, as helpers.list_images skips them."""
    files = sorted(p for p in Path(restored_dir).glob("*.png") if not p.name.startswith("."))
    if not files:
        raise DataError(f"no restored PNGs in {restored_dir}; restore the test set first")
    return [(p.stem, csv_mean_y(p)) for p in files]


def validate_submission(rows, expected_ids) -> None:
    """Raise ValueError unless ``rows`` has exactly one finite value in [0, 255] per expected id.

    Values may be numbers or the text of a plain decimal number; text with an underscore is
    refused ('1_0': Python reads it as 10, other readers refuse it). The order of the rows is not
    checked here: write_submission sorts them and read_submission checks the order of a file."""
    ids = [r[0] for r in rows]
    expected = set(expected_ids)
    problems = []
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        problems.append(f"duplicate ids: {examples(dup)}")
    missing, extra = sorted(expected - set(ids)), sorted(set(ids) - expected)
    if missing:
        problems.append(f"{len(missing)} test images have no row: {examples(missing)}")
    if extra:
        problems.append(f"{len(extra)} rows are not test images: {examples(extra)}")
    bad = []
    for i, v in rows:
        try:
            if isinstance(v, str) and "_" in v:
                raise ValueError(v)
            ok = math.isfinite(float(v)) and 0.0 <= float(v) <= 255.0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bad.append(f"{i}={v}")
    if bad:
        problems.append(f"values not finite numbers in [0, 255]: {examples(bad)}")
    if len(rows) != len(expected) and not problems:
        problems.append(f"{len(rows)} rows for {len(expected)} test images")
    if problems:
        raise ValueError("invalid submission: " + "; ".join(problems))


def write_submission(rows, path, expected_ids) -> Path:
    """Validate, then write the CSV atomically (UTF-8): header 'Image File,Y Channel Value', the rows
    sorted by id. A full disk or a read-only folder raises OSError saying so (files.atomic_path)."""
    validate_submission(rows, expected_ids)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(CSV_HEADER)
            for name, value in sorted(rows, key=lambda r: r[0]):
                w.writerow([name, repr(float(value))])
    return Path(path)


def read_submission(path, expected_ids=None) -> list[tuple[str, float]]:
    """Read a submission CSV back; ValueError naming the file and the first offending row unless:
    it is UTF-8 text (a byte-order mark is allowed) with the header, two fields a row, each value
    a number written without underscores, the ids in sorted order (as write_submission writes
    them); and, when ``expected_ids`` is given, the rows pass validate_submission. Blank lines at
    the end of the file are ignored."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset {e.start} "
                         "cannot be decoded); save it as UTF-8 (plain ASCII is fine)") from None
    while lines and not "".join(lines[-1]).strip():  # blank lines at the end
        lines.pop()
    header = lines[0] if lines else None
    if tuple(header or ()) != CSV_HEADER:
        raise ValueError(f"{path}: header must be {','.join(CSV_HEADER)!r}, got {header}")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if len(line) != 2:
            raise ValueError(f"{path}: row {n} has {len(line)} fields, expected 2"
                             + (" (a blank line inside the file)" if not "".join(line).strip() else ""))
        try:
            if "_" in line[1]:
                raise ValueError(line[1])
            rows.append((line[0], float(line[1])))
        except ValueError:
            hint = " (no underscores in numbers: Python reads '1_0' as 10, other readers refuse it)" \
                if "_" in line[1] else ""
            raise ValueError(f"{path}: row {n} value {line[1]!r} is not a number{hint}") from None
    ids = [r[0] for r in rows]
    unsorted = [n for n, (a, b) in enumerate(zip(ids, ids[1:]), start=3) if b < a]
    if unsorted:
        n = unsorted[0]
        raise ValueError(f"{path}: the ids are not in sorted order ({len(unsorted)} rows out of order; first: "
                         f"row {n} {ids[n - 2]!r} comes after row {n - 1} {ids[n - 3]!r}). Write it with "
                         "write_submission, which sorts the rows.")
    if expected_ids is not None:
        validate_submission(rows, expected_ids)
    return rows


def score_folders(pred_dir, clean_dir) -> dict:
    """Competition score of a folder of restored images against the clean ones, matched by name.

    Every restored image needs a clean partner; extra clean images (e.g. the training part of
    the data) are ignored. Files are read with cv2.imread as the course's scorer does. When some
    names are other scanners' (data.scanner_group), "seen" and "unseen" hold (images, score) too.
    """
    pred = by_stem(list_images(pred_dir), pred_dir)
    clean = by_stem(list_images(clean_dir), clean_dir)
    if not pred:
        raise DataError(f"no images in {pred_dir}")
    missing = sorted(set(pred) - set(clean))
    if missing:
        raise DataError(f"{len(missing)} restored images have no clean image in {clean_dir}: "
                        f"{examples(missing)}")
    names = sorted(pred)
    a = {n: csv_mean_y(pred[n]) for n in names}
    b = {n: csv_mean_y(clean[n]) for n in names}
    out = {"n_images": len(names), "score": competition_score([a[n] for n in names], [b[n] for n in names])}
    groups = {g: [n for n in names if scanner_group(n) == g] for g in ("seen", "unseen")}
    if groups["unseen"]:  # the demo's other scanners: each group's figure too
        for g, ns in groups.items():
            out[g] = (len(ns), competition_score([a[n] for n in ns], [b[n] for n in ns]) if ns else math.nan)
    return out


def restore_folder(model, scan_paths, out_dir, device=None, images_per_pass=8, ensemble=False,
                   show_progress=True, chunk=None) -> list[Path]:
    """Restore every scan at full resolution and save out_dir/<stem>.png, as the scorer expects.

    The PNG's name is the scan's file name with its extension replaced by ``.png``
    ('BookOfMaking.00012.02.tif' -> 'BookOfMaking.00012.02.png'); images of any size keep it.
    Scans are read, restored by restore() (x8 self-ensemble when ``ensemble``) and written
    ``chunk`` images at a time (default: 4 passes), so memory stays bounded.
    The new folder is built beside the old one (``.<name>.new``) and swapped in only when it is
    complete: the PNGs of an earlier run are replaced all at once, never mixed with these, and an
    interrupted run (or a full disk) leaves the previous complete folder as it was. Other files
    in ``out_dir`` are carried over; a folder holding subfolders is refused (it is not a folder
    of restored images). Returns the paths of the PNGs, in the order of ``scan_paths``.
    """
    import errno
    import shutil
    scan_paths = [Path(p) for p in scan_paths]
    out_dir = Path(out_dir)
    if not scan_paths:
        raise DataError(f"no scans to restore into {out_dir}: the list of scans is empty. If it comes from an "
                        "empty test folder (e.g. DATA/test/scan), run notebook 01 again to unpack the test scans.")
    by_stem(scan_paths, "the scans to restore")  # two scans may not share a name
    if any(p.parent.resolve() == out_dir.resolve() for p in scan_paths):
        raise DataError(f"{out_dir} holds the scans themselves; restore into another folder")
    new, old = out_dir.parent / f".{out_dir.name}.new", out_dir.parent / f".{out_dir.name}.old"
    if not out_dir.exists() and old.is_dir():  # a swap cut short: the previous folder comes back
        old.rename(out_dir)
    keep = []
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError(f"{out_dir} is a file, not a folder; restore into another folder")
        entries = sorted(out_dir.iterdir())
        folders = [p.name for p in entries if p.is_dir() and not p.name.startswith(".")]
        if folders:
            raise DataError(f"{out_dir} holds folders ({examples(folders)}), so it is not a folder of restored "
                            "images; restore into a folder of its own (nothing was changed).")
        keep = [p for p in entries if not (p.suffix == ".png" and p.is_file() and not p.name.startswith("."))
                and not (p.name.startswith(".") and p.name.endswith(".partial"))]
    shutil.rmtree(new, ignore_errors=True)  # left by an earlier run cut short
    try:
        new.mkdir(parents=True)
    except OSError as e:
        what = ("disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else
                "read-only" if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else "cannot write")
        raise OSError(e.errno, f"{what}: could not create {new} beside {out_dir} ({e.strerror}); "
                      f"{out_dir} is unchanged.") from e
    from descan.inference import restore
    chunk = max(1, chunk or 4 * images_per_pass)
    bar = progress_bar(total=len(scan_paths), desc=f"restoring{' (x8)' if ensemble else ''}", unit="img",
                       enabled=show_progress)
    try:
        for i in range(0, len(scan_paths), chunk):
            images = [read_rgb(p) for p in scan_paths[i:i + chunk]]
            for p, img in zip(scan_paths[i:i + chunk], restore(model, images, device, images_per_pass, ensemble)):
                write_png(new / f"{p.stem}.png", img)
            bar.update(len(images))
        for p in keep:  # the files that are not ours go with the folder (copied: the old folder stays whole)
            if p.is_dir() and not p.is_symlink():
                shutil.copytree(p, new / p.name, symlinks=True)
            else:
                shutil.copy2(p, new / p.name, follow_symlinks=False)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    finally:
        bar.close()
    if out_dir.exists():  # the swap: two renames; a kill between them is undone by the next run
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        new.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(out_dir)
    return [out_dir / f"{p.stem}.png" for p in scan_paths]


def make_submission(restored_dir, test_scan_dir, csv_path):
    """Write the submission CSV from the restored PNGs and return it as a pandas DataFrame.

    Rows come from the saved uint8 PNGs exactly as the course's scorer computes them
    (submission_rows: cv2.imread, COLOR_BGR2YUV, mean of channel 0); they must be one per test
    scan (ids = the test files' names without extension), finite and in [0, 255], else ValueError
    and no file is written. The CSV replaces any previous one atomically and is read back.
    """
    import pandas as pd
    test = list_images(test_scan_dir)
    if not test:
        raise DataError(f"no test scans in {test_scan_dir}; run notebook 01 first")
    expected = sorted(by_stem(test, test_scan_dir))
    write_submission(submission_rows(restored_dir), csv_path, expected)
    return pd.DataFrame(read_submission(csv_path, expected), columns=list(CSV_HEADER))


def score_restored(restored_dir, pairs) -> dict:
    """Score restored validation PNGs against the clean images of ``pairs``, as the leaderboard would.

    Each PNG's value is its CSV row (submission_rows); the clean image's is computed the same way
    (csv_mean_y), in sorted name order like ``python -m descan score``, so both give the same
    number. The folder must hold exactly one PNG per pair (ValueError otherwise). Also returns
    the pixel Y MAE and PSNR of the PNGs (diagnostics the leaderboard ignores). The figures are
    those of the seen scanners' pairs, as training validates; pairs from unseen scanners
    (data.scanner_group) get their own unseen_images, unseen_score, unseen_pixel_y_mae, unseen_psnr.
    """
    rows = submission_rows(restored_dir)
    by_name = {p.name: p for p in pairs}
    validate_submission(rows, list(by_name))
    pred = dict(rows)

    def figures(names):
        per = [(read_rgb(Path(restored_dir) / f"{n}.png"), read_rgb(by_name[n].clean)) for n in names]
        return {"score": competition_score([pred[n] for n in names], [csv_mean_y(by_name[n].clean) for n in names]),
                "pixel_y_mae": float(np.mean([pixel_y_mae(r, c) for r, c in per])),
                "psnr": float(np.mean([min(psnr(r, c), 100.0) for r, c in per]))}
    names = sorted(by_name)
    seen = [n for n in names if scanner_group(n) == "seen"]
    unseen = [n for n in names if scanner_group(n) == "unseen"]
    out = {"images": len(names), **figures(seen or names)}
    if unseen:
        out.update({"unseen_images": len(unseen), **{f"unseen_{k}": v for k, v in figures(unseen).items()}})
    return out


def entry_folder(out_root, entry: str, ensemble: bool) -> Path:
    """Where local_leaderboard writes the PNGs of one entry: out_root/<entry, made safe>[_x8]."""
    return Path(out_root) / (re.sub(r"[^\w.-]+", "_", entry) + ("_x8" if ensemble else ""))


def local_leaderboard(models, pairs, out_root, device=None, images_per_pass=8, ensembles=(False, True),
                      show_progress=True):
    """A validation estimate of the leaderboard, through the submission's own code path.

    For every {entry name: model} and every value in ``ensembles``: restore_folder writes the
    validation scans as PNGs to out_root/<entry>[_x8]/, and score_restored scores those files
    against the clean images. Models without parameters (the "do nothing" Identity) get no x8
    row: flipping an identity changes nothing. Returns a pandas DataFrame, best score first, with
    columns entry, ensemble, images, score, pixel_y_mae, psnr, seconds, folder.
    """
    import pandas as pd
    scans = [p.scan for p in pairs]
    rows = []
    for name, model in models.items():
        for ens in ensembles:
            if ens and next(model.parameters(), None) is None:
                continue
            folder = entry_folder(out_root, name, ens)
            t0 = time.time()
            restore_folder(model, scans, folder, device, images_per_pass, ens, show_progress)
            seconds = time.time() - t0
            rows.append({"entry": name, "ensemble": bool(ens), **score_restored(folder, pairs),
                         "seconds": round(seconds, 1), "folder": folder})
    return pd.DataFrame(rows).sort_values(["score", "entry"], kind="stable").reset_index(drop=True)


def leaderboard_candidates(found, chosen, model, device=None):
    """The models a local leaderboard compares: "do nothing" (an Identity through the same path),
    every usable checkpoint of ``found`` (checkpoints.find_checkpoints) by run name, and the chosen
    one (``model``, from checkpoints.choose_checkpoint's entry ``chosen``). Returns the dict and
    the chosen entry's name there (its run name, or "<run> (DESCAN_CHECKPOINT)" for a file from
    elsewhere whose folder name is taken)."""
    from descan.checkpoints import model_from_checkpoint
    from descan.models import Identity
    out = {"do nothing": Identity()}
    usable = [e for e in found if e["error"] is None]
    for e in usable:
        out[e["run"]] = model if e["path"].resolve() == chosen["path"].resolve() else \
            model_from_checkpoint(e["path"], device)
    name = chosen["run"]
    if all(e["path"].resolve() != chosen["path"].resolve() for e in usable) and name in out:
        name = f"{name} (DESCAN_CHECKPOINT)"
    out[name] = model
    return out, name


def leaderboard_notes(board, chosen: str) -> list[str]:
    """What a local_leaderboard table says about the chosen entry: its estimate against doing
    nothing, and a better entry if there is one."""
    nothing = float(board.loc[(board["entry"] == "do nothing"), "score"].iloc[0])
    mine = board[board["entry"] == chosen].sort_values("score")
    notes = [f"validation estimate of {chosen}: {float(mine['score'].iloc[0]):.4f} "
             f"({'x8' if mine['ensemble'].iloc[0] else 'single pass'})   do nothing: {nothing:.4f}"]
    best = board.iloc[0]
    if best["entry"] == "do nothing":
        notes.append("note: on these images no checkpoint beats doing nothing; the models need more training "
                     "(or better training) before a submission is worth one of the day's three")
    elif best["entry"] != chosen:
        notes.append(f"note: on these images {best['entry']}{' (x8)' if best['ensemble'] else ''} scores better "
                     f"({best['score']:.4f}); set DESCAN_CHECKPOINT={best['entry']} to submit with it")
    if "unseen_score" in board and board["unseen_score"].notna().any():  # the demo's pairs of unseen scanners
        unseen = board[board["entry"] != "do nothing"].sort_values("unseen_score").iloc[0]
        own = float(mine["unseen_score"].iloc[0])
        if unseen["entry"] != chosen and unseen["unseen_score"] < own:
            notes.append(f"note: on the scanners never trained on, {unseen['entry']} scores better "
                         f"({unseen['unseen_score']:.4f} against {own:.4f}); the test set's other-scanner images may "
                         f"favour it: DESCAN_CHECKPOINT={unseen['entry']} submits with it")
    return notes


def decide_ensemble(board, entry: str, mode: str = "auto", min_gain: float = 0.05) -> tuple[bool, str]:
    """Whether to restore the test set with the x8 self-ensemble, and why, from a local_leaderboard
    table. ``mode``: "1"/"0" force it; "auto" uses x8 only when its measured gain over the single
    pass on validation is larger than ``min_gain`` (score points: differences smaller than that
    are within the noise of a few hundred images)."""
    def score(ens):
        row = board[(board["entry"] == entry) & (board["ensemble"] == ens)]
        return float(row["score"].iloc[0]) if len(row) else math.nan

    single, x8 = score(False), score(True)
    measured = f"single pass {single:.4f}, x8 {x8:.4f} on validation" if math.isfinite(x8) else \
        f"single pass {single:.4f} on validation; x8 not measured"
    if mode in ("1", "0"):
        return mode == "1", f"DESCAN_ENSEMBLE={mode} ({measured})"
    if not math.isfinite(x8):
        return False, f"single pass ({measured})"
    gain = single - x8
    use = gain > min_gain
    return use, (f"{'x8 self-ensemble' if use else 'single pass'}: x8 gains {gain:+.4f} over the single pass "
                 f"({measured}); it is used only above DESCAN_ENSEMBLE_MIN_GAIN={min_gain:g}")
