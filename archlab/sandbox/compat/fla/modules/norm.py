"""fla.modules.RMSNorm and FusedRMSNormGated, in PyTorch.

Semantics matched to flash-linear-attention 0.6.0: fla/modules/norm/layernorm.py (`RMSNorm`,
`rms_norm_ref`) and fla/modules/norm/fused_norm_gate.py (`FusedRMSNormGated`, its kernels' gate):
- y = x * rsqrt(mean(x^2, last dim) + eps) * weight (+ bias), computed in float32 (or wider)
  and returned in x's dtype; weight starts at ones, bias (RMSNorm(bias=True)) at zeros;
- with `residual`, the input is x + residual; `prenorm=True` also returns that sum (in the
  residual's dtype, else float32 with residual_in_fp32, else x's dtype);
- FusedRMSNormGated multiplies the normalised output by g * sigmoid(g) ('swish'/'silu', the
  default) or by sigmoid(g) ('sigmoid'); it has a weight and no bias.
"""

import torch
import torch.nn as nn


def _rms_norm(x, weight, bias, eps, residual=None, prenorm=False, residual_in_fp32=False, g=None, activation=None):
    dt = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(dt)
    if residual is not None:
        xf = xf + residual.to(dt)
        res_dtype = residual.dtype
    else:
        res_dtype = torch.float32 if residual_in_fp32 else x.dtype
    y = xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(dt)
    if bias is not None:
        y = y + bias.to(dt)
    if g is not None:
        gf = g.to(dt)
        if activation in ("swish", "silu"):
            y = y * gf * torch.sigmoid(gf)
        elif activation == "sigmoid":
            y = y * torch.sigmoid(gf)
        else:
            raise ValueError(f"Unsupported activation: {activation}")
    y = y.to(x.dtype)
    return (y, xf.to(res_dtype)) if prenorm else y


def rms_norm(x, weight, bias, residual=None, eps=1e-6, prenorm=False, residual_in_fp32=False):
    return _rms_norm(x, weight, bias, eps, residual, prenorm, residual_in_fp32)


def rms_norm_gated(
    x, g, weight, bias, activation="swish", residual=None, prenorm=False, residual_in_fp32=False, eps=1e-6
):
    return _rms_norm(x, weight, bias, eps, residual, prenorm, residual_in_fp32, g=g, activation=activation)


class RMSNorm(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        elementwise_affine: bool = True,
        bias: bool = False,
        eps: float = 1e-5,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.hidden_size = hidden_size
        self.elementwise_affine = elementwise_affine
        self.eps = eps
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(hidden_size, **factory_kwargs))
            if bias:
                self.bias = nn.Parameter(torch.zeros(hidden_size, **factory_kwargs))

    def reset_parameters(self) -> None:
        if self.elementwise_affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.hidden_size}"
            + ("" if self.elementwise_affine else ", elementwise_affine=False")
            + f", eps={self.eps}"
        )

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return _rms_norm(x, self.weight, self.bias, self.eps, residual, prenorm, residual_in_fp32)


class FusedRMSNormGated(RMSNorm):
    """RMSNorm without bias whose output is multiplied by activation(g)."""

    def __init__(
        self,
        hidden_size: int,
        elementwise_affine: bool = True,
        eps: float = 1e-5,
        activation: str = "swish",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if activation not in ("swish", "silu", "sigmoid"):
            raise ValueError(f"Unsupported activation: {activation}")
        super().__init__(
            hidden_size, elementwise_affine=elementwise_affine, bias=False, eps=eps, device=device, dtype=dtype
        )
        self.activation = activation

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}"

    def forward(self, x, g, residual=None, prenorm=False, residual_in_fp32=False):
        return _rms_norm(
            x, self.weight, self.bias, self.eps, residual, prenorm, residual_in_fp32, g=g, activation=self.activation
        )


FusedRMSNormSwishGate = FusedRMSNormGated

__all__ = ["FusedRMSNormGated", "FusedRMSNormSwishGate", "RMSNorm", "rms_norm", "rms_norm_gated"]
