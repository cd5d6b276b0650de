"""Evaluation tiers: how much training a candidate gets (multi-fidelity, cheapest first)."""

from pydantic import BaseModel, ConfigDict


class Tier(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 0  # 0 = no training (the check tier)
    lr: float = 2e-3
    warmup: int = 10
    val_windows: int = 64
    timeout_s: int = 300


TIERS: dict[str, Tier] = {
    # contract, static checks, causality, parameter budget, one forward/backward
    "check": Tier(name="check", timeout_s=120),
    # seconds: exercises the whole pipeline (tests, trying a setup); too short to rank designs
    "micro": Tier(name="micro", d_model=64, seq_len=64, batch_size=8, steps=20, val_windows=16, timeout_s=120),
    # ~1 minute on 2 CPU cores: separates large architectural changes (ANCHORS.md)
    "smoke": Tier(name="smoke", steps=120, timeout_s=420),
    # the main proxy: learning speed over ~1.6 M bytes
    "explore": Tier(name="explore", steps=400, val_windows=128, timeout_s=1200),
    # longer training for the top slice, run with several seeds
    "verify": Tier(name="verify", steps=1000, lr=1e-3, val_windows=256, timeout_s=3000),
}
