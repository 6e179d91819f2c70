"""The training engine: resume after a crash, checkpoint safety, inference, parameter rule."""
import numpy as np
import pytest
import torch

import helpers

TINY = {"width": 8, "depth": 3}  # a DnCNN small enough to train in a second on a CPU


@pytest.fixture(scope="module")
def demo_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    helpers.make_demo_dataset(root, train_pages=6, test_pages=1, crops_per_page=2, crop=48, progress=False)
    pairs = helpers.pair_files(root / "train/clean", root / "train/scan")
    split = helpers.split_names([p.name for p in pairs], val_fraction=0.2, seed=0)
    return ([p for p in pairs if split[p.name] == "train"], [p for p in pairs if split[p.name] == "val"])


def tiny_cfg(**kw):
    base = dict(epochs=2, crops_per_epoch=32, batch_size=8, patch=32, crops_per_image=4, workers=0,
                checkpoint_minutes=0.0)  # checkpoint_minutes=0: `last` is saved after every step
    return helpers.TrainConfig(**{**base, **kw})


def weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


class Crash(Exception):
    pass


RECIPE_04 = dict(loss="l1", mean_y_weight=0.5, optimizer="adamw", weight_decay=1e-4, schedule="cosine",
                 warmup_steps=2, grad_clip=1.0, ema_decay=0.9, degrade_prob=0.5)


@pytest.mark.parametrize("recipe", [{}, RECIPE_04], ids=["03 recipe", "04 recipe"])
def test_resume_after_crash_gives_the_same_weights(demo_pairs, tmp_path, recipe):
    train, val = demo_pairs

    def cfg():
        return tiny_cfg(**recipe)
    full = helpers.Trainer("dncnn", TINY, train, val, tmp_path / "full", cfg(), device="cpu")
    full.fit()
    assert full.step == 8 and full.epoch == 2  # 2 epochs x (32 crops / 8 per batch)

    def crash(step):
        if step == 3:  # dies mid-way through the first epoch, before step 3 is saved
            raise Crash()

    first = helpers.Trainer("dncnn", TINY, train, val, tmp_path / "cut", cfg(), device="cpu")
    with pytest.raises(Crash):
        first.fit(on_step=crash)
    resumed = helpers.Trainer("dncnn", TINY, train, val, tmp_path / "cut", cfg(), device="cpu")
    assert resumed.try_resume() and resumed.step == 2 and resumed.epoch == 0
    resumed = helpers.Trainer("dncnn", TINY, train, val, tmp_path / "cut", cfg(), device="cpu")
    resumed.fit()
    a, b = weights(full), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if recipe.get("ema_decay"):
        for (k, x), y in zip(full.ema.state_dict().items(), resumed.ema.state_dict().values()):
            assert torch.equal(x, y), k
    assert [r["val_score"] for r in full.history] == [r["val_score"] for r in resumed.history]
    # A finished run is not trained again; its history, best checkpoint and plot are on disk.
    assert helpers.Trainer("dncnn", TINY, train, val, tmp_path / "cut", cfg(), device="cpu").fit()["steps"] == 8
    for f in ("last.pt", "best.pt", "history.csv", "history.png"):
        assert (tmp_path / "cut" / f).stat().st_size > 0


def test_resume_refuses_a_different_run(demo_pairs, tmp_path):
    train, val = demo_pairs
    helpers.Trainer("dncnn", TINY, train, val, tmp_path, tiny_cfg(epochs=1), device="cpu").fit()
    other = helpers.Trainer("dncnn", TINY, train, val, tmp_path, tiny_cfg(patch=24), device="cpu")
    with pytest.raises(helpers.CheckpointError, match="different run.*patch"):
        other.fit()
    other_split = helpers.Trainer("dncnn", TINY, train[1:], val, tmp_path, tiny_cfg(), device="cpu")
    with pytest.raises(helpers.CheckpointError, match="different run.*training/validation pairs"):
        other_split.fit()
    wider = helpers.Trainer("dncnn", {**TINY, "width": 9}, train, val, tmp_path, tiny_cfg(), device="cpu")
    with pytest.raises(helpers.CheckpointError, match="different run"):
        wider.fit()


def test_budget_stops_training_and_still_validates(demo_pairs, tmp_path):
    train, val = demo_pairs
    t = helpers.Trainer("dncnn", TINY, train, val, tmp_path, tiny_cfg(epochs=50, budget_minutes=1e-6),
                        device="cpu")
    r = t.fit()
    assert r["steps"] == 1 and len(r["history"]) == 1 and np.isfinite(r["best_score"])
    assert (tmp_path / "best.pt").exists()


