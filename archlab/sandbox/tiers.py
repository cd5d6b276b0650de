"""Evaluation tiers: named, documented configurations, cheapest first (multi-fidelity).

A tier says how big the model is, how long it trains, which checks and metrics run and how
long the sandbox waits. A run's config can override any field for its own evaluations:
`resolve("explore", {"steps": 800, "probes": {"steps": 300}})` (nested probe settings merge).

| tier    | model                     | training                   | extra metrics                                 |
|---------|---------------------------|----------------------------|-----------------------------------------------|
| check   | d128, 2 layers            | none: one forward/backward | causality, complexity, step(), param budget   |
| micro   | d64, seq 64               | 20 steps x 8 x 64 bytes    | none (pipeline plumbing, a few seconds)       |
| smoke   | d128, seq 256             | 120 steps x 16 x 256 bytes | hardware: latency, memory, state, FLOPs, int8 |
| explore | d128, seq 256             | 400 steps x 16 x 256 bytes | + recall/copy probes, length extrapolation    |
| verify  | d128, seq 256             | 1000 steps, lr 1e-3        | everything, 3 seeds (mean +- std)             |
"""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Bounds on every field, so a run's --tier-set or eval's --set is refused as a usage error instead of
# failing (or passing) in the sandbox: a sequence needs 2 positions (one input, one target).
Positive = Annotated[int, Field(ge=1)]
Length = Annotated[int, Field(ge=2)]


class Probes(BaseModel):
    """Synthetic probes trained from scratch in the harness's model shell with the candidate's mixer.

    One small model learns a mixture of MQAR (key-value pairs, then queries; accuracy reported
    per number of pairs) and selective copying; accuracy is measured on held-out sequences
    drawn with a seed only the evaluation process uses.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    d_model: Positive = 64
    n_layers: Positive = 2
    seq_len: Length = 32
    batch_size: Positive = 32
    steps: Positive = 600
    lr: float = Field(3e-3, gt=0, allow_inf_nan=False)
    pairs: tuple[Positive, ...] = Field(
        (2, 4, 8), min_length=1
    )  # MQAR difficulty levels, each reported as mqar_acc_p{n}
    keys: Positive = 16  # key and value vocabulary sizes: small, so a short budget can learn the task
    values: Positive = 16
    copy_tokens: Positive = 8  # selective copying: symbols to copy, scattered over seq_len - copy_tokens - 1 noise
    eval_examples: Positive = 256


class Tier(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    d_model: Positive = 128
    n_heads: Positive = 4
    n_layers: Positive = 2
    seq_len: Length = 256
    batch_size: Positive = 16
    steps: int = Field(0, ge=0)  # 0 = no training (the check tier); resolve() keeps a training tier training
    lr: float = Field(2e-3, gt=0, allow_inf_nan=False)
    warmup: int = Field(10, ge=0)
    val_windows: Positive = 64
    timeout_s: Positive = 300  # for all the tier's processes together, per seed
    seeds: Positive = (
        1  # how many seeds a result at this tier deserves (`archlab eval` runs them; metrics are means, *_std beside)
    )
    # checks (every tier runs them before training)
    causality_length: Length = 150
    # complexity is also measured at seq_len / 2 and seq_len (scorer.complexity)
    complexity_lengths: tuple[Length, ...] = Field((256, 1024), min_length=1)
    # what is measured beyond validation loss and training throughput
    hardware: bool = False  # latency, peak memory, state bytes, FLOPs/token, int8 quantisation loss
    extrapolation: bool = False  # loss at 2x the training length
    probes: Probes | None = None
    causal_copies: Positive = 2  # perturbed copies of every validation window the twin server scores (scorer.scored)
    val_points: int = Field(4, ge=0, le=64)  # validation-curve points during training, display-only (curves.py)
    # whether a candidate's own torch.compile compiles: on a GPU only; elsewhere, and when False, it is
    # the identity (eager) inside the candidate's servers (contract.py)
    compile: bool = False


TIERS: dict[str, Tier] = {
    # contract, static checks, causality, complexity, step(), parameter budget, one forward/backward
    "check": Tier(name="check", timeout_s=120),
    # seconds: exercises the whole pipeline (tests, trying a setup); too short to rank designs
    "micro": Tier(
        name="micro",
        d_model=64,
        seq_len=64,
        batch_size=8,
        steps=20,
        val_windows=16,
        timeout_s=150,
        complexity_lengths=(128, 512),
    ),
    # ~1 minute on 2 CPU cores: separates large architectural changes (they move its loss by 10-17%)
    "smoke": Tier(name="smoke", steps=120, timeout_s=480, hardware=True),
    # the main proxy: learning speed over ~1.6 M bytes, plus probes and length extrapolation
    "explore": Tier(
        name="explore", steps=400, val_windows=128, timeout_s=1500, hardware=True, extrapolation=True, probes=Probes()
    ),
    # longer training for the top slice, several seeds
    "verify": Tier(
        name="verify",
        steps=1000,
        lr=1e-3,
        val_windows=256,
        timeout_s=3600,
        seeds=3,
        hardware=True,
        extrapolation=True,
        probes=Probes(steps=1000),
    ),
}
TIER_ORDER = tuple(TIERS)  # cheapest first: a tier's index is its fidelity (search/promotion.py)


class TierError(ValueError):
    pass


def resolve(tier: "str | Tier", overrides: dict[str, Any] | None = None) -> Tier:
    """A tier by name (or as given) with a run's overrides applied and validated."""
    if isinstance(tier, str):
        if tier not in TIERS:
            raise TierError(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}")
        tier = TIERS[tier]
    if not overrides:
        return tier
    data = tier.model_dump()
    for key, value in overrides.items():
        if key == "probes" and isinstance(value, dict) and data.get("probes") is not None:
            data["probes"] = {**data["probes"], **value}
        else:
            data[key] = value
    try:
        resolved = Tier.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        raise TierError(f"tier override {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if tier.steps > 0 and resolved.steps == 0:  # nothing trained means no val_loss to rank by
        raise TierError(
            f"tier override steps: the {tier.name} tier trains, so it needs at least 1 step "
            "(`archlab check` runs the checks without training)"
        )
    return resolved


def describe(tier: Tier) -> dict:
    """A tier as plain data (stored with every evaluation, so results say what produced them)."""
    return tier.model_dump(mode="json")


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


__all__ = ["Probes", "Tier", "TIERS", "TierError", "resolve", "describe", "probe_tier"]
