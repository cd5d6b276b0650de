"""The quality-diversity archive (MAP-Elites): the fittest node of every cell of a fixed grid over
what archlab measures and reads from the code.

Descriptors of a finished node, each only where its tier measures it:

| descriptor | value                                                       | bins (fixed)                       |
|------------|-------------------------------------------------------------|------------------------------------|
| mechanisms | the set of mechanisms read from the code (archlab/sandbox/mechanisms) | every subset of hybrid, delta, decay, gating, convolution (32) |
| speed      | log2(training tokens/s / the root's), every tier            | < 1/2, 1/2-0.84, 0.84-1.19, 1.19-2, > 2 times the root's |
| share      | the mixer's share of a block's parameters (mixer + FFN)      | tenths: 0-10%, ..., 90-100%        |
| state      | log2(decoding state bytes / the root's), tiers with hardware metrics (smoke and up) | as speed |
| recall     | MQAR accuracy at the most pairs, tiers with probes (explore, verify) | quarters: 0-25%, ..., 75-100% |

What scales with the machine (tokens/s, state bytes) is taken relative to the root measured at the
same tier in the same run, so a grid is comparable across runs and machines; the bins are fixed
constants, not fitted to a run's data, so coverage is comparable across strategies. A node is
described when it is recorded (its `descriptors` and `cell` columns; "" when a measurement it needs
is missing); a run from an older archlab is described when it is resumed, and read lazily before.

Coverage is the share of the tier's reachable cells that hold a node. The QD-score is the sum over
occupied cells of the elite's fitness above a fixed floor, max(0, fitness - FLOOR): fitness is 0 at
the root and a gain in nats/byte, so with FLOOR = -1 every cell whose elite is not far worse than the
root adds to it, and a cell adds more the better its elite.
"""

import math
from dataclasses import dataclass

from archlab.sandbox.data import VOCAB_SIZE
from archlab.sandbox.mechanisms import MECHANISMS, mechanisms, named
from archlab.sandbox.tiers import Tier
from archlab.tree.store import DONE, Store

FLOOR = -1.0  # QD-score: fitness below this adds nothing
RATIO_EDGES = (-1.0, -0.25, 0.25, 1.0)  # log2 of a ratio to the root's: about 1x in the middle bin
RATIO_LABELS = ("<0.5x", "0.5-0.84x", "0.84-1.19x", "1.19-2x", ">2x")
SHARE_EDGES = tuple(i / 10 for i in range(1, 10))
SHARE_LABELS = tuple(f"{10 * i}-{10 * (i + 1)}%" for i in range(10))
RECALL_EDGES = (0.25, 0.5, 0.75)
RECALL_LABELS = ("0-25%", "25-50%", "50-75%", "75-100%")
# a set of mechanisms is a bit mask over MECHANISMS: bin i holds the set whose bits make i ("none": 0)
MECHANISM_LABELS = tuple(
    named({m for b, m in enumerate(MECHANISMS) if i >> b & 1}) for i in range(2 ** len(MECHANISMS))
)
OUTDATED = "family="  # the cells of archlab before the mechanisms axis: described again
# descriptor -> the labels of its bins, in the order a cell names them
AXES = {
    "mechanisms": MECHANISM_LABELS,
    "speed": RATIO_LABELS,
    "share": SHARE_LABELS,
    "state": RATIO_LABELS,
    "recall": RECALL_LABELS,
}
AXIS_TITLES = {
    "mechanisms": "mechanisms",
    "speed": "training tokens/s vs the root",
    "share": "mixer share of a block's parameters",
    "state": "decoding state bytes vs the root",
    "recall": "MQAR recall at the most pairs",
}


def axes(tier: Tier) -> tuple[str, ...]:
    """The descriptors this tier measures."""
    return (
        "mechanisms",
        "speed",
        "share",
        *(("state",) if tier.hardware else ()),
        *(("recall",) if tier.probes is not None else ()),
    )


