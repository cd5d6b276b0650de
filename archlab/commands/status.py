"""Facts about a run and its nodes, shared by the CLI's tables and its --json output."""

import math
from pathlib import Path

from archlab.config import RunConfig
from archlab.sandbox import progress
from archlab.sandbox.tiers import TIER_ORDER
from archlab.search import islands
from archlab.search.lock import driver_pid
from archlab.tree.store import Store

SUMMARY_KEYS = ("id", "parent_id", "status", "reason", "operator", "fitness", "val_loss", "motivation")
FIDELITY_KEYS = ("tier", "seeds", "fitness_std", "val_loss_std", "search_fitness")
METRIC_ORDER = ("val_loss", "val_bpb", "train_loss", "tokens_per_s", "params", "mixer_params", "train_tokens", "wall_s")
# Which way a metric improves, by fragments of its name (lower-cased; "lower" is tried first, and a
# metric matching neither has no direction). The HTML report colours changes by it, and the web UI
# reads this table from /api/run (metric_directions).
METRIC_DIRECTIONS = {
    "lower": ("loss", "bpb", "wall", "latency", "mem", "state", "flops", "quant", "ms_per"),
    "higher": ("tokens_per_s", "acc", "recall"),
}
# A node's own fields, as `archlab show` and the web UI's node page both give them (each adds its own).
NODE_KEYS = (
    "id",
    "parent_id",
    "status",
    "operator",
    "motivation",
    "fitness",
    "val_loss",
    "reason",
    "detail",
    "analysis",
    "design",
    "commit_sha",
)


def summary(node: dict | None) -> dict | None:
    return None if node is None else {k: node.get(k) for k in SUMMARY_KEYS}


def metric_direction(key: str) -> str | None:
    """Which way the metric improves: "lower", "higher" or None (by METRIC_DIRECTIONS)."""
    name = key.lower()
    for direction in ("lower", "higher"):
        if any(fragment in name for fragment in METRIC_DIRECTIONS[direction]):
            return direction
    return None


def metric_keys(*nodes: dict | None) -> list[str]:
    """Every metric of the given nodes (None: none), METRIC_ORDER's first, then the others by name."""
    metrics = {}
    for source in nodes:
        for key in (source or {}).get("metrics") or {}:
            metrics.setdefault(key, None)
    return [k for k in METRIC_ORDER if k in metrics] + sorted(k for k in metrics if k not in METRIC_ORDER)


def node_counts(store: Store) -> dict:
    """How many nodes the run has, and how many are done, failed, evaluating, imported."""
    counts = store.status_counts()
    return {
        "nodes": sum(counts.values()),
        "done": counts.get("done", 0),
        "failed": counts.get("failed", 0),
        "evaluating": counts.get("evaluating", 0),
        "imported": counts.get("imported", 0),  # another system's nodes (archlab import): reviewed, replayed, forked
    }


def results(store: Store) -> dict:
    """Why nodes failed, the root and the best node (highest fidelity first), how many beat the root, time spent."""
    best = store.leaderboard(1)
    return {
        "failure_reasons": store.failure_reasons(),
        "root": summary(store.node(0)) if store.has_node(0) else None,
        "best": summary(best[0]) if best else None,
        "beat_root": store.count("status = 'done' and fitness > 0"),
        "elapsed_s": round(float(store.get_meta("elapsed_s", "0")), 1),
    }


def run_status(store: Store, config: RunConfig) -> dict:
    running = driver_pid(store.path.parent)
    return {
        **node_counts(store),
        "driver_pid": running,  # None: stopped, and what is `evaluating` was interrupted
        "in_flight": in_flight(store) if running else [],
        **results(store),
        "config": config.model_dump(),
        "leaderboard": [ranked(n) for n in store.leaderboard(10)],
        "spend": spend(store, config),
        "promotion": promotion_status(store, config),
        "tier_agreement": tier_agreement(store, config),
        "islands": island_status(store, config),
    }


def island_status(store: Store, config: RunConfig) -> list[dict] | None:
    """Each island of the run (None with one): its nodes, its own best, the node it was started
    from (None: one of the islands the run started with) and the nodes that migrated to it."""
    if config.islands < 2:
        return None
    counts = {row[0]: row[1:] for row in store.island_counts()}
    moves = store.migrations()
    seeds = {m["to_island"]: m for m in moves if m["kind"] == "seed"}
    out = []
    for island in range(islands.count(store, config)):
        nodes, done, best = counts.get(island, (0, 0, None))
        elite = store.island_elite(island)
        out.append(
            {
                "island": island,
                "nodes": nodes,
                "done": done or 0,
                "best_fitness": best,
                "best_node": elite["id"] if elite else None,
                "seeded_from": seeds[island]["node_id"] if island in seeds else None,
                "started_after": seeds[island]["finished"] if island in seeds else 0,
                "migrants": [m["node_id"] for m in moves if m["kind"] == "migrate" and m["to_island"] == island],
            }
        )
    return out


def in_flight(store: Store) -> list[dict]:
    """The nodes being evaluated, each with its sandbox's progress (sandbox/progress.py) when its
    evaluation has started: stage, step, steps, loss, elapsed_s, limit_s."""
    logs = store.path.parent / "logs"
    return [
        {"id": node_id, **(progress.read(logs / f"node-{node_id}-{attempt}.log") or {"stage": "proposing"})}
        for node_id, attempt in store.evaluating_attempts()
    ]


