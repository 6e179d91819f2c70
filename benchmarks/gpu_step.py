"""Where a training step's time goes, on a GPU (or a CPU): step rates in fp32, AMP, channels-last
and torch.compile, the loader alone, end to end, restore() speed, and one profiled step.

    python benchmarks/gpu_step.py                          # everything, at the notebooks' sizes
    python benchmarks/gpu_step.py --compile                # on a CPU: include torch.compile (slow)
    python benchmarks/gpu_step.py --batch 4 --patch 32 --width 8 --steps 1 --image 64   # toy run

Sizes: on a GPU each notebook model at its notebook's GPU batch x patch (recipes.recipe(name,
"cuda")); without one at the CPU recipe's (16 x 64 px), and torch.compile only with --compile (its
first call takes minutes on 2 cores). A *step* is what issue 13 measured: forward, the recipe's
loss, backward, optimiser step, on synthetic tensors; ratios are against fp32, channels-last.
"engine step" is Trainer.train_step itself on a synthetic uint8 batch (adds the lr schedule,
gradient clipping and the EMA); "end to end" feeds it from the engine's loader (its worker count,
decoded cache, augmentations) on DEMO pairs, as 03/04 train. The row marked * is what the engine
does by default (amp="auto", compile=False). Figures depend on the machine; run it on yours.
"""
import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers
from descan import crops, demo, engine, inference, losses, models, recipes
from descan.demo import degradation_augment

NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}
BEFORE = "as before #13 (torch's default optimiser, x + beta * y residuals)"


def block_before_13(block, x):
    """AttnBlock.forward before issue 13 (x + beta * y: two element-wise passes where addcmul makes one)."""
    a, b = block.dw(block.expand(block.norm1(x))).chunk(2, dim=1)
    y = a * b
    x = x + block.beta * block.project(y * block.sca(y))
    a, b = block.ffn_in(block.norm2(x)).chunk(2, dim=1)
    return x + block.gamma * block.ffn_out(a * b)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def settings(name, device, args):
    """(model name, kwargs, TrainConfig) of a notebook recipe at this run's sizes."""
    model, kwargs, cfg = recipes.recipe(name, device, use_env=False)
    batch, patch = args.batch or cfg.batch_size, args.patch or cfg.patch
    k = cfg.crops_per_image if batch % cfg.crops_per_image == 0 else batch
    if args.width:
        kwargs = {**kwargs, "width": args.width}
    cfg = recipes.recipe(name, device, use_env=False, batch_size=batch, patch=patch, crops_per_image=k,
                         workers=crops.default_workers(device))[2]
    return model, kwargs, cfg


def variants(device, compile_too):
    """(label, AMP dtype, channels-last, compile, issue 13's optimiser and block) of every setting."""
    fp32 = [("fp32, contiguous", None, False, False, True), ("fp32, channels-last", None, True, False, True)]
    if device.type != "cuda":
        rows = fp32 + [(f"fp32, channels-last, {BEFORE}", None, True, False, False)]
        return rows + ([("fp32, channels-last, torch.compile", None, True, True, True)] if compile_too else [])
    mine = inference.amp_dtype()
    first, other = (mine, {torch.bfloat16: torch.float16}.get(mine, torch.bfloat16)) if mine else \
        (torch.bfloat16, torch.float16)
    n1, n2 = NAMES[first], NAMES[other]
    return fp32 + [(f"{n1} autocast, contiguous", first, False, False, True),
                   (f"{n1}, channels-last, {BEFORE}", first, True, False, False),
                   (f"{n1}, channels-last", first, True, False, True),
                   (f"{n2}, channels-last" + (" + GradScaler" if other is torch.float16 else ""), other, True,
                    False, True),
                   (f"{n1}, channels-last, torch.compile", first, True, True, True)]


