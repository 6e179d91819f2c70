"""The data folder: ensure_data gets it and checks it once (recorded in the workspace), notebook
01's make_manifest fixes the page-grouped split, load_split reads it back. No torch."""
import contextlib
import hashlib
import json
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np

from helpers import (DEMO_MARKER, IMAGE_EXTS, SPLITS, DataError, Pair, by_stem, dataset_kind,
                     examples, list_images, pair_files, read_rgb, smoke_mode, workspace_dir)
from descan.download import fetch_zips, get_demo, zip_cache_dir
from descan.files import atomic_path, progress_bar
from descan.zips import ZIP_NAMES, check_zip_set, image_entries, unpack_zip

MANIFEST_FILE = "manifest.csv"
TEST_LIST = "test_scans.json"  # in the workspace: the test set's names, recorded at its first check


def has_data(data) -> bool:
    """True when ``data`` holds images in train/clean, train/scan and test/scan (not a check)."""
    return all((Path(data) / s).is_dir() and list_images(Path(data) / s) for s in SPLITS.values())


def scanner_group(name: str) -> str:
    """'unseen' for another scanner's file (scanner03_142: validation only), else 'seen'."""
    stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTS else name
    return "unseen" if re.fullmatch(r"scanner\d+_\d+", stem) else "seen"


def check_pairs(items, show_progress=True) -> dict:
    """Read every image of ``items`` (Pairs or single paths); size counts, e.g. {'512x512': 10}."""
    unreadable, mismatched, sizes = [], [], Counter()
    for item in progress_bar(items, "checking images", enabled=show_progress):
        shapes = []
        for path in (item.clean, item.scan) if isinstance(item, Pair) else (item,):
            try:
                shapes.append(read_rgb(path).shape[:2])
            except DataError:
                unreadable.append(path)
        if len(set(shapes)) > 1:
            mismatched.append(f"{item.name} (clean {shapes[0]}, scan {shapes[1]})")
        elif shapes:
            sizes["x".join(map(str, shapes[0]))] += 1
    problems = [f"{len(v)} {what}: {examples(v)}" for what, v in
                (("unreadable images", unreadable), ("pairs whose sizes differ", mismatched)) if v]
    if problems:
        raise DataError("; ".join(problems) + ". Delete the data folder and unpack it again.")
    return dict(sizes)


def test_scans(data, workspace, anew=False) -> list[Path]:
    """The test scans, sorted by name, checked against test_scan.zip's list when the zip cache holds
    it, else against the list recorded at the folder's first check (or now, with ``anew``)."""
    folder, record = Path(data) / SPLITS["test_scan"], Path(workspace) / TEST_LIST
    test_zip, here = zip_cache_dir(data, workspace) / "test_scan.zip", str(Path(data).resolve())
    found = by_stem(list_images(folder), folder)
    try:
        saved = json.loads(record.read_text()) if record.is_file() else {}
    except ValueError:
        raise DataError(f"{record} cannot be read (cut short, or edited by hand). Delete it: the "
                        "test set's list is then recorded again from the test folder.") from None
    if test_zip.is_file():
        ids = sorted(Path(name).stem for name in image_entries(test_zip))
    else:
        ids = saved["ids"] if saved.get("data") == here and not anew else sorted(found)
    if not ids:  # and nothing recorded, so that scans put there later are taken
        raise DataError(f"no test scans in {folder}")
    if saved != {"data": here, "ids": ids}:
        with atomic_path(record) as tmp:
            tmp.write_text(json.dumps({"data": here, "ids": ids}, indent=0))
    missing, extra = sorted(set(ids) - set(found)), sorted(set(found) - set(ids))
    source = "test_scan.zip" if test_zip.is_file() else f"the list recorded in {record}"
    if missing:
        todo = ("Run the download again: it unpacks what is missing." if test_zip.is_file() else
                f"Put them back, or delete {record} if you replaced the test set on purpose.")
        raise DataError(f"{folder} lacks {len(missing)} of the {len(ids)} test scans of {source}: "
                        f"{examples(missing)}. {todo}")
    if extra:
        raise DataError(f"{folder} holds {len(extra)} images that are not in {source}: "
                        f"{examples(extra)}. Move them out: the CSV has one row per test scan.")
    return [found[i] for i in ids]