def node_report(run_dir: Path, store: Store, node_id: int) -> dict:
    node = store.node(node_id)
    parent = store.node(node["parent_id"]) if node["parent_id"] is not None else None
    root = store.node(0)
    from archlab.tree.lineage import Lineage  # git is slow to import: `archlab status` does without it

    lineage = Lineage(Path(run_dir) / "repo")
    diff = lineage.diff(parent["commit_sha"] if parent else None, node["commit_sha"]) if node["commit_sha"] else ""
    table = {
        k: [((n or {}).get("metrics") or {}).get(k) for n in (node, parent, root)]
        for k in metric_keys(node, parent, root)
    }
    return {
        **{k: node.get(k) for k in (*NODE_KEYS, "metrics")},
        "knowledge": node.get("knowledge") or [],
        "references": node.get("references_used") or [],
        "metrics_table": table,
        "parent": summary(parent),
        "root": summary(root),
        "diff": diff,
        "evaluations": [
            {k: e[k] for k in ("tier", "seed", "ok", "reason", "metrics", "env", "log", "kind")}
            for e in store.evaluations(node_id)
        ],
        "traces": len(store.traces(node_id)),
        **{k: node.get(k) for k in FIDELITY_KEYS},
        "promoted": promoted_metrics(store, node_id),
    }


# -- multi-fidelity and compute -------------------------------------------------------------------
def ranked(node: dict) -> dict:
    """A leaderboard entry: the node's best figure, the tier it comes from and its spread over seeds."""
    return {**summary(node), **{k: node.get(k) for k in FIDELITY_KEYS}}


RATE_MIN_HOURS = 10 / 3600  # below 10 s of compute a rate is noise (candidates rejected in 0 s: 4.5 million/h)


def per_hour(count: int, hours: float) -> float | None:
    return count / hours if hours >= RATE_MIN_HOURS else None


def spend(store: Store, config: RunConfig) -> dict:
    """Evaluations and compute per tier and kind, totals, throughput per CPU/GPU-hour, and the budgets."""
    rows = store.spend()
    cpu = sum(r["cpu_hours"] for r in rows)
    gpu = sum(r["gpu_hours"] for r in rows)
    count = sum(r["evaluations"] for r in rows)
    for r in rows:
        r["evaluations_per_cpu_hour"] = per_hour(r["evaluations"], r["cpu_hours"])
        r["evaluations_per_gpu_hour"] = per_hour(r["evaluations"], r["gpu_hours"])
    return {
        "by_tier": rows,
        "evaluations": count,
        "cpu_hours": cpu,
        "gpu_hours": gpu,
        "wall_hours": sum(r["wall_hours"] for r in rows),
        "evaluations_per_cpu_hour": per_hour(count, cpu),
        "evaluations_per_gpu_hour": per_hour(count, gpu),
        "max_cpu_hours": config.max_cpu_hours,
        "max_gpu_hours": config.max_gpu_hours,
    }


def promotion_status(store: Store, config: RunConfig) -> dict | None:
    from archlab.search.promotion import Promoter, plan_of

    plan = plan_of(config)
    if plan is None or not store.has_column("nodes", "fidelity"):
        return None
    return Promoter(store, plan, config.speed_weight).summary()


def tier_figures(rows: list[dict], speed_weight: float) -> dict[str, dict[int, float]]:
    """{tier: {node: fitness}} from successful evaluation rows, ranked as promotion ranks: per node
    and tier the latest row of each seed, its metrics averaged over seeds, and the fitness of that
    mean against the root's mean at the same tier, the root's own being 0 (as Promoter.finish and
    the search figures have it). No root at a tier: no figures there."""
    from archlab.sandbox.averaging import average
    from archlab.search.fitness import fitness

    latest: dict = {}
    for r in rows:
        if (r["metrics"] or {}).get("val_loss") is not None:
            latest.setdefault(r["tier"], {}).setdefault(r["node_id"], {})[r["seed"]] = r["metrics"]
    out: dict = {}
    for tier, nodes in latest.items():
        if 0 not in nodes:
            continue
        root = average(list(nodes[0].values()))
        for node_id, seeds in nodes.items():
            value = 0.0 if node_id == 0 else fitness(average(list(seeds.values())), root, speed_weight)
            if math.isfinite(value):
                out.setdefault(tier, {})[node_id] = value
    return out


def tier_agreement(store: Store, config: RunConfig) -> list[dict]:
    """Whether a cheaper tier ranks nodes like a dearer one, for every pair of tiers at which nodes
    were evaluated (promotions, replays): Spearman's rho of their fitness with a bootstrap interval
    over nodes (archlab/agreement.py), in tier order. Empty when no node has two tiers."""
    from archlab import agreement  # numpy: imported when a status is asked for, not by every command

    figures = tier_figures(store.multi_tier_evaluations(), config.speed_weight)
    order = sorted(figures, key=lambda t: (TIER_ORDER.index(t) if t in TIER_ORDER else len(TIER_ORDER), t))
    return [{**pair, "metric": "fitness"} for pair in agreement.tier_pairs(figures, order)]


def promoted_metrics(store: Store, node_id: int) -> dict | None:
    """The node's promotion evaluations by tier: seeds and mean metrics (with *_std)."""
    from archlab.sandbox.averaging import average
    from archlab.search.promotion import KIND

    by_tier: dict = {}
    for e in store.evaluations(node_id):
        if e["kind"] == KIND:
            by_tier.setdefault(e["tier"], {})[e["seed"]] = e
    out = {}
    for tier, rows in by_tier.items():
        ok = [r["metrics"] for r in rows.values() if r["ok"]]
        out[tier] = {
            "seeds": sorted(rows),
            "ok": len(ok),
            "failed": [{"seed": r["seed"], "reason": r["reason"]} for r in rows.values() if not r["ok"]],
            "metrics": average(ok) if ok else None,
        }
    return out or None
