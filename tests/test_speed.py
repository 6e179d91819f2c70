"""The speed-ups change how fast the models run, never what they compute: the layer norm and the
attention block of notebook 04's model cell, the optimiser, torch.compile, and the amp and compile
settings."""
import shutil

import pytest
import torch
import torch.nn.functional as F

from builders import notebook_model, notebook_run
from descan import inference, models, optim, recipes

FORMATS = [torch.contiguous_format, torch.channels_last]


def cell(name):
    """A class that notebook 04's model cell defines (LayerNorm2d, AttnBlock, AttentionUNet)."""
    return models.run_code(notebook_run("attention")["model"]["code"], "<04 model cell>")[name]


def hand_written_layer_norm(x, weight, bias, eps=1e-5):
    """NAFNet's formulation: mean and variance over the channels of each pixel, by hand."""
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    return weight.view(1, -1, 1, 1) * (x - mu) / (var + eps).sqrt() + bias.view(1, -1, 1, 1)


def block_as_written(block, x):
    """The attention block's formula written plainly (x + beta * y, two passes each): its fused
    torch.addcmul must compute the same."""
    a, b = block.dw(block.expand(block.norm1(x))).chunk(2, dim=1)
    y = a * b
    x = x + block.beta * block.project(y * block.sca(y))
    a, b = block.ffn_in(block.norm2(x)).chunk(2, dim=1)
    return x + block.gamma * block.ffn_out(a * b)


