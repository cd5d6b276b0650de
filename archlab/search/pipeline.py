"""The pipeline one candidate runs: a langgraph StateGraph with a named function per step.

    select -> research -> engineer -> commit -> evaluate -> analyse -> record
                             ^                      |
                             +---- repair ----------+   (bounded attempts)

select draws a parent (sampling.py); research and engineer are the roles proposing a change
(archlab/agents); commit writes it to the lineage; evaluate checks and trains it in the sandbox
(evaluation.py); analyse is the analyst's reading; record stores the verdict. Writes are ordered so
the store stays consistent at every point: the git commit (tag node-N) comes first, then the node
row ("evaluating"), then the evaluation rows, then the final row. Every step is idempotent on a
re-run: the driver (driver.py) resumes a checkpointed candidate at the step it reached.
"""

import random
import time
from typing import TypedDict

from langgraph.graph import END, START, StateGraph

from archlab import chaos
from archlab.agents.schema import Proposal, Trace
from archlab.sandbox import runner
from archlab.search import archive, evaluation, islands, sampling, steering
from archlab.search.context import claim, context
from archlab.search.fitness import fitness
from archlab.tree.store import DONE

# The analyse step's node name, spelt as archlab first wrote it: checkpoints.db of a run stopped at
# that step names it, and langgraph drops a next step it does not know (the candidate would then
# never be analysed and recorded).
ANALYSE = "analyze"
PIN_SHARE = 0.8  # parents drawn from a pinned subtree (`archlab steer RUN pin NODE`); the rest as the strategy says


class CandidateState(TypedDict, total=False):
    node_id: int
    parent_id: int
    references: list[int]
    proposal: dict
    attempt: int
    failure: dict | None
    result: dict
    discarded: bool
    analysis: str
    judge: dict | None
    stop: str
    notes: list[str]  # what `archlab steer RUN note` asked this candidate's researcher to consider
    island: int  # the island the proposal works on (islands.py)
    explore: bool  # the parent was drawn from the archive: the proposal aims at a cell no node holds


def build(run) -> StateGraph:
    """The graph of `run` (a driver.Run): each node is the step of the same name, given the run."""
    steps = {
        "select": select,
        "research": research,
        "engineer": engineer,
        "commit": commit,
        "evaluate": evaluate,
        ANALYSE: analyse,
        "record": record,
    }
    g = StateGraph(CandidateState)
    for name, step in steps.items():
        g.add_node(name, lambda state, step=step: step(run, state))
    g.add_edge(START, "select")
    g.add_conditional_edges("select", lambda s: END if s.get("stop") else "research")
    g.add_conditional_edges("research", lambda s: END if s.get("stop") else "engineer")
    g.add_edge("engineer", "commit")
    g.add_conditional_edges(
        "commit", lambda s: ANALYSE if s.get("discarded") or s["proposal"].get("failure") else "evaluate"
    )
    g.add_conditional_edges("evaluate", lambda s: after_evaluate(run, s))
    g.add_edge(ANALYSE, "record")
    g.add_edge("record", END)
    return g


def select(run, state: CandidateState) -> CandidateState:
    chaos.point("select")
    node_id = run.reserve_id()
    rng = run.config.draws(node_id)
    with run.lock:  # migrations and new islands are due by the store's counts: one worker acts on them
        islands.tend(run.store, run.config)
    island = islands.island_of(node_id, islands.count(run.store, run.config))
    own = islands.condition(run.store, run.config, island)  # None: one population, as without islands
    parent, steered = _steered_parent(run, rng, own)
    if parent is None:
        run.release_id(node_id)
        return {"stop": "no finished node can be a parent"}
    refs = sampling.sample_references(run.store, parent, rng, where=f"{DONE} and {own}" if own else DONE)
    run.store.add_trace(
        node_id,
        "selector",
        "offline",
        decision={
            "strategy": run.config.strategy,
            "parent": parent["id"],
            "references": [r["id"] for r in refs],
            **({"island": island} if own else {}),
            **({"drawn": parent["drawn"]} if "drawn" in parent else {}),
            **steered,
        },
    )
    return {
        "node_id": node_id,
        "parent_id": parent["id"],
        "references": [r["id"] for r in refs],
        "notes": _notes(run),
        "island": island,
        "explore": parent.get("drawn") == "archive",
    }


