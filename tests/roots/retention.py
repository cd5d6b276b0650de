"""A retention-style mixer written from scratch for the tests (not archlab's template family):
fixed per-head decays from fast to slow, a plain recurrent scan, no `step`, LayerNorm on the
output and a sigmoid gate."""

import math

import torch
from torch import nn
from torch.nn import functional as F


def scan(q, k, v, gammas):
    """o_t = q_t S_t, S_t = gamma S_{t-1} + k_t^T v_t, per head; q, k, v: (batch, heads, time, dim)."""
    state = torch.zeros(q.shape[0], q.shape[1], q.shape[-1], v.shape[-1], dtype=q.dtype, device=q.device)
    out = []
    for t in range(q.shape[2]):
        state = gammas[:, None, None] * state + k[:, :, t, :, None] * v[:, :, t, None, :]
        out.append(torch.einsum("bhd,bhde->bhe", q[:, :, t], state))
    return torch.stack(out, 2)


class Mixer(nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.n_heads = n_heads
        self.proj_in = nn.Linear(d_model, 3 * d_model, bias=False)
        self.register_buffer("gammas", 1 - torch.exp(torch.linspace(math.log(1 / 4), math.log(1 / 64), n_heads)))
        self.out_norm = nn.LayerNorm(d_model, eps=1e-5)
        self.gate = nn.Linear(d_model, d_model)
        self.proj_out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.n_heads, -1).transpose(1, 2) for z in self.proj_in(x).chunk(3, dim=-1))
        o = scan(F.gelu(q) * 0.5, F.gelu(k), v, self.gammas).transpose(1, 2).reshape(b, t, d)
        return self.proj_out(self.out_norm(o) * torch.sigmoid(self.gate(x)))