def test_best_checkpoint_rebuilds_the_model_from_the_file_alone(demo_pairs, tmp_path):
    train, val = demo_pairs
    t = helpers.Trainer("dncnn", TINY, train, val, tmp_path, tiny_cfg(epochs=1), device="cpu")
    t.fit()
    model = helpers.model_from_checkpoint(tmp_path / "best.pt")
    assert isinstance(model, helpers.DnCNN) and len(model.body) == 2 + 3 * 1 + 1
    images = [helpers.read_rgb(p.scan) for p in val]
    score = helpers.evaluate(model, [(s, helpers.read_rgb(p.clean)) for s, p in zip(images, val)])["score"]
    assert score == pytest.approx(t.history[-1]["val_score"], abs=1e-9)


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    helpers.save_checkpoint({"model": {"w": torch.ones(3)}, "step": 1}, path)
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the user pressed stop in the middle of the write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        helpers.save_checkpoint({"model": {"w": torch.zeros(3)}, "step": 2}, path)
    assert path.read_bytes() == before
    assert helpers.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_corrupt_and_foreign_checkpoints_get_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    helpers.save_checkpoint({"kind": "best", "model_name": "dncnn", "model_kwargs": TINY,
                             "model": helpers.build_model("dncnn", **TINY).state_dict()}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(helpers.CheckpointError, match="cut.pt is corrupt"):
        helpers.load_checkpoint(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save(helpers.build_model("dncnn", **TINY).state_dict(), foreign)
    with pytest.raises(helpers.CheckpointError, match="foreign.pt is not a descanning checkpoint.*bare state_dict"):
        helpers.load_checkpoint(foreign)
    with pytest.raises(helpers.CheckpointError, match="no checkpoint at .*missing.pt.*notebook 03"):
        helpers.load_checkpoint(tmp_path / "missing.pt")
    unknown = tmp_path / "unknown.pt"
    helpers.save_checkpoint({"model_name": "vitgan", "model_kwargs": {}, "model": {}}, unknown)
    with pytest.raises(helpers.CheckpointError, match="'vitgan'"):
        helpers.model_from_checkpoint(unknown)


def identity_dncnn():
    """A DnCNN whose residual branch outputs zero: the model is the identity mapping."""
    model = helpers.build_model("dncnn", **TINY)
    torch.nn.init.zeros_(model.body[-1].weight)
    torch.nn.init.zeros_(model.body[-1].bias)
    return model


def test_inference_undoes_the_normalisation():
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = helpers.restore(identity_dncnn(), [img])[0]
    assert np.array_equal(out, img)
    assert helpers.mean_y(out) == helpers.mean_y(img)
    # The slides' inference clamped the normalised output to [0, 1] without undoing (x - 0.5) / 0.5:
    # that moves the mean Y, the very number the leaderboard scores.
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    z = (x - 0.5) / 0.5
    slides = helpers.tensor_to_images(z.clamp(0, 1))[0]
    assert abs(helpers.mean_y(slides) - helpers.mean_y(img)) > 5


def test_self_ensemble_of_identity_returns_the_input():
    img = np.random.default_rng(1).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    assert np.array_equal(helpers.restore(identity_dncnn(), [img], ensemble=True)[0], img)


def test_restore_handles_mixed_sizes_in_one_call():
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in [(20, 30), (31, 17), (20, 30), (5, 9)]]
    out = helpers.restore(identity_dncnn(), imgs, batch_size=2)
    assert [o.shape for o in out] == [i.shape for i in imgs]
    assert all(np.array_equal(o, i) for o, i in zip(out, imgs))


def test_parameter_rule(capsys):
    assert helpers.parameter_report(helpers.build_model("dncnn"), patch=32) == 559_363  # the slides' count
    assert "Total params: 559,363" in capsys.readouterr().out
    with pytest.raises(ValueError, match="fewer than 10,000,000"):
        helpers.parameter_report(helpers.build_model("dncnn", width=800), patch=32)


def test_crops_are_aligned_augmented_and_repeatable(demo_pairs):
    train, _ = demo_pairs
    # scan := clean, so any misalignment between the two crops would show as a difference
    same = [helpers.Pair(p.name, p.clean, p.clean) for p in train]
    ds = helpers.CropDataset(same, patch=24, crops_per_image=4, items_per_epoch=6, seed=3)
    scan, clean = ds[2]
    assert scan.shape == (4, 24, 24, 3) and torch.equal(scan, clean)
    again = helpers.CropDataset(same, 24, 4, 6, seed=3)
    assert torch.equal(again[2][0], scan)
    again.set_epoch(1)
    assert not torch.equal(again[2][0], scan)
    # resuming mid-epoch starts at the same item
    again.set_epoch(0, start=2)
    assert len(again) == 4 and torch.equal(again[0][0], scan)


def test_degradation_augmentation_changes_inputs_not_targets(demo_pairs):
    train, _ = demo_pairs
    plain = helpers.CropDataset(train, 32, 4, 4, seed=5)
    degraded = helpers.CropDataset(train, 32, 4, 4, seed=5, degrade=helpers.degradation_augment(1.0))
    (s0, c0), (s1, c1) = plain[1], degraded[1]
    assert torch.equal(c0, c1)
    assert not torch.equal(s0, s1)


@pytest.mark.parametrize("size", [(37, 53), (8, 8), (65, 31)])
def test_attention_model_keeps_odd_image_sizes(size):
    model = helpers.build_model("attention_unet", width=8, enc_blocks=(1, 1, 1), mid_blocks=1, dec_blocks=(1, 1, 1))
    img = np.random.default_rng(0).integers(0, 256, size + (3,), dtype=np.uint8)
    out = helpers.restore(model, [img])[0]
    assert out.shape == img.shape and out.dtype == np.uint8
    # The colour path starts as the identity; with the local residual switched off the model gives
    # back its input exactly, so padding and cropping back lose nothing, even at the bottom's 1x1.
    torch.nn.init.zeros_(model.outro.weight)
    torch.nn.init.zeros_(model.outro.bias)
    assert np.array_equal(helpers.restore(model, [img])[0], img)


def test_attention_model_parameter_rule():
    small = helpers.build_model("attention_unet")
    assert helpers.parameter_report(small, patch=32) == helpers.count_parameters(small) < helpers.PARAM_LIMIT
    huge = helpers.build_model("attention_unet", width=96, enc_blocks=(2, 2, 4), mid_blocks=8, dec_blocks=(2, 2, 2))
    with pytest.raises(ValueError, match="fewer than 10,000,000"):
        helpers.parameter_report(huge, patch=32)


def test_perceptual_loss_falls_back_with_one_message_when_weights_are_missing(monkeypatch, capsys):
    import torchvision.models

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models, "vgg16", offline)
    assert helpers.perceptual_loss(0.1) is None
    out = capsys.readouterr().out
    assert out.count("Perceptual loss skipped") == 1 and "no network" in out


