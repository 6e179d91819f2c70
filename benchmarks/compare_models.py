"""Seen vs unseen scanners: do nothing, the classical colour map and 3D LUT and the notebooks' models, in one run.

    python benchmarks/compare_models.py [--minutes 6] [--seeds 2] [--jobs 2] [--pages 40]

Everything runs here, side by side, on freshly generated DEMO data (synthetic pages printed and
scanned by named scanner profiles, not the competition data), split as notebook 01 splits it:
training pairs from two scanners, validation pages of those two (*seen*) and pairs from two other
scanners (*unseen*, never trained on), plus pairs from the demo's two test-only scanners
(*held-out*: no decision in this project was made on them; the project's choices were made on seen and
unseen validation), and *new* pages of the two training scanners, made here like the held-out ones:
the seen validation pages choose best.pt, so its figures flatter; new_* do not. Each trained row
gets the same training time on the CPU (validation is not counted) with the recipe of notebook 03 or
04 as its cells define it on a CPU (recipes.from_notebook: settings, model code, loss), a few
settings or model arguments changed per row, once per seed; best.pt is chosen on the seen scanners,
as in the notebooks, and the unseen figures are those of that same checkpoint: nothing is tuned on
them. Figures are means over seeds, "+-" half the range.
"""
import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: E402
from descan import checkpoints, colourmap, data, demo, engine, inference, models, recipes  # noqa: E402

# (row, notebook recipe, TrainConfig changes, model argument changes): the trained rows
TRAINED = [
    ("DnCNN (03 recipe)", "dncnn", {}, {}),
    ("DnCNN, 17 layers of 64 on a CPU too", "dncnn", {}, {"width": 64, "depth": 17}),
    ("04 recipe, colour head started from the affine map", "attention", {}, {"colour_lut": False}),
    ("U-Net started from the 3D LUT (04 recipe)", "attention", {}, {}),
]
FIGURES = ("score", "pixel_y_mae", "new_score", "new_pixel_y_mae", "new_score_last", "unseen_score",
           "unseen_pixel_y_mae", "heldout_score", "heldout_pixel_y_mae", "step0_score")
# step0_score: a trained row's validation score before its first step; new_score_last: the new
# pages' score of its last weights instead of best.pt's


def fresh_pairs(pages: int, size: int, scanners, tag: int, seed: int = 7) -> list:
    """(clean, scan) pairs of new pages printed and scanned here by ``scanners`` in turn: the
    demo's test-only ones (the demo set has only their scans, as the real test set has only its
    other scanners' scans), or the training ones (new pages, which no decision has seen)."""
    out = []
    for i in range(pages):
        rng = np.random.default_rng([seed, tag, i])
        side = size * 3 // 2
        clean, back = demo.make_page(rng, side, side), demo.make_page(rng, side, side)
        profile = demo.SCANNERS[scanners[i % len(scanners)]]
        scan = demo.simulate_scan(clean, rng, back=back, scanner=demo.scanner_variant(profile, rng))
        y, x = rng.integers(0, side - size + 1, 2)
        out.append((clean[y:y + size, x:x + size], scan[y:y + size, x:x + size]))
    return out


def fresh_figures(model, tests: dict) -> dict:
    """Score and pixel Y MAE of ``model`` on each named set of fresh pairs, as NAME_score, ..."""
    found = {name: inference.evaluate(model, pairs) for name, pairs in tests.items()}
    return {f"{name}_{k}": r[k] for name, r in found.items() for k in ("score", "pixel_y_mae")}


def figures(trainer, model, tests) -> dict:
    """A model's validation figures (seen, unseen) and its figures on the fresh pairs."""
    val = trainer.validate(model)
    return {**{k: val.get(k) for k in ("score", "pixel_y_mae", "unseen_score", "unseen_pixel_y_mae")},
            **fresh_figures(model, tests)}


def row_run(recipe, changes, model_changes, **settings) -> dict:
    """The notebook's CPU recipe (recipes.from_notebook) with a row's changes and ``settings``."""
    run = recipes.from_notebook(recipe, torch.device("cpu"), smoke=False)
    run["config"] = dataclasses.replace(run["config"], **changes, **settings)
    run["model"]["kwargs"] = {**run["model"]["kwargs"], **model_changes}
    return run


