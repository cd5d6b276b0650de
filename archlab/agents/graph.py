"""The discovery pipeline: one langgraph StateGraph run per candidate.

    select -> research -> engineer -> commit -> evaluate -> analyze -> record
                             ^                      |
                             +---- repair ----------+   (bounded attempts)

Each candidate is a langgraph thread checkpointed in runs/NAME/checkpoints.db, so a crash
resumes at the step it reached. Writes are ordered so the store stays consistent at every
point: the git commit (tag node-N) comes first, then the node row ("evaluating"), then the
evaluation rows, then the final row. Every step is idempotent on a re-run.

Evaluations go through an executor (archlab/sandbox/executors.py: local slots or Ray); only
this process writes the store. With promotion on (archlab/agents/promotion.py) a free slot
first promotes a node from the top slice of the search tier to a higher tier with several
seeds (asynchronous successive halving), else it starts a new candidate.
"""

import hashlib
import json
import math
import random
import re
import sqlite3
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait
from pathlib import Path
from typing import Callable, TypedDict

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

from archlab import chaos
from archlab.agents import novelty, promotion
from archlab.agents.llm import BudgetExceeded, EndpointDown
from archlab.agents.roles import Context, Proposal, Trace
from archlab.config import RunConfig
from archlab.errors import UserError
from archlab.sandbox import executors, runner
from archlab.sandbox.fitness import fitness
from archlab.sandbox.tiers import resolve
from archlab.templates import ROOTS, render_root
from archlab.text import duration
from archlab.tree import sampling, space
from archlab.tree import steering as tree_steering
from archlab.tree.create import create_run
from archlab.tree.lineage import Lineage
from archlab.tree.store import WEIGHTS_DIR, Store

CHECKPOINT_FILE = "checkpoints.db"


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


