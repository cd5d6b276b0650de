"""The harness's model shell (model.LM) in numpy, for the scorer: byte embeddings, pre-norm residual
blocks, the harness MLP and softmax attention, the tied head, and the backward pass of its loss.
The candidate's parts (and their gradients) are a function the caller passes (the scorer asks a
server that holds nothing but that part's weights).

Why: a model server runs the harness's code in the candidate's process, where the candidate can
replace any of it (a patched LM.forward added a hand-written copy rule to the logits: -12.9% at
smoke, and solved the probes outright: red team, 2026-12-05). What is scored must be this shell's
composition of the parts, computed where no candidate code runs.
"""

import math

import numpy as np

from archlab.sandbox.data import IGNORE

EPS = float(np.finfo(np.float32).eps)  # nn.RMSNorm's default for float32 inputs


def rms_norm(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def swiglu(x: np.ndarray, w: dict) -> np.ndarray:
    gate, up = np.split(x @ w["gate_up.weight"].T, 2, -1)
    return (silu(gate) * up) @ w["down.weight"].T


def heads(y: np.ndarray, n_heads: int) -> np.ndarray:
    """(batch, time, d) -> (batch, heads, time, d / heads)."""
    b, t, _ = y.shape
    return y.reshape(b, t, n_heads, -1).transpose(0, 2, 1, 3)


def merge(y: np.ndarray) -> np.ndarray:
    """heads() undone."""
    b, n, t, e = y.shape
    return y.transpose(0, 2, 1, 3).reshape(b, t, n * e)


def causal_softmax(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Attention probabilities of every query over the keys up to its own position."""
    t = q.shape[-2]
    scores = np.where(
        np.tril(np.ones((t, t), dtype=bool)), q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]), -np.inf
    )
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def attention(x: np.ndarray, w: dict, n_heads: int) -> np.ndarray:
    """Causal softmax attention over every head (model.Attention; no positional encoding)."""
    q, k, v = (heads(y, n_heads) for y in np.split(x @ w["qkv.weight"].T, 3, -1))
    return merge(causal_softmax(q, k) @ v) @ w["out.weight"].T


def part_seed(seed: int, layer: int, kind: str) -> int:
    """The torch seed of one part's call in a training step of seed `seed` (model.Block seeds it):
    a server holding only that part draws the same dropout masks (the scorer's gradient check)."""
    return (seed * 1024 + 2 * layer + (kind == "FFN")) % 2**62


def sub(weights: dict, prefix: str) -> dict:
    """The weights under `prefix`, named as that module names them."""
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def forward(
    runs: list[tuple[np.ndarray, dict]], pattern: str, n_heads: int, has_ffn: bool, part, taped=frozenset()
) -> tuple[list[np.ndarray], dict]:
    """model.LM.forward in float64 up to the final norm, for each run (tokens, the model's weights
    under its own names, no "lm."), layer by layer over all runs, with `part(kind, layer, run, x)`
    giving the candidate's Mixer ("Mixer") or FFN ("FFN") of that layer applied to x. Attention
    layers (A in `pattern`) and the harness MLP are computed here. Returns each run's residual
    stream at the end and, for the runs in `taped`, each block's input and middle (for backward)."""
    ws = [floats(weights) for _, weights in runs]
    hs = [w["embed.weight"][tokens] for (tokens, _), w in zip(runs, ws)]
    tape: dict = {r: [] for r in taped}
    for i, kind in enumerate(pattern):
        block = f"blocks.{i}."
        for r, w in enumerate(ws):
            h = hs[r]
            x = rms_norm(h, w[block + "norm1.weight"])
            mid = h + (attention(x, sub(w, block + "mixer."), n_heads) if kind == "A" else part("Mixer", i, r, x))
            x = rms_norm(mid, w[block + "norm2.weight"])
            hs[r] = mid + (part("FFN", i, r, x) if has_ffn else swiglu(x, sub(w, block + "ffn.")))
            if r in tape:
                tape[r].append((h, mid))
    return hs, tape


def floats(weights: dict) -> dict:
    """The float weights in float64 (the shell's precision)."""
    return {k: v.astype(np.float64) for k, v in weights.items() if v.dtype.kind == "f"}


def head(h: np.ndarray, weights: dict) -> np.ndarray:
    """The logits from the residual stream: the final norm and the tied head."""
    return rms_norm(h, weights["norm.weight"].astype(np.float64)) @ weights["embed.weight"].astype(np.float64).T


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


# -- backward: the gradients of model.lm_loss, for the scorer's check of a training server's ------
def rms_norm_vjp(x: np.ndarray, weight: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = np.sqrt((x * x).mean(-1, keepdims=True) + EPS)
    xhat, g = x / r, dy * weight
    return (g - xhat * (g * xhat).mean(-1, keepdims=True)) / r, (dy * xhat).reshape(-1, x.shape[-1]).sum(0)


def swiglu_vjp(x: np.ndarray, w: dict, dy: np.ndarray) -> tuple[np.ndarray, dict]:
    gate, up = np.split(x @ w["gate_up.weight"].T, 2, -1)
    sig = 1.0 / (1.0 + np.exp(-gate))
    h = gate * sig * up
    dh = dy @ w["down.weight"]
    da = np.concatenate([dh * up * sig * (1 + gate * (1 - sig)), dh * gate * sig], -1)
    return da @ w["gate_up.weight"], {"gate_up.weight": _outer(da, x), "down.weight": _outer(dy, h)}


def attention_vjp(x: np.ndarray, w: dict, n_heads: int, dy: np.ndarray) -> tuple[np.ndarray, dict]:
    q, k, v = (heads(y, n_heads) for y in np.split(x @ w["qkv.weight"].T, 3, -1))
    p = causal_softmax(q, k)
    do = heads(dy @ w["out.weight"], n_heads)
    dp = do @ v.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) / math.sqrt(q.shape[-1])
    dqkv = np.concatenate([merge(ds @ k), merge(ds.transpose(0, 1, 3, 2) @ q), merge(p.transpose(0, 1, 3, 2) @ do)], -1)
    return dqkv @ w["qkv.weight"], {"qkv.weight": _outer(dqkv, x), "out.weight": _outer(dy, merge(p @ v))}


def _outer(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A linear layer's weight gradient: the sum over every position of dy x^T."""
    return dy.reshape(-1, dy.shape[-1]).T @ x.reshape(-1, x.shape[-1])


def gradients(runs: list[tuple], pattern: str, n_heads: int, has_ffn: bool, part_vjp) -> list[tuple[float, dict]]:
    """The loss of model.lm_loss and its gradients in every weight (by name), for each run (tokens,
    targets, the model's weights, and its tape and end from `forward`), layer by layer backwards over
    all runs, with `part_vjp(kind, layer, run, x, dy)` giving the candidate's part's gradients at x:
    its input's and its weights' (by their names in the part)."""
    ws = [floats(weights) for _, _, weights, _, _ in runs]
    out, ds = [], []
    for (_, targets, _, _, end), w in zip(runs, ws):
        lp = log_softmax(head(end, w))
        mask = targets != IGNORE
        at = np.where(mask, targets, 0)[..., None]
        dz = np.exp(lp)
        np.put_along_axis(dz, at, np.take_along_axis(dz, at, -1) - 1, -1)
        dz *= mask[..., None] / max(1, mask.sum())  # cross-entropy's mean over the scored tokens
        dh, dnorm = rms_norm_vjp(end, w["norm.weight"], dz @ w["embed.weight"])
        loss = -float(np.take_along_axis(lp, at, -1)[..., 0][mask].mean())
        out.append((loss, {"embed.weight": _outer(dz, rms_norm(end, w["norm.weight"])), "norm.weight": dnorm}))
        ds.append(dh)
    for i in reversed(range(len(pattern))):
        block = f"blocks.{i}."
        for r, ((_, _, _, tape, _), w) in enumerate(zip(runs, ws)):
            grads, (h, mid) = out[r][1], tape[i]
            x = rms_norm(mid, w[block + "norm2.weight"])
            dx, dw = part_vjp("FFN", i, r, x, ds[r]) if has_ffn else swiglu_vjp(x, sub(w, block + "ffn."), ds[r])
            grads.update({block + "ffn." + k: v for k, v in dw.items()})
            dmid, grads[block + "norm2.weight"] = rms_norm_vjp(mid, w[block + "norm2.weight"], dx)
            dmid += ds[r]
            x = rms_norm(h, w[block + "norm1.weight"])
            if pattern[i] == "A":
                dx, dw = attention_vjp(x, sub(w, block + "mixer."), n_heads, dmid)
            else:
                dx, dw = part_vjp("Mixer", i, r, x, dmid)
            grads.update({block + "mixer." + k: v for k, v in dw.items()})
            dh, grads[block + "norm1.weight"] = rms_norm_vjp(h, w[block + "norm1.weight"], dx)
            ds[r] = dh + dmid
    for (tokens, _, _, _, _), (_, grads), dh in zip(runs, out, ds):
        np.add.at(grads["embed.weight"], tokens, dh)
    return out
