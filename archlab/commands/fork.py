"""Fork: a new run whose root is a node of another.

The new run gets the node's code (as NEW_RUN/root.py, which the new run's config names as its
root), its template design (so the offline brain keeps mutating it), its metrics and evaluations,
its traces, and a link back (meta "forked_from" and an event).
"""

import json
import shutil
import sqlite3
import time
from pathlib import Path

from pydantic import ValidationError

from archlab.config import RunConfig, validation_message
from archlab.errors import UserError
from archlab.sandbox import runner
from archlab.sandbox.tiers import TIERS
from archlab.tree.create import create_run
from archlab.tree.lineage import Lineage
from archlab.tree.store import TRACE_FIELDS, WEIGHTS_DIR, Store

FORK_ROOT_FILE = "root.py"


def trained_node(run_dir: Path, node_id: int, purpose: str, imported: bool = False) -> tuple[RunConfig, Store, dict]:
    """The run's config, store and node `node_id`, which must have been trained (status done) or, with
    `imported`, be another system's design whose code came along (archlab import)."""
    config, store = RunConfig.load(run_dir), Store(run_dir)
    node = store.node(node_id)
    if node["status"] != "done" and not (imported and node["status"] == "imported" and node["commit_sha"]):
        raise UserError(
            f"node {node_id} {node['status']}"
            + (f" ({node['reason']})" if node["reason"] else "")
            + f": only a trained node can {purpose}"
        )
    return config, store, node


def fork(
    run_dir: Path,
    node_id: int,
    new_dir: Path,
    *,
    tier: str | None = None,
    seed: int | None = None,
    strategy: str | None = None,
    max_nodes: int | None = None,
) -> dict:
    """Create NEW_RUN rooted at node_id of RUN; returns what was done, for the CLI to print."""
    run_dir, new_dir = Path(run_dir), Path(new_dir)
    config, store, node = trained_node(run_dir, node_id, "root a new run", imported=True)
    if new_dir.exists() and (not new_dir.is_dir() or any(new_dir.iterdir())):
        raise UserError(f"NEW_RUN {new_dir.name}/ exists and is not empty; fork into a new directory")
    if new_dir.resolve() == run_dir.resolve() or new_dir.resolve().is_relative_to(run_dir.resolve()):
        raise UserError(f"NEW_RUN {new_dir.name}/ is inside RUN; fork into a directory outside it")
    if tier is not None and tier not in TIERS:
        raise UserError(f"--tier {tier!r}: choose one of {', '.join(TIERS)}")
    code = Lineage(run_dir / "repo").code(node["commit_sha"])
    root = store.node(0)

    # The parameter budget stays what it was in the source run (an absolute number of mixer
    # parameters), so a fork cannot grow its models by re-basing the ratio on a bigger node.
    node_params = (node.get("metrics") or {}).get("mixer_params")
    root_params = (root.get("metrics") or {}).get("mixer_params")
    ratio = config.param_ratio
    if node_params and root_params:
        ratio = config.param_ratio * root_params / node_params
    updates = {"root": str((new_dir / FORK_ROOT_FILE).resolve()), "param_ratio": ratio}
    for key, value in (("tier", tier), ("seed", seed), ("strategy", strategy), ("max_nodes", max_nodes)):
        if value is not None:
            updates[key] = value
    try:  # a bad --strategy etc. fails before anything is written
        new_config = RunConfig.model_validate({**config.model_dump(), **updates})
    except ValidationError as e:
        raise UserError(validation_message(e)) from None
    # The new root's figures: the node's own evaluation at the new run's tier and seed (its
    # search evaluation; not a promotion's, which the node's columns may hold); without one,
    # the new run evaluates its root first.
    search = [
        e
        for e in store.evaluations(node_id)
        if e["kind"] == "search" and e["ok"] and e["tier"] == new_config.tier and e["seed"] == new_config.seed
    ]
    baseline = search[-1]["metrics"] if search and (search[-1]["metrics"] or {}).get("val_loss") is not None else None
    same_tier = baseline is not None

    source = _source(run_dir, config, node)
    created = not new_dir.exists()
    try:
        sha, copied = _write_fork(store, node, code, new_dir, new_config, source, baseline)
    except BaseException:
        if created:
            shutil.rmtree(new_dir, ignore_errors=True)
        else:
            for child in new_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    try:
        store.event("forked", f"node {node_id} forked into {new_dir.resolve()}", node_id)
    except sqlite3.OperationalError:  # a read-only source run still forks
        pass
    return {
        "source": source,
        "new_run": str(new_dir),
        "config": new_config.model_dump(exclude_none=True),
        "root_ready": same_tier,
        "evaluations": copied,
        "design": node.get("design") is not None,
        "param_ratio": ratio,
    }