def randomise(model, seed=0, scale=0.3):
    """Random values in every parameter (beta and gamma start at zero, which would hide the block)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return model


@pytest.mark.parametrize("fmt", FORMATS)
def test_layer_norm_over_channels_equals_f_layer_norm(fmt):
    torch.manual_seed(0)
    norm = randomise(cell("LayerNorm2d")(12))
    x = (torch.randn(2, 12, 9, 7) * 3 + 1).contiguous(memory_format=fmt)
    got = norm(x)
    want = F.layer_norm(x.permute(0, 2, 3, 1), (12,), norm.weight, norm.bias).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, hand_written_layer_norm(x, norm.weight, norm.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_attention_block_computes_its_formula(fmt):
    torch.manual_seed(0)
    block = randomise(cell("AttnBlock")(8))
    x = torch.randn(2, 8, 12, 10).contiguous(memory_format=fmt)
    block = block.to(memory_format=fmt)
    torch.testing.assert_close(block(x), block_as_written(block, x))
    # the same for the gradients of every parameter
    grads = []
    for forward in (block, lambda t: block_as_written(block, t)):
        block.zero_grad()
        forward(x).square().mean().backward()
        grads.append([p.grad.clone() for p in block.parameters()])
    for fused, plain in zip(*grads):
        torch.testing.assert_close(fused, plain)


def test_the_attention_model_keeps_its_parameter_count():
    """The U-Net without a colour head has the count docs/benchmarks.md gives (old best.pt files load)."""
    model = notebook_model("attention", colour_head=False)
    assert models.count_parameters(model) == 1_750_319


@pytest.mark.parametrize("bad", ["fp32", "bfloat16", "yes", "1", "FP16"])
def test_the_amp_setting_refuses_unknown_values(bad):
    with pytest.raises(ValueError, match=r"amp=.* is not one of auto, bf16, fp16, off"):
        inference.amp_dtype(bad)
    with pytest.raises(ValueError, match="amp="):  # on a CPU too, not only where AMP applies
        inference.autocast("cpu", bad)
    with pytest.raises(ValueError, match=rf"amp='{bad}'.*use one of auto, bf16, fp16, off"):
        recipes.parse_overrides([f"amp={bad}"], recipes.TrainConfig())


def test_the_amp_setting_picks_the_dtype():
    for value, dtype in [("bf16", torch.bfloat16), ("fp16", torch.float16), ("off", None)]:
        assert inference.amp_dtype(value) is dtype
    assert isinstance(inference.autocast("cuda", "off"), type(inference.autocast("cpu")))  # no autocast at all
    assert inference.use_grad_scaler("cuda", "fp16") and not inference.use_grad_scaler("cuda", "bf16")
    assert not inference.use_grad_scaler("cpu", "fp16")


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_the_optimiser_is_the_multi_tensor_one_on_a_cpu_and_steps(kind):
    cfg = recipes.TrainConfig(optimizer=kind)
    model = notebook_model("attention", width=4, enc_blocks=(1,), mid_blocks=1, dec_blocks=(1,))
    opt = optim.make_optimizer(model.parameters(), cfg, "cpu")
    assert opt.param_groups[0]["foreach"] is True and not opt.param_groups[0].get("fused")
    assert isinstance(opt, torch.optim.AdamW if kind == "adamw" else torch.optim.Adam)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.rand(2, 3, 16, 16)).mean().backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # a last.pt written without the multi-tensor setting does not switch it off when resumed
    saved = opt.state_dict()
    saved["param_groups"][0]["foreach"] = None
    optim.load_optimizer_state(opt, saved)
    assert opt.param_groups[0]["foreach"] is True and opt.param_groups[0]["lr"] == cfg.lr


def test_the_compile_setting():
    model = cell("LayerNorm2d")(4)
    assert inference.compile_model(model) is model  # off by default
    assert recipes.TrainConfig().compile is False
    compiled = inference.compile_model(model, True)
    assert compiled is not model and list(compiled._orig_mod.state_dict()) == list(model.state_dict())
    assert recipes.parse_overrides(["compile=1"], recipes.TrainConfig()).compile is True
    with pytest.raises(ValueError, match=r"compile='maybe'.*use one of True, False"):
        recipes.parse_overrides(["compile=maybe"], recipes.TrainConfig())


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None,
                    reason="torch.compile on a CPU needs a C++ compiler, and none is installed")
def test_compiled_and_eager_blocks_give_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    block = randomise(cell("AttnBlock")(4)).to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    compiled = inference.compile_model(block, True)
    results = []
    for run in (block, compiled):
        block.zero_grad()
        out = run(x)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in block.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["dncnn", "identity"])
def test_the_ema_update_is_the_per_tensor_lerp(name):
    torch.manual_seed(0)
    build = {"dncnn": lambda: notebook_model("dncnn", width=4, depth=3), "identity": models.Identity}[name]
    model, ema = randomise(build()), build()
    if name == "dncnn":
        model.body[3].num_batches_tracked += 3  # an integer buffer is copied, not averaged
    want = {k: e.lerp(p, 0.5) if e.dtype.is_floating_point else p.clone()
            for (k, e), p in zip(ema.state_dict().items(), model.state_dict().values())}
    optim.update_ema(ema, model, 0.5)
    got = ema.state_dict()
    assert set(got) == set(want)
    for k, v in got.items():
        torch.testing.assert_close(v, want[k], rtol=0, atol=0)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (docs: speed on a GPU)")


@CUDA
@pytest.mark.parametrize("amp", ["auto", "bf16", "fp16", "off"])
def test_on_a_gpu_the_fused_optimiser_trains_under_every_amp_setting(amp):
    cfg = recipes.from_notebook("attention", torch.device("cuda"), smoke=False, overrides=[f"amp={amp}"])["config"]
    model = notebook_model("attention", width=8, enc_blocks=(1, 1), mid_blocks=1, dec_blocks=(1, 1))
    model = model.cuda().to(memory_format=torch.channels_last)
    opt = optim.make_optimizer(model.parameters(), cfg, "cuda")
    assert opt.param_groups[0]["fused"] is True
    scaler = torch.amp.GradScaler("cuda", enabled=inference.use_grad_scaler("cuda", cfg.amp))
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(4, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        with inference.autocast("cuda", cfg.amp):
            out = model(x)
        loss = (out.float() - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@CUDA
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_on_a_gpu_the_block_computes_its_formula_under_amp(amp):
    block = randomise(cell("AttnBlock")(16)).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(2, 16, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), inference.autocast("cuda", amp):
        fused, plain = block(x), block_as_written(block, x)
    assert fused.dtype == plain.dtype
    torch.testing.assert_close(fused.float(), plain.float(), rtol=1e-2, atol=1e-2)