def test_perceptual_loss_is_computed_when_weights_load(monkeypatch):
    import torchvision.models
    real_vgg16 = torchvision.models.vgg16
    monkeypatch.setattr(torchvision.models, "vgg16", lambda weights=None: real_vgg16(weights=None))  # random weights
    loss = helpers.perceptual_loss(0.1)
    x = torch.rand(1, 3, 32, 32)
    assert loss(x, x).item() == 0.0 and loss(x, torch.rand(1, 3, 32, 32)).item() > 0


def test_mean_y_loss_term_sees_a_global_shift():
    cfg = tiny_cfg(loss="l1", mean_y_weight=1.0)
    t = helpers.Trainer.__new__(helpers.Trainer)
    t.cfg, t.extra_loss = cfg, None
    target = torch.full((2, 3, 8, 8), 0.5)
    shifted = target + 0.1
    # L1 of 0.1 plus |mean Y error| of 0.1 (the Y weights sum to 1)
    assert t.loss_fn(shifted, target).item() == pytest.approx(0.2, abs=1e-6)


def test_ema_warms_up_then_averages(demo_pairs, tmp_path):
    train, val = demo_pairs
    t = helpers.Trainer("dncnn", TINY, train, val, tmp_path, tiny_cfg(ema_decay=0.999), device="cpu")
    w = t.model.body[0].weight
    start = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    t.step = 0  # first update: decay min(0.999, 1/10) = 0.1
    t._update_ema()
    assert torch.allclose(t.ema.body[0].weight, start + 0.9, atol=1e-6)
    t.step = 10_000  # later: the configured 0.999
    with torch.no_grad():
        w.add_(1.0)
    before = t.ema.body[0].weight.clone()
    t._update_ema()
    assert torch.allclose(t.ema.body[0].weight, before + 0.001 * (w - before), atol=1e-6)
