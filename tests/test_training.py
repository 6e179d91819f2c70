"""The training engine: resume after a crash, checkpoint safety, crops, budgets, run names."""
import dataclasses
import math
import types

import numpy as np
import pandas as pd
import pytest
import torch

import helpers
from builders import notebook_model, notebook_run
from descan import checkpoints, crops, data, demo, engine, inference, losses, optim, recipes

TINY = {"width": 8, "depth": 3}  # a DnCNN small enough to train in a second on a CPU
TINY_UNET = dict(width=8, enc_blocks=(1, 1, 1), mid_blocks=1, dec_blocks=(1, 1, 1))  # 04's model, tiny
TINY_SIZES = dict(epochs=2, crops_per_epoch=32, batch_size=8, patch=32, crops_per_image=4, workers=0,
                  checkpoint_minutes=0.0)  # checkpoint_minutes=0: `last` is saved after every step


def tiny_run(recipe="dncnn", model_kwargs=None, **settings):
    """Notebook 03's (``dncnn``) or 04's (``attention``) recipe in smoke mode on the CPU, with a tiny
    model and tiny sizes, plus ``settings``."""
    kwargs = model_kwargs or (TINY if recipe == "dncnn" else {**TINY_UNET, "colour_head": True})
    return notebook_run(recipe, model_kwargs=kwargs, **{**TINY_SIZES, **settings})


def trainer(run, train, val, folder):
    return engine.Trainer(run, train, val, folder, "cpu", "demo")


def weights(t):
    return {k: v.clone() for k, v in t.model.state_dict().items()}


class Crash(Exception):
    pass


@pytest.mark.parametrize("recipe", ["dncnn", "attention"], ids=["03 recipe", "04 recipe"])
def test_resume_after_crash_gives_the_same_weights(demo_pairs, tmp_path, recipe):
    """Every crop is seeded by (seed, epoch, index), so a resumed run is bit-identical; the RNG
    states saved in last.pt matter only to code that draws from the global generators."""
    train, val = demo_pairs
    full = trainer(tiny_run(recipe), train, val, tmp_path / "full")
    full.fit()
    assert full.step == 8 and full.epoch == 2  # 2 epochs x (32 crops / 8 per batch)

    def crash(step):
        if step == 3:  # dies mid-way through the first epoch, before step 3 is saved
            raise Crash()

    with pytest.raises(Crash):
        trainer(tiny_run(recipe), train, val, tmp_path / "cut").fit(on_step=crash)
    resumed = trainer(tiny_run(recipe), train, val, tmp_path / "cut")
    assert resumed.resume() and resumed.step == 2 and resumed.epoch == 0
    resumed = trainer(tiny_run(recipe), train, val, tmp_path / "cut")
    resumed.fit()
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if full.cfg.ema_decay:  # the 04 recipe averages the weights: the average resumes exactly too
        for (k, x), y in zip(full.ema.state_dict().items(), resumed.ema.state_dict().values()):
            assert torch.equal(x, y), k
    assert [r["val_score"] for r in full.history] == [r["val_score"] for r in resumed.history]
    # A finished run is not trained again; its history, best checkpoint and plot are on disk.
    assert trainer(tiny_run(recipe), train, val, tmp_path / "cut").fit()["steps"] == 8
    for f in ("last.pt", "best.pt", "history.csv", "history.png"):
        assert (tmp_path / "cut" / f).stat().st_size > 0


def test_a_resume_at_the_end_of_an_epoch_records_no_made_up_training_loss(demo_pairs, tmp_path,
                                                                          capsys):
    """Stopped after an epoch's last step, before its validation: the resumed run validates that
    epoch with no step of its own, and says so instead of recording a training loss of 0."""
    train, val = demo_pairs

    def stop(step):
        if step == 4:  # the first epoch's last step (32 crops / 8 per batch)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer(tiny_run(), train, val, tmp_path / "run").fit(on_step=stop)
    trainer(tiny_run(), train, val, tmp_path / "run").fit()
    history = pd.read_csv(tmp_path / "run/history.csv")
    assert list(history["step"]) == [0, 4, 8]  # step 0: the starting point, validated
    assert history["train_loss"][:2].isna().all() and history["train_loss"][2] > 0
    assert "train loss n/a (no step since the last validation)" in capsys.readouterr().out