def reachable(tier: Tier) -> int:
    """How many cells the tier's grid has."""
    return math.prod(len(AXES[a]) for a in axes(tier))


def describe(metrics: dict, root: dict, code: str | None, tier: Tier) -> dict:
    """A node's descriptor values (None where a measurement is missing) and its mechanisms."""
    found = mechanisms(code or "")
    per_block = (metrics.get("params", 0) - VOCAB_SIZE * tier.d_model - tier.d_model * (2 * tier.n_layers + 1)) / max(
        1, tier.n_layers
    )
    values = {
        "mechanisms": sorted(found),
        "speed": _log_ratio(metrics.get("tokens_per_s"), root.get("tokens_per_s")),
        "share": min(1.0, metrics["mixer_params"] / per_block)
        if metrics.get("mixer_params") and per_block > 0
        else None,
    }
    if tier.hardware:
        values["state"] = _log_ratio(metrics.get("state_bytes"), root.get("state_bytes"))
    if tier.probes is not None:
        hardest = max((int(k[len("mqar_acc_p") :]) for k in metrics if k.startswith("mqar_acc_p")), default=None)
        values["recall"] = None if hardest is None else metrics[f"mqar_acc_p{hardest}"]
    return values


def cell(values: dict, tier: Tier) -> str:
    """The cell a node's descriptors place it in, "mechanisms=26;speed=2;share=3" (bin indices), or ""
    when one the tier measures is missing."""
    bins = []
    for axis in axes(tier):
        v = values.get(axis)
        if v is None:
            return ""
        if axis == "mechanisms":
            index = sum(1 << b for b, m in enumerate(MECHANISMS) if m in v)
        else:
            edges = {"share": SHARE_EDGES, "recall": RECALL_EDGES}.get(axis, RATIO_EDGES)
            index = sum(v >= e for e in edges)
        bins.append(f"{axis}={index}")
    return ";".join(bins)


def bins(cell_key: str) -> dict[str, int]:
    """A cell's bin index per descriptor."""
    return {axis: int(i) for axis, i in (part.split("=") for part in cell_key.split(";"))} if cell_key else {}


def words(cell_key: str) -> str:
    """A cell as a person reads it: "mechanisms delta+gating+convolution, training tokens/s vs the root 0.84-1.19x, ..."."""
    return ", ".join(f"{AXIS_TITLES[axis]} {AXES[axis][i]}" for axis, i in bins(cell_key).items())


def frontier(elites: list[dict], cell_key: str, limit: int = 6) -> list[str]:
    """The cells next to `cell_key` that none of the archive's `elites` (Store.archive_elites) holds,
    where exploring from its elite can go: one mechanism more or fewer (sets have no order), or one
    bin up or down on another axis."""
    occupied = {e["cell"] for e in elites}
    here = bins(cell_key)
    near = []
    for axis, index in here.items():
        steps = [index ^ 1 << b for b in range(len(MECHANISMS))] if axis == "mechanisms" else (index - 1, index + 1)
        near += [
            ";".join(f"{a}={j if a == axis else i}" for a, i in here.items())
            for j in steps
            if j != index and 0 <= j < len(AXES[axis])
        ]
    return [key for key in near if key not in occupied][:limit]


def held(elites: list[dict]) -> list[str]:
    """The sets of mechanisms the archive's `elites` have, by name: what an exploring proposal can
    add to (a child with a set no node has opens a cell, whatever its speed and share)."""
    found = {bins(e["cell"]).get("mechanisms") for e in elites}
    return [MECHANISM_LABELS[i] for i in sorted(found - {None})]


def node_fields(metrics: dict, root: dict, code: str | None, tier: Tier) -> dict:
    """The node columns that place a finished node in the archive."""
    values = describe(metrics, root, code, tier)
    return {"descriptors": values, "cell": cell(values, tier)}