class Run:
    """A run directory: config, store, lineage and the brain that grows the tree."""

    def __init__(self, run_dir: Path, config: RunConfig, brain, executor: executors.Executor | None = None):
        self.dir = Path(run_dir)
        self.config = config
        self.store = Store(self.dir, create=True)  # create=True also adds columns a newer archlab needs
        self.lineage = Lineage(self.dir / "repo")
        self.brain = brain
        (self.dir / "logs").mkdir(exist_ok=True)
        conn = sqlite3.connect(self.dir / CHECKPOINT_FILE, check_same_thread=False)
        self.checkpointer = SqliteSaver(conn)
        self.graph = self._build_graph().compile(checkpointer=self.checkpointer)
        self._lock = threading.Lock()  # guards node-id reservation and the offline brain's choice
        self._reserved: set[int] = set()  # node ids held by candidates in flight
        self._claimed: set[str] = set()  # designs chosen by candidates in flight
        self.executor = executor  # None: run() makes the one the config asks for, and shuts it down at the end
        self.endpoint_down: str | None = None  # why the LLM endpoint stopped the run (the CLI then exits 1)
        plan = promotion.plan_of(config)
        self.promoter = promotion.Promoter(self.store, plan, config.speed_weight) if plan else None

    create = staticmethod(create_run)

    # -- the driver loop --------------------------------------------------------------------
    def run(self, on_node: Callable[[dict], None] = lambda node: None) -> str:
        """Grow the tree with `workers` candidates in flight until a budget is reached; returns why it stopped.

        Interrupted candidates (open langgraph threads) are resumed first. Only this process
        writes the store; the workers are threads whose sandboxes are child processes.
        """
        self.recover()
        tree_steering.forget_stops(self.store)  # a stop asked of an earlier driver is not one for this run
        own_executor = self.executor is None
        if own_executor:
            self.executor = executors.make(self.config)
            self.store.event("executor", json.dumps(self.executor.describe()))
        try:
            return self._run(on_node)
        finally:
            if own_executor:
                self.executor.shutdown()
                self.executor = None

    def _run(self, on_node: Callable[[dict], None]) -> str:
        # Run time counts the root, and is stored as it grows (after the root and every node), so
        # `status` and the report agree with the clock while a run is going.
        started, elapsed_before = time.monotonic(), float(self.store.get_meta("elapsed_s", "0"))

        def elapsed() -> float:
            return elapsed_before + time.monotonic() - started

        try:
            try:
                self.ensure_root(on_node)
            except BaseException as e:
                if not isinstance(e, UserError):  # a rejected root is over; anything else may still be running
                    self.executor.stop()
                raise
            self.store.set_meta("elapsed_s", str(elapsed()))
            pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="candidate")
            try:
                why = self._drive(pool, on_node, elapsed)
            except BaseException:
                self.executor.stop()  # kill the sandboxes so the workers return at once; their candidates stay open
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
            return why
        finally:
            self.store.set_meta("elapsed_s", str(elapsed()))

    def _drive(self, pool: ThreadPoolExecutor, on_node: Callable[[dict], None], elapsed: Callable[[], float]) -> str:
        """Keep `workers` slots busy. A free slot resumes an open candidate, else promotes a due node
        (promotion on), else starts a new candidate. `why`: no new candidates (reaching --max-nodes or
        running out of ideas still lets due promotions finish); `halt`: nothing new at all (time,
        compute or LLM budgets, a failing endpoint)."""
        pending = self.open_threads()
        running: dict = {}  # future -> ("candidate", thread) | ("promotion", node_id)
        why = halt = None
        while True:
            space.ensure_free(self.dir)
            while halt is None and len(running) < self.config.workers:
                in_flight = sum(1 for kind, _ in running.values() if kind == "candidate")
                if why is None and pending:
                    thread = pending.pop(0)
                    running[pool.submit(self.step, thread)] = ("candidate", thread)
                    continue
                halt = self._hard_stop(elapsed())
                if halt:
                    why = why or halt
                    break
                busy = {key for kind, key in running.values() if kind == "promotion"}
                node_id = self.promoter.next(busy) if self.promoter else None
                if node_id is not None:
                    running[pool.submit(self.promote, node_id)] = ("promotion", node_id)
                    continue
                if why is None:
                    why = self._budget_reason(in_flight, elapsed()) or self._stop_asked()
                if why:
                    break
                thread = f"candidate-{uuid.uuid4().hex[:12]}"
                self.store.set_meta(f"thread:{thread}", "open")
                running[pool.submit(self.step, thread)] = ("candidate", thread)
            if not running:
                return why
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            self.store.set_meta("elapsed_s", str(elapsed()))
            for future in finished:
                kind, key = running.pop(future)
                if kind == "promotion":
                    future.result()  # an executor failure stops the run (the promotion resumes next time)
                    on_node(self.store.node(key))
                    continue
                try:
                    state = future.result()
                except (BudgetExceeded, EndpointDown) as e:
                    self.store.event("stop", str(e))
                    if isinstance(e, EndpointDown):  # a failure, unlike a budget reached
                        self.endpoint_down = self.endpoint_down or str(e)
                    why = why or str(e)  # the candidate stays checkpointed: resuming continues it
                    halt = halt or str(e)
                    continue
                if state.get("stop"):
                    why = why or state["stop"]
                else:
                    on_node(self.store.node(state["node_id"]))

    def _stop_asked(self) -> str | None:
        """`archlab steer RUN stop`: the candidates in flight finish, no new one starts (used once:
        the same `archlab run` resumes the run afterwards)."""
        stop = tree_steering.read(self.store).stop
        if stop is None:
            return None
        self.store.set_meta(tree_steering.STOP_USED, str(stop))
        return "stopped by `archlab steer stop` (the candidates in flight finished)"

    def _budget_reason(self, in_flight: int, elapsed: float) -> str | None:
        if self.store.count("status != 'evaluating'") + in_flight >= self.config.max_nodes:
            return f"reached --max-nodes {self.config.max_nodes}"
        return self._hard_stop(elapsed)

    def _hard_stop(self, elapsed: float) -> str | None:
        """Budgets that stop everything, promotions included: wall time, compute, LLM spend."""
        if self.config.hours and elapsed >= self.config.hours * 3600:
            return f"reached --hours {self.config.hours}"
        if self.config.max_cpu_hours or self.config.max_gpu_hours:
            spent = self.store.spend(("search", promotion.KIND))
            cpu, gpu = sum(r["cpu_hours"] for r in spent), sum(r["gpu_hours"] for r in spent)
            if self.config.max_cpu_hours and cpu >= self.config.max_cpu_hours:
                return f"reached --cpu-hours {self.config.max_cpu_hours} ({cpu:.3f} CPU-hours used)"
            if self.config.max_gpu_hours and gpu >= self.config.max_gpu_hours:
                return f"reached --gpu-hours {self.config.max_gpu_hours} ({gpu:.3f} GPU-hours used)"
        if hasattr(self.brain, "client"):
            try:
                self.brain.client.check_budget()
            except BudgetExceeded as e:
                return str(e)
        return None

    def step(self, thread: str) -> CandidateState:
        """Run one candidate (a langgraph thread) to its end, resuming where it stopped."""
        config = {"configurable": {"thread_id": thread}, "recursion_limit": 100}
        snapshot = self.graph.get_state(config)
        if snapshot.next:
            state = self.graph.invoke(None, config)
        elif snapshot.values.get("node_id") is not None or snapshot.values.get("stop"):
            state = snapshot.values  # finished before a crash, but not yet closed
        else:  # never started, or killed while only its input was checkpointed: start it afresh
            state = self.graph.invoke({"attempt": 0}, config)
        self.store.set_meta(f"thread:{thread}", None)
        self.checkpointer.delete_thread(thread)
        with self._lock:
            self._reserved.discard(state.get("node_id"))
        return state

    def open_threads(self) -> list[str]:
        return [
            r[0].removeprefix("thread:")
            for r in self.store.db.execute("select key from meta where key like 'thread:%' order by key")
        ]

    def recover(self) -> None:
        """Make the store consistent after a crash: drop commits whose row never got written,
        and fail in-flight nodes that no checkpoint will resume."""
        tags = self.lineage.node_tags()
        for node_id in tags:
            if not self.store.has_node(node_id):
                self.lineage.drop_tag(node_id)
                self.store.event("recover", f"dropped commit of node {node_id}: its row was never written", node_id)
        resumable = set()
        for thread in self.open_threads():
            node_id = self.graph.get_state({"configurable": {"thread_id": thread}}).values.get("node_id")
            if node_id is not None:
                resumable.add(node_id)
                self._reserved.add(node_id)
        for node in self.store.nodes("status = 'evaluating'"):
            if node["id"] not in resumable and node["id"] != 0:
                self.store.update_node(node["id"], status="failed", reason="interrupted", finished=time.time())
                self.store.event("recover", "in-flight node had no checkpoint; marked interrupted", node["id"])

    def _reserve_id(self) -> int:
        with self._lock:
            node_id = max([self.store.next_node_id(), *(i + 1 for i in self._reserved)])
            self._reserved.add(node_id)
            return node_id

    # -- the root ---------------------------------------------------------------------------
    def ensure_root(self, on_node: Callable[[dict], None]) -> None:
        if self.store.has_node(0) and self.store.node(0)["status"] == "done":
            return
        code, design = root_source(self.config.root)
        sha = self.lineage.commit(0, code, f"node 0: root ({self.config.root})", None)
        if not self.store.has_node(0):
            self.store.add_node(
                id=0,
                parent_id=None,
                status="evaluating",
                operator="root",
                commit_sha=sha,
                motivation=f"the root design: {self.config.root}",
                design=design,
            )
        self.store.save_code(0, code)
        root = self.store.node(0)
        # A root rejected for its data or its tier settings was not at fault: once the user fixed the
        # cause, resuming evaluates it again (a new attempt) instead of reusing the stored failure.
        retry = root["status"] == "failed" and root["reason"] in ROOT_RETRY_REASONS
        attempt = (root["attempts"] or 0) if retry else 0
        result = self._evaluate(0, code, attempt=attempt, root=True)
        if not result.ok and result.reason == "timeout":  # the trusted root is slow only on a busy machine
            self.store.event("evaluate", "the root timed out: evaluating it once more, with twice the time", 0)
            result = self._evaluate(0, code, attempt=attempt + 1, root=True, timeout_s=2 * self._tier().timeout_s)
        if not result.ok:
            self.store.update_node(0, status="failed", reason=result.reason, detail=result.detail, finished=time.time())
            hint = (
                "; fix the cause and run the same command again: the root is then evaluated again"
                if result.reason in ROOT_RETRY_REASONS
                else ""
            )
            raise UserError(f"the root candidate was rejected ({result.reason}): {result.detail}{hint}")
        self.store.update_node(
            0,
            status="done",
            fitness=0.0,
            val_loss=result.metrics["val_loss"],
            metrics=result.metrics,
            analysis="The root: every fitness in this run is relative to it.",
            finished=time.time(),
            **self._search_figures(0.0),
        )
        on_node(self.store.node(0))

    # -- graph steps ------------------------------------------------------------------------------
    def _build_graph(self) -> StateGraph:
        g = StateGraph(CandidateState)
        for name in ("select", "research", "engineer", "commit", "evaluate", "analyze", "record"):
            g.add_node(name, getattr(self, f"_{name}_step"))
        g.add_edge(START, "select")
        g.add_conditional_edges("select", lambda s: END if s.get("stop") else "research")
        g.add_conditional_edges("research", lambda s: END if s.get("stop") else "engineer")
        g.add_edge("engineer", "commit")
        g.add_conditional_edges(
            "commit", lambda s: "analyze" if s.get("discarded") or s["proposal"].get("failure") else "evaluate"
        )
        g.add_conditional_edges("evaluate", self._after_evaluate)
        g.add_edge("analyze", "record")
        g.add_edge("record", END)
        return g

    def _select_step(self, state: CandidateState) -> CandidateState:
        chaos.point("select")
        node_id = self._reserve_id()
        rng = random.Random(self.config.seed * 1_000_003 + node_id)  # reproducible, also across resumes
        parent, steered = self._steered_parent(rng)
        if parent is None:
            with self._lock:
                self._reserved.discard(node_id)
            return {"stop": "no finished node can be a parent"}
        refs = sampling.sample_references(self.store, parent, rng)
        self.store.add_trace(
            node_id,
            "selector",
            "offline",
            decision={
                "strategy": self.config.strategy,
                "parent": parent["id"],
                "references": [r["id"] for r in refs],
                **steered,
            },
        )
        return {
            "node_id": node_id,
            "parent_id": parent["id"],
            "references": [r["id"] for r in refs],
            "notes": self._notes(),
        }

    def _steered_parent(self, rng: random.Random) -> tuple[dict | None, dict]:
        """The strategy's parent, never a vetoed node, and PIN_SHARE of the time from a pinned subtree
        (`archlab steer`); what steering did goes into the selector's trace."""
        steering = tree_steering.read(self.store)
        where = sampling.DONE + (
            f" and id not in ({','.join(map(str, sorted(steering.vetoed)))})" if steering.vetoed else ""
        )
        steered = {"vetoed": sorted(steering.vetoed)} if steering.vetoed else {}
        if steering.pinned and rng.random() < PIN_SHARE:
            subtree = self.store.subtree(steering.pinned)
            parent = sampling.select_parent(
                self.store, self.config.strategy, rng, f"{where} and id in ({','.join(map(str, subtree))})"
            )
            if parent is not None:
                return parent, {**steered, "pinned": sorted(steering.pinned)}
        return sampling.select_parent(self.store, self.config.strategy, rng, where), steered

    def _notes(self) -> list[str]:
        """The notes `archlab steer RUN note` left since the last researcher got them: given once."""
        with self._lock:
            notes = tree_steering.read(self.store).notes
            if notes:
                self.store.set_meta(tree_steering.NOTES_USED, str(notes[-1][0]))
        return [text for _, text in notes]

    def _research_step(self, state: CandidateState) -> CandidateState:
        ctx = self.context(state)
        if self.brain.kind == "offline":
            with self._lock:  # choose and claim a design atomically, so parallel workers never pick the same one
                proposal, traces = self.brain.research(ctx)
                if proposal is not None:
                    self._claimed.add(_claim(proposal.design, proposal.code))
        else:
            proposal, traces = self.brain.research(ctx)
        self._write_traces(state["node_id"], traces, state.get("attempt", 0))
        if proposal is None:
            return {"stop": "the researcher found nothing new to try"}
        return {"proposal": proposal.model_dump()}

    def _engineer_step(self, state: CandidateState) -> CandidateState:
        if state["proposal"].get("failure"):  # the researcher gave up: record the failure
            return {}
        ctx = self.context(state)
        proposal, traces = self.brain.engineer(ctx, Proposal(**state["proposal"]), state.get("failure"))
        self._write_traces(state["node_id"], traces, state.get("attempt", 0))
        if proposal is None:
            return {"discarded": True}
        return {"proposal": proposal.model_dump(), "discarded": False}

    def _commit_step(self, state: CandidateState) -> CandidateState:
        node_id, proposal = state["node_id"], state["proposal"]
        parent = self.store.node(state["parent_id"])
        message = f"node {node_id}: {proposal.get('operator') or 'proposal'} (from node {parent['id']})\n\n{proposal['motivation']}"
        # A failed proposal has no code of its own: its commit repeats the parent's file.
        code = proposal.get("code") or self.lineage.code(parent["commit_sha"])
        sha = self.lineage.commit(node_id, code, message, parent["commit_sha"])
        chaos.point("after_commit")
        fields = dict(
            commit_sha=sha,
            motivation=proposal["motivation"],
            design=proposal.get("design"),
            operator=proposal.get("operator"),
            knowledge=proposal.get("knowledge"),
        )
        if self.store.has_node(node_id):
            self.store.update_node(node_id, **fields)
        else:
            self.store.add_node(
                id=node_id,
                parent_id=parent["id"],
                status="evaluating",
                references_used=state.get("references", []),
                **fields,
            )
        self.store.save_code(node_id, code)
        chaos.point("after_row")
        return {}

    def _evaluate_step(self, state: CandidateState) -> CandidateState:
        attempt = state.get("attempt", 0)
        result = self._evaluate(state["node_id"], state["proposal"]["code"], attempt)
        log = runner.tail(self.dir / "logs" / f"node-{state['node_id']}-{attempt}.log", 3000)
        failure = None if result.ok else {"reason": result.reason, "detail": result.detail, "log": log}
        return {"result": result.model_dump(), "attempt": state.get("attempt", 0) + 1, "failure": failure}

    def _tier(self):
        return resolve(self.config.tier, self.config.tier_overrides)

    def candidate_timeout(self) -> int:
        """A candidate's time limit: the tier's, or ROOT_TIME_FACTOR times what the root took on this
        machine when that is more (unless the user set the tier's timeout_s)."""
        tier = self._tier()
        if "timeout_s" in (self.config.tier_overrides or {}) or not self.store.has_node(0):
            return tier.timeout_s
        wall = (self.store.node(0).get("metrics") or {}).get("wall_s") or 0.0
        return max(tier.timeout_s, math.ceil(ROOT_TIME_FACTOR * wall))

    def forecast(self) -> str:
        """What the root cost and what the run will take, said once the root is measured."""
        tier, wall = self._tier(), self.store.node(0)["metrics"].get("wall_s") or 0.0
        left = max(0, self.config.max_nodes - self.store.count("status != 'evaluating'"))
        line = (
            f"root: {wall:.0f} s at the {tier.name} tier; {left} more node(s) take about {duration(wall * left / self.config.workers)}"
            f" ({self.config.workers} at a time); a candidate may take up to {self.candidate_timeout()} s"
        )
        if wall > tier.timeout_s / 2:
            line += (
                f". This machine is slow or busy for the {tier.name} tier (the root used {wall / tier.timeout_s:.0%} of its"
                f" {tier.timeout_s} s): candidates get more time, so the run takes longer; --tier micro takes seconds per node"
            )
        return line

    def _evaluate(
        self, node_id: int, code: str, attempt: int, root: bool = False, timeout_s: int | None = None
    ) -> runner.Result:
        """Evaluate a node's code once per attempt; a re-run after a crash reuses a stored result."""
        stored = [e for e in self.store.evaluations(node_id) if e["kind"] == "search"]
        if len(stored) > attempt:
            e = stored[attempt]
            return runner.Result(
                ok=bool(e["ok"]),
                reason=e["reason"],
                detail=e["detail"],
                metrics=e["metrics"],
                env=e["env"],
                curves=e.get("curves") or [],
            )
        log = self.dir / "logs" / f"node-{node_id}-{attempt}.log"
        root_node = None if root else self.store.node(0)
        limit = -1 if root else int(root_node["metrics"]["mixer_params"] * self.config.param_ratio)
        self.store.event("evaluate", f"attempt {attempt}", node_id)  # an audit trail: evaluations redone after crashes
        chaos.point_later("during_evaluation")
        options = {
            **self._options(limit, root_node),
            "tier_overrides": self.config.tier_overrides or None,
            "timeout_s": timeout_s or (None if root else self.candidate_timeout()),
            "weights_out": str(self._weights(log)),
        }
        job = executors.Job(
            key=f"node-{node_id} search {attempt}",
            source=code,
            tier=self.config.tier,
            seed=self.config.seed,
            options=options,
            log_path=str(log),
        )
        result = self.executor.evaluate(job)
        self._add_evaluation(node_id, self.config.tier, self.config.seed, result, log)
        self.store.update_node(node_id, attempts=attempt + 1)
        chaos.point("after_evaluation")
        return result

    def _options(self, param_limit: int, root_node: dict | None) -> dict:
        """runner.evaluate options from the run's config; `reference` (the root's metrics) makes an
        implausibly good result be rechecked and flagged instead of crowned."""
        return dict(
            data=self.config.data,
            param_limit=param_limit,
            allow_quadratic=self.config.allow_quadratic,
            implausible_gain=self.config.implausible_gain,
            reference=(root_node or {}).get("metrics") if root_node else None,
        )

    def _after_evaluate(self, state: CandidateState) -> str:
        if state["result"]["ok"] or state["attempt"] > self.config.repair_attempts:
            return "analyze"
        return "engineer"

    def _analyze_step(self, state: CandidateState) -> CandidateState:
        node = self.store.node(state["node_id"]) if self.store.has_node(state["node_id"]) else None
        if node is None:  # discarded before its first commit: nothing to analyse
            return {"analysis": "discarded before evaluation"}
        ctx = self.context(state)
        # A proposal that never became code (malformed, discarded) is analysed as a failure.
        failure = state["proposal"].get("failure") or {"reason": "discarded", "detail": None}
        result = state.get("result") or {"ok": False, "metrics": {}, **failure}
        text, traces = self.brain.analyze(ctx, node, result)
        self._write_traces(state["node_id"], traces, state.get("attempt", 0))
        chaos.point("during_analysis")
        judged = self.brain.judge.score(ctx, node) if getattr(self.brain, "judge", None) and result["ok"] else None
        return {"analysis": text, "judge": judged}

    def _record_step(self, state: CandidateState) -> CandidateState:
        node_id, result = state["node_id"], state.get("result")
        if not self.store.has_node(node_id) or self.store.node(node_id)["status"] != "evaluating":
            return {}
        fields = {"analysis": state.get("analysis"), "finished": time.time()}
        if result and result["ok"]:
            root = self.store.node(0)["metrics"]
            metrics = {**result["metrics"], **(state.get("judge") or {})}
            score = fitness(result["metrics"], root, self.config.speed_weight)
            if state.get("judge"):  # ASI-Arch-style: the judge's view of novelty minus complexity
                score += self.config.judge_weight * (metrics["judge_novelty"] - metrics["judge_complexity"]) / 10
            fields.update(
                status="done",
                fitness=score,
                val_loss=result["metrics"]["val_loss"],
                metrics=metrics,
                reason=None,
                detail=None,
                **self._search_figures(score),
            )
        else:
            failure = result or state["proposal"].get("failure") or {"reason": "discarded", "detail": None}
            fields.update(status="failed", reason=failure["reason"], detail=failure.get("detail"))
        self.store.update_node(node_id, **fields)
        self.store.event("node", f"node {node_id} {fields['status']}", node_id)
        self.prune_weights()
        chaos.point("after_record")
        if fields["analysis"] and hasattr(self.brain, "knowledge"):
            self.brain.knowledge.add_experience(f"node-{node_id}", fields["analysis"])
        return {}

    # -- multi-fidelity promotion ------------------------------------------------------------------
    def _search_figures(self, score: float) -> dict:
        """Node columns of a search-tier result (one seed); a promotion replaces them with its own."""
        return dict(
            search_fitness=score,
            tier=self.config.tier,
            seeds=1,
            fidelity=promotion.fidelity(self.config.tier),
            fitness_std=None,
            val_loss_std=None,
        )

    def promote(self, node_id: int) -> str:
        """Evaluate a node at the promotion tier once per seed (in parallel through the executor), record
        each seed's row as it arrives, then derive the node's figures. Idempotent: stored seeds are reused."""
        plan = self.promoter.plan
        node = self.store.node(node_id)
        code = self.lineage.code(node["commit_sha"])
        limit, reference = -1, None
        if node_id != 0:  # the budget at the promotion tier: the root's mixer there times the run's ratio
            root_rows = self.promoter.rows(0)
            limit = int(root_rows[plan.seeds[0]]["metrics"]["mixer_params"] * self.config.param_ratio)
            # the root's mean at this tier: an implausible gain over it is rechecked and flagged, as in the search
            reference = {"metrics": promotion.aggregate([root_rows[s]["metrics"] for s in plan.seeds])}
        stored = self.promoter.rows(node_id)
        futures = {}
        for seed in plan.seeds:
            if seed in stored:
                continue
            log = self.dir / "logs" / f"node-{node_id}-{plan.tier}-s{seed}.log"
            job = executors.Job(
                key=f"node-{node_id} {plan.tier} seed {seed}",
                source=code,
                tier=plan.tier,
                seed=seed,
                options={
                    **self._options(limit, reference),
                    "tier_overrides": plan.overrides or None,
                    "weights_out": str(self._weights(log)),
                },
                log_path=str(log),
            )
            self.store.event("promote", f"evaluating at {plan.tier}, seed {seed}", node_id)
            futures[self.executor.submit(job)] = (seed, log)
        for future in as_completed(futures):
            seed, log = futures[future]
            result = executors.result_of(future)
            self._add_evaluation(node_id, plan.tier, seed, result, log, kind=promotion.KIND)
        message = self.promoter.finish(node_id)
        self.store.event("promote", message, node_id)
        return message

    # -- helpers --------------------------------------------------------------------------------
    def _add_evaluation(
        self, node_id: int, tier: str, seed: int, result: runner.Result, log: Path, kind: str = "search"
    ) -> None:
        if (
            not result.ok
        ):  # a full disk kills sandboxes too: stop (the evaluation is redone on resume), don't blame the candidate
            space.ensure_free(self.dir)
        weights = self._weights(log)
        if result.ok and weights.is_file():  # what `archlab export` and `fork` load instead of training again
            result.env = {**result.env, "weights": str(weights.relative_to(self.dir))}
        self.store.add_evaluation(node_id, tier, seed, result, str(log.relative_to(self.dir)), kind=kind)

    def _weights(self, log: Path) -> Path:
        """Where an evaluation keeps its trained weights: named like its log."""
        return self.dir / WEIGHTS_DIR / f"{log.stem}.safetensors"

    def prune_weights(self) -> None:
        """Keep the search weights of the root and the `keep_weights` best nodes (promoted nodes keep theirs:
        promotions are few and verified nodes are the ones worth exporting); the rest would grow with the tree."""
        keep = (
            {0} | {n["id"] for n in self.store.leaderboard(self.config.keep_weights)}
            if self.config.keep_weights
            else {0}
        )
        for path in (self.dir / WEIGHTS_DIR).glob("node-*.safetensors"):
            match = SEARCH_WEIGHTS.fullmatch(path.name)
            if match and int(match[1]) not in keep:
                path.unlink(missing_ok=True)

    def context(self, state: CandidateState) -> Context:
        parent = self.store.node(state["parent_id"])
        parent_code = self.lineage.code(parent["commit_sha"])
        siblings = [n for n in self.store.children(parent["id"]) if n["id"] != state["node_id"]]
        root = self.store.node(0)
        tier = resolve(self.config.tier, self.config.tier_overrides)
        limit = int(root["metrics"]["mixer_params"] * self.config.param_ratio) if root.get("metrics") else None
        edits = {
            r[0]: json.loads(r[1]).get("edit")
            for r in self.store.db.execute(  # code edits: what to make again elsewhere
                "select node_id, decision from traces where role = 'researcher' and decision like '%\"edit\": {%'"
            )
        }
        history = [
            {
                "node": r[0],
                "operator": r[1],
                "fitness": r[2],
                "parent_fitness": r[3],
                "change": _change(r[4], r[5]),
                "edit": edits.get(r[0]),
            }
            for r in self.store.db.execute(
                "select c.id, c.operator, c.fitness, p.fitness, c.design, p.design from nodes c join nodes p on c.parent_id = p.id "
                "where c.status in ('done', 'failed') and p.fitness is not null"
            )
        ]
        return Context(
            node_id=state["node_id"],
            parent=parent,
            root=root,
            parent_code=parent_code,
            attempt=state.get("attempt", 0),
            limits={"param_limit": limit, "d_model": tier.d_model, "n_heads": tier.n_heads, "seq_len": tier.seq_len},
            references=[self.store.node(i) for i in state.get("references", [])],
            siblings=siblings,
            known=[
                (n["id"], novelty.change_text(n["motivation"] or "", self.lineage.code(n["commit_sha"]), parent_code))
                for n in siblings
                if n["commit_sha"] and self.brain.kind == "llm"
            ],
            diff=lambda node: self.lineage.diff(parent["commit_sha"], node["commit_sha"]),
            history=history,
            seen=lambda design: (
                json.dumps(design) in self._claimed
                or self.store.db.execute(
                    "select 1 from nodes where design = ? limit 1", [json.dumps(design)]
                ).fetchone()
                is not None
            ),
            seen_code=lambda code: (
                _claim(None, code) in self._claimed
                or self.store.db.execute("select 1 from code where code = ? limit 1", [code]).fetchone() is not None
            ),
            code=lambda node_id: self.lineage.code(self.store.node(node_id)["commit_sha"]),
            rng=random.Random(self.config.seed * 1_000_003 + state["node_id"]),
            notes=state.get("notes") or [],
        )

    def _write_traces(self, node_id: int, traces: list[Trace], attempt: int) -> None:
        # An LLM brain's calls are traced by its client (kind "llm"); these are the roles' own decisions.
        kind = "offline" if self.brain.kind == "offline" else "decision"
        for t in traces:
            self.store.add_trace(node_id, t.role, kind, attempt=attempt, **t.model_dump(exclude={"role"}))


