"""GPU-only checks (skipped without CUDA, or without flash-linear-attention where it is needed):
the root DeltaNet's fla kernel path agrees with its pure-PyTorch path, forward and backward, and
the sandbox's model servers train and score on the GPU with bf16 autocast."""

import importlib.util

import pytest
import torch

from archlab.sandbox import contract, runner
from archlab.sandbox.model import autocast
from archlab.templates import render_root

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _fla_importable() -> bool:
    if not torch.cuda.is_available() or importlib.util.find_spec("fla") is None:
        return False
    try:
        import fla.ops.delta_rule  # noqa: F401
    except Exception:
        return False
    return True


needs_fla = pytest.mark.skipif(not _fla_importable(), reason="needs flash-linear-attention (and triton) on a GPU")


def _inputs(b=2, h=4, t=200, d=32, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, device="cuda", generator=gen) for _ in range(3))
    q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    beta = torch.rand(b, h, t, device="cuda", generator=gen)
    return [x.requires_grad_() for x in (q, k, v, beta)]


@needs_cuda
@needs_fla
def test_fla_delta_rule_matches_the_pure_pytorch_path():
    module = contract.load(render_root("deltanet"))
    assert module.fla_chunk_delta_rule is not None
    ref_in, fla_in = _inputs(), _inputs()
    reference = module.delta_rule_chunkwise(*ref_in, None, 64)  # fp32, the pure-PyTorch reference
    fast = module.delta_rule_fla(*fla_in)  # bf16 Triton kernel, (batch, time, heads, dim) inside
    assert fast.shape == reference.shape and fast.dtype == reference.dtype
    scale = reference.abs().max()
    assert (fast - reference).abs().max() / scale < 3e-2
    weight = torch.randn_like(reference)
    (reference * weight).sum().backward()
    (fast * weight).sum().backward()
    for name, a, b in zip("q k v beta".split(), ref_in, fla_in):
        rel = (a.grad - b.grad).abs().max() / a.grad.abs().max().clamp_min(1e-12)
        assert rel < 6e-2, (name, rel.item())


@needs_cuda
@needs_fla
def test_the_root_mixer_uses_fla_under_bf16_autocast_and_agrees():
    module = contract.load(render_root("deltanet"))
    torch.manual_seed(0)
    mixer = contract.build_mixer(module, 256, 8).cuda()
    x = torch.randn(2, 300, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fast = mixer(x).float()
    original, module.fla_chunk_delta_rule = module.fla_chunk_delta_rule, None
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pure = mixer(x).float()
    finally:
        module.fla_chunk_delta_rule = original
    assert (fast - pure).abs().max() / pure.abs().max() < 5e-2


@needs_cuda
def test_micro_evaluation_on_the_gpu(tmp_path):
    """Both model servers on the GPU (bubblewrap binds the driver's device files), the scorer on the CPU."""
    log = tmp_path / "log.txt"
    result = runner.evaluate(render_root("deltanet"), "micro", device="cuda", threads=1, log_path=log)
    assert result.ok, (result, log.read_text()[-3000:])
    assert result.env["device"] == "cuda" and result.env["gpu"] and result.env["cuda"]
    assert result.metrics["val_loss"] < 5.6


@needs_cuda
def test_hardware_metrics_on_the_gpu():
    """The GPU's peak memory comes from the server's allocator; decoding agrees with the forward pass in bf16."""
    result = runner.evaluate(
        render_root("deltanet"), "micro", device="cuda", threads=1, tier_overrides={"hardware": True}
    )
    assert result.ok, result
    m = result.metrics
    assert m["activation_mem_mb"] > 0 and m["peak_mem_mb"] > m["activation_mem_mb"]
    assert m["decode_mode"] == "recurrent" and m["flops_per_token"] > 0 and "quant_loss" in m


@needs_cuda
def test_autocast_is_bf16_on_the_gpu():
    with autocast(torch.device("cuda")):
        y = torch.nn.Linear(8, 8).cuda()(torch.randn(2, 8, device="cuda"))
    assert y.dtype == torch.bfloat16
