"""archlab's pure-PyTorch stand-ins for flash-linear-attention (archlab/sandbox/compat/fla):
numerics against naive definitions written here (and against fla's own pure-PyTorch references
where the real fla imports), the cache and packed-sequence paths, how the model server chooses
between the real fla and the stand-ins, and a real sandboxed evaluation of a candidate that
imports the fla names ASI-Arch's designs use."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from archlab.sandbox import compat, runner
from archlab.sandbox.compat.fla.layers.utils import get_unpad_data, index_first_axis, pad_input, unpad_input
from archlab.sandbox.compat.fla.models.utils import Cache
from archlab.sandbox.compat.fla.modules import FusedRMSNormGated, L2Norm, RMSNorm, ShortConvolution
from archlab.sandbox.compat.fla.modules.causal_conv1d import causal_conv1d
from archlab.sandbox.compat.fla.modules.l2norm import l2norm

TOL = dict(atol=1e-6, rtol=1e-6)


def close(a, b, **tol):
    torch.testing.assert_close(a, b.to(a.dtype), **(tol or TOL))


# -- naive definitions ---------------------------------------------------------------------------
def naive_conv(x, weight, bias=None, activation="silu", before=None):
    """An explicit loop over time in float64: y[t] = act(sum_j w[:, j] * x[t - (W-1) + j] + b),
    positions before 0 read from `before` (N, D, W: the previous inputs, newest last) or zero."""
    x, w = x.double(), weight.double()[:, 0]  # (B, T, D), (D, W)
    B, T, D = x.shape
    W = w.shape[-1]
    prev = torch.zeros(B, D, W, dtype=torch.float64) if before is None else before.double()
    y = torch.zeros(B, T, D, dtype=torch.float64)
    for t in range(T):
        for j in range(W):
            s = t - (W - 1) + j
            y[:, t] += w[:, j] * (x[:, s] if s >= 0 else prev[:, :, W + s])
    if bias is not None:
        y = y + bias.double()
    return F.silu(y) if activation else y


def naive_rmsnorm(x, weight=None, bias=None, eps=1e-5):
    x = x.double()
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    y = y * weight.double() if weight is not None else y
    return y + bias.double() if bias is not None else y


def conv(dim=12, k=4, bias=False, activation="silu"):
    torch.manual_seed(0)
    module = ShortConvolution(dim, kernel_size=k, activation=activation, bias=bias)
    if bias:
        torch.nn.init.normal_(module.bias)
    return module


# -- ShortConvolution ----------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", ["silu", None])
def test_short_convolution_is_a_causal_depthwise_conv(bias, activation):
    c = conv(bias=bias, activation=activation)
    assert isinstance(c, torch.nn.Conv1d) and c.weight.shape == (12, 1, 4)
    x = torch.randn(3, 17, 12)
    y, state = c(x, cache=None, output_final_state=False, cu_seqlens=None)
    assert state is None and y.shape == x.shape and y.dtype == x.dtype
    close(y, naive_conv(x, c.weight, c.bias, activation))
    # the textbook definition as well: nn.Conv1d's own forward (padding k-1 both sides), cut to T
    plain = torch.nn.Conv1d.forward(c, x.transpose(1, 2))[..., :17].transpose(1, 2)
    close(y, F.silu(plain) if activation else plain)


def test_short_convolution_is_causal_and_differentiable():
    c = conv()
    x = torch.randn(2, 9, 12, requires_grad=True)
    y, _ = c(x)
    y[:, 4].sum().backward()
    assert x.grad[:, 5:].abs().max() == 0 and x.grad[:, 1:5].abs().max() > 0 and x.grad[:, 0].abs().max() == 0
    assert c.weight.grad is not None
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    xs = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    init = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, s: causal_conv1d(a, b, initial_state=s, activation="silu")[0], (xs, w, init)
    )


@pytest.mark.parametrize("split", [1, 2, 3, 7, 12])
def test_short_convolution_cache_continues_a_sequence(split):
    c = conv(bias=True)
    x = torch.randn(2, 13, 12)
    full, final = c(x, cache=None, output_final_state=True)
    assert final.shape == (2, 12, 4)  # fla's cache: (N, D, kernel_size), the newest input last
    close(final, x[:, -4:].transpose(1, 2), atol=0, rtol=0)
    y1, c1 = c(x[:, :split], output_final_state=True)
    y2, c2 = c(x[:, split:], cache=c1, output_final_state=True)
    close(torch.cat([y1, y2], 1), full)
    close(c2, final)
    close(y2, naive_conv(x[:, split:], c.weight, c.bias, before=c1))
    _, none = c(x[:, split:], cache=c1, output_final_state=False)
    assert none is None


def test_short_convolution_decodes_token_by_token_in_place():
    c = conv()
    x = torch.randn(2, 6, 12)
    full, final = c(x, output_final_state=True)
    cache = torch.zeros(2, 12, 4)
    with torch.no_grad():
        steps = []
        for t in range(6):
            y, returned = c(x[:, t : t + 1], cache=cache, output_final_state=True)
            assert returned is cache  # fla's decoding kernel updates the cache in place
            steps.append(y)
    close(torch.cat(steps, 1), full)
    close(cache, final)


def test_short_convolution_packed_sequences_residual_and_head_shapes():
    c = conv()
    a, b = torch.randn(1, 5, 12), torch.randn(1, 8, 12)
    cu = torch.tensor([0, 5, 13], dtype=torch.int32)
    y, state = c(torch.cat([a, b], 1), output_final_state=True, cu_seqlens=cu)
    ya, sa = c(a, output_final_state=True)
    yb, sb = c(b, output_final_state=True)
    close(y, torch.cat([ya, yb], 1))
    close(state, torch.cat([sa, sb], 0))
    x, r = torch.randn(2, 7, 12), torch.randn(2, 7, 12)
    close(c(x, residual=r)[0], c(x)[0] + r)
    y4, _ = c(x.view(2, 7, 3, 4))  # (B, T, H, Dh) in, same shape out
    assert y4.shape == (2, 7, 3, 4)
    close(y4.reshape(2, 7, 12), c(x)[0])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]] * 2)
    close(c(x, mask=mask)[0], c(x * mask[..., None])[0])
    with pytest.raises(ValueError):
        ShortConvolution(12, 4, activation="relu")


# -- norms ---------------------------------------------------------------------------------------
def test_rmsnorm_matches_the_formula():
    x = torch.randn(3, 5, 16)
    norm = RMSNorm(16, eps=1e-5)
    torch.nn.init.normal_(norm.weight)
    close(norm(x), naive_rmsnorm(x, norm.weight, eps=1e-5))
    assert norm.bias is None and [n for n, _ in norm.named_parameters()] == ["weight"]
    with_bias = RMSNorm(16, bias=True, eps=1e-6)
    torch.nn.init.normal_(with_bias.bias)
    close(with_bias(x), naive_rmsnorm(x, with_bias.weight, with_bias.bias, eps=1e-6))
    plain = RMSNorm(16, elementwise_affine=False)
    assert list(plain.parameters()) == []
    close(plain(x), naive_rmsnorm(x))
    r = torch.randn(3, 5, 16)
    y, summed = norm(x, residual=r, prenorm=True)
    close(y, naive_rmsnorm(x + r, norm.weight))
    close(summed, x + r)
    _, summed32 = norm(x.bfloat16(), prenorm=True, residual_in_fp32=True)
    assert summed32.dtype == torch.float32
    half = norm(x.bfloat16())
    assert half.dtype == torch.bfloat16  # computed in float32, returned in the input's dtype
    close(half.float(), naive_rmsnorm(x.bfloat16(), norm.weight).float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("activation", ["swish", "silu", "sigmoid"])
def test_fused_rmsnorm_gated_matches_the_formula(activation):
    x, g = torch.randn(2, 7, 4, 8), torch.randn(2, 7, 4, 8)
    norm = FusedRMSNormGated(8, eps=1e-5, activation=activation)
    torch.nn.init.normal_(norm.weight)
    gate = g.double() * torch.sigmoid(g.double()) if activation != "sigmoid" else torch.sigmoid(g.double())
    close(norm(x, g), naive_rmsnorm(x, norm.weight, eps=1e-5) * gate)
    assert FusedRMSNormGated(8).activation == "swish"  # fla's default
    with pytest.raises(ValueError):
        FusedRMSNormGated(8, activation="relu")


def test_l2norm_adds_eps_to_the_sum_of_squares():
    x = torch.randn(4, 9, 32)
    close(l2norm(x), x.double() / torch.sqrt((x.double() ** 2).sum(-1, keepdim=True) + 1e-6))
    tiny = torch.tensor([[3e-4, 4e-4]])  # sum of squares 2.5e-7: eps inside the root, not added to the norm
    close(l2norm(tiny), tiny.double() / (2.5e-7 + 1e-6) ** 0.5)
    close(L2Norm(eps=1e-3)(x), x.double() * torch.rsqrt((x.double() ** 2).sum(-1, keepdim=True) + 1e-3))
    assert l2norm(x.bfloat16()).dtype == torch.bfloat16 and l2norm(x, output_dtype=torch.float64).dtype == torch.float64


# -- padding helpers -----------------------------------------------------------------------------
def test_unpad_and_pad_round_trip():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    indices, cu_seqlens, longest = get_unpad_data(mask)
    assert indices.tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 14]
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.tolist() == [0, 3, 8, 9] and longest == 5
    x = torch.randn(3, 5, 6, requires_grad=True)
    packed = index_first_axis(x.reshape(15, 6), indices)
    assert packed.shape == (9, 6)
    close(packed, x.reshape(15, 6)[mask.flatten().bool()])
    back = pad_input(packed, indices, 3, 5)
    close(back, x * mask[..., None])
    back.sum().backward()
    close(x.grad, mask[..., None].expand(3, 5, 6).float())
    q, (k,), idx_q, (cu_q, cu_k), (max_q, max_k) = unpad_input(x, (x,), mask, q_len=5)
    assert q.shape == k.shape == (9, 6) and cu_q is cu_k and max_q == max_k == 5 and idx_q is not None
    assert Cache() == [] and Cache().get_seq_length() == 0


def test_fla_ops_is_absent_with_a_clear_error():
    with pytest.raises(ImportError, match="no fla kernels"):
        importlib.import_module("archlab.sandbox.compat.fla.ops")


# -- against the real fla's pure-PyTorch references ----------------------------------------------
def _real_fla_importable() -> bool:
    spec = importlib.util.find_spec("fla")
    if spec is None or (spec.origin or "").startswith(compat.DIRECTORY):
        return False
    try:  # fla-core (fla.modules) and flash-linear-attention (fla.layers), with triton (imported at their tops)
        for name in ("fla.modules.norm.layernorm", "fla.layers.utils"):
            importlib.import_module(name)
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _real_fla_importable(), reason="the real fla (with triton) is not importable here")
def test_agrees_with_real_fla_references():
    from fla.layers import utils as real_utils
    from fla.modules import ShortConvolution as RealConv
    from fla.modules.norm.layernorm import rms_norm_ref
    from fla.modules.norm.layernorm_gated import rms_norm_ref as gated_ref

    x, g, r = torch.randn(3, 7, 16), torch.randn(3, 7, 16), torch.randn(3, 7, 16)
    w, b = torch.randn(16), torch.randn(16)
    close(RMSNorm(16, eps=1e-5).forward(x), rms_norm_ref(x, torch.ones(16), None, eps=1e-5))
    norm = RMSNorm(16, bias=True, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(w), norm.bias.copy_(b)
    close(norm(x), rms_norm_ref(x, w, b, eps=1e-6))
    y, summed = norm(x, residual=r, prenorm=True)
    ref_y, ref_summed = rms_norm_ref(x, w, b, residual=r, eps=1e-6, prenorm=True)
    close(y, ref_y)
    close(summed, ref_summed)
    gated = FusedRMSNormGated(16, eps=1e-5)
    with torch.no_grad():
        gated.weight.copy_(w)
    close(gated(x, g), gated_ref(x, w, None, z=g, eps=1e-5, norm_before_gate=True))
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    for ours, theirs in zip(get_unpad_data(mask), real_utils.get_unpad_data(mask)):
        assert torch.equal(torch.as_tensor(ours), torch.as_tensor(theirs))
    xs = torch.randn(8, 5)
    idx = get_unpad_data(mask)[0]
    close(index_first_axis(xs, idx), real_utils.index_first_axis(xs, idx))
    close(pad_input(xs[idx], idx, 2, 4), real_utils.pad_input(xs[idx], idx, 2, 4))
    torch.manual_seed(0)
    real = RealConv(12, kernel_size=4, activation="silu", bias=True)  # constructs on a CPU; its forward needs Triton
    ours = ShortConvolution(12, kernel_size=4, activation="silu", bias=True)
    assert real.weight.shape == ours.weight.shape and real.padding == ours.padding and real.groups == ours.groups
    assert set(real.state_dict()) == set(ours.state_dict()) and real.state_size == ours.state_size
    ours.load_state_dict(real.state_dict())
    xc = torch.randn(2, 9, 12)
    close(ours(xc)[0], F.silu(torch.nn.Conv1d.forward(real, xc.transpose(1, 2))[..., :9].transpose(1, 2)))


# -- which fla a server's candidate gets ---------------------------------------------------------
def test_provide_fla_puts_the_stand_ins_first_where_the_real_fla_cannot_run():
    code = textwrap.dedent("""
        import json, sys
        from archlab.sandbox import compat
        which = compat.provide_fla("cpu")
        import fla, fla.modules
        print(json.dumps({"which": which, "file": fla.__file__, "first": sys.path[0] == compat.DIRECTORY,
                          "again": compat.provide_fla("cpu"), "entries": sys.path.count(compat.DIRECTORY)}))
    """)
    out = json.loads(
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONSAFEPATH": "1"},
        ).stdout.splitlines()[-1]
    )
    assert out["which"] == out["again"] == "fallback" and out["first"] and out["entries"] == 1
    assert out["file"].startswith(compat.DIRECTORY)


# -- a real sandboxed evaluation -----------------------------------------------------------------
CANDIDATE = '''
"""A small gated linear-attention mixer built from fla's modules."""
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from einops import rearrange

