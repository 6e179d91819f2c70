"""Do nothing vs DnCNN vs the attention model, and an ablation of 04's strategies, in one run.

    python benchmarks/compare_models.py [--minutes 4] [--ablation-minutes 1.5] [--pages 32]

Everything runs here, side by side, on the same freshly generated DEMO data (synthetic pages,
not the competition data), the same page-grouped split and the same wall-clock training budget
per model (validation time is not counted in the budget). Each row reports the validation
competition score of the best checkpoint and its pixel Y MAE. Figures depend on the machine and
the budget; the point is the comparison inside one run.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: E402
from descan import checkpoints, demo, engine, inference, losses, models, recipes  # noqa: E402


def run(name, recipe, train, val, minutes, workdir, shared, model_changes=None, **changes):
    """Train one variant of a notebook recipe (engine.recipe, its GPU settings) with the shared
    batch/patch/crops and ``changes``, for ``minutes`` of training time; the best checkpoint's row."""
    model, kwargs, cfg = recipes.recipe(recipe, "cuda", use_env=False, epochs=10_000, budget_minutes=minutes,
                                       **shared, **changes)
    kwargs = {**kwargs, **(model_changes or {})}
    if cfg.perceptual_weight and losses.perceptual_loss(cfg.perceptual_weight) is None:
        return {"run": name, "steps": 0, "score": float("nan"), "pixel_y_mae": float("nan"),
                "psnr": float("nan"), "note": "skipped: VGG16 weights not available offline"}
    t0 = time.time()
    trainer = engine.Trainer(model, kwargs, train, val, Path(workdir) / name, cfg, device="cpu", data_kind="demo")
    trainer.fit()
    best = checkpoints.load_checkpoint(Path(workdir) / name / checkpoints.BEST)
    print(f"  {name}: {trainer.step} steps, best at epoch {best['epoch']}, wall {time.time() - t0:.0f} s",
          flush=True)
    return {"run": name, "steps": trainer.step, **{k: best["val"][k] for k in ("score", "pixel_y_mae", "psnr")},
            "note": ""}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget of each main model")
    ap.add_argument("--ablation-minutes", type=float, default=1.5, help="budget of each ablation run (0: skip)")
    ap.add_argument("--pages", type=int, default=32, help="demo training pages (2 crops of 256 px each)")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    shared = dict(batch_size=args.batch, patch=args.patch, crops_per_image=4, crops_per_epoch=args.batch * 20,
                  workers=0, checkpoint_minutes=60, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo"
        demo.make_demo_dataset(data, train_pages=args.pages, test_pages=1, show_progress=False)
        pairs = helpers.pair_files(data / "train/clean", data / "train/scan")
        split = helpers.split_names([p.name for p in pairs], val_fraction=0.15, seed=0)
        train = [p for p in pairs if split[p.name] == "train"]
        val = [p for p in pairs if split[p.name] == "val"]
        val_images = [(helpers.read_rgb(p.clean), helpers.read_rgb(p.scan)) for p in val]
        nothing = inference.evaluate(models.Identity(), val_images)
        att_name, att_kwargs, _ = recipes.recipe("attention", use_env=False)
        n_att = models.count_parameters(models.build_model(att_name, **att_kwargs))
        print(f"DEMO DATA: {len(train)} training / {len(val)} validation pairs of 256x256 (split by page); "
              f"CPU threads {torch.get_num_threads()}; batch {args.batch} x {args.patch}px crops\n", flush=True)
        rows = [{"run": "do nothing (the scans)", "steps": 0, **nothing, "note": ""}]
        print(f"main comparison, {args.minutes} min of training each:", flush=True)
        rows.append(run("DnCNN (03 recipe)", "dncnn", train, val, args.minutes, tmp, shared))
        rows.append(run("attention U-Net (04 recipe)", "attention", train, val, args.minutes, tmp, shared))
        table = pd.DataFrame(rows).set_index("run")
        print(f"\nparameters: DnCNN 559,363; attention U-Net {n_att:,}")
        print(f"validation (lower score and pixel Y MAE are better), {args.minutes} min CPU budget each:")
        print(table.round(4).to_string(), flush=True)

        if args.ablation_minutes > 0:
            m = args.ablation_minutes
            variants = [  # (name, model changes, recipe changes): one strategy off (or on) at a time
                ("all strategies (04 recipe)", {}, {}),
                ("- geometric augmentation", {}, {"augment": False}),
                ("- degradation augmentation", {}, {"degrade_prob": 0.0}),
                ("- mean-Y loss term", {}, {"mean_y_weight": 0.0}),
                ("- EMA of weights", {}, {"ema_decay": 0.0}),
                ("- AdamW/warm-up/cosine/clip (Adam, constant)", {},
                 {"optimizer": "adam", "weight_decay": 0.0, "schedule": "constant", "warmup_steps": 0,
                  "grad_clip": 0.0}),
                ("- L1 (MSE instead)", {}, {"loss": "mse"}),
                ("- global colour path", {"colour_path": False}, {}),
                ("+ perceptual VGG term (0.1)", {}, {"perceptual_weight": 0.1}),
            ]
            print(f"\nablation, {m} min of training each:", flush=True)
            abl = [run(name, "attention", train, val, m, tmp, shared, model_changes=mc, **rc)
                   for name, mc, rc in variants]
            print(f"\nablation at {m} min each (do nothing: score {nothing['score']:.4f}, "
                  f"pixel Y MAE {nothing['pixel_y_mae']:.3f}):")
            print(pd.DataFrame(abl).set_index("run").round(4).to_string())


if __name__ == "__main__":
    main()
