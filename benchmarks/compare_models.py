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

# The recipes of notebooks 03 and 04; batch and patch are shared so both see the same pixels.
DNCNN = dict(loss="mse", optimizer="adam", lr=1e-3, schedule="constant")
ATTENTION = dict(loss="l1", optimizer="adamw", lr=1e-3, weight_decay=1e-4, schedule="cosine", warmup_steps=20,
                 grad_clip=1.0, ema_decay=0.99, augment=True, degrade_prob=0.25, mean_y_weight=0.5)
ATTENTION_MODEL = dict(width=32, enc_blocks=(1, 1, 2), mid_blocks=2, dec_blocks=(1, 1, 1))


def run(name, model, kwargs, recipe, train, val, minutes, workdir, shared, perceptual=0.0):
    cfg = helpers.TrainConfig(epochs=10_000, budget_minutes=minutes, **shared, **recipe)
    extra = helpers.perceptual_loss(perceptual) if perceptual else None
    if perceptual and extra is None:
        return {"run": name, "steps": 0, "score": float("nan"), "pixel_y_mae": float("nan"),
                "psnr": float("nan"), "note": "skipped: VGG16 weights not available offline"}
    t0 = time.time()
    trainer = helpers.Trainer(model, kwargs, train, val, Path(workdir) / name, cfg, device="cpu",
                              data_kind="demo", extra_loss=extra)
    trainer.fit()
    best = helpers.load_checkpoint(Path(workdir) / name / "best.pt")
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
        helpers.make_demo_dataset(data, train_pages=args.pages, test_pages=1, progress=False)
        pairs = helpers.pair_files(data / "train/clean", data / "train/scan")
        split = helpers.split_names([p.name for p in pairs], val_fraction=0.15, seed=0)
        train = [p for p in pairs if split[p.name] == "train"]
        val = [p for p in pairs if split[p.name] == "val"]
        val_images = [(helpers.read_rgb(p.scan), helpers.read_rgb(p.clean)) for p in val]
        nothing = helpers.evaluate(helpers.Identity(), val_images)
        n_att = helpers.count_parameters(helpers.build_model("attention_unet", **ATTENTION_MODEL))
        print(f"DEMO DATA: {len(train)} training / {len(val)} validation pairs of 256x256 (split by page); "
              f"CPU threads {torch.get_num_threads()}; batch {args.batch} x {args.patch}px crops\n", flush=True)
        rows = [{"run": "do nothing (the scans)", "steps": 0, **nothing, "note": ""}]
        print(f"main comparison, {args.minutes} min of training each:", flush=True)
        rows.append(run("DnCNN (03 recipe)", "dncnn", {}, DNCNN, train, val, args.minutes, tmp, shared))
        rows.append(run("attention U-Net (04 recipe)", "attention_unet", ATTENTION_MODEL, ATTENTION, train, val,
                        args.minutes, tmp, shared))
        table = pd.DataFrame(rows).set_index("run")
        print(f"\nparameters: DnCNN 559,363; attention U-Net {n_att:,}")
        print(f"validation (lower score and pixel Y MAE are better), {args.minutes} min CPU budget each:")
        print(table.round(4).to_string(), flush=True)

        if args.ablation_minutes > 0:
            m = args.ablation_minutes
            variants = [
                ("all strategies (04 recipe)", ATTENTION_MODEL, ATTENTION, 0.0),
                ("- geometric augmentation", ATTENTION_MODEL, {**ATTENTION, "augment": False}, 0.0),
                ("- degradation augmentation", ATTENTION_MODEL, {**ATTENTION, "degrade_prob": 0.0}, 0.0),
                ("- mean-Y loss term", ATTENTION_MODEL, {**ATTENTION, "mean_y_weight": 0.0}, 0.0),
                ("- EMA of weights", ATTENTION_MODEL, {**ATTENTION, "ema_decay": 0.0}, 0.0),
                ("- AdamW/warm-up/cosine/clip (Adam, constant)", ATTENTION_MODEL,
                 {**ATTENTION, "optimizer": "adam", "weight_decay": 0.0, "schedule": "constant", "warmup_steps": 0,
                  "grad_clip": 0.0}, 0.0),
                ("- L1 (MSE instead)", ATTENTION_MODEL, {**ATTENTION, "loss": "mse"}, 0.0),
                ("- global colour path", {**ATTENTION_MODEL, "colour_path": False}, ATTENTION, 0.0),
                ("+ perceptual VGG term (0.1)", ATTENTION_MODEL, ATTENTION, 0.1),
            ]
            print(f"\nablation, {m} min of training each:", flush=True)
            abl = [run(name, "attention_unet", kw, recipe, train, val, m, tmp, shared, perceptual=perc)
                   for name, kw, recipe, perc in variants]
            print(f"\nablation at {m} min each (do nothing: score {nothing['score']:.4f}, "
                  f"pixel Y MAE {nothing['pixel_y_mae']:.3f}):")
            print(pd.DataFrame(abl).set_index("run").round(4).to_string())


if __name__ == "__main__":
    main()