def _steered_parent(run, rng: random.Random, within: str | None) -> tuple[dict | None, dict]:
    """The strategy's parent among the nodes `within` admits (an island's; None: all of them),
    never a vetoed node, and PIN_SHARE of the time from a pinned subtree (`archlab steer`: the
    user's pin holds across islands); what steering did goes into the selector's trace."""
    steered_by = steering.read(run.store)
    where = DONE + (f" and id not in ({','.join(map(str, sorted(steered_by.vetoed)))})" if steered_by.vetoed else "")
    steered = {"vetoed": sorted(steered_by.vetoed)} if steered_by.vetoed else {}
    if steered_by.pinned and rng.random() < PIN_SHARE:
        subtree = run.store.subtree(steered_by.pinned)
        parent = sampling.select_parent(
            run.store, run.config.strategy, rng, f"{where} and id in ({','.join(map(str, subtree))})"
        )
        if parent is not None:
            return parent, {**steered, "pinned": sorted(steered_by.pinned)}
    return sampling.select_parent(
        run.store, run.config.strategy, rng, f"{where} and {within}" if within else where
    ), steered


def _notes(run) -> list[str]:
    """The notes `archlab steer RUN note` left since the last researcher got them: given once."""
    with run.lock:
        notes = steering.read(run.store).notes
        if notes:
            run.store.set_meta(steering.NOTES_USED, str(notes[-1][0]))
    return [text for _, text in notes]


def research(run, state: CandidateState) -> CandidateState:
    ctx = context(run, state)
    if run.brain.kind == "offline":
        with run.lock:  # choose and claim a design atomically, so parallel workers never pick the same one
            proposal, traces = run.brain.research(ctx)
            if proposal is not None:
                run.claimed.add(claim(proposal.design, proposal.code))
    else:
        proposal, traces = run.brain.research(ctx)
    _write_traces(run, state["node_id"], traces, state.get("attempt", 0))
    if proposal is None:
        return {"stop": "the researcher found nothing new to try"}
    return {"proposal": proposal.model_dump()}


def engineer(run, state: CandidateState) -> CandidateState:
    if state["proposal"].get("failure"):  # the researcher gave up: record the failure
        return {}
    ctx = context(run, state)
    proposal, traces = run.brain.engineer(ctx, Proposal(**state["proposal"]), state.get("failure"))
    _write_traces(run, state["node_id"], traces, state.get("attempt", 0))
    if proposal is None:
        return {"discarded": True}
    return {"proposal": proposal.model_dump(), "discarded": False}


def commit(run, state: CandidateState) -> CandidateState:
    node_id, proposal = state["node_id"], state["proposal"]
    parent = run.store.node(state["parent_id"])
    message = f"node {node_id}: {proposal.get('operator') or 'proposal'} (from node {parent['id']})\n\n{proposal['motivation']}"
    # A failed proposal has no code of its own: its commit repeats the parent's file.
    code = proposal.get("code") or run.lineage.code(parent["commit_sha"])
    sha = run.lineage.commit(node_id, code, message, parent["commit_sha"])
    chaos.point("after_commit")
    fields = dict(
        commit_sha=sha,
        motivation=proposal["motivation"],
        design=proposal.get("design"),
        operator=proposal.get("operator"),
        knowledge=proposal.get("knowledge"),
    )
    if run.store.has_node(node_id):
        run.store.update_node(node_id, **fields)
    else:
        run.store.add_node(
            id=node_id,
            parent_id=parent["id"],
            status="evaluating",
            references_used=state.get("references", []),
            island=state.get("island"),
            **fields,
        )
    run.store.save_code(node_id, code)
    chaos.point("after_row")
    return {}