def _claim(design: dict | None, code: str | None) -> str:
    """What a candidate in flight claims, so parallel workers never pick the same: its design, or
    for a code edit its file."""
    return json.dumps(design) if design is not None else "code:" + hashlib.sha256((code or "").encode()).hexdigest()


def _change(child: str | None, parent: str | None) -> dict | None:
    """The design fields a child changed from its parent (templated designs only)."""
    if not child or not parent:
        return None
    child, parent = json.loads(child), json.loads(parent)
    return {k: v for k, v in child.items() if parent.get(k) != v}


def experiences(store: Store) -> list[tuple[str, str]]:
    """The run's own experience: every analysis written so far, searchable like knowledge."""
    return [
        (f"node-{r[0]}", r[1]) for r in store.db.execute("select id, analysis from nodes where analysis is not null")
    ]


PIN_SHARE = 0.8  # parents drawn from a pinned subtree (`archlab steer RUN pin NODE`); the rest as the strategy says
SEARCH_WEIGHTS = re.compile(r"node-(\d+)-(\d+)\.safetensors")  # a search evaluation's (a promotion's name its tier)

# A candidate may take this many times what the root took on this machine, when that is more than the
# tier's limit: a fixed limit killed every candidate of a demo on a busy 2-core machine where the root
# alone took 448 s of the smoke tier's 480 s. (On an idle machine the root takes a tenth of it or less,
# so the tier's limit stands.)
ROOT_TIME_FACTOR = 8


# A root's failures that the run's settings or the machine caused, not its code: resuming evaluates it again.
ROOT_RETRY_REASONS = ("data", "config", "timeout", "memory")


def root_source(root: str) -> tuple[str, dict | None]:
    """The code of a root (a built-in name or a file) and its Design when it is templated."""
    if root in ROOTS:
        return render_root(root), ROOTS[root][1].model_dump()
    path = Path(root)
    if not path.is_file():
        raise UserError(f"--root {root!r} is neither a built-in root ({', '.join(ROOTS)}) nor a file")
    try:
        return path.read_text(encoding="utf-8"), None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--root {root}: cannot read it as UTF-8 text ({e})") from None
