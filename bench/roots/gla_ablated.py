"""Gated linear attention, written from scratch outside archlab's template family, with its
known-good parts removed (no short convolution, no feature map, no output norm, no output
gate): the root of the foreign-root rediscovery benchmark (bench/foreign_rediscovery.py),
whose hidden answer is gla_full.py.

Per head, a matrix state S decays by a data-dependent scalar a_t in (0, 1) and accumulates
k_t v_t^T; the output reads it with q_t. Computed in chunks: quadratic inside a chunk, a
recurrence across chunks; `step` is the same recurrence one token at a time.
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
        self.to_decay = nn.Linear(d_model, n_heads)
        self.to_out = nn.Linear(d_model, d_model, bias=False)

    def parts(self, x):
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, self.heads, self.head_dim).transpose(1, 2) for z in self.to_qkv(x).chunk(3, -1))
        log_a = F.logsigmoid(self.to_decay(x)).transpose(1, 2) / 8
        return q * self.head_dim**-0.5, k, v, log_a

    def forward(self, x):
        b, t, d = x.shape
        o = gla_chunked(*self.parts(x))
        return self.to_out(o.transpose(1, 2).reshape(b, t, d))

    def step(self, x, state=None):
        q, k, v, log_a = (z[:, :, 0] for z in self.parts(x[:, None]))
        if state is None:
            state = q.new_zeros(*q.shape, v.shape[-1])
        state = state * log_a.exp()[..., None, None] + k[..., :, None] * v[..., None, :]
        o = (q[..., None, :] @ state)[..., 0, :]
        return self.to_out(o.reshape(x.shape)), state
