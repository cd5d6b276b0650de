"""The model shell around a candidate: byte embeddings, pre-norm residual blocks (the
candidate's Mixer, the harness MLP or the candidate's FFN, the harness's softmax attention
where LAYERS says A), the tied LM head and the loss. Runs inside a model server only."""

import contextlib
import math
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from archlab.sandbox import contract, shell
from archlab.sandbox.data import IGNORE, VOCAB_SIZE
from archlab.sandbox.errors import CandidateError, rejected
from archlab.sandbox.tiers import Tier


def pick_device(prefer: str | None = None) -> torch.device:
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 autocast on a GPU; full precision on the CPU (where bf16 is slower, not faster)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        hidden = 32 * math.ceil(8 * d_model / 3 / 32)
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, -1)
        return self.down(F.silu(gate) * up)


class Attention(nn.Module):
    """The harness's softmax attention, placed where a candidate's LAYERS says A."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (y.view(b, t, self.n_heads, -1).transpose(1, 2) for y in self.qkv(x).chunk(3, -1))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(o.transpose(1, 2).reshape(b, t, d))

    def step(self, x, state=None):
        """One token with a KV cache: state is (keys, values), each (batch, heads, time, head_dim)."""
        b, d = x.shape
        q, k, v = (y.view(b, self.n_heads, 1, -1) for y in self.qkv(x).chunk(3, -1))
        if state is not None:
            k, v = torch.cat([state[0], k], 2), torch.cat([state[1], v], 2)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out(o.reshape(b, d)), (k, v)


class Block(nn.Module):
    def __init__(self, mixer: nn.Module, ffn: nn.Module, d_model: int, layer: int):
        super().__init__()
        self.norm1, self.mixer = nn.RMSNorm(d_model), mixer
        self.norm2, self.ffn = nn.RMSNorm(d_model), ffn
        self.layer = layer

    def forward(self, x, seed: int | None = None):
        """`seed`: a training step's; each part then draws its randomness (dropout) from a seed of
        its own (shell.part_seed), which a server holding that part alone can draw again (the
        scorer's gradient check)."""
        if seed is not None:
            torch.manual_seed(shell.part_seed(seed, self.layer, "Mixer"))
        y = self.mixer(self.norm1(x))
        if type(y) is not torch.Tensor or y.shape != x.shape:  # noqa: E721  (subclasses could carry __torch_function__)
            raise CandidateError(
                "shape",
                f"Mixer.forward must return a plain torch.Tensor of shape {tuple(x.shape)}, "
                f"got {type(y).__name__} {tuple(getattr(y, 'shape', ()))}",
            )
        x = x + y
        if seed is not None:
            torch.manual_seed(shell.part_seed(seed, self.layer, "FFN"))
        return x + self.ffn(self.norm2(x))


class LM(nn.Module):
    def __init__(self, candidate: types.ModuleType, tier: Tier):
        super().__init__()
        d = tier.d_model
        self.pattern = (getattr(candidate, "LAYERS", "M") * tier.n_layers)[: tier.n_layers]
        ffn = getattr(candidate, "FFN", None) or SwiGLU
        self.embed = nn.Embedding(VOCAB_SIZE, d)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(
            Block(
                contract.build_mixer(candidate, d, tier.n_heads) if kind == "M" else Attention(d, tier.n_heads),
                ffn(d_model=d),
                d,
                i,
            )
            for i, kind in enumerate(self.pattern)
        )
        self.norm = nn.RMSNorm(d)

    def forward(self, tokens, seed: int | None = None):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, seed)
        return F.linear(self.norm(x), self.embed.weight)  # tied LM head

    def step(self, token: torch.Tensor, states: list | None):
        """One token of inference for the whole model. Layers whose mixer has no step() keep
        their inputs and recompute (what decoding without a recurrent form costs)."""
        states = states if states is not None else [None] * len(self.blocks)
        x = self.embed(token)
        new = []
        for block, state in zip(self.blocks, states):
            h = block.norm1(x)
            if has_step(block.mixer):
                y, state = block.mixer.step(h, state)
            else:
                state = h[:, None] if state is None else torch.cat([state, h[:, None]], 1)
                y = block.mixer(state)[:, -1]
            if type(y) is not torch.Tensor or y.shape != h.shape:  # noqa: E721
                raise CandidateError(
                    "step", f"Mixer.step must return a plain tensor of shape {tuple(h.shape)} and a state"
                )
            x = x + y
            x = x + block.ffn(block.norm2(x))
            new.append(state)
        return F.linear(self.norm(x), self.embed.weight), new


def has_step(mixer: nn.Module) -> bool:
    return callable(getattr(type(mixer), "step", None))


def lm_loss(model: LM, inputs: torch.Tensor, targets: torch.Tensor, seed: int | None = None) -> torch.Tensor:
    logits = model(inputs, seed)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE)


def guard(fn):
    """Run candidate-dependent code, turning its exceptions into a rejection with a reason."""
    try:
        return fn()
    except CandidateError:
        raise
    except Exception as e:
        raise rejected(e) from e
