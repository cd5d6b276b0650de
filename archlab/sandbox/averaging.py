"""Averaging an evaluation's metrics over seeds: one rule for the sandbox's multi-seed
evaluations, a promotion's seeds and a replay's."""

import math
import statistics
from collections.abc import Iterable

# The metrics whose spread over seeds is reported beside their mean (as KEY_std).
SPREAD_KEYS = ("val_loss", "val_bpb", "tokens_per_s", "mqar_acc", "selcopy_acc", "val_loss_2x", "quant_loss")


def mean_std(values: Iterable[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for a single value; both None for none)."""
    values = list(values)
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def average(runs: list[dict]) -> dict:
    """The mean of every metric that is a finite number in every run, with `KEY_std` beside the
    SPREAD_KEYS; the other metrics as the first run has them; `flagged` if any run is flagged;
    `wall_s` the sum (the seeds' time together)."""
    out: dict = {}
    keys = [k for k in runs[0] if all(_number(r.get(k)) for r in runs)]
    for key in keys:
        mean, std = mean_std(float(r[key]) for r in runs)
        out[key] = mean
        if std is not None and key in SPREAD_KEYS:
            out[f"{key}_std"] = std
    for key, value in runs[0].items():
        out.setdefault(key, value)
    if any(r.get("flagged") for r in runs):
        out["flagged"] = next(r["flagged"] for r in runs if r.get("flagged"))
    out["wall_s"] = sum(float(r.get("wall_s") or 0.0) for r in runs)
    return out


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
