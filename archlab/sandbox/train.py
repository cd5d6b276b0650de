"""Training inside a model server: AdamW with warm-up and cosine decay, gradient clipping.
The batches come from the scorer, one per step (the server never holds a data file)."""

import math

import torch
import torch.nn as nn

from archlab.sandbox.errors import CandidateError
from archlab.sandbox.model import LM, autocast, guard, lm_loss
from archlab.sandbox.tiers import Tier


def optimizer(model: nn.Module, tier: Tier):
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tier.lr,
        betas=(0.9, 0.95),
    )
    steps, warmup = max(tier.steps, 1), tier.warmup
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup))
    return opt, schedule


def lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_step(
    model: LM, opt, schedule, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device, what: str
) -> float:
    """One optimizer step on the candidate's model; returns the loss (reading it synchronizes)."""
    with autocast(device):
        loss = guard(lambda: lm_loss(model, inputs, targets))
    if not torch.isfinite(loss):
        raise CandidateError("nan", f"{what} became {loss.item()}")
    opt.zero_grad(set_to_none=True)
    guard(loss.backward)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    schedule.step()
    return loss.item()


def probe_tier(tier: Tier) -> Tier:
    """The shape of the model trained on the synthetic probes."""
    p = tier.probes
    return Tier(
        name=f"{tier.name}-probes",
        d_model=p.d_model,
        n_heads=tier.n_heads,
        n_layers=p.n_layers,
        seq_len=p.seq_len,
        batch_size=p.batch_size,
        steps=p.steps,
        lr=p.lr,
        warmup=min(30, p.steps // 10),
    )
