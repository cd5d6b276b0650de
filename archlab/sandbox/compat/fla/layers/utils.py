"""fla.layers.utils: moving the tokens of a padded batch into one packed row and back.

Semantics matched to flash-linear-attention 0.6.0, fla/layers/utils.py (itself adapted from
flash-attn's bert_padding.py) and fla/ops/utils/index.py (`prepare_lens_from_mask`,
`prepare_cu_seqlens_from_mask`): int32 cumulative lengths with a leading 0, the row-major
positions of the kept tokens, gradients that flow through the gather and the scatter.
"""

import torch
import torch.nn.functional as F


def get_unpad_data(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """For a (batch, time) mask of 1 (token) / 0 (padding): the flat indices of the tokens, the
    cumulative sequence lengths (int32, batch + 1 entries, starting at 0) and the longest length."""
    lens = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = F.pad(lens.cumsum(dim=0, dtype=torch.int32), (1, 0))
    return indices, cu_seqlens, int(lens.max().item())


def index_first_axis(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """x[indices] along the first axis (x has at least two dimensions)."""
    if x.ndim < 2:
        raise ValueError(f"index_first_axis needs a tensor of at least 2 dimensions, got shape {tuple(x.shape)}")
    return x.index_select(0, indices)


def index_put_first_axis(x: torch.Tensor, indices: torch.Tensor, first_axis_dim: int) -> torch.Tensor:
    """A zero tensor of first_axis_dim rows with x's rows at `indices` (the inverse of index_first_axis)."""
    if indices.ndim != 1 or x.ndim < 2:
        raise ValueError("index_put_first_axis needs 1-d indices and a tensor of at least 2 dimensions")
    out = x.new_zeros(first_axis_dim, *x.shape[1:])
    return out.index_put((indices,), x)


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch_size: int, seq_len: int) -> torch.Tensor:
    """Packed tokens (total, ...) back to a zero-padded (batch_size, seq_len, ...) tensor."""
    out = index_put_first_axis(hidden_states, indices, batch_size * seq_len)
    return out.reshape(batch_size, seq_len, *hidden_states.shape[1:])


def unpad_input(q, states, attention_mask: torch.Tensor, q_len: int, keepdim: bool = False):
    """Packs queries and key/value states by the mask (prefill: q_len equals the mask's length; decoding:
    q_len 1), as fla's unpad_input returns them: (q, states, indices_q, (cu_q, cu_k), (max_q, max_k))."""
    indices_k, cu_seqlens_k, max_k = get_unpad_data(attention_mask)
    batch_size, seq_len = states[0].shape[:2]
    states = tuple(index_first_axis(s.reshape(batch_size * seq_len, *s.shape[2:]), indices_k) for s in states)
    single = isinstance(q, torch.Tensor)
    qs = (q,) if single else tuple(q)
    if q_len == seq_len:
        qs = tuple(index_first_axis(t.reshape(batch_size * seq_len, *t.shape[2:]), indices_k) for t in qs)
        cu_seqlens_q, max_q, indices_q = cu_seqlens_k, max_k, indices_k
    elif q_len == 1:
        cu_seqlens_q = torch.arange(batch_size + 1, dtype=torch.int32, device=qs[0].device)
        max_q, indices_q = 1, cu_seqlens_q[:-1]
        qs = tuple(t.squeeze(1) for t in qs)
    else:
        raise NotImplementedError("unpad_input: q_len must equal the mask's length (prefill) or be 1 (decoding)")
    if keepdim:
        qs = tuple(t.unsqueeze(0) for t in qs)
        states = tuple(s.unsqueeze(0) for s in states)
    return (qs[0] if single else qs), states, indices_q, (cu_seqlens_q, cu_seqlens_k), (max_q, max_k)


__all__ = ["get_unpad_data", "index_first_axis", "index_put_first_axis", "pad_input", "unpad_input"]
