"""fla.modules.l2norm: x / sqrt(sum(x^2) + eps) over the last dimension.

Semantics matched to flash-linear-attention 0.6.0, fla/modules/norm/l2norm.py (its Triton kernel
computes rstd = 1 / sqrt(sum(x*x) + eps) in float32 per row, eps added to the sum of squares, not
to the norm; the output has x's dtype unless output_dtype is given).
"""

import torch
import torch.nn as nn


def l2norm(x: torch.Tensor, eps: float = 1e-6, output_dtype: torch.dtype | None = None) -> torch.Tensor:
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    y = xf * torch.rsqrt(xf.square().sum(dim=-1, keepdim=True) + eps)
    return y.to(x.dtype if output_dtype is None else output_dtype)


l2_norm = l2norm


class L2Norm(nn.Module):
    def __init__(self, eps: float = 1e-6, output_dtype: torch.dtype | None = None):
        super().__init__()
        self.eps = eps
        self.output_dtype = output_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2norm(x, eps=self.eps, output_dtype=self.output_dtype)


__all__ = ["L2Norm", "l2_norm", "l2norm"]
