"""Rank agreement between two fidelities: does a cheap tier rank nodes like a dearer one?

Pure functions over paired lists of numbers, no store: Spearman's rho (Pearson's correlation of
average ranks, so ties share their rank), a percentile bootstrap interval over the pairs (nodes
resampled with replacement; a resample whose ranks are constant at either tier has no rho and is
skipped) and a plain verdict. `archlab status`, the report and the web UI apply `agreement` to a
run's tiers (archlab/commands/status.py tier_agreement); a benchmark can call them on any pairs.
"""

import math

import numpy as np

MIN_NODES = 5  # below this many nodes at both tiers the verdict is "too few nodes"
RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
_CHUNK = 256  # resamples ranked at once (bounded memory on runs with thousands of nodes)


def ranks(values) -> list[float]:
    """1-based ranks, ties sharing the average of their positions: ranks([3, 1, 3]) == [2.5, 1.0, 2.5]."""
    return [float(r) for r in _ranks(np.asarray([_finite(values)], dtype=float))[0]]


def spearman(xs, ys) -> float | None:
    """Spearman's rho of paired figures (average ranks for ties); None when there are fewer than two
    pairs or either side's figures are all equal (no ranking to agree with)."""
    x, y = _paired(xs, ys)
    if len(x) < 2:
        return None
    rho = _rho(_ranks(x[None, :]), _ranks(y[None, :]))[0]
    return None if math.isnan(rho) else float(rho)


def bootstrap_interval(
    xs, ys, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> tuple[float, float] | None:
    """A percentile bootstrap interval of Spearman's rho: `resamples` draws of the pairs with
    replacement (numpy's default generator seeded with `seed`, so the interval is repeatable);
    draws with constant ranks are skipped. None when fewer than two pairs or no draw has a rho."""
    x, y = _paired(xs, ys)
    n = len(x)
    if n < 2 or resamples < 1:
        return None
    rng = np.random.default_rng(seed)
    rhos = []
    for start in range(0, resamples, _CHUNK):
        idx = rng.integers(0, n, size=(min(_CHUNK, resamples - start), n))
        r = _rho(_ranks(x[idx]), _ranks(y[idx]))
        rhos.append(r[~np.isnan(r)])
    found = np.concatenate(rhos)
    if not len(found):
        return None
    tail = (1.0 - level) / 2
    low, high = np.quantile(found, [tail, 1.0 - tail])
    return float(low), float(high)


def agreement(xs, ys, min_nodes: int = MIN_NODES, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """n, rho, the 95% interval (low, high) and a verdict: "too few nodes" below `min_nodes`,
    "no ranking" when a side's figures are all equal, else "agree" (the interval above 0),
    "disagree" (below 0) or "unclear" (it includes 0)."""
    x, y = _paired(xs, ys)
    n = len(x)
    rho = spearman(x, y)
    interval = bootstrap_interval(x, y, resamples, seed) if n >= min_nodes and rho is not None else None
    low, high = interval or (None, None)
    if n < min_nodes:
        verdict = "too few nodes"
    elif rho is None:
        verdict = "no ranking"
    elif low > 0:
        verdict = "agree"
    elif high < 0:
        verdict = "disagree"
    else:
        verdict = "unclear"
    return {"n": n, "rho": rho, "low": low, "high": high, "verdict": verdict, "min_nodes": min_nodes}


def sentence(a: dict, cheap: str = "the cheap", dear: str = "the dear") -> str:
    """One sentence for people: what `agreement`'s result means for the two tiers."""
    figures = (
        f"rho {a['rho']:.2f} [{a['low']:.2f}, {a['high']:.2f}] over {a['n']} nodes"
        if a["low"] is not None
        else f"{a['n']} node{'s' if a['n'] != 1 else ''}"
    )
    return {
        "too few nodes": f"too few nodes to tell whether the {cheap} tier ranks nodes like the {dear} tier: "
        f"{a['n']} evaluated at both, {a['min_nodes']} needed",
        "no ranking": f"no ranking to compare: every node has the same figure at the {cheap} or the {dear} tier ({figures})",
        "agree": f"the {cheap} tier ranks nodes like the {dear} tier: {figures}",
        "disagree": f"the {cheap} tier ranks nodes against the {dear} tier (reversed): {figures}",
        "unclear": f"unclear whether the {cheap} tier ranks nodes like the {dear} tier (the interval includes 0): {figures}",
    }[a["verdict"]]


def tier_pairs(figures: dict[str, dict], order: list[str], **options) -> list[dict]:
    """`agreement` for every pair of tiers (cheaper, dearer) in `order` that has a node with a
    figure at both: figures is {tier: {node: figure}}; each result names its tiers (cheap, dear)
    and carries its sentence."""
    out = []
    tiers = [t for t in order if figures.get(t)]
    for i, cheap in enumerate(tiers):
        for dear in tiers[i + 1 :]:
            nodes = sorted(set(figures[cheap]) & set(figures[dear]))
            if not nodes:
                continue
            a = agreement([figures[cheap][n] for n in nodes], [figures[dear][n] for n in nodes], **options)
            out.append({"cheap": cheap, "dear": dear, **a, "sentence": sentence(a, cheap, dear)})
    return out


# -- vectorised ranks and correlations (one row per resample) ---------------------------------------
def _ranks(a: np.ndarray) -> np.ndarray:
    """Average 1-based ranks along the last axis of a 2-D array."""
    rows, n = a.shape
    order = np.argsort(a, axis=1, kind="stable")
    s = np.take_along_axis(a, order, axis=1)
    pos = np.broadcast_to(np.arange(n), (rows, n))
    starts = np.ones((rows, n), dtype=bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    ends = np.ones((rows, n), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)  # where each position's group of ties begins
    last = np.minimum.accumulate(np.where(ends, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]  # and ends
    out = np.empty((rows, n))
    np.put_along_axis(out, order, (first + last) / 2.0 + 1.0, axis=1)
    return out


def _rho(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    dx = rx - rx.mean(axis=1, keepdims=True)
    dy = ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, (dx * dy).sum(axis=1) / den, np.nan)
    return np.clip(rho, -1.0, 1.0)


def _finite(values) -> list[float]:
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise ValueError("rank agreement needs finite figures")
    return out


def _paired(xs, ys) -> tuple[np.ndarray, np.ndarray]:
    x, y = _finite(xs), _finite(ys)
    if len(x) != len(y):
        raise ValueError(f"rank agreement needs paired figures: {len(x)} and {len(y)} values")
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float)
