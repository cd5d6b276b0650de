"""Facts about a run and its nodes, shared by the CLI's tables and its --json output."""

from pathlib import Path

from archlab.config import RunConfig
from archlab.tree.lineage import Lineage
from archlab.tree.store import Store

SUMMARY_KEYS = ("id", "parent_id", "status", "operator", "fitness", "val_loss", "motivation")
METRIC_ORDER = ("val_loss", "val_bpb", "train_loss", "tokens_per_s", "params", "mixer_params", "train_tokens", "wall_s")


def summary(node: dict | None) -> dict | None:
    return None if node is None else {k: node.get(k) for k in SUMMARY_KEYS}


def run_status(store: Store, config: RunConfig) -> dict:
    counts = dict(store.db.execute("select status, count(*) from nodes group by status").fetchall())
    reasons = dict(store.db.execute(
        "select reason, count(*) from nodes where status = 'failed' group by reason order by count(*) desc").fetchall())
    best = store.best()
    root = store.node(0) if store.has_node(0) else None
    return {
        "nodes": sum(counts.values()),
        "done": counts.get("done", 0),
        "failed": counts.get("failed", 0),
        "evaluating": counts.get("evaluating", 0),
        "failure_reasons": reasons,
        "root": summary(root),
        "best": summary(best[0]) if best else None,
        "beat_root": store.count("status = 'done' and fitness > 0"),
        "elapsed_s": round(float(store.get_meta("elapsed_s", "0")), 1),
        "config": config.model_dump(),
    }


def node_report(run_dir: Path, store: Store, node_id: int) -> dict:
    node = store.node(node_id)
    parent = store.node(node["parent_id"]) if node["parent_id"] is not None else None
    root = store.node(0)
    lineage = Lineage(Path(run_dir) / "repo")
    diff = lineage.diff(parent["commit_sha"] if parent else None, node["commit_sha"]) if node["commit_sha"] else ""
    metrics = {}
    for source in (node, parent, root):
        for key in (source or {}).get("metrics") or {}:
            metrics.setdefault(key, None)
    ordered = [k for k in METRIC_ORDER if k in metrics] + sorted(k for k in metrics if k not in METRIC_ORDER)
    table = {k: [((n or {}).get("metrics") or {}).get(k) for n in (node, parent, root)] for k in ordered}
    return {
        **{k: node.get(k) for k in ("id", "parent_id", "status", "operator", "motivation", "fitness", "val_loss",
                                    "reason", "detail", "analysis", "design", "commit_sha", "metrics")},
        "knowledge": node.get("knowledge") or [],
        "references": node.get("references_used") or [],
        "metrics_table": table,
        "parent": summary(parent),
        "root": summary(root),
        "diff": diff,
        "evaluations": [{k: e[k] for k in ("tier", "seed", "ok", "reason", "metrics", "env", "log", "kind")} for e in store.evaluations(node_id)],
        "traces": len(store.traces(node_id)),
    }
