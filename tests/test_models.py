"""descan.models and descan.inference: the notebooks' models (built from their code), the
parameter rule, restoring whole images, models as code in checkpoints, old checkpoints."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import helpers
from builders import notebook_model, notebook_run
from descan import checkpoints, engine, inference, models

TINY = {"width": 8, "depth": 3}  # a DnCNN small enough to run in a blink on a CPU
TINY_UNET = dict(width=8, enc_blocks=(1, 1, 1), mid_blocks=1, dec_blocks=(1, 1, 1))
ROOT = Path(__file__).resolve().parents[1]


def identity_dncnn():
    """A DnCNN whose residual branch outputs zero: the model is the identity mapping."""
    model = notebook_model("dncnn", **TINY)
    torch.nn.init.zeros_(model.body[-1].weight)
    torch.nn.init.zeros_(model.body[-1].bias)
    return model


def test_inference_undoes_the_normalisation():
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = inference.restore(identity_dncnn(), [img])[0]
    assert np.array_equal(out, img)
    assert helpers.mean_y(out) == helpers.mean_y(img)
    # The slides' inference clamped the normalised output to [0, 1] without undoing (x - 0.5) / 0.5:
    # that moves the mean Y, the very number the leaderboard scores.
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    z = (x - 0.5) / 0.5
    slides = inference.tensor_to_images(z.clamp(0, 1))[0]
    assert abs(helpers.mean_y(slides) - helpers.mean_y(img)) > 5


def test_self_ensemble_of_identity_returns_the_input():
    img = np.random.default_rng(1).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    assert np.array_equal(inference.restore(identity_dncnn(), [img], ensemble=True)[0], img)


def test_restore_handles_mixed_sizes_in_one_call():
    rng = np.random.default_rng(2)
    imgs = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in [(20, 30), (31, 17), (20, 30), (5, 9)]]
    out = inference.restore(identity_dncnn(), imgs, images_per_pass=2)
    assert [o.shape for o in out] == [i.shape for i in imgs]
    assert all(np.array_equal(o, i) for o, i in zip(out, imgs))


def test_parameter_rule(capsys):
    assert models.parameter_report(notebook_model("dncnn"), patch=32) == 559_363  # the slides' count
    assert "Total params: 559,363" in capsys.readouterr().out
    with pytest.raises(ValueError, match="fewer than 10,000,000"):
        models.parameter_report(notebook_model("dncnn", width=800), patch=32)


@pytest.mark.parametrize("size", [(37, 53), (8, 8), (65, 31)])
def test_attention_model_keeps_odd_image_sizes(size):
    model = notebook_model("attention", **TINY_UNET)
    img = np.random.default_rng(0).integers(0, 256, size + (3,), dtype=np.uint8)
    out = inference.restore(model, [img])[0]
    assert out.shape == img.shape and out.dtype == np.uint8
    # The colour path starts as the identity; with the local residual switched off the model gives
    # back its input exactly, so padding and cropping back lose nothing, even at the bottom's 1x1.
    torch.nn.init.zeros_(model.outro.weight)
    torch.nn.init.zeros_(model.outro.bias)
    assert np.array_equal(inference.restore(model, [img])[0], img)


def test_attention_model_parameter_rule():
    small = notebook_model("attention")
    assert models.parameter_report(small, patch=32) == models.count_parameters(small) < helpers.PARAM_LIMIT
    huge = notebook_model("attention", width=96, enc_blocks=(2, 2, 4), mid_blocks=8, dec_blocks=(2, 2, 2))
    with pytest.raises(ValueError, match="fewer than 10,000,000"):
        models.parameter_report(huge, patch=32)


@pytest.mark.parametrize("size", [(100, 100), (517, 389), (7, 9)])
@pytest.mark.parametrize("recipe", ["dncnn", "attention"])
def test_models_take_any_size_and_return_it(recipe, size):
    model = notebook_model(recipe, **{"dncnn": TINY, "attention": TINY_UNET}[recipe]).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        assert model(x).shape == x.shape


TINY_TONE = '''
import torch
from torch import nn


class TinyTone(nn.Module):
    """A student's model: one learned colour matrix and offset for the whole image."""

    def __init__(self, bias=0.0):
        super().__init__()
        self.mix = nn.Conv2d(3, 3, 1)
        nn.init.eye_(self.mix.weight[:, :, 0, 0])
        nn.init.constant_(self.mix.bias, bias)

    def forward(self, x):
        return self.mix(x)
