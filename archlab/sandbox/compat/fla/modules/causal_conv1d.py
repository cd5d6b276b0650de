"""fla.modules.ShortConvolution: a depthwise causal 1-d convolution with an optional SiLU, in PyTorch.

Semantics matched to flash-linear-attention 0.6.0, fla/modules/causal_conv1d/ops.py
(`ShortConvolution`, `causal_conv1d`, `causal_conv1d_update`, `causal_conv1d_update_states`):
- weight (hidden_size, 1, kernel_size) as in nn.Conv1d (ShortConvolution subclasses it);
  y[t, d] = act(sum_j w[d, j] * x[t - (W-1) + j, d] + b[d]) (+ residual), inputs before the
  first position read from the cache, else zero; accumulated in float32, returned in x's dtype;
- the cache holds the last W = kernel_size raw inputs, shape (N, hidden_size, W), the newest
  last (only the last W-1 enter the next output); `output_final_state` returns it, else None;
- a single-token call without autograd updates a given cache in place (fla's decoding path);
- `cu_seqlens` (packed sequences in one row of batch 1): each sequence on its own, with its own
  row of the cache;
- an input (B, T, H, Dh) is flattened to (B, T, H*Dh) and returned in its own shape.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _conv_one(x, weight, bias, initial_state, activation):
    """x (N, T, D), weight (D, W), initial_state (N, D, W) or None -> y (N, T, D) in the compute dtype,
    and the inputs the cache is cut from: (N, D, W-1+T), oldest first."""
    N, T, D = x.shape
    W = weight.shape[-1]
    dt = _compute_dtype(x.dtype)
    xt = x.transpose(1, 2).to(dt)
    if initial_state is None:
        before = xt.new_zeros(N, D, W - 1)
    else:
        before = initial_state[..., 1:].to(dt)
    full = torch.cat([before, xt], dim=-1)
    y = F.conv1d(full, weight.to(dt).unsqueeze(1), None if bias is None else bias.to(dt), groups=D)
    if activation in ("silu", "swish"):
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"Activation `{activation}` not supported yet.")
    return y.transpose(1, 2), full


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool | None = False,
    activation: str | None = None,
    backend: str | None = "triton",
    cu_seqlens: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Depthwise causal convolution of x (B, T, D) with weight (D, W); returns (y, final_state or None)."""
    if kwargs.get("cp_context") is not None:
        raise NotImplementedError("archlab's fla fallback: context-parallel causal_conv1d is not supported")
    shape = x.shape
    if weight is None:
        raise NotImplementedError("archlab's fla fallback: causal_conv1d needs a weight")
    if x.shape[-1] != weight.shape[0]:
        x = x.reshape(*x.shape[:2], -1)
    W = weight.shape[-1]
    if cu_seqlens is None:
        y, full = _conv_one(x, weight, bias, initial_state, activation)
        final = full[..., -W:] if output_final_state else None
    else:
        if x.shape[0] != 1:
            raise ValueError(f"with cu_seqlens the batch size must be 1, got {x.shape[0]}")
        bounds = [int(b) for b in cu_seqlens.tolist()]
        ys, finals = [], []
        for i, (bos, eos) in enumerate(zip(bounds[:-1], bounds[1:])):
            init = None if initial_state is None else initial_state[i : i + 1]
            y_i, full = _conv_one(x[:, bos:eos], weight, bias, init, activation)
            ys.append(y_i)
            finals.append(full[..., -W:])
        y = torch.cat(ys, dim=1)
        final = torch.cat(finals, dim=0) if output_final_state else None
    if residual is not None:
        y = y + residual.reshape(y.shape).to(y.dtype)
    return y.to(x.dtype).reshape(shape), (None if final is None else final.to(x.dtype))


class ShortConvolution(nn.Conv1d):
    """Depthwise causal convolution with an optional SiLU and a cache of the last kernel_size inputs."""

    def __init__(
        self,
        hidden_size: int,
        kernel_size: int,
        bias: bool = False,
        activation: str | None = "silu",
        backend: str | None = "triton",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        **kwargs,
    ) -> None:
        super().__init__(
            in_channels=hidden_size,
            out_channels=hidden_size,
            kernel_size=kernel_size,
            padding=kernel_size - 1,
            groups=hidden_size,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self.hidden_size = hidden_size
        if activation is not None and activation not in ("silu", "swish"):
            raise ValueError(f"Activation `{activation}` not supported yet.")
        self.activation = activation
        self.backend = backend  # accepted for fla's signature; there is one (PyTorch) path here

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", activation={self.activation}" if self.activation is not None else "")

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: torch.Tensor | None = None,
        output_final_state: bool = False,
        cu_seqlens: torch.LongTensor | None = None,
        chunk_indices: torch.LongTensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T = x.shape[:2]
        N = B if cu_seqlens is None else len(cu_seqlens) - 1
        if mask is not None:
            if cu_seqlens is not None:
                raise ValueError("`mask` and `cu_seqlens` cannot be provided at the same time")
            x = x * mask.unsqueeze(-1).to(x.dtype)  # (fla multiplies x in place)
        if not torch.is_grad_enabled() and B * T == N and (cu_seqlens is None or bool((cu_seqlens.diff() == 1).all())):
            return self.step(x, residual, cache, output_final_state=output_final_state, cu_seqlens=cu_seqlens)
        return causal_conv1d(
            x,
            weight=self.weight[:, 0],
            bias=self.bias,
            residual=residual,
            initial_state=cache,
            output_final_state=output_final_state,
            activation=self.activation,
            cu_seqlens=cu_seqlens,
        )

    def step(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        cache: torch.Tensor | None,
        output_final_state: bool = False,
        cu_seqlens: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One token per sequence (x (N, 1, D), or (1, N, D) with cu_seqlens); a given cache is updated
        in place, as fla's decoding kernel does."""
        shape = x.shape
        tokens = x.reshape(-1, 1, self.hidden_size)  # (N, 1, D)
        y, state = causal_conv1d(
            tokens,
            weight=self.weight[:, 0],
            bias=self.bias,
            initial_state=cache,
            output_final_state=True,
            activation=self.activation,
        )
        y = y.reshape(shape)
        if residual is not None:
            y = y + residual.reshape(shape).to(y.dtype)
        if cache is not None:
            with torch.no_grad():
                cache.copy_(state)
            state = cache
        return y, (state if output_final_state else None)

    @property
    def state_size(self) -> int:
        return self.hidden_size * self.kernel_size[0]


__all__ = ["ShortConvolution", "causal_conv1d"]
