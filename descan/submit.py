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

from helpers import (DataError, by_stem, competition_score, examples, list_images, pixel_y_mae,
                     progress_bar, psnr, read_rgb, write_png, atomic_path)

CSV_HEADER = ("Image File", "Y Channel Value")


def csv_mean_y(png_path) -> float:
    """Mean Y of a saved image, computed exactly as the course's code does (cv2.imread, BGR2YUV)."""
    bgr = cv2.imread(str(png_path))
    if bgr is None:
        raise DataError(f"cannot read {png_path} with OpenCV; save it again")
    return float(cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)[:, :, 0].mean())


def submission_rows(restored_dir) -> list[tuple[str, float]]:
    """(id, mean Y) for every PNG in ``restored_dir``, in sorted file-name order."""
    files = sorted(p for p in Path(restored_dir).glob("*.png"))
    if not files:
        raise DataError(f"no restored PNGs in {restored_dir}; restore the test set first")
    return [(p.stem, csv_mean_y(p)) for p in files]


def validate_submission(rows, expected_ids) -> None:
    """Raise ValueError unless ``rows`` has exactly one finite value in [0, 255] per expected id."""
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
    """Validate, then write the CSV atomically: header 'Image File,Y Channel Value', sorted rows."""
    validate_submission(rows, expected_ids)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_HEADER)
            for name, value in sorted(rows, key=lambda r: r[0]):
                w.writerow([name, repr(float(value))])
    return Path(path)


def read_submission(path, expected_ids=None) -> list[tuple[str, float]]:
    """Read a submission CSV back; checks the header, and the rows when ``expected_ids`` is given."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if tuple(header or ()) != CSV_HEADER:
            raise ValueError(f"{path}: header must be {','.join(CSV_HEADER)!r}, got {header}")
        rows = []
        for line in reader:
            if len(line) != 2:
                raise ValueError(f"{path}: row {len(rows) + 2} has {len(line)} fields, expected 2")
            try:
                rows.append((line[0], float(line[1])))
            except ValueError:
                raise ValueError(f"{path}: row {len(rows) + 2} value {line[1]!r} is not a number")
    if expected_ids is not None:
        validate_submission(rows, expected_ids)
    return rows


def score_folders(pred_dir, clean_dir) -> dict:
    """Competition score of a folder of restored images against the clean ones, matched by name.

    Every restored image needs a clean partner; extra clean images (e.g. the training part of
    the data) are ignored. Files are read with cv2.imread as the course's scorer does.
    """
    pred = by_stem(list_images(pred_dir), pred_dir)
    clean = by_stem(list_images(clean_dir), clean_dir)
    if not pred:
        raise DataError(f"no images in {pred_dir}")
    missing = sorted(set(pred) - set(clean))
    if missing:
        raise DataError(f"{len(missing)} restored images have no clean image in {clean_dir}: "
                        f"{examples(missing)}")
    a = [csv_mean_y(pred[n]) for n in sorted(pred)]
    b = [csv_mean_y(clean[n]) for n in sorted(pred)]
    return {"n_images": len(a), "score": competition_score(a, b)}


def restore_folder(model, scan_paths, out_dir, device=None, images_per_pass=8, ensemble=False,
                   show_progress=True, chunk=None) -> list[Path]:
    """Restore every scan at full resolution and save out_dir/<stem>.png, as the scorer expects.

    The PNG's name is the scan's file name with its extension replaced by ``.png``
    ('BookOfMaking.00012.02.tif' -> 'BookOfMaking.00012.02.png'); images of any size keep it.
    Scans are read, restored by restore() (x8 self-ensemble when ``ensemble``) and written
    atomically ``chunk`` images at a time (default: 4 passes), so memory stays bounded.
    ``out_dir`` belongs to this function: the PNGs already in it are deleted first, so it never
    mixes two runs, and an interrupted run leaves missing files that make_submission refuses.
    Returns the written paths, in the order of ``scan_paths``.
    """
    scan_paths = [Path(p) for p in scan_paths]
    out_dir = Path(out_dir)
    if not scan_paths:
        raise DataError("no scans to restore")
    by_stem(scan_paths, "the scans to restore")  # two scans may not share a name
    if any(p.parent.resolve() == out_dir.resolve() for p in scan_paths):
        raise DataError(f"{out_dir} holds the scans themselves; restore into another folder")
    targets = [out_dir / f"{p.stem}.png" for p in scan_paths]
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    from descan.inference import restore
    chunk = max(1, chunk or 4 * images_per_pass)
    bar = progress_bar(total=len(scan_paths), desc=f"restoring{' (x8)' if ensemble else ''}", unit="img",
                       enabled=show_progress)
    for i in range(0, len(scan_paths), chunk):
        images = [read_rgb(p) for p in scan_paths[i:i + chunk]]
        for target, img in zip(targets[i:i + chunk], restore(model, images, device, images_per_pass, ensemble)):
            write_png(target, img)
        bar.update(len(images))
    bar.close()
    return targets


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
    the pixel Y MAE and PSNR of the PNGs (diagnostics the leaderboard ignores).
    """
    rows = submission_rows(restored_dir)
    by_name = {p.name: p for p in pairs}
    validate_submission(rows, list(by_name))
    names = sorted(by_name)
    pred = dict(rows)
    per = [(read_rgb(Path(restored_dir) / f"{n}.png"), read_rgb(by_name[n].clean)) for n in names]
    return {"images": len(names),
            "score": competition_score([pred[n] for n in names], [csv_mean_y(by_name[n].clean) for n in names]),
            "pixel_y_mae": float(np.mean([pixel_y_mae(r, c) for r, c in per])),
            "psnr": float(np.mean([min(psnr(r, c), 100.0) for r, c in per]))}


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


def leaderboard_notes(board, chosen: str, ensemble: bool) -> list[str]:
    """What a local_leaderboard table says about the submission: its estimate against doing
    nothing, whether the x8 self-ensemble helped the chosen entry, and a better entry if any."""
    def score(entry, ens):
        row = board[(board["entry"] == entry) & (board["ensemble"] == ens)]
        return float(row["score"].iloc[0]) if len(row) else math.nan

    notes = [f"validation estimate of the submission ({chosen}{', x8' if ensemble else ''}): "
             f"{score(chosen, ensemble):.4f}   do nothing: {score('do nothing', False):.4f}"]
    single, x8 = score(chosen, False), score(chosen, True)
    if math.isfinite(x8):
        better = x8 < single
        notes.append(f"x8 self-ensemble {'helps' if better else 'does not help'} {chosen} on validation "
                     f"({x8:.4f} vs {single:.4f} single pass)" +
                     ("" if better == ensemble else f"; consider DESCAN_ENSEMBLE={int(better)}"))
    best = board.iloc[0]
    if best["entry"] == "do nothing":
        notes.append("note: on these images no checkpoint beats doing nothing; the models need more training "
                     "(or better training) before a submission is worth one of the day's three")
    elif best["entry"] != chosen:
        notes.append(f"note: on these images {best['entry']}{' (x8)' if best['ensemble'] else ''} scores better "
                     f"({best['score']:.4f}); set DESCAN_CHECKPOINT={best['entry']} to submit with it")
    return notes