def train_one(job):
    """One trained row and seed, in its own process: the best checkpoint's validation figures."""
    row, recipe, changes, model_changes, seed, minutes, threads, data_dir, workdir, tests = job
    torch.set_num_threads(threads)
    train, val = data.load_split(data_dir, workdir)
    run = row_run(recipe, changes, model_changes, epochs=10_000, budget_minutes=minutes, workers=0,
                  checkpoint_minutes=60, seed=seed)
    folder = Path(workdir) / f"{''.join(c if c.isalnum() else '_' for c in row)}-{seed}"
    t0 = time.time()
    trainer = engine.Trainer(run, train, val, folder, "cpu", "demo")
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), \
            contextlib.redirect_stderr(quiet):
        trainer.fit()
    best = checkpoints.load_checkpoint(folder / checkpoints.BEST)
    print(f"  {row}, seed {seed}: {trainer.step} steps, best at step {best['step']}, "
          f"wall {time.time() - t0:.0f} s", flush=True)
    net = checkpoints.model_from_checkpoint(best)
    start = trainer.history[0]["val_score"] if trainer.history[0]["step"] == 0 else float("nan")
    last_weights = trainer.ema if trainer.ema is not None else trainer.model
    last = fresh_figures(last_weights, {"new": tests["new"]})["new_score"]
    return [{"row": row, "seed": seed, "steps": trainer.step, **figures(trainer, net, tests),
             "new_score_last": last, "step0_score": start}]


