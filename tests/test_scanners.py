"""Scanners never seen in training: the demo's scanner profiles, the seen/unseen split and figures,
the colour head and its statistics loss."""
import numpy as np
import pandas as pd
import pytest
import torch

import helpers
from builders import notebook_model, notebook_run
from descan import cli, data, demo, engine, inference, losses, models


def scan_means(profile, page, n=6):
    """Mean RGB of ``n`` scans of one page by one scanner profile (each scan a variant of it)."""
    variants = [demo.scanner_variant(profile, np.random.default_rng([i, 2])) for i in range(n)]
    scans = [demo.simulate_scan(page, np.random.default_rng([i, 1]), scanner=variant)
             for i, variant in enumerate(variants)]
    return np.array([scan.reshape(-1, 3).astype(float).mean(0) for scan in scans])


def test_scanner_profiles_differ_more_between_than_within():
    page = demo.make_page(np.random.default_rng(0), 96, 96)
    means = {name: scan_means(profile, page) for name, profile in demo.SCANNERS.items()}
    centres = {name: m.mean(0) for name, m in means.items()}
    within = max(np.linalg.norm(m - centres[name], axis=1).max() for name, m in means.items())
    names = list(centres)
    between = min(np.linalg.norm(centres[a] - centres[b])
                  for i, a in enumerate(names) for b in names[i + 1:])
    assert len(demo.SCANNERS) >= 4
    assert between > 2 * within, (between, within)


def test_the_scanner_groups_are_disjoint():
    used = [*demo.SEEN_SCANNERS, *demo.UNSEEN_VAL_SCANNERS.values(),
            *demo.TEST_SCANNERS.values()]
    assert len(set(used)) == len(used) and set(used) <= set(demo.SCANNERS)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("scanners")
    demo.make_demo_dataset(root, train_pages=8, unseen_pages=4, test_pages=2, other_test_scans=2,
                           crop=32, show_progress=False)
    return root


def test_demo_names_follow_the_competition(demo_root):
    train = sorted(p.stem for p in (demo_root / "train/clean").iterdir())
    test = sorted(p.stem for p in (demo_root / "test/scan").iterdir())
    others = [f"scanner{s:02d}_{k:03d}" for s in (3, 4) for k in range(4)]
    assert [n for n in train if n.startswith("scanner")] == others
    assert {n[:9] for n in test if n.startswith("scanner")} == {"scanner01", "scanner02"}
    assert any(n.startswith("Demo") for n in test)
    assert data.page_id("scanner03_001") == "scanner03_001"  # its own page
    assert data.scanner_group("scanner03_001.png") == "unseen"
    assert data.scanner_group("DemoMag.00001.01") == "seen"


def test_the_demo_test_set_mixes_the_scanners_as_the_real_one(tmp_path):
    demo.make_demo_dataset(tmp_path, crop=32, show_progress=False)  # the default counts, small crops
    groups = [data.scanner_group(p.name) for p in (tmp_path / "test/scan").iterdir()]
    training = {p.name[:9] for p in (tmp_path / "train/scan").iterdir()}
    others = {p.name[:9] for p in (tmp_path / "test/scan").iterdir()
              if data.scanner_group(p.name) == "unseen"}
    assert len(groups) == demo.demo_counts(demo.DEMO_DEFAULTS)["test_scans"]
    assert groups.count("seen") / len(groups) >= 0.95, groups  # the leaderboard's: 483 of 500
    assert others and not others & training, (others, training)  # scanners never in training


def test_the_demo_command_takes_its_sizes_as_options(tmp_path, capsys):
    folder = tmp_path / "demo"
    options = ["--pages", "2", "--unseen-pages", "2", "--test-pages", "1", "--size", "32"]
    assert cli.main(["download", "--demo", str(folder), *options]) == 0
    marker = (folder / helpers.DEMO_MARKER).read_text().splitlines()
    settings = ("version=3 seed=0 train_pages=2 unseen_pages=2 test_pages=1 other_test_scans=1 "
                "crops_per_page=2 crop=32")
    assert settings in marker
    assert len(list((folder / "train/clean").iterdir())) == 8
    assert len(list((folder / "test/scan").iterdir())) == 3  # 1 page x 2 crops, 1 other scan
    assert "8 pairs (4 of them from unseen scanners" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["download", "--demo", str(folder), "--pages", "1"])
    assert "'1' is not a whole number >= 2" in capsys.readouterr().err


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
    scans = [np.clip(c.astype(int) + d, 0, 255).astype(np.uint8)
             for c, d in zip(clean, (10, -10, 30, 50))]
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
    # faded, darker, channels swapped: a global colour error
    scan = (0.05 + 0.8 * clean ** 1.3).flip(1)
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


def test_the_attention_models_colour_head_switch():
    run = notebook_run("attention")
    kwargs, cfg = run["model"]["kwargs"], run["config"]
    assert kwargs["colour_head"] is True and cfg.stats_weight > 0  # 04's defaults
    with_head = models.count_parameters(notebook_model("attention", **kwargs))
    without_head = models.count_parameters(notebook_model("attention", **{**kwargs, "colour_head": False}))
    assert with_head - without_head == models.count_parameters(models.ColourHead()) < helpers.PARAM_LIMIT


def test_training_with_the_colour_head_reports_unseen_scanners(demo_root, tmp_path):
    manifest = data.make_manifest(demo_root, val_fraction=0.25)
    data.write_manifest(manifest, tmp_path)
    train, val = data.load_split(demo_root, tmp_path)
    run = notebook_run("attention", colour_jitter=0.5, patch=16, batch_size=4, crops_per_epoch=8)
    t = engine.Trainer(run, train, val, tmp_path / "run", device="cpu", data_kind="demo")
    t.fit()
    history = pd.read_csv(tmp_path / "run/history.csv")
    assert history["val_unseen_score"].notna().all()
    assert history["do_nothing_unseen_score"].notna().all()
    assert "colour statistics" in history["loss_name"].iloc[0]


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
    assert not np.array_equal(augment(clean, img, np.random.default_rng(5)), img)
    assert np.array_equal(clean, img)
    assert demo.input_augment(0.0, 0.0) is None



def test_the_weighted_figure_weighs_the_scanners_as_the_leaderboard_does():
    from descan import metrics
    per = [{"mean_y": m, "mean_y_clean": 100.0, "pixel_y_mae": 1.0, "psnr": 30.0}
           for m in (102.0, 104.0, 110.0)]  # |errors| 2 and 4 on training scanners, 10 on another
    out = metrics.group_figures(per, ["seen", "seen", "unseen"])
    assert out["score"] == 3.0 and out["unseen_score"] == 10.0  # the checkpoint is chosen on 3.0
    assert out["weighted_score"] == pytest.approx(483 / 500 * 3.0 + 17 / 500 * 10.0)
    assert "weighted_score" not in metrics.group_figures(per, ["seen"] * 3)
    assert "weighted_score" not in metrics.group_figures(per, ["unseen"] * 3)