def evaluate(run, state: CandidateState) -> CandidateState:
    attempt = state.get("attempt", 0)
    result = evaluation.search(run, state["node_id"], state["proposal"]["code"], attempt)
    log = runner.tail(run.dir / "logs" / f"node-{state['node_id']}-{attempt}.log", 3000)
    failure = None if result.ok else {"reason": result.reason, "detail": result.detail, "log": log}
    return {"result": result.model_dump(), "attempt": state.get("attempt", 0) + 1, "failure": failure}


def after_evaluate(run, state: CandidateState) -> str:
    if state["result"]["ok"] or state["attempt"] > run.config.repair_attempts:
        return ANALYSE
    return "engineer"


def analyse(run, state: CandidateState) -> CandidateState:
    node = run.store.node(state["node_id"]) if run.store.has_node(state["node_id"]) else None
    if node is None:  # discarded before its first commit: nothing to analyse
        return {"analysis": "discarded before evaluation"}
    ctx = context(run, state)
    # A proposal that never became code (malformed, discarded) is analysed as a failure.
    failure = state["proposal"].get("failure") or {"reason": "discarded", "detail": None}
    result = state.get("result") or {"ok": False, "metrics": {}, **failure}
    text, traces = run.brain.analyse(ctx, node, result)
    _write_traces(run, state["node_id"], traces, state.get("attempt", 0))
    chaos.point("during_analysis")
    judged = run.brain.judge.score(ctx, node) if getattr(run.brain, "judge", None) and result["ok"] else None
    return {"analysis": text, "judge": judged}


def record(run, state: CandidateState) -> CandidateState:
    node_id, result = state["node_id"], state.get("result")
    if not run.store.has_node(node_id) or run.store.node(node_id)["status"] != "evaluating":
        return {}
    fields = {"analysis": state.get("analysis"), "finished": time.time()}
    if result and result["ok"]:
        root = run.store.node(0)["metrics"]
        metrics = {**result["metrics"], **(state.get("judge") or {})}
        score = fitness(result["metrics"], root, run.config.speed_weight)
        if state.get("judge"):  # ASI-Arch-style: the judge's view of novelty minus complexity
            score += run.config.judge_weight * (metrics["judge_novelty"] - metrics["judge_complexity"]) / 10
        fields.update(
            status="done",
            fitness=score,
            val_loss=result["metrics"]["val_loss"],
            metrics=metrics,
            reason=None,
            detail=None,
            **evaluation.search_figures(run.config, score),
            **archive.node_fields(result["metrics"], root, state["proposal"].get("code"), run.tier()),
        )
    else:
        failure = result or state["proposal"].get("failure") or {"reason": "discarded", "detail": None}
        fields.update(status="failed", reason=failure["reason"], detail=failure.get("detail"))
    run.store.update_node(node_id, **fields)
    run.store.event("node", f"node {node_id} {fields['status']}", node_id)
    if hasattr(run.brain, "settle"):  # an LLM brain routing between models: the node's reward
        run.brain.settle()
    evaluation.prune_weights(run)
    chaos.point("after_record")
    if fields["analysis"] and hasattr(run.brain, "knowledge"):
        run.brain.knowledge.add_experience(f"node-{node_id}", fields["analysis"])
    return {}


def _write_traces(run, node_id: int, traces: list[Trace], attempt: int) -> None:
    # An LLM brain's calls are traced by its client (kind "llm"); these are the roles' own decisions.
    kind = "offline" if run.brain.kind == "offline" else "decision"
    for t in traces:
        run.store.add_trace(node_id, t.role, kind, attempt=attempt, **t.model_dump(exclude={"role"}))