def make_step(name, kwargs, cfg, device, amp, channels_last, compiled, issue13):
    """A training step of the model on fixed synthetic tensors, and the model."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = models.build_model(name, **kwargs).to(device).to(memory_format=fmt)
    if issue13:
        opt = engine.make_optimizer(model.parameters(), cfg, device)
    else:
        opt = (torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam)(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    run = inference.compile_model(model, enabled=compiled)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
    loss_fn = losses.make_loss(cfg.loss, cfg.mean_y_weight, 0.0, device)
    x = torch.rand(cfg.batch_size, 3, cfg.patch, cfg.patch, device=device).contiguous(memory_format=fmt)
    y = (x * 0.9 + 0.05).contiguous()

    def step():
        now = models.AttnBlock.forward
        models.AttnBlock.forward = now if issue13 else block_before_13
        try:
            with torch.autocast("cuda", dtype=amp) if amp is not None else contextlib.nullcontext():
                out = run(x)
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        finally:
            models.AttnBlock.forward = now
    return step, run


def rate(step, device, crops, steps, warmup=1):
    """(crops per second over ``steps`` calls after ``warmup``, seconds of the very first call)."""
    t0 = time.perf_counter()
    step()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * crops / (time.perf_counter() - t0), first


def loader_rate(pairs, cfg, device, batches):
    """Crops per second of the engine's loader alone (its workers, cache and augmentations)."""
    k = cfg.crops_per_image
    items = (batches + 2) * cfg.batch_size // k
    degrade = degradation_augment(cfg.degrade_prob) if cfg.degrade_prob > 0 else None
    ds = crops.CropDataset(pairs, cfg.patch, k, items, cfg.seed, cfg.augment,
                           crops.build_cache(pairs, show_progress=False), degrade)
    it = iter(crops.make_loader(ds, cfg.batch_size // k, cfg.workers, device))
    next(it)  # worker start-up is not throughput
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        n += next(it)[0].shape[0]
    return n / (time.perf_counter() - t0)


def trainer_rates(name, kwargs, cfg, pairs, device, steps, workdir):
    """Trainer.train_step on one synthetic uint8 batch, then fed by the engine's loader (end to end)."""
    trainer = engine.Trainer(name, kwargs, pairs[:-1], pairs[-1:], Path(workdir) / name, cfg, device, "demo")
    k = cfg.crops_per_image
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (cfg.batch_size, cfg.patch, cfg.patch, 3), dtype=torch.uint8, generator=gen)
    scan = clean.clone()
    alone, _ = rate(lambda: trainer.train_step(clean, scan, 10_000), device, cfg.batch_size, steps)
    degrade = degradation_augment(cfg.degrade_prob) if cfg.degrade_prob > 0 else None
    ds = crops.CropDataset(pairs, cfg.patch, k, (steps + 4) * cfg.batch_size // k, cfg.seed, cfg.augment,
                           crops.build_cache(pairs, show_progress=False), degrade)
    it = iter(crops.make_loader(ds, cfg.batch_size // k, cfg.workers, device))
    both, _ = rate(lambda: trainer.train_step(*next(it), 10_000), device, cfg.batch_size, steps)
    return alone, both


def restore_rates(name, kwargs, device, size, images_per_pass, n):
    """restore() images per second, single pass and x8 self-ensemble, on n images of size x size."""
    model = models.build_model(name, **kwargs).to(device).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    images = list(torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=gen).numpy())
    out = {}
    for ensemble in (False, True):
        inference.restore(model, images[:images_per_pass], device, images_per_pass, ensemble)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        inference.restore(model, images, device, images_per_pass, ensemble)
        sync(device)
        out[ensemble] = n / (time.perf_counter() - t0)
    return out


def layer_norm_times(device, amp, batch, patch, c, steps):
    """ms per forward + backward of three formulations of the layer norm over channels (the same
    function) on a channels-last (batch, c, patch, patch) fp32 tensor, as the U-Net's first level
    runs it: the model's, F.layer_norm without affine + one addcmul, NAFNet's hand-written one."""
    torch.manual_seed(0)
    norm = models.LayerNorm2d(c).to(device)
    w, b = norm.weight, norm.bias

    def split(x):
        t = F.layer_norm(x.permute(0, 2, 3, 1), (c,))
        return torch.addcmul(b, t, w).permute(0, 3, 1, 2)

    def by_hand(x):
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return w.view(1, -1, 1, 1) * (x - mu) / (var + 1e-5).sqrt() + b.view(1, -1, 1, 1)

    x = torch.randn(batch, c, patch, patch, device=device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out = {}
    for label, fn in (("F.layer_norm (the model's)", norm), ("F.layer_norm + addcmul", split),
                      ("hand-written mean/var", by_hand)):
        def step(fn=fn):
            with torch.autocast("cuda", dtype=amp) if amp is not None else contextlib.nullcontext():
                y = fn(x)
            y.float().square().mean().backward()
        r, _ = rate(step, device, 1, steps)
        out[label] = 1000 / r
    return out


def profile(step, device, rows):
    """The top operations of one profiled step (GPU time on a GPU, else CPU time)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["dncnn", "attention"], choices=list(recipes.RECIPES))
    ap.add_argument("--batch", type=int, default=0, help="crops per step (default: the recipe's)")
    ap.add_argument("--patch", type=int, default=0, help="crop side (default: the recipe's)")
    ap.add_argument("--width", type=int, default=0, help="model width (default: the recipe's)")
    ap.add_argument("--steps", type=int, default=0, help="timed steps per setting (default: 20 GPU, 3 CPU)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile on a CPU (always on a GPU)")
    ap.add_argument("--pairs", type=int, default=0, help="demo pairs for the loader (default: 16 GPU, 6 CPU)")
    ap.add_argument("--image", type=int, default=0, help="demo / restore image side (default: 512 GPU, 128 CPU)")
    ap.add_argument("--profile-rows", type=int, default=12)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    steps = args.steps or (20 if gpu else 3)
    image, n_pairs = args.image or (512 if gpu else 128), args.pairs or (16 if gpu else 6)
    where = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}; torch {torch.__version__}; amp=auto (engine dtype on a GPU: "
          f"{NAMES[inference.amp_dtype()] if gpu else 'fp32'}); compile=False; {steps} timed steps per setting",
          flush=True)
    engine_compiles = False
    engine_amp = inference.amp_dtype() if gpu else None
    lines, notes, profiles = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        demo.make_demo_dataset(Path(tmp) / "demo", train_pages=max(1, n_pairs // 2), test_pages=1,
                               crop=image, show_progress=False)
        pairs = helpers.pair_files(Path(tmp) / "demo/train/clean", Path(tmp) / "demo/train/scan")
        for recipe_name in args.models:
            name, kwargs, cfg = settings(recipe_name, device, args)
            size = f"{cfg.batch_size} x {cfg.patch} px"
            print(f"\n{recipe_name} ({name}, {models.count_parameters(models.build_model(name, **kwargs)):,} "
                  f"parameters), {size}:", flush=True)
            rows, engine_step = [], None
            for label, amp, cl, comp, issue13 in variants(device, args.compile):
                step, _ = make_step(name, kwargs, cfg, device, amp, cl, comp, issue13)
                r, first = rate(step, device, cfg.batch_size, steps)
                default = amp == engine_amp and cl and issue13 and comp == engine_compiles
                engine_step = step if default else engine_step
                note = f"first call {first:.0f} s" if comp else ""
                print(f"  {label}: {r:.1f} crops/s {note}", flush=True)
                rows.append([label + (" *" if default else ""), r, note, True])
            alone, both = trainer_rates(name, kwargs, cfg, pairs, device, steps, tmp)
            load = loader_rate(pairs, cfg, device, max(4, steps))
            bound = load < 1.2 * alone  # the loader could not keep the step busy
            rows += [["engine step (Trainer.train_step, synthetic batch)", alone, "", True],
                     [f"loader alone ({cfg.workers} workers)", load, "", False],
                     ["end to end (loader + engine step)", both, f"{100 * both / alone:.0f}% of the engine step", True]]
            reference = next(r for label, r, *_ in rows if label.startswith("fp32, channels-last"))
            lines += [(recipe_name, size, label, r, note, r / reference if ratio else None)
                      for label, r, note, ratio in rows]
            notes.append(f"{recipe_name}: data-bound? {'YES' if bound else 'no'} (loader alone {load:.0f} crops/s, "
                         f"engine step {alone:.0f}; end to end {both:.0f}, {100 * both / alone:.0f}% of the step)")
            per_pass = 8 if gpu else 2
            r = restore_rates(name, kwargs, device, image, per_pass, 2 * per_pass)
            notes.append(f"{recipe_name}: restore() {image}x{image} px, {per_pass} per pass: {r[False]:.2f} "
                         f"images/s single pass, {r[True]:.2f} images/s x8 self-ensemble")
            profiles.append((recipe_name, profile(engine_step or step, device, args.profile_rows)))
            if name == "attention_unet":
                width = kwargs["width"]
                ln = layer_norm_times(device, engine_amp, cfg.batch_size, cfg.patch, width, steps)
                notes.append(f"layer norm over channels, forward + backward on {cfg.batch_size} x {width} x "
                             f"{cfg.patch} x {cfg.patch}, ms: " + ", ".join(f"{k} {v:.2f}" for k, v in ln.items()))
    print("\n| model | batch x patch | setting | crops/s | vs fp32 channels-last | note |")
    print("| --- | --- | --- | ---: | ---: | --- |")
    for m, s, lab, r, note, ratio in lines:
        print(f"| {m} | {s} | {lab} | {r:.1f} | {f'{ratio:.2f}x' if ratio else '-'} | {note} |")
    print("\n* = the engine's default on this machine.\n" + "\n".join(notes))
    for recipe_name, table in profiles:
        print(f"\ntop operations of one profiled {recipe_name} step (engine's default setting):\n{table}")


if __name__ == "__main__":
    main()