def test_a_patch_larger_than_the_images_or_the_memory_is_named(demo_pairs, tmp_path, monkeypatch):
    from descan import crops
    train, val = demo_pairs  # 48-pixel crops
    with pytest.raises(helpers.DataError, match=r"patch=100000 is larger than the training images"
                       r" \(.* is 48x48\).*settings cell"):
        trainer(tiny_run(patch=100000), train, val, tmp_path / "a").fit()
    monkeypatch.setattr(crops, "available_memory", lambda: 2 ** 16)  # a machine with 64 KiB free
    with pytest.raises(helpers.DataError, match=r"batch_size=8 crops of patch=32 need .* GiB for "
                       r"the batch alone; 0\.0 GiB are available"):
        trainer(tiny_run(), train, val, tmp_path / "b").fit()
    assert not (tmp_path / "a/best.pt").exists() and not (tmp_path / "b/best.pt").exists()


def test_running_out_of_memory_while_training_names_the_settings(demo_pairs, tmp_path):
    train, val = demo_pairs
    t = trainer(tiny_run(), train, val, tmp_path / "run")

    def step(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    t.train_step = step
    with pytest.raises(helpers.DataError, match=r"out of cpu memory with batch_size=8 and "
                       r"patch=32 \(at step 0\): lower them"):
        t.fit()


def test_resume_refuses_a_different_run(demo_pairs, tmp_path, monkeypatch):
    train, val = demo_pairs
    trainer(tiny_run(epochs=1), train, val, tmp_path).fit()
    monkeypatch.setenv("DESCAN_RESUME", "continue")  # not even deliberately: these decide the crops or the model
    with pytest.raises(checkpoints.CheckpointError, match=r"patch 32 -> 24\. patch differ, so this run cannot go on"):
        trainer(tiny_run(patch=24), train, val, tmp_path).fit()
    with pytest.raises(checkpoints.CheckpointError, match="training/validation pairs differ"):
        trainer(tiny_run(), train[1:], val, tmp_path).fit()
    with pytest.raises(checkpoints.CheckpointError, match=r"width 8 -> 9.*the model \(DnCNN: its arguments"):
        trainer(tiny_run(model_kwargs={**TINY, "width": 9}), train, val, tmp_path).fit()
    edited = tiny_run()  # a student edited the model cell: the same arguments, other code
    edited["model"]["code"] = edited["model"]["code"].replace("nn.ReLU(inplace=True)", "nn.GELU()")
    with pytest.raises(checkpoints.CheckpointError, match=r"the model \(DnCNN: its arguments or its code\)"):
        trainer(edited, train, val, tmp_path).fit()


def test_a_changed_lr_stops_with_the_ways_out_then_continues_on_request(demo_pairs, tmp_path, monkeypatch, capsys):
    train, val = demo_pairs
    folder = tmp_path / "dncnn"
    trainer(tiny_run(epochs=1), train, val, folder).fit()
    run = tiny_run()
    run["config"] = recipes.parse_overrides(["lr=0.0003", "epochs=2"], run["config"])  # as on the command line
    assert run["config"].lr == 0.0003
    with pytest.raises(checkpoints.CheckpointError) as e:
        trainer(run, train, val, folder).fit()
    msg = str(e.value)
    assert "lr 0.001 -> 0.0003" in msg and "DESCAN_RUN_NAME=dncnn-lr0.0003" in msg and "DESCAN_RESUME=continue" in msg
    monkeypatch.setenv("DESCAN_RESUME", "continue")
    t = trainer(run, train, val, folder)
    r = t.fit()
    assert r["epochs"] == 2 and t.optimizer.param_groups[0]["lr"] == pytest.approx(0.0003)
    assert [row["settings_changed"] for row in r["history"]] == ["", "", "lr 0.001 -> 0.0003"]
    assert list(pd.read_csv(folder / "history.csv")["settings_changed"].fillna("")) == ["", "", "lr 0.001 -> 0.0003"]
    # a finished run says what it is and how to extend or restart it
    capsys.readouterr()
    trainer(run, train, val, folder).fit()
    out = capsys.readouterr().out
    assert "Nothing to train: run 'dncnn'" in out and "raise epochs (now 2)" in out and "DESCAN_RUN_NAME" in out


def test_budget_stops_training_says_so_and_still_validates(demo_pairs, tmp_path, capsys):
    train, val = demo_pairs
    r = trainer(tiny_run(epochs=50, budget_minutes=1e-6), train, val, tmp_path).fit()
    assert r["steps"] == 1 and len(r["history"]) == 2 and np.isfinite(r["best_score"])  # steps 0, 1
    assert (tmp_path / "best.pt").exists()
    out = capsys.readouterr().out
    assert "Budget of 1e-06 min spent after 1 steps (25% of epoch 1); best validation score" in out
    best = min(r["history"], key=lambda row: row["val_score"])
    assert f"{best['val_score']:.4f} at step {best['step']} (do nothing: " in out
    row = r["history"][1]
    assert row["loss_name"].startswith("MSE") and row["do_nothing_score"] > 0  # the loss cell's docstring


def test_best_checkpoint_rebuilds_the_model_from_the_file_alone(demo_pairs, tmp_path):
    train, val = demo_pairs
    run = tiny_run(epochs=1)
    t = trainer(run, train, val, tmp_path)
    t.fit()
    state = checkpoints.load_checkpoint(tmp_path / "best.pt", kind="best")
    assert state["model_code"] == run["model"]["code"] and "class DnCNN" in state["model_code"]
    model = checkpoints.model_from_checkpoint(state)
    assert type(model).__name__ == "DnCNN" and len(model.body) == 2 + 3 * 1 + 1
    again = inference.evaluate(model, [(helpers.read_rgb(p.clean), helpers.read_rgb(p.scan)) for p in val],
                               groups=[data.scanner_group(p.name) for p in val])
    assert again["score"] == pytest.approx(state["val"]["score"], abs=1e-9)  # seen scanners
    assert again["unseen_score"] == pytest.approx(state["val"]["unseen_score"], abs=1e-9)
    assert state["val"]["score"] == min(row["val_score"] for row in t.history)


def best_state(model, step=1):
    """A best.pt state in the checkpoint schema, for notebook 03's model."""
    return {"kind": "best", "model_name": "DnCNN", "model_kwargs": TINY, "model_code": tiny_run()["model"]["code"],
            "model": model.state_dict(), "val": {"score": 1.0}, "epoch": 1, "step": step, "config": {},
            "data_kind": "demo"}


def test_checkpoint_schema_is_checked_when_writing(tmp_path):
    state = best_state(notebook_model("dncnn", **TINY))
    with pytest.raises(ValueError, match=r"missing keys \['val'\]"):
        checkpoints.save_checkpoint({k: v for k, v in state.items() if k != "val"}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"missing keys \['model_code'\]"):
        checkpoints.save_checkpoint({k: v for k, v in state.items() if k != "model_code"}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="'kind' must be 'best' or 'last'"):
        checkpoints.save_checkpoint({**state, "kind": "other"}, tmp_path / "a.pt")
    checkpoints.save_checkpoint(state, tmp_path / "a.pt")
    with pytest.raises(checkpoints.CheckpointError, match="is a 'best' checkpoint, expected 'last'"):
        checkpoints.load_checkpoint(tmp_path / "a.pt", kind="last")
    assert checkpoints.best_path(tmp_path, "r") == tmp_path / "runs" / "r" / "best.pt"


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    model = notebook_model("dncnn", **TINY)
    checkpoints.save_checkpoint(best_state(model, step=1), path)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the user pressed stop in the middle of the write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(best_state(model, step=2), path)
    assert path.read_bytes() == before
    assert checkpoints.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary file left behind


def test_corrupt_and_foreign_checkpoints_get_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    checkpoints.save_checkpoint(best_state(notebook_model("dncnn", **TINY)), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(checkpoints.CheckpointError, match="cut.pt is corrupt"):
        checkpoints.load_checkpoint(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save(notebook_model("dncnn", **TINY).state_dict(), foreign)
    with pytest.raises(checkpoints.CheckpointError, match="foreign.pt is not a descanning checkpoint.*bare state_dict"):
        checkpoints.load_checkpoint(foreign)
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint at .*missing.pt.*notebook 03"):
        checkpoints.load_checkpoint(tmp_path / "missing.pt")
    unknown = tmp_path / "unknown.pt"  # its code defines no class of that name
    checkpoints.save_checkpoint({**best_state(notebook_model("dncnn", **TINY)), "model_name": "vitgan"}, unknown)
    with pytest.raises(checkpoints.CheckpointError, match=r"defines no class 'vitgan', only \['DnCNN'\]"):
        checkpoints.model_from_checkpoint(unknown)
    no_code = tmp_path / "no_code.pt"  # no code, and not a model the kit knows by name
    checkpoints.save_checkpoint({**best_state(notebook_model("dncnn", **TINY)), "model_name": "vitgan",
                                 "model_code": None}, no_code)
    with pytest.raises(checkpoints.CheckpointError, match="names model 'vitgan' but holds no code for it.*Train it again"):
        checkpoints.model_from_checkpoint(no_code)


def test_crops_are_aligned_augmented_and_repeatable(demo_pairs):
    train, _ = demo_pairs
    # scan := clean, so any misalignment between the two crops would show as a difference
    same = [helpers.Pair(p.name, p.clean, p.clean) for p in train]
    ds = crops.CropDataset(same, patch=24, crops_per_image=4, items_per_epoch=6, seed=3)
    clean, scan = ds[2]
    assert scan.shape == (4, 24, 24, 3) and torch.equal(scan, clean)
    again = crops.CropDataset(same, 24, 4, 6, seed=3)
    assert torch.equal(again[2][1], scan)
    again.set_epoch(1)
    assert not torch.equal(again[2][1], scan)
    # resuming mid-epoch starts at the same item
    again.set_epoch(0, start=2)
    assert len(again) == 4 and torch.equal(again[0][1], scan)


def test_degradation_augmentation_changes_inputs_not_targets(demo_pairs):
    train, _ = demo_pairs
    plain = crops.CropDataset(train, 32, 4, 4, seed=5)
    degraded = crops.CropDataset(train, 32, 4, 4, seed=5, degrade=demo.input_augment(1.0))
    (c0, s0), (c1, s1) = plain[1], degraded[1]
    assert torch.equal(c0, c1)
    assert not torch.equal(s0, s1)


def test_mean_y_loss_term_sees_a_global_shift():
    run = notebook_run("attention", mean_y_weight=1.0)  # notebook 04's loss cell
    loss, no_head = losses.from_code(run["loss_code"]), types.SimpleNamespace(global_estimate=None)
    target = torch.full((2, 3, 8, 8), 0.5)
    shifted = target + 0.1
    # L1 of 0.1 plus |mean Y error| of 0.1 (the Y weights sum to 1)
    assert loss(shifted, target, no_head, run["config"]).item() == pytest.approx(0.2, abs=1e-6)
    # a colour change that keeps every pixel's Y adds nothing to the mean-Y term
    neutral = target + torch.tensor([0.1, 0.0, -0.299 * 0.1 / 0.114]).view(1, 3, 1, 1)
    assert losses.mean_y_error(neutral, target).item() == pytest.approx(0.0, abs=1e-6)


def test_ema_warms_up_then_averages(demo_pairs, tmp_path, monkeypatch):
    """The trainer moves the average by 1 - min(ema_decay, (1 + step) / (10 + step)): fast at the
    start, so the random initial weights fade, then at the configured decay."""
    train, val = demo_pairs
    t = trainer(tiny_run(ema_decay=0.999, epochs=1), train, val, tmp_path)
    decays = []
    real = optim.update_ema
    monkeypatch.setattr(optim, "update_ema", lambda ema, model, decay: (decays.append(decay), real(ema, model, decay)))
    t.fit()
    assert decays == pytest.approx([0.1, 2 / 11, 3 / 12, 4 / 13])
    assert min(0.999, (1 + 10_000) / (10 + 10_000)) == 0.999  # later: the configured decay
    # one update moves every weight by 1 - decay of the way (the averaged model starts as a copy)
    ema, model = notebook_model("dncnn", **TINY), notebook_model("dncnn", **TINY)
    ema.load_state_dict(model.state_dict())
    start = ema.body[0].weight.detach().clone()
    with torch.no_grad():
        model.body[0].weight.add_(1.0)
    optim.update_ema(ema, model, 0.1)
    assert torch.allclose(ema.body[0].weight, start + 0.9, atol=1e-6)
    before = ema.body[0].weight.clone()
    optim.update_ema(ema, model, 0.999)
    assert torch.allclose(ema.body[0].weight, before + 0.001 * (model.body[0].weight - before), atol=1e-6)


def test_a_patch_that_is_not_a_multiple_of_8_trains_the_attention_model(demo_pairs, tmp_path):
    """A patch of 100 once died in an unexplained cell of 04; the model now pads itself."""
    train, val = demo_pairs
    r = trainer(tiny_run("attention", patch=44, epochs=1, crops_per_epoch=8), train, val, tmp_path).fit()
    assert r["steps"] == 1 and np.isfinite(r["best_score"])


def test_a_model_with_5d_weights_trains(demo_pairs, tmp_path):
    """The engine's faster channels_last layout is for 4-D weights; a student's Conv3d (5-D) once
    stopped the run in Trainer with "required rank 4 tensor"."""
    code = ("from torch import nn\n\n\nclass Lift(nn.Module):\n    def __init__(self):\n"
            "        super().__init__()\n        self.conv = nn.Conv3d(1, 1, 3, padding=1)\n\n"
            "    def forward(self, x):\n        return x + self.conv(x.unsqueeze(1)).squeeze(1)\n")
    run = tiny_run(epochs=1, crops_per_epoch=8)
    run["model"] = {"name": "Lift", "kwargs": {}, "code": code}
    train, val = demo_pairs
    r = trainer(run, train, val, tmp_path).fit()
    assert r["steps"] == 1 and np.isfinite(r["best_score"])


def test_a_batch_that_is_not_a_multiple_of_crops_per_image_is_refused_by_name():
    cuda = torch.device("cuda")  # notebook 03's GPU recipe (8 crops per image); no GPU needed to read it
    with pytest.raises(ValueError, match=r"batch_size=20 must be a multiple of crops_per_image=8"):
        recipes.from_notebook("dncnn", cuda, smoke=False, overrides=["batch_size=20"])
    run = recipes.from_notebook("dncnn", cuda, smoke=False, overrides=["batch_size=20", "crops_per_image=4"])
    assert run["config"].batch_size == 20
    with pytest.raises(ValueError, match=r"batch_size=20 must be a multiple of crops_per_image=8"):
        recipes.TrainConfig(batch_size=20)
    with pytest.raises(ValueError, match=r"'batch=20' is not a setting.*batch_size"):
        recipes.parse_overrides(["batch=20"], recipes.TrainConfig())
    with pytest.raises(ValueError, match=r"batch_size='abc'"):
        recipes.parse_overrides(["batch_size=abc"], recipes.TrainConfig())


def test_a_cpu_recipe_validates_every_minute_or_two_of_its_budget():
    """best.pt gets a candidate at every epoch's end: on a CPU (one step takes about a second or
    two) an epoch is kept short, and the epochs outlast the budget."""
    for recipe in ("dncnn", "attention"):
        cfg = recipes.from_notebook(recipe, torch.device("cpu"), smoke=False)["config"]
        steps = cfg.crops_per_epoch // cfg.batch_size
        # a CPU makes about 1,200 steps of 03's model, 700 of 04's, in 10 minutes (docs/benchmarks.md)
        assert steps <= 60 and cfg.epochs * steps >= 2000 and cfg.budget_minutes == 10.0, (recipe, cfg)
    gpu = recipes.from_notebook("dncnn", torch.device("cuda"), smoke=False)["config"]
    assert gpu.crops_per_epoch // gpu.batch_size == 160


@pytest.mark.parametrize("bad", ["", "..", "a/b", "../../etc"])
def test_a_run_name_cannot_leave_the_runs_folder(tmp_path, bad):
    with pytest.raises(ValueError, match="DESCAN_RUN_NAME"):
        checkpoints.run_dir(tmp_path, bad)
    assert checkpoints.run_dir(tmp_path, "dncnn-lr0.0003") == tmp_path / "runs" / "dncnn-lr0.0003"


@pytest.mark.parametrize("minutes, seconds_per_step", [(1, 0.5), (1, 1.2), (90, 0.5)],
                         ids=["1 min, 120 steps", "1 min busy, 50 steps", "90 min, 10800 steps"])
def test_the_warm_up_is_sized_to_the_budget_and_the_peak_lr_is_reached(minutes, seconds_per_step):
    """04's schedule (warm-up 200 steps, cosine) on a fake clock: the warm-up takes at most 5% of
    the steps the budget allows, and the learning rate comes within 2% of the recipe's."""
    cfg = dataclasses.replace(tiny_run("attention")["config"], schedule="cosine", warmup_steps=200,
                              budget_minutes=minutes, epochs=10_000)
    allowed = int(minutes * 60 / seconds_per_step)
    total = cfg.epochs * 1000  # the epochs alone would take far longer than the budget
    factors = [optim.lr_factor(cfg, step, total, step * seconds_per_step) for step in range(allowed)]
    peak = int(np.argmax(factors))
    assert peak <= math.ceil(0.05 * allowed) + 1, (peak, allowed)
    assert max(factors) >= 0.98
    assert factors[-1] < 0.01  # the cosine ends with the budget


@pytest.mark.parametrize("lut", [True, False], ids=["colour LUT", "colour head"])
def test_step_0_of_the_04_recipe_scores_the_colour_fit_and_is_a_candidate(demo_pairs, tmp_path, lut):
    """04's model starts as the classical fit of the training pairs (its colour LUT fitted, or
    without one its colour head set to the least-squares map; its other paths adding nothing):
    step 0 is validated and can be best.pt."""
    from descan import colourmap
    train, val = demo_pairs
    kwargs = {**TINY_UNET, "colour_head": True, "colour_lut": lut}
    t = trainer(tiny_run("attention", model_kwargs=kwargs, epochs=1), train, val, tmp_path / "run")
    t.fit()
    history = pd.read_csv(tmp_path / "run/history.csv")
    _, fitted = colourmap.fit_colour_map(train, val, show_progress=False, lut_size=17 if lut else 0)
    assert history["step"][0] == 0 and np.isnan(history["train_loss"][0])
    assert abs(history["val_score"][0] - fitted["score"]) <= 0.05, (history["val_score"][0], fitted)
    best = checkpoints.load_checkpoint(tmp_path / "run/best.pt", kind="best")
    assert best["val"]["score"] <= fitted["score"] + 0.05  # never worse than the classical fit