def _source(run_dir: Path, config: RunConfig, node: dict) -> dict:
    return {
        "run": str(run_dir.resolve()),
        "name": run_dir.resolve().name,
        "node": node["id"],
        "commit": node["commit_sha"],
        "fitness": node["fitness"],
        "val_loss": node["val_loss"],
        "operator": node["operator"],
        "tier": config.tier,
        "forked": time.time(),
    }


def _write_fork(
    store: Store, node: dict, code: str, new_dir: Path, new_config: RunConfig, source: dict, baseline: dict | None
) -> tuple[str, int]:
    node_id = node["id"]
    new_dir.mkdir(parents=True, exist_ok=True)
    (new_dir / FORK_ROOT_FILE).write_text(code, encoding="utf-8")
    create_run(new_dir, new_config)
    new_store = Store(new_dir)
    message = (
        f"node 0: fork of {source['name']} node {node_id} (commit {node['commit_sha'][:12]})\n\n"
        f"{node['motivation'] or ''}\n\nsource run: {source['run']}"
    )
    sha = Lineage(new_dir / "repo").commit(0, code, message, None)
    motivation = f"forked from {source['name']} node {node_id} ({node['operator'] or 'root'}): {node['motivation'] or ''}".strip()
    fields = dict(
        id=0,
        parent_id=None,
        operator="root",
        commit_sha=sha,
        motivation=motivation,
        design=node.get("design"),
        knowledge=[
            k for k in node.get("knowledge") or [] if not str(k).startswith("node-")
        ],  # the source's experiences
        created=time.time(),
    )
    same_tier = baseline is not None
    if same_tier:
        new_store.add_node(
            **fields,
            status="done",
            fitness=0.0,
            val_loss=baseline["val_loss"],
            metrics=baseline,
            finished=time.time(),
            analysis=f"The root, forked from node {node_id} of {source['name']} (fitness there "
            f"{node['fitness']:+.4f}); every fitness in this run is relative to it."
            + (f" Its analysis there: {node['analysis']}" if node.get("analysis") else ""),
        )
    else:  # evaluated at the new tier or seed by the first `archlab run`
        new_store.add_node(**fields, status="evaluating")
    new_store.save_code(0, code)
    copied = _copy_evaluations(store, new_store, Path(source["run"]), new_dir, node_id, keep_kinds=same_tier)
    for t in store.traces(node_id):
        new_store.add_trace(
            0,
            t["role"],
            t["kind"],
            **{k: t[k] for k in TRACE_FIELDS},
        )
    new_store.add_trace(0, "fork", "fork", decision=source, response=f"forked from {source['run']} node {node_id}")
    new_store.set_meta("forked_from", json.dumps(source))
    new_store.event("fork", f"forked from {source['run']} node {node_id} (commit {node['commit_sha']})", 0)
    return sha, copied


def _copy_evaluations(
    store: Store, new_store: Store, run_dir: Path, new_dir: Path, node_id: int, keep_kinds: bool
) -> int:
    """The source node's evaluations become node 0's. With another tier or seed the search
    evaluations are kept as kind 'source' (the new run evaluates its root itself)."""
    count = 0
    for e in store.evaluations(node_id):
        kind = e["kind"] if keep_kinds or e["kind"] != "search" else "source"
        log = e["log"]
        if log and (run_dir / log).is_file():
            target = new_dir / "logs" / f"source-{Path(log).name}"
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(run_dir / log, target)
            log = str(target.relative_to(new_dir))
        env = dict(e["env"] or {})
        weights = env.get("weights")
        if weights and (run_dir / weights).is_file():
            target = new_dir / WEIGHTS_DIR / Path(weights).name.replace(f"node-{node_id}-", "node-0-", 1)
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(run_dir / weights, target)
            env["weights"] = str(target.relative_to(new_dir))
        result = runner.Result(
            ok=bool(e["ok"]),
            reason=e["reason"],
            detail=e["detail"],
            metrics=e["metrics"] or {},
            env=env,
            curves=e.get("curves") or [],
        )
        new_store.add_evaluation(0, e["tier"], e["seed"], result, log, kind=kind)
        count += 1
    return count
