"""A run's driver: keeps `workers` candidates in flight until a budget is reached, and recovers.

Each candidate is a langgraph thread (pipeline.py) checkpointed in runs/NAME/checkpoints.db, so a
crash resumes at the step it reached; `recover` makes the store consistent with the git lineage
first. Evaluations go through an executor (archlab/sandbox/executors.py: local slots or Ray), whose
workers never write the store: the driver records what they return. With promotion on (promotion.py) a free slot first promotes a node
from the top slice of the search tier to a higher tier with several seeds (asynchronous successive
halving), else it starts a new candidate.
"""

import json
import math
import sqlite3
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from archlab.agents.llm import BudgetExceeded, EndpointDown
from archlab.config import RunConfig
from archlab.errors import UserError
from archlab.knowledge import KnowledgeError
from archlab.sandbox import executors
from archlab.sandbox.tiers import resolve
from archlab.search import archive, evaluation, lessons, pipeline, promotion, steering
from archlab.search.root import ensure_root
from archlab.text import duration
from archlab.tree import space
from archlab.tree.create import create_run
from archlab.tree.lineage import Lineage
from archlab.tree.store import Store

CHECKPOINT_FILE = "checkpoints.db"

# A candidate may take this many times what the root took on this machine, when that is more than the
# tier's limit: a fixed limit killed every candidate of a demo on a busy 2-core machine where the root
# alone took 448 s of the smoke tier's 480 s. (On an idle machine the root takes a tenth of it or less,
# so the tier's limit stands.)
ROOT_TIME_FACTOR = 8


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
        # A run directory is data: langgraph's default serializer rebuilds any module.name(arg) a
        # checkpoint names, so a doctored checkpoints.db ran a shell command on resume (red team,
        # 2026-12-05). The state is plain types only (pipeline.CandidateState): nothing else is read.
        self.checkpointer = SqliteSaver(conn, serde=JsonPlusSerializer(allowed_msgpack_modules=None))
        self.graph = pipeline.build(self).compile(checkpointer=self.checkpointer)
        self.lock = threading.Lock()  # guards node-id reservation and the offline brain's choice
        self.reserved: set[int] = set()  # node ids held by candidates in flight
        self.claimed: set[str] = set()  # designs chosen by candidates in flight (pipeline.research)
        self.executor = executor  # None: run() makes the one the config asks for, and shuts it down at the end
        self.endpoint_down: str | None = None  # why the LLM endpoint stopped the run (the CLI then exits 1)
        self.lessons_written: list = []  # what the last write_lessons wrote (the CLI says how many)
        plan = promotion.plan_of(config)
        self.promoter = promotion.Promoter(self.store, plan, config.speed_weight) if plan else None

    create = staticmethod(create_run)

    def run(self, on_node: Callable[[dict], None] = lambda node: None) -> str:
        """Grow the tree with `workers` candidates in flight until a budget is reached; returns why it stopped.

        Interrupted candidates (open langgraph threads) are resumed first. The workers are threads
        whose sandboxes are child processes; of this run's processes only this one writes the store.
        """
        self.recover()
        steering.forget_stops(self.store)  # a stop asked of an earlier driver is not one for this run
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
            self.write_lessons()  # every stop: a budget, `archlab steer stop`, Ctrl-C, a failure

    def write_lessons(self) -> None:
        """The analyst's lessons of this run into the user's store (archlab/search/lessons.py). A
        store that cannot be written costs the lessons, never the run: an event says why."""
        try:
            self.lessons_written = lessons.write(self)
        except (OSError, KnowledgeError, sqlite3.Error) as e:
            self.store.event("lessons", f"lessons not written: {e}")

    def _run(self, on_node: Callable[[dict], None]) -> str:
        # Run time counts the root, and is stored as it grows (after the root and every node), so
        # `status` and the report agree with the clock while a run is going.
        started, elapsed_before = time.monotonic(), float(self.store.get_meta("elapsed_s", "0"))

        def elapsed() -> float:
            return elapsed_before + time.monotonic() - started

        try:
            try:
                ensure_root(self, on_node)
                archive.backfill(self.store, self.tier())  # a run from an older archlab: place its nodes
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
        pending = self.store.open_threads()
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
                    self.write_lessons()  # a verified node's figures join its change's lesson
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
        stop = steering.read(self.store).stop
        if stop is None:
            return None
        self.store.set_meta(steering.STOP_USED, str(stop))
        return "stopped by `archlab steer stop` (the candidates in flight finished)"

    def _budget_reason(self, in_flight: int, elapsed: float) -> str | None:
        if self.store.finished_count() + in_flight >= self.config.max_nodes:
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

    def step(self, thread: str) -> pipeline.CandidateState:
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
        self.release_id(state.get("node_id"))
        return state

    def recover(self) -> None:
        """Make the store consistent after a crash: drop commits whose row never got written,
        and fail in-flight nodes that no checkpoint will resume."""
        tags = self.lineage.node_tags()
        for node_id in tags:
            if not self.store.has_node(node_id):
                self.lineage.drop_tag(node_id)
                self.store.event("recover", f"dropped commit of node {node_id}: its row was never written", node_id)
        resumable = set()
        for thread in self.store.open_threads():
            node_id = self.graph.get_state({"configurable": {"thread_id": thread}}).values.get("node_id")
            if node_id is not None:
                resumable.add(node_id)
                self.reserved.add(node_id)
        for node in self.store.evaluating():
            if node["id"] not in resumable and node["id"] != 0:
                self.store.update_node(node["id"], status="failed", reason="interrupted", finished=time.time())
                self.store.event("recover", "in-flight node had no checkpoint; marked interrupted", node["id"])

    def reserve_id(self) -> int:
        with self.lock:
            node_id = max([self.store.next_node_id(), *(i + 1 for i in self.reserved)])
            self.reserved.add(node_id)
            return node_id

    def release_id(self, node_id: int | None) -> None:
        with self.lock:
            self.reserved.discard(node_id)

    def promote(self, node_id: int) -> str:
        return evaluation.promote(self, node_id)

    def tier(self):
        return resolve(self.config.tier, self.config.tier_overrides)

    def candidate_timeout(self) -> int:
        """A candidate's time limit: the tier's, or ROOT_TIME_FACTOR times what the root took on this
        machine when that is more (unless the user set the tier's timeout_s)."""
        tier = self.tier()
        if "timeout_s" in (self.config.tier_overrides or {}) or not self.store.has_node(0):
            return tier.timeout_s
        wall = (self.store.node(0).get("metrics") or {}).get("wall_s") or 0.0
        return max(tier.timeout_s, math.ceil(ROOT_TIME_FACTOR * wall))

    def forecast(self) -> str:
        """What the root cost and what the run will take, said once the root is measured."""
        tier, wall = self.tier(), self.store.node(0)["metrics"].get("wall_s") or 0.0
        left = max(0, self.config.max_nodes - self.store.finished_count())
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
