"""`archlab dataset RUN OUT.jsonl`: every proposal of a run as one JSON line, to train a proposer on.

A proposal is a node other than the root: what the researcher saw (the parent's code, sampled
references, knowledge), what was proposed (operator, motivation, the code diff), how it was
made (the researcher's, engineer's and analyst's traces) and what was measured (status, reason,
fitness, metrics, tier, seeds). The schema is in README.md ("The proposal dataset"); `schema`
names its version, so a reader can tell a later layout apart.

Nodes still being evaluated are left out (they have no outcome yet) and counted.
"""

import json
from pathlib import Path
from typing import IO, Iterator

from archlab.tree.lineage import Lineage
from archlab.tree.store import TRACE_FIELDS, Store

SCHEMA = "archlab.proposal/1"
EXPORTED = ("id", "kind", *TRACE_FIELDS, "created")  # of each trace
OUTCOME_FIELDS = (
    "status",
    "reason",
    "detail",
    "fitness",
    "fitness_std",
    "val_loss",
    "val_loss_std",
    "metrics",
    "tier",
    "seeds",
)


def proposals(run_dir: Path, store: Store) -> Iterator[dict]:
    """The lines, in node order: every finished node but the root."""
    lineage = Lineage(Path(run_dir) / "repo")
    codes: dict[str, str] = {}  # parent code by commit: siblings share their parent
    nodes = {n["id"]: n for n in store.nodes()}
    run = Path(run_dir).resolve().name
    for node in nodes.values():
        if node["parent_id"] is None or node["status"] == "evaluating":
            continue
        parent = nodes.get(node["parent_id"]) or store.node(node["parent_id"])
        sha = parent["commit_sha"]
        if sha and sha not in codes:
            codes[sha] = lineage.code(sha)
        yield proposal(run, node, parent, codes.get(sha), _diff(lineage, parent, node), store.traces(node["id"]))


def proposal(run: str, node: dict, parent: dict, parent_code: str | None, diff: str | None, traces: list[dict]) -> dict:
    by_role: dict[str, list[dict]] = {"researcher": [], "engineer": [], "analyst": []}
    for t in traces:
        by_role.setdefault(t["role"] or "other", []).append({k: t.get(k) for k in EXPORTED})
    return {
        "schema": SCHEMA,
        "run": run,
        "node_id": node["id"],
        "parent_id": node["parent_id"],
        "operator": node["operator"],
        "motivation": node["motivation"],
        "design": node.get("design"),
        "references": node.get("references_used") or [],
        "knowledge": node.get("knowledge") or [],
        "parent_commit": parent["commit_sha"],
        "commit": node["commit_sha"],
        "parent_code": parent_code,
        "diff": diff,
        "traces": by_role,
        **{k: node.get(k) for k in OUTCOME_FIELDS},
        "parent_fitness": parent.get("fitness"),
        "parent_val_loss": parent.get("val_loss"),
        "analysis": node.get("analysis"),
    }


def _diff(lineage: Lineage, parent: dict, node: dict) -> str | None:
    """git's unified diff of candidate.py, ending in a newline so that `git apply` takes it as it is."""
    if not node["commit_sha"] or not parent["commit_sha"]:
        return None  # a proposal that failed before it had code
    diff = lineage.diff(parent["commit_sha"], node["commit_sha"])
    return diff + "\n" if diff else ""


def write(run_dir: Path, store: Store, out: IO[str]) -> dict:
    """Write the lines to `out`; returns the counts."""
    written = 0
    for line in proposals(run_dir, store):
        out.write(json.dumps(line) + "\n")
        written += 1
    return {"proposals": written, "in_flight": len(store.evaluating())}
