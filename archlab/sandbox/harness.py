"""The model shell around a candidate, its training and its metrics.

The harness owns everything but the mixer (and optionally the FFN): byte embeddings,
pre-norm residual blocks, the tied LM head, the loss, the data, the optimizer and every
metric, so a candidate cannot change how it is scored.
"""

import math
import time
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from archlab.sandbox import checks, contract
from archlab.sandbox.contract import CandidateError
from archlab.sandbox.data import VOCAB_SIZE, Corpus
from archlab.sandbox.tiers import Tier


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


class Block(nn.Module):
    def __init__(self, mixer: nn.Module, ffn: nn.Module, d_model: int):
        super().__init__()
        self.norm1, self.mixer = nn.RMSNorm(d_model), mixer
        self.norm2, self.ffn = nn.RMSNorm(d_model), ffn

    def forward(self, x):
        x = x + self.mixer(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class LM(nn.Module):
    def __init__(self, candidate: types.ModuleType, tier: Tier):
        super().__init__()
        d = tier.d_model
        pattern = (getattr(candidate, "LAYERS", "M") * tier.n_layers)[: tier.n_layers]
        ffn = getattr(candidate, "FFN", None) or SwiGLU
        self.embed = nn.Embedding(VOCAB_SIZE, d)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(
            Block(contract.build_mixer(candidate, d, tier.n_heads) if kind == "M" else Attention(d, tier.n_heads), ffn(d_model=d), d)
            for kind in pattern
        )
        self.norm = nn.RMSNorm(d)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.norm(x), self.embed.weight)  # tied LM head


def lm_loss(model: LM, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def check_candidate(candidate: types.ModuleType, tier: Tier, param_limit: int | None) -> dict:
    """Everything short of training: shape, parameter budget, causality, one forward/backward."""
    mixer = contract.build_mixer(candidate, tier.d_model, tier.n_heads)
    contract.check_shape(mixer, tier.d_model)
    mixer_params = checks.check_params(mixer, param_limit)
    checks.check_causality(mixer, tier.d_model)
    model = LM(candidate, tier)
    inputs = torch.randint(0, VOCAB_SIZE, (2, 64))
    loss = _guard(lambda: lm_loss(model, inputs, inputs))
    _guard(loss.backward)
    if not torch.isfinite(loss) or any(p.grad is not None and not torch.isfinite(p.grad).all() for p in model.parameters()):
        raise CandidateError("nan", "non-finite loss or gradient in the first forward/backward pass")
    return {"mixer_params": mixer_params, "params": checks.count_params(model)}


def train_and_evaluate(candidate: types.ModuleType, tier: Tier, corpus: Corpus, seed: int) -> dict:
    torch.manual_seed(seed)
    model = LM(candidate, tier)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=tier.lr, betas=(0.9, 0.95)
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, tier))
    gen = torch.Generator().manual_seed(seed)
    tokens_seen, train_time, loss_value = 0, 0.0, float("nan")
    for step in range(tier.steps):
        inputs, targets = corpus.train_batch(tier.batch_size, tier.seq_len, gen)
        start = time.perf_counter()
        loss = _guard(lambda: lm_loss(model, inputs, targets))
        if not torch.isfinite(loss):
            raise CandidateError("nan", f"training loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        _guard(loss.backward)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        loss_value = loss.item()
        if step >= 2:  # the first steps pay for allocations and lazy initialisation
            train_time += time.perf_counter() - start
            tokens_seen += inputs.numel()
    val_loss = evaluate(model, tier, corpus)
    if not math.isfinite(val_loss):
        raise CandidateError("nan", "validation loss is not finite")
    return {
        "val_loss": val_loss,
        "val_bpb": val_loss / math.log(2),  # byte-level tokens: nats/token -> bits/byte
        "train_loss": loss_value,
        "tokens_per_s": tokens_seen / train_time if train_time else 0.0,
        "train_tokens": tier.steps * tier.batch_size * tier.seq_len,
        "params": checks.count_params(model),
    }


@torch.no_grad()
def evaluate(model: LM, tier: Tier, corpus: Corpus) -> float:
    model.eval()
    total, count = 0.0, 0
    for inputs, targets in corpus.val_batches(tier.val_windows, tier.batch_size, tier.seq_len):
        total += _guard(lambda: lm_loss(model, inputs, targets)).item() * targets.numel()
        count += targets.numel()
    model.train()
    return total / count


def _lr_factor(step: int, tier: Tier) -> float:
    if step < tier.warmup:
        return (step + 1) / tier.warmup
    progress = (step - tier.warmup) / max(1, tier.steps - tier.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _guard(fn):
    """Run candidate-dependent code, turning its exceptions into a rejection with a reason."""
    try:
        return fn()
    except CandidateError:
        raise
    except MemoryError:
        raise CandidateError("memory", "ran out of memory") from None
    except Exception as e:
        raise CandidateError("error", f"{type(e).__name__}: {e}") from e