from fla.layers.utils import get_unpad_data, index_first_axis, pad_input
from fla.modules import FusedRMSNormGated, RMSNorm, ShortConvolution
from fla.modules.l2norm import l2norm

if TYPE_CHECKING:
    from fla.models.utils import Cache


class Mixer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, **kwargs):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.gate = nn.Linear(d_model, d_model, bias=False)
        self.convs = nn.ModuleList([ShortConvolution(d_model, kernel_size=4, activation="silu", bias=False)
                                    for _ in range(3)])
        self.in_norm = RMSNorm(d_model, eps=1e-5)
        self.out_norm = FusedRMSNormGated(self.head_dim, eps=1e-5)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, past_key_values: "Cache | None" = None) -> torch.Tensor:
        b, t, _ = x.shape
        mask = torch.ones(b, t, dtype=torch.long, device=x.device)
        indices, cu_seqlens, _ = get_unpad_data(mask)
        h = index_first_axis(rearrange(self.in_norm(x), "b s d -> (b s) d"), indices).unsqueeze(0)
        h = pad_input(h.squeeze(0), indices, b, t)
        parts = [conv(p, cache=None, output_final_state=False, cu_seqlens=None)[0]
                 for conv, p in zip(self.convs, self.qkv(h).chunk(3, dim=-1))]
        q, k, v = (rearrange(p, "b t (h d) -> b h t d", h=self.n_heads) for p in parts)
        q, k = l2norm(q), l2norm(k)
        state = torch.einsum("bhtd,bhte->bhtde", k, v).cumsum(dim=2)  # causal linear attention
        o = rearrange(torch.einsum("bhtd,bhtde->bhte", q, state), "b h t d -> b t h d")
        g = rearrange(self.gate(x), "b t (h d) -> b t h d", h=self.n_heads)
        return self.out(rearrange(self.out_norm(o, g), "b t h d -> b t (h d)"))
'''


@pytest.mark.e2e
def test_a_candidate_importing_fla_evaluates_in_the_sandbox():
    result = runner.evaluate(CANDIDATE, "micro", threads=1)
    assert result.ok and result.reason is None, (result.reason, result.detail)
    assert result.metrics["val_loss"] > 0 and result.metrics["complexity"] == "linear"
    expected = (
        "fallback" if not torch.cuda.is_available() or importlib.util.find_spec("fla") is None else result.env["fla"]
    )
    assert result.env["fla"] == expected
