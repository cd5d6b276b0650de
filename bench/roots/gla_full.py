"""Gated linear attention, written from scratch outside archlab's template family (the "full"
version of the foreign-root rediscovery benchmark: bench/foreign_rediscovery.py).

Per head, a matrix state S decays by a data-dependent scalar a_t in (0, 1) and accumulates
k_t v_t^T; the output reads it with q_t. Computed in chunks: quadratic inside a chunk, a
recurrence across chunks. Known-good parts, which gla_ablated.py removes: a short causal
convolution on q/k/v, SiLU features, a per-head RMSNorm of the output and a SiLU output gate.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

CHUNK = 32


def gla_chunked(q, k, v, log_a, chunk=CHUNK):
    """q, k, v: (batch, heads, time, dim); log_a: (batch, heads, time), <= 0."""
    b, h, t, _ = q.shape
    pad = (-t) % chunk
    if pad:
        q, k, v = (F.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
        log_a = F.pad(log_a, (0, pad))
    n = (t + pad) // chunk
    q, k, v = (z.reshape(b, h, n, chunk, -1) for z in (q, k, v))
    g = log_a.reshape(b, h, n, chunk).cumsum(-1)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    decay = (g[..., :, None] - g[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    inside = ((q @ k.transpose(-1, -2)) * decay) @ v
    state = q.new_zeros(b, h, q.shape[-1], v.shape[-1])
    outs = []
    for i in range(n):
        gi = g[:, :, i]
        outs.append(inside[:, :, i] + (q[:, :, i] * gi[..., None].exp()) @ state)
        to_end = (gi[..., -1:] - gi).exp()[..., None]
        state = state * gi[..., -1, None, None].exp() + (k[:, :, i] * to_end).transpose(-1, -2) @ v[:, :, i]
    return torch.stack(outs, 2).reshape(b, h, n * chunk, -1)[:, :, :t]


class Mixer(nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.heads, self.head_dim = n_heads, d_model // n_heads
        self.to_qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.conv = nn.Conv1d(3 * d_model, 3 * d_model, 4, groups=3 * d_model, bias=False)
        self.to_decay = nn.Linear(d_model, n_heads)
        self.norm = nn.RMSNorm(self.head_dim, eps=1e-5)
        self.to_gate = nn.Linear(d_model, d_model, bias=False)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def heads_of(self, z):
        b, t, _ = z.shape
        return z.view(b, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.to_qkv(x).transpose(1, 2)
        qkv = F.silu(self.conv(F.pad(qkv, (3, 0)))).transpose(1, 2)
        q, k, v = (self.heads_of(z) for z in qkv.chunk(3, -1))
        log_a = F.logsigmoid(self.to_decay(x)).transpose(1, 2) / 8
        o = self.norm(gla_chunked(q * self.head_dim**-0.5, k, v, log_a))
        o = o.transpose(1, 2).reshape(b, t, d) * F.silu(self.to_gate(x))
        return self.to_out(o)
