"""The template family: committed roots are up to date, the chunkwise delta rule equals its
recurrent reference, and every design one mutation away from a root renders to a working Mixer."""

import math

import pytest
import torch
import torch.nn.functional as F

from archlab.agents.offline import OPERATORS
from archlab.sandbox import contract, static
from archlab.templates import ROOTS, Design, render, render_root, root_path


def load(code: str) -> dict:
    namespace: dict = {"__name__": "candidate"}
    exec(compile(code, "candidate.py", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("name", list(ROOTS))
def test_committed_root_file_is_the_rendered_root(name):
    assert root_path(name).is_file(), f"{root_path(name)} is missing: run `python -m archlab.templates`"
    assert render_root(name) == root_path(name).read_text(encoding="utf-8"), (
        f"{root_path(name).name} is stale: run `python -m archlab.templates`"
    )


@pytest.mark.parametrize("name", list(ROOTS))
def test_root_passes_the_static_check_and_maps_shapes(name):
    code = render_root(name)
    static.static_check(code)
    mixer = load(code)["Mixer"](d_model=64, n_heads=4)
    x = torch.randn(2, 37, 64)
    assert mixer(x).shape == x.shape


# -- the delta rule ----------------------------------------------------------------------------
def explicit_delta_rule(q, k, v, beta, log_decay=None):
    """S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t, with matrices."""
    b, h, t, dk = q.shape
    out = torch.zeros(b, h, t, v.shape[-1], dtype=q.dtype)
    eye = torch.eye(dk, dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            s = torch.zeros(dk, v.shape[-1], dtype=q.dtype)
            for i in range(t):
                a = 1.0 if log_decay is None else math.exp(log_decay[bi, hi, i].item())
                kk, bb = k[bi, hi, i][:, None], beta[bi, hi, i]
                s = a * (eye - bb * kk @ kk.T) @ s + bb * kk @ v[bi, hi, i][None, :]
                out[bi, hi, i] = s.T @ q[bi, hi, i]
    return out


def delta_inputs(t: int, with_decay: bool, seed: int = 0, b: int = 2, h: int = 3, dk: int = 8, dv: int = 6):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, dk, generator=gen, dtype=torch.float64)
    k = F.normalize(torch.randn(b, h, t, dk, generator=gen, dtype=torch.float64), dim=-1)
    v = torch.randn(b, h, t, dv, generator=gen, dtype=torch.float64)
    beta = torch.rand(b, h, t, generator=gen, dtype=torch.float64)
    log_decay = F.logsigmoid(torch.randn(b, h, t, generator=gen, dtype=torch.float64) + 2) if with_decay else None
    return q, k, v, beta, log_decay


@pytest.fixture(scope="module", params=["deltanet", "gated_deltanet"])
def delta_module(request):
    return load(render_root(request.param))


def test_recurrent_reference_is_the_delta_rule(delta_module):
    for with_decay in (False, True):
        q, k, v, beta, log_decay = delta_inputs(13, with_decay, b=1, h=2)
        got = delta_module["delta_rule_recurrent"](q, k, v, beta, log_decay)
        torch.testing.assert_close(got, explicit_delta_rule(q, k, v, beta, log_decay), rtol=0, atol=1e-12)


@pytest.mark.parametrize("with_decay", [False, True], ids=["no_decay", "decay"])
@pytest.mark.parametrize("chunk_size", [16, 32, 64])
@pytest.mark.parametrize("length", [1, 37, 100])
def test_chunkwise_equals_recurrent(delta_module, chunk_size, length, with_decay):
    q, k, v, beta, log_decay = delta_inputs(length, with_decay, seed=length + chunk_size)
    chunked = delta_module["delta_rule_chunkwise"](q, k, v, beta, log_decay, chunk_size)
    reference = delta_module["delta_rule_recurrent"](q, k, v, beta, log_decay)
    assert chunked.shape == reference.shape == (2, 3, length, 6)
    assert (chunked - reference).abs().max().item() < 1e-10


def test_chunkwise_decay_matters(delta_module):
    """A guard against the comparison above passing vacuously: decay changes the output."""
    q, k, v, beta, log_decay = delta_inputs(70, True)
    with_decay = delta_module["delta_rule_chunkwise"](q, k, v, beta, log_decay, 32)
    without = delta_module["delta_rule_chunkwise"](q, k, v, beta, None, 32)
    assert (with_decay - without).abs().max().item() > 1e-3


# -- one mutation away from every root -----------------------------------------------------------
def one_step_variants():
    cases = []
    for name, (_, design) in ROOTS.items():
        for op in OPERATORS:
            if op.applies(design):
                for variant in op.variants(design):
                    cases.append(
                        pytest.param(name, op.name, variant, id=f"{name}-{op.name}={getattr(variant, op.field)!r}")
                    )
    return cases


VARIANTS = one_step_variants()


def test_every_root_has_variants():
    per_root = {name: sum(1 for c in VARIANTS if c.values[0] == name) for name in ROOTS}
    assert all(n >= 5 for n in per_root.values()), per_root


@pytest.mark.parametrize("root, operator, design", VARIANTS)
def test_variant_renders_to_a_working_mixer(root, operator, design: Design):
    parent = ROOTS[root][1]
    code = render(design)
    assert code != render(parent), f"{operator} changed the design but not the code"
    compile(code, "candidate.py", "exec")
    static.static_check(code)
    namespace = load(code)
    torch.manual_seed(0)
    mixer = namespace["Mixer"](d_model=64, n_heads=4)
    x = torch.randn(2, 37, 64)
    y = mixer(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mixer.parameters() if p.requires_grad)
    if design.layers:
        assert namespace["LAYERS"] == design.layers


def test_the_chunkwise_delta_rule_runs_in_fp32_under_bf16_autocast():
    # On CUDA the triangular solve has no bf16 kernel, so the pure-PyTorch path (every candidate
    # without fla's kernel) must not hand it bf16; in fp32 it is exactly the unautocast result.
    module = contract.load(render_root("gated_deltanet"))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (F.normalize(torch.randn(1, 2, 40, 8, generator=gen), dim=-1) for _ in range(3))
    beta, log_decay = torch.rand(1, 2, 40, generator=gen), -torch.rand(1, 2, 40, generator=gen)
    reference = module.delta_rule_chunkwise(q, k, v, beta, log_decay, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = module.delta_rule_chunkwise(q, k, v, beta, log_decay, 16)
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, reference)
    half = module.delta_rule_chunkwise(*(x.bfloat16() for x in (q, k, v, beta, log_decay)), 16)
    assert half.dtype == torch.bfloat16 and (half.float() - reference).abs().max() < 2e-2