def check_dataset(data, workspace=None, show_progress=True, force=False) -> dict:
    """Check that every image reads and train/clean pairs with train/scan by name and size; the
    summary is kept in the workspace (never in ``data``) until a file changes, or ``force``."""
    data, workspace = Path(data), Path(workspace or workspace_dir(data))
    pairs = pair_files(data / SPLITS["train_clean"], data / SPLITS["train_scan"])
    test = test_scans(data, workspace, anew=force)
    files = [p for pair in pairs for p in (pair.clean, pair.scan)] + test
    sizes = "".join(f"{p.relative_to(data)}:{p.stat().st_size}\n" for p in files)
    fingerprint = hashlib.sha256(f"{data.resolve()}\n{sizes}".encode()).hexdigest()[:20]
    stamp = workspace / "data_check.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # none, cut short: again
        saved = json.loads(stamp.read_text())
        if saved["fingerprint"] == fingerprint and not force:
            return saved["summary"]
    summary = {"kind": dataset_kind(data), "train_pairs": len(pairs), "test_scans": len(test),
               "extensions": sorted({p.suffix.lower() for p in files}),
               "train_sizes": check_pairs(pairs, show_progress),
               "test_sizes": check_pairs(test, show_progress),
               "checked": time.strftime("%Y-%m-%d %H:%M")}
    with atomic_path(stamp) as tmp:
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "summary": summary}))
    return summary


def get_competition_data(data, workspace, **options) -> dict:
    """The competition data in ``data``, checked: as it is when it passes (nothing is written into
    ``data``), else unpacked from the zip cache (filled by download.fetch_zips with ``options``)."""
    data, cache = Path(data), zip_cache_dir(data, workspace)
    if (data / DEMO_MARKER).exists():
        raise DataError(f"{data} holds the synthetic demo data ({DEMO_MARKER} says so); real data "
                        "is never mixed into it. Use another folder: bash data_download.sh "
                        "./data/real")
    if has_data(data):
        try:
            summary = check_dataset(data, workspace)
            print(f"Competition data already in place in {data}: nothing downloaded or unpacked.")
            return summary
        except DataError as e:
            if not any((cache / n).is_file() for n in ZIP_NAMES):
                raise  # data placed by hand: nothing is written into its folder
            print(f"The data in {data} does not pass the check ({e}); going on with the zips.")
    deep = [d for sub in SPLITS.values() if (data / sub).is_dir()
            for d in sorted((data / sub).iterdir()) if d.is_dir() and list_images(d)]
    misplaced = [f"{d.relative_to(data)}/ ({len(list_images(d))} images)" for d in deep]
    misplaced += [f"{p.name} (a zip)" for p in sorted(data.glob("*.zip")) if p.parent != cache]
    if misplaced:
        raise DataError(f"{data} holds data, but not where it is looked for: "
                        f"{examples(misplaced)}. The images go right into train/clean, train/scan "
                        f"and test/scan, the zips into {cache}: move them there and run again.")
    print(f"Competition data -> {data} (zip cache: {cache})")
    fetch_zips(cache, **options)
    print("Checking that the three zips hold what their names say ...")
    check_zip_set({n: cache / n for n in ZIP_NAMES})
    for name in ZIP_NAMES:
        folder = data / SPLITS[name.removesuffix(".zip")]
        r = unpack_zip(cache / name, folder)
        print(f"{name} -> {folder}: {r['written']} written, {r['skipped']} already there")
    try:
        return check_dataset(data, workspace)
    except DataError as e:
        raise DataError(f"{e}\nTo start again: delete {data / 'train'} and {data / 'test'}, then "
                        f"run the download again (complete zips in {cache} are reused).") from None


def ensure_data(data, workspace) -> dict:
    """Every notebook's data step: the data in ``data`` (demo or competition data), made or
    downloaded when it is missing, and checked; returns the check's summary."""
    t0, data = time.time(), Path(data)
    for what, path in (("data folder (DESCAN_DATA)", data), ("workspace (DESCAN_WORKSPACE)",
                                                              Path(workspace))):
        if path.exists() and not path.is_dir():
            raise DataError(f"the {what} {path} is a file, not a folder: name a folder instead.")
    had = has_data(data)
    zipped = any((zip_cache_dir(data, workspace) / n).is_file() for n in ZIP_NAMES)
    if dataset_kind(data) == "demo" and (had or not zipped):  # zips in the cache: real data
        fresh = not had and get_demo(data)  # a demo set in place is taken as it is
        summary = check_dataset(data, workspace, show_progress=not fresh, force=fresh)
    else:
        summary = get_competition_data(data, workspace)
    print(f"{data_label(data)} {'already in place' if had else 'prepared'} in {data}: "
          f"{summary['train_pairs']} training pairs, {summary['test_scans']} test scans (checked "
          f"{summary['checked']}; {time.time() - t0:.1f} s)")
    return summary


def data_label(data) -> str:
    """For titles and prints: says plainly when the data is the synthetic demo set."""
    return "DEMO DATA (synthetic)" if dataset_kind(data) == "demo" else "competition data"


def warn_if_demo(data) -> str:
    """Return data_label(data); outside smoke mode, print a loud warning for the demo set."""
    if dataset_kind(data) == "demo" and not smoke_mode():
        print(f"{'!' * 78}\n!! WARNING: {data} holds the SYNTHETIC DEMO DATA: everything below "
              f"describes it.\n!! For the real data, run notebook 01 in full mode.\n{'!' * 78}")
    return data_label(data)


