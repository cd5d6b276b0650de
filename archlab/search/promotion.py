"""Multi-fidelity promotion: asynchronous successive halving (ASHA) over a run's nodes.

Rung 0 is the run's search tier: every candidate is evaluated there once (kind "search").
Rung 1 is the promotion tier (`verify` by default) with several seeds (kind "promotion", one
evaluation row per seed). Whenever the driver has a free slot it asks `Promoter.next()`: a
node is due when it is among the top `fraction` of the finished candidates by search fitness
(the best floor(fraction x n) of n, as in ASHA) and has not been promoted yet. Nothing waits
for a rung to fill: when nothing is due the slot starts a new candidate, and a node that
enters the top slice later is promoted then.

The root is promoted first: promoted fitness is relative to the root at the promotion tier
(seed by seed), and the root's mixer parameter count there sets the parameter budget. When
every seed of a node is stored its figures become the promoted ones: `fitness` and `val_loss`
are the seed-averaged figures at the promotion tier, `fitness_std` (paired by seed with the
root) and `val_loss_std` their spread, `tier`/`seeds`/`fidelity` say where they come from;
`search_fitness` and `metrics` keep the rung-0 result. Selection (which orders by `fitness`)
and the leaderboard (highest fidelity first, then fitness) thus use the best figure a node has.

Every step is idempotent: the rows are the truth, a crash between seeds re-runs only the
missing seeds, and a crash after the last row re-derives the node's figures.
"""

import math
import statistics
from dataclasses import dataclass, field

from archlab.sandbox.averaging import average
from archlab.sandbox.tiers import TIER_ORDER  # cheapest first: a tier's index is its fidelity
from archlab.search.fitness import fitness
from archlab.tree.store import Store

KIND = "promotion"
DEFAULT_FRACTION = 0.25  # when the search tier is explore and the run does not say


def fidelity(tier: str | None) -> int:
    return TIER_ORDER.index(tier) if tier in TIER_ORDER else 0


@dataclass(frozen=True)
class Plan:
    fraction: float
    tier: str
    seeds: list[int]
    overrides: dict = field(default_factory=dict)


def plan_of(config) -> Plan | None:
    """The run's promotion plan, or None when promotion is off.

    `promote` None means: DEFAULT_FRACTION when the search tier is explore (the designed
    explore -> verify ladder), off for the cheaper tiers (micro and smoke are for trying a setup)."""
    fraction = config.promote
    if fraction is None:
        fraction = DEFAULT_FRACTION if config.tier == "explore" else 0.0
    if fraction <= 0 or fidelity(config.promote_tier) <= fidelity(config.tier):
        return None
    return Plan(
        fraction,
        config.promote_tier,
        [config.seed + i for i in range(config.promote_seeds)],
        dict(config.promote_overrides or {}),
    )


class Promoter:
    """Which node to promote next, and the node figures that follow from its promotion rows."""

    def __init__(self, store: Store, plan: Plan, speed_weight: float):
        self.store = store
        self.plan = plan
        self.speed_weight = speed_weight

    # -- the rows are the truth -----------------------------------------------------------------------
    def rows(self, node_id: int) -> dict[int, dict]:
        """The node's promotion evaluations at the plan's tier, the latest per seed."""
        out = {}
        for e in self.store.evaluations(node_id):
            if e["kind"] == KIND and e["tier"] == self.plan.tier and e["seed"] in self.plan.seeds:
                out[e["seed"]] = e
        return out

    def state(self, node_id: int) -> str | None:
        """None (not started), "partial", "failed" or "done"."""
        rows = self.rows(node_id)
        if any(not r["ok"] for r in rows.values()):
            return "failed"
        if not rows:
            return None
        if len(rows) < len(self.plan.seeds):
            return "partial"
        node = self.store.node(node_id)
        return "done" if node.get("tier") == self.plan.tier and node.get("seeds") == len(self.plan.seeds) else "partial"

    def ranked(self) -> list[int]:
        """Finished candidates (not the root), best search fitness first."""
        return self.store.candidates_by_search_fitness()

    def due(self) -> list[int]:
        """Nodes to promote now: the top slice not yet promoted, then promotions a crash left half done."""
        ranked = self.ranked()
        top = ranked[: math.floor(self.plan.fraction * len(ranked) + 1e-9)]
        started = [n for n in self.store.evaluated_node_ids(KIND, self.plan.tier) if n != 0]
        failed = set(self.store.evaluated_node_ids(KIND, self.plan.tier, failed=True))
        done = set(self.store.nodes_at_tier(self.plan.tier, len(self.plan.seeds)))
        out = []
        for node_id in top + started:
            if node_id not in out and node_id not in failed and node_id not in done:
                out.append(node_id)
        return out

    def next(self, busy: set[int]) -> int | None:
        """The node a free slot should promote (the root first), or None: then it starts a new candidate."""
        due = self.due()
        if not due:
            return None
        root = self.state(0)
        if root == "failed":
            return None
        if root != "done":
            return None if 0 in busy else 0
        return next((n for n in due if n not in busy), None)

    def summary(self) -> dict:
        promoted = self.store.nodes_at_tier(self.plan.tier)
        failed = self.store.evaluated_node_ids(KIND, self.plan.tier, failed=True)
        return {
            "fraction": self.plan.fraction,
            "tier": self.plan.tier,
            "seeds": len(self.plan.seeds),
            "promoted": promoted,
            "failed": failed,
            "due": self.due(),
        }

    # -- the node's figures -------------------------------------------------------------------------
    def finish(self, node_id: int) -> str:
        """Derive the node's promoted figures from its rows (idempotent); returns what happened."""
        rows = self.rows(node_id)
        failed = [r for r in rows.values() if not r["ok"]]
        if failed:
            r = failed[0]
            what = "the root's promotion failed: promotion is off for this run" if node_id == 0 else "promotion failed"
            return f"{what} (seed {r['seed']}: {r['reason']})"
        if len(rows) < len(self.plan.seeds):
            return "promotion incomplete"
        runs = [rows[s]["metrics"] for s in self.plan.seeds]
        mean = average(runs)
        fields = dict(
            tier=self.plan.tier,
            seeds=len(runs),
            fidelity=fidelity(self.plan.tier),
            val_loss=mean["val_loss"],
            val_loss_std=mean.get("val_loss_std"),
        )
        if node_id == 0:
            fields.update(fitness=0.0, fitness_std=0.0)
        else:
            root_rows = self.rows(0)
            root_runs = [root_rows[s]["metrics"] for s in self.plan.seeds]
            root_mean = average(root_runs)
            paired = [fitness(m, r, self.speed_weight) for m, r in zip(runs, root_runs)]
            fields.update(
                fitness=fitness(mean, root_mean, self.speed_weight),
                fitness_std=statistics.stdev(paired) if len(paired) > 1 else None,
            )
        self.store.update_node(node_id, **fields)
        std = f" ± {fields['fitness_std']:.4f}" if fields.get("fitness_std") is not None else ""
        return (
            f"promoted to {self.plan.tier} x {len(runs)} seeds: fitness {fields['fitness']:+.4f}{std}, "
            f"val_loss {fields['val_loss']:.4f} ± {fields['val_loss_std'] or 0:.4f}"
        )