'''

REBUILD = '''
import sys
sys.path.insert(0, sys.argv[1])
import torch
from descan import checkpoints
chosen = checkpoints.choose_checkpoint(sys.argv[2])
model = checkpoints.model_from_checkpoint(chosen["path"])
print("REBUILT", chosen["run"], type(model).__name__, model(torch.full((1, 3, 2, 2), 0.5)).flatten().tolist())
'''


def test_a_model_written_as_code_trains_and_another_process_rebuilds_it_from_best_pt(demo_pairs, tmp_path):
    """A model cell's code (here a small class of a student's) trains with the engine; best.pt keeps
    the code, so a fresh Python process (another Colab runtime) rebuilds the model from the file
    alone, with the same outputs."""
    train, val = demo_pairs
    run = notebook_run("dncnn", epochs=1, crops_per_epoch=8, batch_size=8, patch=16, crops_per_image=4, workers=0)
    run["model"] = {"name": "TinyTone", "kwargs": {"bias": 0.1}, "code": TINY_TONE}
    workspace = tmp_path / "ws"
    t = engine.Trainer(run, train, val, checkpoints.run_dir(workspace, "mine"), "cpu", "demo")
    t.fit()
    best = checkpoints.load_checkpoint(checkpoints.best_path(workspace, "mine"), kind="best")
    assert best["model_code"] == TINY_TONE and best["model_name"] == "TinyTone"
    with torch.no_grad():
        want = checkpoints.model_from_checkpoint(best)(torch.full((1, 3, 2, 2), 0.5)).flatten().tolist()
    r = subprocess.run([sys.executable, "-c", REBUILD, str(ROOT), str(workspace)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("REBUILT"))
    assert line.startswith("REBUILT mine TinyTone [")
    assert eval(line.split(" ", 3)[3]) == pytest.approx(want, abs=1e-6)


# best.pt as the kit wrote it before models were saved as code: no model_code, the old model names,
# and arguments the models no longer have (levels, mean_y_shift: off)
OLD_BEST_KEYS = ("kind", "model_name", "model_kwargs", "model", "val", "epoch", "step", "config", "data_kind")
OLD = {"dncnn": ("dncnn", dict(channels=3, width=8, depth=3, mean=0.5, std=0.5, levels=False)),
       "attention": ("attention_unet", dict(**TINY_UNET, colour_path=True, colour_head=True, mean_y_shift=False,
                                            levels=False))}


def old_best(path, recipe, **changes):
    """Write an old-style best.pt holding the weights of the notebook's model (random ones)."""
    name, kwargs = OLD[recipe]
    kwargs = {**kwargs, **changes}
    model = notebook_model(recipe, **{k: v for k, v in kwargs.items() if k not in ("levels", "mean_y_shift")})
    state = {"kind": "best", "model_name": name, "model_kwargs": kwargs, "model": model.state_dict(),
             "val": {"score": 3.0}, "epoch": 1, "step": 4, "config": {"lr": 1e-3}, "data_kind": "demo"}
    assert tuple(state) == OLD_BEST_KEYS
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": checkpoints.FORMAT, **state}, path)
    return model.eval()


@pytest.mark.parametrize("recipe", ["dncnn", "attention"])
def test_a_best_pt_written_before_models_were_code_still_loads(tmp_path, recipe):
    """The model is rebuilt from its notebook's model cell, with its weights and outputs."""
    path = checkpoints.best_path(tmp_path, "old")
    want = old_best(path, recipe)
    entry = checkpoints.choose_checkpoint(tmp_path, "old")
    assert entry["error"] is None and entry["model_name"] == OLD[recipe][0]
    model = checkpoints.model_from_checkpoint(entry["path"])
    assert type(model).__name__ == type(want).__name__ and not model.training
    x = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        assert torch.equal(model(x), want(x))
    # what the kit can no longer rebuild is refused with what to do
    old_best(path, recipe, levels=True)
    with pytest.raises(checkpoints.CheckpointError, match=r"uses \['levels'\], which the kit no longer has: train that model again"):
        checkpoints.model_from_checkpoint(path)


def test_an_old_best_pt_of_a_model_without_code_says_what_to_do(tmp_path):
    """A student's model of the old plug-in file: the checkpoint names it but holds no code."""
    path = checkpoints.best_path(tmp_path, "mine")
    old_best(path, "dncnn")
    state = torch.load(path, weights_only=True)
    torch.save({**state, "model_name": "tiny_tone"}, path)
    entry = checkpoints.find_checkpoints(tmp_path)[0]
    assert "names model 'tiny_tone' but holds no code for it" in entry["error"] and "Train it again" in entry["error"]
    with pytest.raises(checkpoints.CheckpointError, match="names model 'tiny_tone' but holds no code"):
        checkpoints.choose_checkpoint(tmp_path, "mine")


def test_the_classical_fit_recovers_a_known_affine_map_exactly():
    from descan import colourmap
    rng = np.random.default_rng(0)
    matrix = np.array([[0.9, 0.05, 0.0], [0.1, 1.1, -0.05], [0.0, -0.1, 0.95]])
    offset = np.array([0.02, -0.03, 0.05])
    scan = rng.random((5000, 3))
    got_m, got_b = colourmap.fit_affine(scan, scan @ matrix.T + offset)
    np.testing.assert_allclose(got_m, matrix, atol=1e-10)
    np.testing.assert_allclose(got_b, offset, atol=1e-10)
    # the model applies exactly that map, rounded like a saved PNG, through the usual restore path
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    model = models.ColourMap()
    with torch.no_grad():
        model.matrix.copy_(torch.tensor(matrix)), model.offset.copy_(torch.tensor(offset))
    want = helpers.to_uint8(img / 255.0 @ matrix.T + offset)
    assert np.abs(inference.restore(model, [img])[0].astype(int) - want).max() <= 1
    assert models.count_parameters(model) == 12


def test_the_colour_map_is_fitted_saved_and_submittable(tmp_path):
    from descan import checkpoints, colourmap, data, demo
    demo.make_demo_dataset(tmp_path / "d", train_pages=8, test_pages=1, crop=48, show_progress=False)
    manifest = data.make_manifest(tmp_path / "d", val_fraction=0.25)
    train, val = data.manifest_pairs(manifest, tmp_path / "d", "train"), data.manifest_pairs(manifest, tmp_path / "d", "val")
    model, val_figures = colourmap.fit_colour_map(train, val, tmp_path / "ws", "demo", show_progress=False)
    entry = checkpoints.choose_checkpoint(tmp_path / "ws", data_kind="demo")
    assert entry["run"] == "colour_map" and entry["val_score"] == pytest.approx(val_figures["score"])
    rebuilt = checkpoints.model_from_checkpoint(entry["path"])
    images = [(helpers.read_rgb(p.clean), helpers.read_rgb(p.scan)) for p in val]
    groups = [data.scanner_group(p.name) for p in val]
    again = inference.evaluate(rebuilt, images, groups=groups)
    assert again["score"] == pytest.approx(val_figures["score"], abs=1e-9)
    assert again["unseen_score"] == pytest.approx(val_figures["unseen_score"], abs=1e-9)
    assert not np.allclose(model.matrix.detach().numpy(), np.eye(3))  # it learned something


def test_the_colour_lut_starts_as_the_identity_for_any_batch_and_size():
    lut = models.build(None, "colour_lut", {"size": 5})  # what a best.pt without code rebuilds
    x = torch.rand(2, 3, 5, 7).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(lut(x), x, atol=1e-6, rtol=0)  # R, G, B read in the right order
    assert models.count_parameters(lut) == 3 * 5 ** 3
    assert models.count_parameters(models.ColourLUT()) == 3 * 17 ** 3
    torch.testing.assert_close(lut(x * 3 - 1), (x * 3 - 1).clamp(0, 1), atol=1e-6, rtol=0)


def test_the_colour_lut_recovers_a_tone_curve_that_the_affine_map_cannot():
    from descan import colourmap
    rng = np.random.default_rng(0)
    mix = np.array([[0.8, 0.15, 0.05], [0.1, 0.8, 0.1], [0.0, 0.2, 0.8]])

    def scanner(scan):  # a gamma per channel, then a channel mix
        return np.clip(scan ** 1.6 @ mix.T, 0, 1)
    train, held_out = rng.random((200_000, 3)), rng.uniform(0.05, 0.95, (20_000, 3))
    # rarely reached colours shrink little here: this is about the table, not about real scans
    lut = colourmap.fit_lut(train, scanner(train), shrink=1e-3)
    with torch.no_grad():  # the held-out pixels as one image, 1 x 20,000
        got = lut(torch.tensor(held_out.T, dtype=torch.float32)[None, :, None])[0, :, 0].numpy().T
    error = np.abs(got - scanner(held_out)) * 255
    assert error.mean() < 1 and error.max() < 3, (error.mean(), error.max())  # in grey levels
    matrix, offset = colourmap.fit_affine(train, scanner(train))
    affine_error = np.abs(held_out @ matrix.T + offset - scanner(held_out)) * 255
    assert affine_error.mean() > 5 and affine_error.max() > 15  # a 3x3 map cannot bend the tones


def test_the_colour_lut_runs_under_bfloat16_autocast_on_the_cpu():
    from descan import colourmap
    rng = np.random.default_rng(1)
    scan = rng.random((20_000, 3))
    lut = colourmap.fit_lut(scan, np.sqrt(scan), size=9)
    x = torch.rand(3, 3, 6, 11)
    want = lut(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        same, low = lut(x), lut(x.bfloat16())
    torch.testing.assert_close(same.float(), want, atol=1e-6, rtol=0)
    for out in (low, lut(x.bfloat16())):  # bfloat16 images, with autocast and without
        assert torch.isfinite(out).all() and (out.float() - want).abs().max() < 2 / 255


def test_the_colour_lut_is_fitted_saved_and_rebuilt_the_same(demo_pairs, tmp_path):
    from descan import colourmap
    train, val = demo_pairs
    lut, val_figures = colourmap.fit_colour_map(train, val, tmp_path, "demo", show_progress=False,
                                                lut_size=17)
    entry = checkpoints.find_checkpoints(tmp_path)[0]
    assert entry["run"] == "colour_lut" and entry["error"] is None
    assert entry["val_score"] == pytest.approx(val_figures["score"]) and np.isfinite(entry["val_score"])
    rebuilt = checkpoints.model_from_checkpoint(entry["path"])
    scan = torch.from_numpy(helpers.read_rgb(val[0].scan)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        assert torch.equal(rebuilt(scan), lut(scan))
        assert (lut(scan) - scan).abs().max() > 0.02  # it learned something
