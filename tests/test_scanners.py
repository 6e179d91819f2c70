"""Scanners never seen in training: the demo's scanner profiles, the seen/unseen split and figures,
the colour head, its statistics loss and the final mean-Y shift."""
import numpy as np
import pandas as pd
import pytest
import torch

import helpers
from descan import files
from descan import data, demo, engine, inference, losses, models, recipes


def scan_means(profile, page, n=6):
    """Mean RGB of ``n`` scans of one page by one scanner profile (each scan a variant of it)."""
    return np.array([demo.simulate_scan(page, np.random.default_rng([i, 1]),
                                        scanner=demo.scanner_variant(profile, np.random.default_rng([i, 2])))
                     .reshape(-1, 3).astype(float).mean(0) for i in range(n)])


def test_scanner_profiles_differ_more_between_than_within():
    page = demo.make_page(np.random.default_rng(0), 96, 96)
    means = {name: scan_means(profile, page) for name, profile in demo.SCANNERS.items()}
    centres = {name: m.mean(0) for name, m in means.items()}
    within = max(np.linalg.norm(m - centres[name], axis=1).max() for name, m in means.items())
    names = list(centres)
    between = min(np.linalg.norm(centres[a] - centres[b]) for i, a in enumerate(names) for b in names[i + 1:])
    assert len(demo.SCANNERS) >= 4
    assert between > 2 * within, (between, within)


def test_the_scanner_groups_are_disjoint():
    used = [*demo.SEEN_SCANNERS, *demo.UNSEEN_VAL_SCANNERS.values(), *demo.TEST_SCANNERS.values()]
    assert len(set(used)) == len(used) and set(used) <= set(demo.SCANNERS)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scanners")
    demo.make_demo_dataset(root, train_pages=8, unseen_pages=4, test_pages=2, crop=32, show_progress=False)
    return root


def test_demo_names_follow_the_competition(demo_root):
    train = sorted(p.stem for p in (demo_root / "train/clean").iterdir())
    test = sorted(p.stem for p in (demo_root / "test/scan").iterdir())
    assert [n for n in train if n.startswith("scanner")] == [f"scanner{s:02d}_{k:03d}" for s in (3, 4)
                                                            for k in range(4)]
    assert {n[:9] for n in test if n.startswith("scanner")} == {"scanner01", "scanner02"}
    assert any(n.startswith("Demo") for n in test)
    assert helpers.page_id("scanner03_001") == "scanner03_001"  # its own page
    assert data.scanner_group("scanner03_001.png") == "unseen" and data.scanner_group("DemoMag.00001.01") == "seen"


def test_unseen_scanner_files_never_reach_training(demo_root, tmp_path):
    manifest = data.make_manifest(demo_root, val_fraction=0.25)
    unseen = manifest[manifest["scanners"] == "unseen"]
    assert len(unseen) == 8 and set(unseen["split"]) == {"val"}
    assert set(manifest[manifest["scanners"] == "seen"]["split"]) == {"train", "val"}
    data.write_manifest(manifest, tmp_path)
    train, val = data.load_split(demo_root, tmp_path)
    assert all(data.scanner_group(p.name) == "seen" for p in train)
    assert {p.name for p in val} >= set(unseen["name"])
    tampered = manifest.assign(split=["train" if s == "unseen" else sp
                                      for s, sp in zip(manifest["scanners"], manifest["split"])])
    data.write_manifest(tampered, tmp_path)
    with pytest.raises(helpers.DataError, match="unseen scanners .*scanner0"):
        data.load_split(demo_root, tmp_path)


def test_evaluate_reports_seen_and_unseen_apart():
    rng = np.random.default_rng(0)
    clean = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
    scans = [np.clip(c.astype(int) + d, 0, 255).astype(np.uint8) for c, d in zip(clean, (10, -10, 30, 50))]
    pairs = list(zip(clean, scans))
    groups = ["seen", "seen", "unseen", "unseen"]
    both = inference.evaluate(models.Identity(), pairs, groups=groups)
    seen_only = inference.evaluate(models.Identity(), pairs[:2])
    unseen_only = inference.evaluate(models.Identity(), pairs[2:])
    assert both["score"] == pytest.approx(seen_only["score"])
    assert both["unseen_score"] == pytest.approx(unseen_only["score"])
    assert both["unseen_pixel_y_mae"] == pytest.approx(unseen_only["pixel_y_mae"])
    assert "unseen_score" not in seen_only


