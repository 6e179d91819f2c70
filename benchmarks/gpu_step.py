"""Where a training step's time goes, on a GPU (or a CPU): step rates in fp32, AMP, channels-last
and torch.compile, the loader alone, end to end, restore() speed, and one profiled step.

    python benchmarks/gpu_step.py                          # everything, at the notebooks' sizes
    python benchmarks/gpu_step.py --amp fp16               # the engine rows with another AMP setting
    python benchmarks/gpu_step.py --compile                # the engine rows with torch.compile
    python benchmarks/gpu_step.py --batch 4 --patch 32 --width 8 --steps 1 --image 64   # toy run

The models, losses and settings are the notebooks' (recipes.from_notebook: the model cell's code,
the loss cell, the parameter cell as it reads on this device): on a GPU each notebook model at its
notebook's GPU batch x patch, without one at its CPU settings (16 x 64 px). torch.compile rows only
on a GPU or with --compile (its first call takes minutes on 2 cores). A *step* is forward, the
notebook's loss, backward and the optimiser step (descan/optim.py's), on synthetic tensors; ratios
are against fp32, channels-last. "engine step" is Trainer.train_step itself on a synthetic uint8
batch (adds the lr schedule, gradient clipping and the EMA); "end to end" feeds it from the
engine's loader (its worker count, decoded cache, augmentations) on DEMO pairs, as 03/04 train.
The engine rows use the training settings amp (--amp, default "auto") and compile (--compile);
the row marked * is the timed setting they match. Figures depend on the machine; run it on yours.
"""
import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers  # noqa: E402
from descan import crops, demo, engine, inference, losses, models, optim, recipes  # noqa: E402

NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def precision(device, amp) -> str:
    """What the amp setting ``amp`` computes in on ``device``: bf16, fp16 or fp32."""
    return NAMES[inference.amp_dtype(amp)] if device.type == "cuda" else "fp32"


def notebook_settings(recipe, device, args) -> dict:
    """The notebook's run (recipes.from_notebook) at this run's sizes, amp and compile settings."""
    run = recipes.from_notebook(recipe, device, smoke=False)
    cfg = run["config"]
    batch, patch = args.batch or cfg.batch_size, args.patch or cfg.patch
    k = cfg.crops_per_image if batch % cfg.crops_per_image == 0 else batch
    run["config"] = dataclasses.replace(cfg, batch_size=batch, patch=patch, crops_per_image=k,
                                        workers=crops.default_workers(device), amp=args.amp,
                                        compile=args.compile)
    if args.width:
        run["model"]["kwargs"] = {**run["model"]["kwargs"], "width": args.width}
    return run


def build(run):
    spec = run["model"]
    return models.build(spec["code"], spec["name"], spec["kwargs"])


def variants(device, amp, compile_too):
    """(label, amp setting, channels-last, compile) of every timed setting: fp32, on a GPU the AMP
    dtypes, and torch.compile with ``amp`` (on a CPU only when ``compile_too``)."""
    rows = [("fp32, contiguous", "off", False, False), ("fp32, channels-last", "off", True, False)]
    if device.type == "cuda":
        first = precision(device, amp) if precision(device, amp) != "fp32" else "bf16"
        other = "fp16" if first == "bf16" else "bf16"
        rows += [(f"{first} autocast, contiguous", first, False, False),
                 (f"{first}, channels-last", first, True, False),
                 (f"{other}, channels-last" + (" + GradScaler" if other == "fp16" else ""), other,
                  True, False)]
    if compile_too or device.type == "cuda":
        rows.append((f"{precision(device, amp)}, channels-last, torch.compile",
                     amp if device.type == "cuda" else "off", True, True))
    return rows


def make_step(run, device, amp, channels_last, compiled):
    """A training step of the run's model on fixed synthetic tensors (settings ``amp`` and
    ``compiled``, memory format), and the model."""
    torch.manual_seed(0)
    cfg = run["config"]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build(run).to(device).to(memory_format=fmt)
    opt = optim.make_optimizer(model.parameters(), cfg, device)
    net = inference.compile_model(model, enabled=compiled)
    scaler = torch.amp.GradScaler("cuda", enabled=inference.use_grad_scaler(device, amp))
    loss_fn = losses.from_code(run["loss_code"])
    x = torch.rand(cfg.batch_size, 3, cfg.patch, cfg.patch, device=device)
    x = x.contiguous(memory_format=fmt)
    y = (x * 0.9 + 0.05).contiguous()

    def step():
        with inference.autocast(device, amp):
            out = net(x)
        loss = loss_fn(out, y, model, cfg)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return step, net


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


