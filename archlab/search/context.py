"""What the roles see of a run when they work on one candidate: its parent, siblings, history, limits."""

import hashlib
import json

from archlab.agents import novelty
from archlab.agents.schema import Context
from archlab.sandbox.request import param_budget
from archlab.search import archive
from archlab.tree.store import Store


def context(run, state: dict) -> Context:
    """The roles' view of the run for the candidate in `state`."""
    parent = run.store.node(state["parent_id"])
    parent_code = run.lineage.code(parent["commit_sha"])
    siblings = [n for n in run.store.children(parent["id"]) if n["id"] != state["node_id"]]
    root = run.store.node(0)
    tier = run.tier()
    limit = param_budget(root["metrics"]["mixer_params"], run.config.param_ratio) if root.get("metrics") else None
    return Context(
        node_id=state["node_id"],
        parent=parent,
        root=root,
        parent_code=parent_code,
        attempt=state.get("attempt", 0),
        limits={"param_limit": limit, "d_model": tier.d_model, "n_heads": tier.n_heads, "seq_len": tier.seq_len},
        references=[run.store.node(i) for i in state.get("references", [])],
        siblings=siblings,
        known=[
            (n["id"], novelty.change_text(n["motivation"] or "", run.lineage.code(n["commit_sha"]), parent_code))
            for n in siblings
            if n["commit_sha"] and run.brain.kind == "llm"
        ],
        diff=lambda node: run.lineage.diff(parent["commit_sha"], node["commit_sha"]),
        history=history(run.store),
        seen=lambda design: json.dumps(design) in run.claimed or run.store.has_design(design),
        seen_code=lambda code: claim(None, code) in run.claimed or run.store.has_code(code),
        code=lambda node_id: run.lineage.code(run.store.node(node_id)["commit_sha"]),
        rng=run.config.draws(state["node_id"]),
        notes=state.get("notes") or [],
        explore=explore(run.store, parent) if state.get("explore") else None,
    )


def explore(store: Store, parent: dict) -> dict:
    """For a parent drawn from the archive: its cell and the empty cells next to it, in words, and the
    sets of mechanisms the archive holds."""
    cell, elites = parent.get("cell") or "", store.archive_elites() or []
    return {
        "cell": archive.words(cell),
        "empty": [archive.words(k) for k in archive.frontier(elites, cell)],
        "held": archive.held(elites),
    }


def history(store: Store) -> list[dict]:
    """Every finished child beside its parent, as the researcher credits it: node, parent, operator,
    fitness, parent_fitness, change (template designs), edit (code edits: what to make again elsewhere)."""
    edits = store.code_edits()
    return [
        {
            "node": r["child"],
            "parent": r["parent"],
            "operator": r["operator"],
            "fitness": r["fitness"],
            "parent_fitness": r["parent_fitness"],
            "change": _change(r["design"], r["parent_design"]),
            "edit": edits.get(r["child"]),
        }
        for r in store.parent_child_pairs()
    ]


def claim(design: dict | None, code: str | None) -> str:
    """What a candidate in flight claims, so parallel workers never pick the same: its design, or
    for a code edit its file."""
    return json.dumps(design) if design is not None else "code:" + hashlib.sha256((code or "").encode()).hexdigest()


def _change(child: dict | None, parent: dict | None) -> dict | None:
    """The design fields a child changed from its parent (templated designs only)."""
    if not isinstance(child, dict) or not isinstance(parent, dict):
        return None
    return {k: v for k, v in child.items() if parent.get(k) != v}


def experiences(store: Store) -> list[tuple[str, str]]:
    """The run's own experience: every analysis written so far, searchable like knowledge."""
    return [(f"node-{node_id}", analysis) for node_id, analysis in store.analyses()]
