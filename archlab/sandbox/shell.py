"""The harness's model shell (model.LM) in numpy, for the scorer: byte embeddings, pre-norm residual
blocks, the harness MLP and softmax attention, the tied head. The candidate's parts are a function
the caller passes (the scorer asks a server that holds nothing but that part's weights).

Why: a model server runs the harness's code in the candidate's process, where the candidate can
replace any of it (a patched LM.forward added a hand-written copy rule to the logits: -12.9% at
smoke, and solved the probes outright: red team, 2026-12-05). What is scored must be this shell's
composition of the parts, computed where no candidate code runs.
"""

import math

import numpy as np

EPS = float(np.finfo(np.float32).eps)  # nn.RMSNorm's default for float32 inputs


def rms_norm(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def swiglu(x: np.ndarray, w: dict) -> np.ndarray:
    gate, up = np.split(x @ w["gate_up.weight"].T, 2, -1)
    return (silu(gate) * up) @ w["down.weight"].T


def attention(x: np.ndarray, w: dict, n_heads: int) -> np.ndarray:
    """Causal softmax attention over every head (model.Attention; no positional encoding)."""
    b, t, d = x.shape
    q, k, v = (y.reshape(b, t, n_heads, -1).transpose(0, 2, 1, 3) for y in np.split(x @ w["qkv.weight"].T, 3, -1))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // n_heads)
    scores = np.where(np.tril(np.ones((t, t), dtype=bool)), scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    o = (scores / scores.sum(-1, keepdims=True)) @ v
    return o.transpose(0, 2, 1, 3).reshape(b, t, d) @ w["out.weight"].T


def sub(weights: dict, prefix: str) -> dict:
    """The weights under `prefix`, named as that module names them."""
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def logits(runs: list[tuple[np.ndarray, dict]], pattern: str, n_heads: int, has_ffn: bool, part) -> list[np.ndarray]:
    """model.LM.forward in float64 for each run (tokens, the model's weights under its own names,
    no "lm."), layer by layer over all runs, with `part(kind, layer, run, x)` giving the candidate's
    Mixer ("Mixer") or FFN ("FFN") of that layer applied to x. Attention layers (A in `pattern`) and
    the harness MLP are computed here."""
    ws = [{k: v.astype(np.float64) for k, v in weights.items() if v.dtype.kind == "f"} for _, weights in runs]
    hs = [w["embed.weight"][tokens] for (tokens, _), w in zip(runs, ws)]
    for i, kind in enumerate(pattern):
        block = f"blocks.{i}."
        for r, w in enumerate(ws):
            x = rms_norm(hs[r], w[block + "norm1.weight"])
            hs[r] = hs[r] + (attention(x, sub(w, block + "mixer."), n_heads) if kind == "A" else part("Mixer", i, r, x))
            x = rms_norm(hs[r], w[block + "norm2.weight"])
            hs[r] = hs[r] + (part("FFN", i, r, x) if has_ffn else swiglu(x, sub(w, block + "ffn.")))
    return [rms_norm(h, w["norm.weight"]) @ w["embed.weight"].T for h, w in zip(hs, ws)]