def augment_of(cfg):
    """The engine's input augmentation for ``cfg`` (None when off)."""
    return demo.input_augment(cfg.degrade_prob, cfg.colour_jitter)


def loader_rate(pairs, cfg, device, batches):
    """Crops per second of the engine's loader alone (its workers, cache and augmentations)."""
    k = cfg.crops_per_image
    items = (batches + 2) * cfg.batch_size // k
    ds = crops.CropDataset(pairs, cfg.patch, k, items, cfg.seed, cfg.augment,
                           crops.build_cache(pairs, show_progress=False), augment_of(cfg))
    it = iter(crops.make_loader(ds, cfg.batch_size // k, cfg.workers, device))
    next(it)  # worker start-up is not throughput
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        n += next(it)[0].shape[0]
    return n / (time.perf_counter() - t0)


def trainer_rates(run, pairs, device, steps, workdir):
    """Trainer.train_step on one synthetic uint8 batch, then fed by the engine's loader (end to end)."""
    cfg = run["config"]
    trainer = engine.Trainer(run, pairs[:-1], pairs[-1:], Path(workdir) / run["recipe"], device, "demo")
    k = cfg.crops_per_image
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (cfg.batch_size, cfg.patch, cfg.patch, 3), dtype=torch.uint8,
                          generator=gen)
    scan = clean.clone()
    alone, _ = rate(lambda: trainer.train_step(clean, scan, 10_000), device, cfg.batch_size, steps)
    ds = crops.CropDataset(pairs, cfg.patch, k, (steps + 4) * cfg.batch_size // k, cfg.seed,
                           cfg.augment, crops.build_cache(pairs, show_progress=False), augment_of(cfg))
    it = iter(crops.make_loader(ds, cfg.batch_size // k, cfg.workers, device))
    both, _ = rate(lambda: trainer.train_step(*next(it), 10_000), device, cfg.batch_size, steps)
    return alone, both


def restore_rates(run, device, size, images_per_pass, n):
    """restore() images per second, single pass and x8 self-ensemble, on n images of size x size,
    with the run's amp setting."""
    model = build(run).to(device).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    images = list(torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=gen).numpy())
    amp, out = run["config"].amp, {}
    for ensemble in (False, True):
        inference.restore(model, images[:images_per_pass], device, images_per_pass, ensemble,
                          amp=amp)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        inference.restore(model, images, device, images_per_pass, ensemble, amp=amp)
        sync(device)
        out[ensemble] = n / (time.perf_counter() - t0)
    return out


def layer_norm_times(layer_norm, device, amp, batch, patch, c, steps):
    """ms per forward + backward of three formulations of the layer norm over channels (the same
    function) on a channels-last (batch, c, patch, patch) fp32 tensor, as the U-Net's first level
    runs it: the model's (``layer_norm``, the class of 04's model cell), F.layer_norm without
    affine + one addcmul, NAFNet's hand-written one."""
    torch.manual_seed(0)
    norm = layer_norm(c).to(device)
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
            with inference.autocast(device, amp):
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


def measure(recipe, device, args, steps, pairs, image, tmp):
    """The table rows, notes and profile of one notebook's model."""
    run = notebook_settings(recipe, device, args)
    cfg, gpu = run["config"], device.type == "cuda"
    size = f"{cfg.batch_size} x {cfg.patch} px"
    print(f"\n{recipe} ({run['model']['name']}, {models.count_parameters(build(run)):,} parameters), "
          f"{size}:", flush=True)
    rows, engine_step = [], None
    for label, amp, cl, comp in variants(device, cfg.amp, args.compile):
        step, _ = make_step(run, device, amp, cl, comp)
        r, first = rate(step, device, cfg.batch_size, steps)
        default = precision(device, amp) == precision(device, cfg.amp) and cl and comp == cfg.compile
        engine_step = step if default else engine_step
        note = f"first call {first:.0f} s" if comp else ""
        print(f"  {label}: {r:.1f} crops/s {note}", flush=True)
        rows.append([label + (" *" if default else ""), r, note, True])
    alone, both = trainer_rates(run, pairs, device, steps, tmp)
    load = loader_rate(pairs, cfg, device, max(4, steps))
    share = f"{100 * both / alone:.0f}% of the engine step"
    rows += [["engine step (Trainer.train_step, synthetic batch)", alone, "", True],
             [f"loader alone ({cfg.workers} workers)", load, "", False],
             ["end to end (loader + engine step)", both, share, True]]
    reference = next(r for label, r, *_ in rows if label.startswith("fp32, channels-last"))
    lines = [(recipe, size, label, r, note, r / reference if ratio else None)
             for label, r, note, ratio in rows]
    notes = [f"{recipe}: data-bound? {'YES' if load < 1.2 * alone else 'no'} (loader alone "
             f"{load:.0f} crops/s, engine step {alone:.0f}; end to end {both:.0f}, {share})"]
    per_pass = 8 if gpu else 2
    r = restore_rates(run, device, image, per_pass, 2 * per_pass)
    notes.append(f"{recipe}: restore() {image}x{image} px, {per_pass} per pass: {r[False]:.2f} "
                 f"images/s single pass, {r[True]:.2f} images/s x8 self-ensemble")
    layer_norm = models.run_code(run["model"]["code"], "<model code>").get("LayerNorm2d")
    if layer_norm is not None:  # 04's U-Net
        width = run["model"]["kwargs"]["width"]
        ln = layer_norm_times(layer_norm, device, cfg.amp, cfg.batch_size, cfg.patch, width, steps)
        notes.append(f"layer norm over channels, forward + backward on {cfg.batch_size} x {width} "
                     f"x {cfg.patch} x {cfg.patch}, ms: "
                     + ", ".join(f"{k} {v:.2f}" for k, v in ln.items()))
    return lines, notes, profile(engine_step or step, device, args.profile_rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(recipes.NOTEBOOKS),
                    choices=list(recipes.NOTEBOOKS), help="the notebooks' recipes to measure")
    ap.add_argument("--batch", type=int, default=0, help="crops per step (default: the notebook's)")
    ap.add_argument("--patch", type=int, default=0, help="crop side (default: the notebook's)")
    ap.add_argument("--width", type=int, default=0, help="model width (default: the notebook's)")
    ap.add_argument("--steps", type=int, default=0,
                    help="timed steps per setting (default: 20 GPU, 3 CPU)")
    ap.add_argument("--amp", default="auto", choices=("auto", *inference.AMP_DTYPES),
                    help="the engine rows' mixed precision setting (default: auto)")
    ap.add_argument("--compile", action="store_true",
                    help="the engine rows with torch.compile; on a CPU also its timed row")
    ap.add_argument("--pairs", type=int, default=0,
                    help="demo pairs for the loader (default: 16 GPU, 6 CPU)")
    ap.add_argument("--image", type=int, default=0,
                    help="demo / restore image side (default: 512 GPU, 128 CPU)")
    ap.add_argument("--profile-rows", type=int, default=12)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    steps = args.steps or (20 if gpu else 3)
    image, n_pairs = args.image or (512 if gpu else 128), args.pairs or (16 if gpu else 6)
    where = torch.cuda.get_device_name() if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}; torch {torch.__version__}; engine rows: amp={args.amp} (computes in "
          f"{precision(device, args.amp)} here), compile={args.compile}; {steps} timed steps per "
          "setting", flush=True)
    lines, notes, profiles = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        demo.make_demo_dataset(Path(tmp) / "demo", train_pages=max(1, n_pairs // 2), test_pages=1,
                               crop=image, show_progress=False)
        pairs = helpers.pair_files(Path(tmp) / "demo/train/clean", Path(tmp) / "demo/train/scan")
        for recipe in args.models:
            more_lines, more_notes, table = measure(recipe, device, args, steps, pairs, image, tmp)
            lines, notes = lines + more_lines, notes + more_notes
            profiles.append((recipe, table))
    print("\n| model | batch x patch | setting | crops/s | vs fp32 channels-last | note |")
    print("| --- | --- | --- | ---: | ---: | --- |")
    for m, s, lab, r, note, ratio in lines:
        print(f"| {m} | {s} | {lab} | {r:.1f} | {f'{ratio:.2f}x' if ratio else '-'} | {note} |")
    print("\n* = the timed setting of the engine rows (amp, compile).\n" + "\n".join(notes))
    for recipe, table in profiles:
        print(f"\ntop operations of one profiled {recipe} step (the engine rows' setting):\n{table}")


if __name__ == "__main__":
    main()