def test_the_colour_heads_statistics_loss_goes_down_on_a_fixed_batch():
    torch.manual_seed(0)
    clean = torch.rand(4, 3, 32, 32)
    scan = (0.05 + 0.8 * clean ** 1.3).flip(1)  # faded, darker, channels swapped: a global colour error
    head = models.ColourHead(width=8, size=16)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    first = losses.colour_stats_loss(head(scan), clean).item()
    for _ in range(60):
        loss = losses.colour_stats_loss(head(scan), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses.colour_stats_loss(head(scan), clean).item() < 0.3 * first
    assert head.global_estimate is not None and head.global_estimate.shape == scan.shape


@pytest.mark.parametrize("level", [0.1, 0.5, 0.97])
def test_the_mean_y_shift_lands_on_the_prediction_within_rounding(level):
    torch.manual_seed(1)
    x = torch.rand(3, 3, 20, 24) * torch.tensor([1.0, 0.6, 0.2]).view(3, 1, 1, 1)  # dark to bright images
    target = torch.tensor([level, 0.3, 0.8])
    out = models.shift_mean_y(x, target)
    for img, t in zip(out, target):
        as_png = helpers.to_uint8(img.permute(1, 2, 0).numpy())
        assert helpers.mean_y(as_png) == pytest.approx(255 * float(t), abs=0.5)


def test_the_attention_models_colour_head_switch(monkeypatch):
    name, kwargs, cfg = recipes.recipe("attention", "cpu")
    assert kwargs["colour_head"] is True and cfg.colour_jitter > 0 and cfg.stats_weight > 0  # 04's defaults
    with_head = models.count_parameters(models.build_model(name, **kwargs))
    assert with_head - models.count_parameters(models.AttentionUNet()) == \
        models.count_parameters(models.ColourHead()) and with_head < helpers.PARAM_LIMIT
    monkeypatch.setenv("DESCAN_COLOUR_HEAD", "0")
    monkeypatch.setenv("DESCAN_COLOUR_JITTER", "0")
    name, kwargs, cfg = recipes.recipe("attention", "cpu")
    assert kwargs["colour_head"] is False and cfg.colour_jitter == 0
    assert models.count_parameters(models.build_model(name, **kwargs)) == models.count_parameters(models.AttentionUNet())


def test_training_with_the_colour_head_reports_unseen_scanners(demo_root, tmp_path):
    manifest = data.make_manifest(demo_root, val_fraction=0.25)
    data.write_manifest(manifest, tmp_path)
    train, val = data.load_split(demo_root, tmp_path)
    name, kwargs, cfg = recipes.recipe("attention", "cpu", smoke=True, use_env=False, colour_jitter=0.5,
                                      patch=16, batch_size=4, crops_per_epoch=8)
    t = engine.Trainer(name, kwargs, train, val, tmp_path / "run", cfg, device="cpu", data_kind="demo")
    t.fit()
    history = pd.read_csv(tmp_path / "run/history.csv")
    assert history["val_unseen_score"].notna().all() and history["do_nothing_unseen_score"].notna().all()
    assert "colour stats" in history["loss_name"].iloc[0]


def test_colour_jitter_changes_the_global_colour_only_of_inputs():
    img = demo.make_page(np.random.default_rng(3), 40, 40)
    rng = np.random.default_rng(4)
    jittered = [demo.colour_jitter(img, rng) for _ in range(8)]
    shifts = [abs(helpers.mean_y(j) - helpers.mean_y(img)) for j in jittered]
    assert all(j.shape == img.shape and j.dtype == np.uint8 for j in jittered)
    assert max(shifts) > 3  # the global tone moves ...
    corr = [np.corrcoef(j[..., 1].ravel(), img[..., 1].ravel())[0, 1] for j in jittered]
    assert min(corr) > 0.9  # ... the content does not
    augment = demo.input_augment(0.0, 1.0)
    clean = img.copy()
    assert not np.array_equal(augment(clean, img, np.random.default_rng(5)), img) and np.array_equal(clean, img)
    assert demo.input_augment(0.0, 0.0) is None


def test_rescans_are_random_scanners_of_the_clean_crop():
    page = demo.make_page(np.random.default_rng(5), 64, 64)
    rescans = [demo.rescan(page, np.random.default_rng([6, i])) for i in range(8)]
    assert all(r.shape == page.shape and r.dtype == np.uint8 for r in rescans)
    corr = [np.corrcoef(r[..., 1].ravel().astype(float), page[..., 1].ravel())[0, 1] for r in rescans]
    assert min(corr) > 0.5, corr  # the same page ...
    means = np.array([r.reshape(-1, 3).astype(float).mean(0) for r in rescans])
    spread = np.linalg.norm(means - means.mean(0), axis=1).max()
    one_scanner = scan_means(demo.SCANNERS[demo.SEEN_SCANNERS[0]], page, n=8)
    within = np.linalg.norm(one_scanner - one_scanner.mean(0), axis=1).max()
    assert spread > 2 * within, (spread, within)  # ... by scanners that differ more than one scanner's scans do


def test_the_rescan_augmentation_replaces_the_input_only(monkeypatch):
    clean = demo.make_page(np.random.default_rng(7), 32, 32)
    scan_a, scan_b = demo.simulate_scan(clean, np.random.default_rng(8)), np.zeros_like(clean)
    kept = clean.copy()
    augment = demo.input_augment(rescan_prob=1.0)
    out_a, out_b = augment(clean, scan_a, np.random.default_rng(9)), augment(clean, scan_b, np.random.default_rng(9))
    assert np.array_equal(out_a, out_b) and not np.array_equal(out_a, scan_a)  # made from the clean crop
    assert np.array_equal(clean, kept)
    never = demo.input_augment(rescan_prob=1e-9)
    assert never(clean, scan_b, np.random.default_rng(9)) is scan_b
    monkeypatch.setenv("DESCAN_RESCAN_PROB", "0.5")
    assert recipes.recipe("attention", "cpu")[2].rescan_prob == 0.5
    monkeypatch.setenv("DESCAN_RESCAN_PROB", "2")
    with pytest.raises(ValueError, match="DESCAN_RESCAN_PROB"):
        recipes.recipe("attention", "cpu")


def as_tensor(rgb):
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0


@pytest.mark.parametrize("side", [64, 600])  # every pixel, and a subsample of a large image
def test_auto_levels_undo_a_scanners_white_and_black_points(side):
    page = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    black = torch.tensor([0.08, 0.05, 0.02]).view(1, 3, 1, 1)
    white = torch.tensor([0.85, 0.93, 0.78]).view(1, 3, 1, 1)
    scanned = black + (white - black) * page  # another scanner's paper and ink, per channel
    torch.testing.assert_close(models.auto_levels(scanned), models.auto_levels(page), atol=1e-5, rtol=0)
    levelled = models.auto_levels(scanned)
    inside = ((levelled >= 0) & (levelled <= 1)).float().mean().item()
    assert 0.97 < inside < 0.99  # 1% of each channel below the ink level and 1% above the paper level
    flat = torch.full((1, 3, 16, 16), 0.5) + 0.01 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert models.auto_levels(flat).std() <= flat.std() / 0.2 * 1.0001  # a blank page is stretched 5x at most


@pytest.mark.parametrize("name", ["dncnn", "attention"])
def test_the_auto_levels_switch_makes_a_model_blind_to_white_and_black_points(name, monkeypatch):
    monkeypatch.setenv("DESCAN_LEVELS", "1")
    model_name, kwargs, _ = recipes.recipe(name, "cpu", smoke=True)
    assert kwargs["levels"] is True
    torch.manual_seed(0)
    model = models.build_model(model_name, **kwargs).eval()
    page = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    scanned = 0.07 + 0.8 * page
    with torch.no_grad():
        torch.testing.assert_close(model(scanned), model(page), atol=1e-4, rtol=0)
        monkeypatch.setenv("DESCAN_LEVELS", "0")
        model_name, kwargs, _ = recipes.recipe(name, "cpu", smoke=True)
        plain = models.build_model(model_name, **kwargs).eval()
        assert (plain(scanned) - plain(page)).abs().max() > 0.05