def summary(rows: list) -> pd.DataFrame:
    """Mean and half-range over seeds of each figure, one line per row, in the order seen."""
    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(df["row"]))
    g = df.groupby("row", sort=False)
    table = pd.DataFrame({"seeds": g.size(), "steps": g["steps"].mean().round(0).astype(int)})
    for k in FIGURES:
        mean, half = g[k].mean(), (g[k].max() - g[k].min()) / 2
        table[k] = [f"{m:.3f} +- {h:.3f}" if n > 1 else f"{m:.3f}" for m, h, n in zip(mean, half, g.size())]
    return table.loc[order]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=6.0, help="training time of each trained row and seed")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per trained row")
    ap.add_argument("--jobs", type=int, default=2, help="rows trained at once (CPU threads are shared out)")
    ap.add_argument("--pages", type=int, default=40, help="demo training pages (seen scanners)")
    ap.add_argument("--new-pages", type=int, default=64, help="new pages of the training scanners, for new_*")
    ap.add_argument("--unseen-pages", type=int, default=8, help="demo pages from the two unseen scanners")
    ap.add_argument("--size", type=int, default=256, help="side of the demo images")
    ap.add_argument("--only", default="", help="comma-separated trained rows to run (default: all)")
    args = ap.parse_args()
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, work = Path(tmp) / "demo", Path(tmp) / "workspace"
        demo.make_demo_dataset(data_dir, train_pages=args.pages, unseen_pages=args.unseen_pages, test_pages=1,
                               crop=args.size, show_progress=False)
        data.write_manifest(data.make_manifest(data_dir), work)
        train, val = data.load_split(data_dir, work)
        groups = [data.scanner_group(p.name) for p in val]
        images = [(helpers.read_rgb(p.clean), helpers.read_rgb(p.scan)) for p in val]
        print(f"DEMO DATA (synthetic): {len(train)} training pairs (scanners {', '.join(demo.SEEN_SCANNERS)}); "
              f"validation {groups.count('seen')} pairs from them and {groups.count('unseen')} from unseen scanners "
              f"({', '.join(demo.UNSEEN_VAL_SCANNERS.values())}); {args.size} px; {args.minutes:g} min of CPU "
              f"training per row and seed, {args.jobs} at a time with {threads} thread(s) each\n", flush=True)
        tests = {"new": fresh_pairs(args.new_pages, args.size, demo.SEEN_SCANNERS, 10),
                 "heldout": fresh_pairs(args.unseen_pages * 2, args.size, list(demo.TEST_SCANNERS.values()), 9)}
        print(f"new pages of the training scanners: {len(tests['new'])} pairs; held-out scanners "
              f"({', '.join(demo.TEST_SCANNERS.values())}): {len(tests['heldout'])} pairs\n", flush=True)

        def untrained(model):
            val = inference.evaluate(model, images, groups=groups)
            found = fresh_figures(model, tests)
            return {**val, **found, "new_score_last": found["new_score"], "step0_score": float("nan")}
        rows = [{"row": "do nothing (the scans)", "seed": 0, "steps": 0, **untrained(models.Identity())}]
        pixels = colourmap.sample_pixels(train, show_progress=False)  # one sample for both fits
        cmap, _ = colourmap.fit_colour_map(train, val, show_progress=False, pixels=pixels)
        rows.append({"row": "classical colour map (12 numbers)", "seed": 0, "steps": 0, **untrained(cmap)})
        lut, _ = colourmap.fit_colour_map(train, val, show_progress=False, lut_size=17, pixels=pixels)
        rows.append({"row": "3D colour LUT (17^3 vertices)", "seed": 0, "steps": 0, **untrained(lut)})
        only = {s.strip() for s in args.only.split(",") if s.strip()}
        jobs = [(row, recipe, changes, model_changes, seed, args.minutes, threads, data_dir, work,
                 tests)
                for row, recipe, changes, model_changes in TRAINED if not only or row in only
                for seed in range(args.seeds)]
        # fresh processes (spawn): a fork of this process, whose torch has run, can hang in its thread pool
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for out in pool.map(train_one, jobs):
                rows.extend(out)
        table = summary(rows)
        params = {}
        for row, recipe, changes, model_changes in TRAINED:
            spec = row_run(recipe, changes, model_changes)["model"]
            model = models.build(spec["code"], spec["name"], spec["kwargs"])
            params[row] = models.count_parameters(model)
        print("\nparameters: " + "; ".join(f"{k} {v:,}" for k, v in params.items()))
        print("\nlower is better (score: the competition's; pixel_y_mae: Y error per pixel, 0-255); score and "
              "pixel_y_mae: validation pages of the training scanners (they choose best.pt); new_*: new pages of "
              "them; unseen_*: validation pairs of two other scanners; heldout_*: pairs of two more scanners; "
              "new_* and heldout_* were never used for a decision:")
        print(table.to_string(), flush=True)
        means = pd.DataFrame(rows).groupby("row", sort=False)[list(FIGURES)].mean()
        untrained_rows = {r["row"] for r in rows if r["steps"] == 0}
        trained = [r for r in means.index if r not in untrained_rows]
        if trained:
            ref, lut_ref = means.loc["classical colour map (12 numbers)"], means.loc["3D colour LUT (17^3 vertices)"]
            for row in trained:  # the training scanners' pages first: most of the leaderboard
                m = means.loc[row]
                print(f"{row}: on the training scanners' validation pages {m['score'] / ref['score']:.2f}x the "
                      f"classical colour map and {m['score'] / lut_ref['score']:.2f}x the 3D LUT; on their new pages "
                      f"{m['new_score'] / ref['new_score']:.2f}x and {m['new_score'] / lut_ref['new_score']:.2f}x; "
                      f"on unseen scanners {m['unseen_score'] / ref['unseen_score']:.2f}x the map")
            best = means.loc[trained, "unseen_score"].idxmin()
            line = f"\nbest trained row on unseen scanners: {best}: score {means.loc[best, 'unseen_score']:.3f} = " \
                   f"{means.loc[best, 'unseen_score'] / ref['unseen_score']:.2f}x the classical colour map's"
            if "DnCNN (03 recipe)" in means.index:
                line += f", {means.loc[best, 'unseen_score'] / means.loc['DnCNN (03 recipe)', 'unseen_score']:.2f}x DnCNN's"
            print(line + f"; pixel Y MAE {means.loc[best, 'unseen_pixel_y_mae']:.3f} "
                  f"(colour map {ref['unseen_pixel_y_mae']:.3f}); on the held-out scanners: score "
                  f"{means.loc[best, 'heldout_score']:.3f} (colour map {ref['heldout_score']:.3f})")


if __name__ == "__main__":
    main()