@dataclass(frozen=True)
class Archive:
    tier: Tier
    elites: dict[str, dict]  # cell -> its elite: id, cell, fitness

    @property
    def coverage(self) -> float:
        return len(self.elites) / reachable(self.tier)

    @property
    def qd_score(self) -> float:
        return sum(max(0.0, e["fitness"] - FLOOR) for e in self.elites.values())

    def projection(self, x: str, y: str) -> dict[tuple[int, int], dict]:
        """The grid seen along two descriptors: (x bin, y bin) -> the fittest elite of the cells there."""
        shown: dict[tuple[int, int], dict] = {}
        for key, elite in self.elites.items():
            b = bins(key)
            at = (b[x], b[y])
            if at not in shown or (elite["fitness"], -elite["id"]) > (shown[at]["fitness"], -shown[at]["id"]):
                shown[at] = elite
        return shown


def grid(found: Archive, x: str | None = None, y: str | None = None) -> dict:
    """The archive seen along two descriptors, as the web UI and the report draw it: by default the
    mechanisms against the most informative one the tier measures (recall, else state bytes,
    else the mixer share). ValueError for a descriptor the tier does not measure."""
    names = axes(found.tier)
    x, y = x or "mechanisms", y or names[-1]
    for axis in (x, y):
        if axis not in names:
            raise ValueError(
                f"the {found.tier.name} tier's archive has no {axis!r} axis; choose one of {', '.join(names)}"
            )
    if x == y:
        raise ValueError("choose two different axes")
    shown = found.projection(x, y)
    # Along the mechanisms the grid draws only the sets some node has: of 32, a run holds a few.
    xs, ys = (
        sorted({at[k] for at in shown}) if axis == "mechanisms" else list(range(len(AXES[axis])))
        for k, axis in enumerate((x, y))
    )
    return {
        "axes": list(names),
        "titles": {a: AXIS_TITLES[a] for a in names},
        "x": x,
        "y": y,
        "x_labels": [AXES[x][i] for i in xs],
        "y_labels": [AXES[y][j] for j in ys],
        "cells": [
            {"x": xs.index(i), "y": ys.index(j), "id": e["id"], "fitness": e["fitness"]}
            for (i, j), e in sorted(shown.items())
        ],
        "occupied": len(found.elites),
        "reachable": reachable(found.tier),
        "coverage": found.coverage,
        "qd_score": found.qd_score,
        "floor": FLOOR,
    }


def load(store: Store, tier: Tier, where: str = DONE) -> Archive:
    """The archive of the nodes `where` selects; nodes not yet described (an older run, read-only)
    are described here, in memory."""
    elites = {e["cell"]: e for e in store.archive_elites(where) or [] if not e["cell"].startswith(OUTDATED)}
    pending = store.undescribed(OUTDATED)
    if pending:
        root = store.node(0)["metrics"] if store.has_node(0) else {}
        allowed = set(store.node_ids(where))
        for node in pending:
            if node["id"] not in allowed:
                continue
            key = cell(describe(node["metrics"] or {}, root or {}, store.code_copy(node["id"]), tier), tier)
            if key and (
                key not in elites or (node["fitness"], -node["id"]) > (elites[key]["fitness"], -elites[key]["id"])
            ):
                elites[key] = {"id": node["id"], "cell": key, "fitness": node["fitness"]}
    return Archive(tier, dict(sorted(elites.items())))


def backfill(store: Store, tier: Tier) -> int:
    """Describe the finished nodes of a run from an older archlab (resuming it); how many."""
    pending = store.undescribed(OUTDATED)
    if not pending:
        return 0
    root = store.node(0)["metrics"] or {}
    for node in pending:
        store.update_node(node["id"], **node_fields(node["metrics"] or {}, root, store.code_copy(node["id"]), tier))
    return len(pending)


def _log_ratio(value, root) -> float | None:
    if not value or not root or value <= 0 or root <= 0:
        return None
    return math.log2(value / root)
