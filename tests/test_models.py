"""descan.models and descan.inference: the models, the parameter rule, restoring whole images."""
import numpy as np
import pytest
import torch

import helpers
from descan import inference, models

TINY = {"width": 8, "depth": 3}  # a DnCNN small enough to run in a blink on a CPU

def identity_dncnn():
    """A DnCNN whose residual branch outputs zero: the model is the identity mapping."""
    model = models.build_model("dncnn", **TINY)
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
    assert models.parameter_report(models.build_model("dncnn"), patch=32) == 559_363  # the slides' count
    assert "Total params: 559,363" in capsys.readouterr().out
    with pytest.raises(ValueError, match="fewer than 10,000,000"):
        models.parameter_report(models.build_model("dncnn", width=800), patch=32)


@pytest.mark.parametrize("size", [(37, 53), (8, 8), (65, 31)])
def test_attention_model_keeps_odd_image_sizes(size):
    model = models.build_model("attention_unet", width=8, enc_blocks=(1, 1, 1), mid_blocks=1, dec_blocks=(1, 1, 1))
    img = np.random.default_rng(0).integers(0, 256, size + (3,), dtype=np.uint8)
    out = inference.restore(model, [img])[0]
    assert out.shape == img.shape and out.dtype == np.uint8
    # The colour path starts as the identity; with the local residual switched off the model gives
    # back its input exactly, so padding and cropping back lose nothing, even at the bottom's 1x1.
    torch.nn.init.zeros_(model.outro.weight)
    torch.nn.init.zeros_(model.outro.bias)
    assert np.array_equal(inference.restore(model, [img])[0], img)


def test_attention_model_parameter_rule():
    small = models.build_model("attention_unet")
    assert models.parameter_report(small, patch=32) == models.count_parameters(small) < helpers.PARAM_LIMIT
    huge = models.build_model("attention_unet", width=96, enc_blocks=(2, 2, 4), mid_blocks=8, dec_blocks=(2, 2, 2))
    with pytest.raises(ValueError, match="fewer than 10,000,000"):
        models.parameter_report(huge, patch=32)


@pytest.mark.parametrize("size", [(100, 100), (517, 389), (7, 9)])
@pytest.mark.parametrize("name", ["dncnn", "attention_unet"])
def test_models_take_any_size_and_return_it(name, size):
    kwargs = {"dncnn": TINY, "attention_unet": dict(width=8, enc_blocks=(1, 1, 1), mid_blocks=1,
                                                     dec_blocks=(1, 1, 1))}[name]
    model = models.build_model(name, **kwargs).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        assert model(x).shape == x.shape


MY_MODELS = '''
import torch
from torch import nn
from descan.models import register


@register("tiny_tone")
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


def test_bring_your_own_model_trains_and_is_found_by_another_runtime(tmp_path):
    """A model defined in WORKSPACE/my_models.py trains with the engine and is rebuilt by a fresh
    Python process (another Colab runtime) that loads the same file; without it, the message
    says what to do."""
    import subprocess
    import sys
    from pathlib import Path

    from descan import checkpoints, demo, engine, recipes
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "my_models.py").write_text(MY_MODELS)
    assert models.load_user_models(workspace) == ["tiny_tone"]
    demo.make_demo_dataset(tmp_path / "d", train_pages=4, test_pages=1, crop=32, show_progress=False)
    pairs = helpers.pair_files(tmp_path / "d/train/clean", tmp_path / "d/train/scan")
    cfg = recipes.recipe("attention", "cpu", smoke=True, use_env=False, epochs=1, crops_per_epoch=8, patch=16,
                         workers=0)[2]
    engine.Trainer("tiny_tone", {"bias": 0.1}, pairs[:-2], pairs[-2:], checkpoints.run_dir(workspace, "mine"),
                   cfg, device="cpu").fit()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from descan import checkpoints, models; ws = sys.argv[2]\n"
            "try:\n    checkpoints.model_from_checkpoint(checkpoints.best_path(ws, 'mine'))\n"
            "except checkpoints.CheckpointError as e:\n    print('BEFORE:', e)\n"
            "models.load_user_models(ws)\n"
            "print('AFTER:', type(checkpoints.model_from_checkpoint(checkpoints.choose_checkpoint(ws)['path'])).__name__)")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code, str(root), str(workspace)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "BEFORE:" in r.stdout and "'tiny_tone'" in r.stdout and "my_models.py" in r.stdout
    assert "AFTER: TinyTone" in r.stdout
    models.MODELS.pop("tiny_tone")


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
    mapped = helpers.to_uint8(img.reshape(-1, 3) / 255.0 @ matrix.T + offset).reshape(img.shape)
    assert np.abs(inference.restore(model, [img])[0].astype(int) - mapped).max() <= 1
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