def page_id(name: str) -> str:
    """The source page of a crop: 'BookOfMaking.00012.02' -> 'BookOfMaking.00012'. Names without a
    title.page.crop pattern (e.g. 'scanner01_100') are their own page."""
    stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTS else name
    return stem.rsplit(".", 1)[0] if stem.count(".") >= 2 else stem


def split_names(names, val_fraction=0.1, seed=0) -> dict[str, str]:
    """Deterministic train/validation split by source page: {name: 'train' | 'val'}. All crops of a
    page land on one side; with two pages or more, each side has one."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be between 0 and 1 (exclusive)")
    names = sorted(set(names))
    pages = sorted({page_id(n) for n in names},  # by a seeded hash: the same on every machine
                   key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    n_val = round(val_fraction * len(pages))
    if len(pages) >= 2:
        n_val = min(max(n_val, 1), len(pages) - 1)
    return {n: ("val" if page_id(n) in pages[:n_val] else "train") for n in names}


def make_manifest(data, val_fraction=0.1, seed=0):
    """The training pairs as a DataFrame: name, page, clean and scan (relative to ``data``), split
    (by page) and scanners (scanner_group: unseen ones always in validation), sorted by name."""
    import pandas as pd
    data = Path(data)
    pairs = pair_files(data / SPLITS["train_clean"], data / SPLITS["train_scan"])
    seen = [p.name for p in pairs if scanner_group(p.name) == "seen"]
    split = split_names(seen, val_fraction=val_fraction, seed=seed)
    if set(split.values()) != {"train", "val"}:
        pages = sorted({page_id(n) for n in seen})
        raise DataError(f"the {len(pairs)} training pairs of {data} come from {len(pages)} source "
                        f"page ({examples(pages)}): the split (val_fraction={val_fraction}) needs "
                        "two pages or more, one for training and one for validation.")
    rows = [{"name": p.name, "page": page_id(p.name), "clean": p.clean.relative_to(data).as_posix(),
             "scan": p.scan.relative_to(data).as_posix(), "split": split.get(p.name, "val"),
             "scanners": scanner_group(p.name)} for p in pairs]
    return pd.DataFrame(rows)


def write_manifest(manifest, workspace) -> Path:
    """Save the manifest atomically as WORKSPACE/manifest.csv; returns the path."""
    path = Path(workspace) / MANIFEST_FILE
    with atomic_path(path) as tmp:
        manifest.to_csv(tmp, index=False)
    return path


def read_manifest(path):
    """The manifest that notebook 01 wrote (make_manifest); DataError when there is none."""
    import pandas as pd
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no manifest at {path}. Run notebook 01 first (it writes the manifest), "
                        "or set DESCAN_WORKSPACE to the workspace that holds it.")
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    splits = set(manifest["split"]) if "split" in manifest else set()
    if not {"name", "clean", "scan", "split"} <= set(manifest) or not splits <= {"train", "val"}:
        raise DataError(f"{path} is not a manifest made by notebook 01 (its columns or split names "
                        "differ). Run notebook 01 again.")
    return manifest


def manifest_pairs(manifest, data, split=None) -> list[Pair]:
    """The Pairs of a manifest (or of one split) under ``data``; DataError for missing files."""
    data = Path(data)
    rows = manifest if split is None else manifest[manifest["split"] == split]
    pairs = [Pair(r.name, data / r.clean, data / r.scan) for r in rows.itertuples(index=False)]
    missing = [p for pair in pairs for p in (pair.clean, pair.scan) if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} files of the manifest are not in {data}: "
                        f"{examples(missing)}. Run notebook 01 again: it gets the data again.")
    return pairs


def load_split(data, workspace) -> tuple[list[Pair], list[Pair]]:
    """(train_pairs, val_pairs) of the manifest that notebook 01 saved in the workspace."""
    path = Path(workspace) / MANIFEST_FILE
    manifest = read_manifest(path)
    train, val = manifest_pairs(manifest, data, "train"), manifest_pairs(manifest, data, "val")
    unseen = [p.name for p in train if scanner_group(p.name) == "unseen"]
    if unseen:
        raise DataError(f"{path} puts pairs of unseen scanners in training ({examples(unseen)}); "
                        "they are for validation only. Run notebook 01 again.")
    if not train or not val:
        raise DataError(f"{path} has {len(train)} training and {len(val)} validation rows; "
                        "training needs both. Run notebook 01 again (it makes the split).")
    return train, val


def sample_items(items, n: int, seed: int = 0) -> list:
    """``n`` of ``items`` picked at random (deterministic), in their order; all for n <= 0."""
    items = list(items)
    if n <= 0 or n >= len(items):
        return items
    keep = np.random.default_rng(seed).choice(len(items), size=n, replace=False)
    return [items[i] for i in sorted(keep)]
