"""Replay: re-evaluate a node's exact code, the root's too, once per seed.

Replay takes the code from the node's commit, the run's recorded configuration (data, seed,
threads, parameter budget: the root's mixer parameters at the replay tier times the run's
param_ratio) and evaluates it in the sandbox once per seed, the root too, the same way, through an
executor: the one it is given, else local slots on the run's device (one per GPU on a GPU machine).
Results go into the evaluations table beside the originals (kind "replay", the commit and
the weights file in their env), so a second replay with the same tier and seed reuses them
unless asked to re-run. Seeds start at the run's seed, so the first replay at the run's own
tier repeats the search evaluation exactly and shows whether the result reproduces.
"""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from archlab.config import CONFIG_FILE, RunConfig
from archlab.errors import UserError
from archlab.sandbox import executors
from archlab.sandbox.averaging import mean_std
from archlab.sandbox.request import default_threads, param_budget
from archlab.sandbox.tiers import TIERS
from archlab.tree.lineage import Lineage
from archlab.tree.store import WEIGHTS_DIR, Store


@dataclass
class Replayed:
    """The replay evaluations of one node at one tier, and how they compare."""

    node: int
    parent: int | None
    operator: str | None
    status: str
    runs: list[dict] = field(default_factory=list)  # one per seed: seed, ok, reason, metrics, cached, evaluation
    recorded: dict | None = None  # the node's own search evaluation: tier, seed, val_loss, env
    originals: dict = field(default_factory=dict)  # seed -> the run's evaluation at the replay tier

    def ok_runs(self) -> list[dict]:
        return [r for r in self.runs if r["ok"]]

    def values(self, key: str) -> dict[int, float]:
        return {r["seed"]: r["metrics"][key] for r in self.ok_runs() if isinstance(r["metrics"].get(key), (int, float))}


class Replayer:
    """Replays nodes of one run; every evaluation is stored in the run as kind 'replay'.

    executor: where the evaluations run (it is not shut down here); None: an executor of the kind the
    run used (local or Ray, as its config says) made for each replay, sized by its `workers`, on the run's
    device, `threads` CPU threads each (else the run's, else all the machine's up to 4)."""

    def __init__(
        self,
        run_dir: Path,
        tier: str | None = None,
        threads: int | None = None,
        force: bool = False,
        executor: executors.Executor | None = None,
    ):
        self.dir = Path(run_dir)
        if not (self.dir / CONFIG_FILE).exists():
            raise UserError(f"{run_dir} is not an archlab run (no {CONFIG_FILE})")
        self.config = RunConfig.load(self.dir)
        self.store = Store(self.dir)
        self.lineage = Lineage(self.dir / "repo")
        self.tier = tier or self.config.tier
        if self.tier not in TIERS:
            raise UserError(f"--tier {self.tier!r}: choose one of {', '.join(t for t in TIERS if t != 'check')}")
        if not TIERS[self.tier].steps:
            raise UserError(f"--tier {self.tier}: it trains nothing, so there is no val_loss to replay")
        self.threads = threads or self.config.threads
        self.force = force
        self.executor = executor
        self._own: executors.Executor | None = None  # the local slots of the replay in progress
        self.overrides = tier_overrides(self.config, self.tier)
        if not self.store.has_node(0):
            raise UserError(f"{run_dir} has no root node yet")

    # -- which nodes, which evaluations ------------------------------------------------------------
    def lineage_of(self, node_id: int) -> list[int]:
        chain, seen = [], set()
        current = self.store.node(node_id)
        while current is not None and current["id"] not in seen:
            chain.append(current["id"])
            seen.add(current["id"])
            current = self.store.node(current["parent_id"]) if current["parent_id"] is not None else None
        return chain[::-1]

    def seeds(self, count: int) -> list[int]:
        if count < 1:
            raise UserError("--seeds must be at least 1")
        return [self.config.seed + i for i in range(count)]

    def stored(self, node_id: int, seed: int) -> dict | None:
        for e in reversed(self.store.evaluations(node_id)):
            if e["kind"] == "replay" and e["tier"] == self.tier and e["seed"] == seed:
                return e
        return None

    def pending(self, node_ids: list[int], seeds: list[int]) -> int:
        """How many evaluations a replay of these nodes will run (the others are stored)."""
        return sum(1 for n in node_ids for s in seeds if self.force or self.stored(n, s) is None)

    # -- evaluating ------------------------------------------------------------------------------------
    def param_limit(self, node_id: int, root_runs: list[dict]) -> int:
        if node_id == 0:
            return -1
        if self.tier == self.config.tier and (self.store.node(0).get("metrics") or {}).get("mixer_params"):
            root_params = self.store.node(0)["metrics"]["mixer_params"]
        else:
            counted = [r["metrics"]["mixer_params"] for r in root_runs if r["ok"] and "mixer_params" in r["metrics"]]
            if not counted:
                raise UserError(
                    f"the root failed its replay at the {self.tier} tier, so there is no parameter budget to hold the nodes to"
                )
            root_params = counted[0]
        return param_budget(root_params, self.config.param_ratio)

    @contextmanager
    def slots(self, workers: int = 1) -> Iterator[executors.Executor]:
        """The executor evaluations go through: the one given, the replay's own while one is in
        progress, else the kind the run used (local slots, one per GPU where there are GPUs, or Ray
        at the run's --address) made for the call and shut down after it."""
        if self.executor is not None or self._own is not None:
            yield self.executor or self._own
            return
        # threads as runner.evaluate's own default, so a replay trains like the evaluation it repeats
        own = SimpleNamespace(
            executor=self.config.executor,
            address=self.config.address,
            device=self.config.device,
            workers=workers,
            threads=self.threads or default_threads(),
        )
        self._own = executors.make(own)
        try:
            yield self._own
        finally:
            self._own.shutdown()
            self._own = None

    def evaluate(self, node_id: int, seed: int, param_limit: int) -> dict:
        stored = None if self.force else self.stored(node_id, seed)
        if stored is not None:
            return _run_row(stored, cached=True)
        node = self.store.node(node_id)
        if not node["commit_sha"]:
            raise UserError(f"node {node_id} has no committed code to replay")
        code = self.lineage.code(node["commit_sha"])
        name = f"node-{node_id}-{self.tier}-s{seed}"
        log = self.dir / "logs" / f"replay-{name}.log"
        log.parent.mkdir(exist_ok=True)
        weights = self.dir / WEIGHTS_DIR / f"{name}.safetensors"
        # the run's rules (data, quadratic mixers) at the replay's tier; threads and device: the executor's
        request = self.config.request(
            code, self.tier, seed, log, weights, param_limit=param_limit, tier_overrides=self.overrides
        )
        with self.slots() as executor:
            result = executor.evaluate(executors.Job(key=f"replay {name}", request=request))
        result.env = {**result.env, "commit": node["commit_sha"]}
        if result.ok and weights.is_file():
            result.env["weights"] = str(weights.relative_to(self.dir))
        self.store.add_evaluation(node_id, self.tier, seed, result, str(log.relative_to(self.dir)), kind="replay")
        self.store.event(
            "replay",
            f"replayed node {node_id} at {self.tier} seed {seed}: "
            + (f"val_loss {result.metrics.get('val_loss'):.4f}" if result.ok else f"failed ({result.reason})"),
            node_id,
        )
        return _run_row(self.stored(node_id, seed), cached=False)

    def replay(
        self,
        node_ids: list[int],
        seeds: list[int],
        on_eval: Callable[[int, int, dict], None] = lambda n, s, r: None,
        workers: int = 1,
    ) -> list[Replayed]:
        """Replay the root and then each node (in the order given) once per seed; `workers`
        evaluations at once (each its own sandbox; more where the executor has more slots, e.g. one
        per GPU), the root's first since its runs set the parameter budget of the others."""
        order = [0] + [n for n in node_ids if n != 0]
        items = {}
        for n in order:  # a clear error for an unknown node before anything runs
            node = self.store.node(n)
            items[n] = Replayed(
                n,
                node["parent_id"],
                node["operator"],
                node["status"],
                recorded=self.recorded(n),
                originals=self.originals(n),
            )

        def evaluate_all(pairs: list[tuple[int, int]], limit) -> None:
            def one(pair: tuple[int, int]) -> dict:
                row = self.evaluate(*pair, limit(pair[0]))
                on_eval(*pair, row)
                return row

            with ThreadPoolExecutor(max(1, workers, executor.slots), thread_name_prefix="replay") as pool:
                for (node_id, _), row in zip(pairs, pool.map(one, pairs)):
                    items[node_id].runs.append(row)

        with self.slots(workers) as executor:
            evaluate_all([(0, seed) for seed in seeds], lambda n: -1)
            limits = {n: self.param_limit(n, items[0].runs) for n in order[1:]}
            evaluate_all([(n, seed) for n in order[1:] for seed in seeds], limits.get)
        return [items[n] for n in order]

    def originals(self, node_id: int) -> dict[int, dict]:
        """The run's own successful evaluations of the node at the replay tier (search or
        promotion), by seed: what a replay with that seed should reproduce."""
        out = {}
        for e in self.store.evaluations(node_id):
            if e["kind"] in ("search", "promotion") and e["tier"] == self.tier and e["ok"]:
                out[e["seed"]] = {
                    "kind": e["kind"],
                    "val_loss": (e["metrics"] or {}).get("val_loss"),
                    "env": e["env"] or {},
                }
        return out

    def recorded(self, node_id: int) -> dict | None:
        searches = [e for e in self.store.evaluations(node_id) if e["kind"] == "search"]
        ok = [e for e in searches if e["ok"]]
        e = (ok or searches or [None])[-1]
        if e is None:
            return None
        return {
            "tier": e["tier"],
            "seed": e["seed"],
            "ok": bool(e["ok"]),
            "val_loss": (e["metrics"] or {}).get("val_loss"),
            "env": e["env"] or {},
        }


def tier_overrides(config: RunConfig, tier: str) -> dict | None:
    """The tier fields the run changed for evaluations at this tier (its search tier or its promotions), if any."""
    if tier == config.tier and config.tier_overrides:
        return dict(config.tier_overrides)
    return dict(config.promote_overrides) if tier == config.promote_tier and config.promote_overrides else None


def _run_row(e: dict, cached: bool) -> dict:
    return {
        "seed": e["seed"],
        "ok": bool(e["ok"]),
        "reason": e["reason"],
        "detail": e["detail"],
        "metrics": e["metrics"] or {},
        "env": e["env"] or {},
        "evaluation": e["id"],
        "cached": cached,
        "log": e.get("log"),
    }


def summarise(items: list[Replayed], tier: str, seeds: list[int]) -> dict:
    """Mean ± std per node, the difference to the root paired by seed, to the parent (lineage),
    and whether the run's own evaluation reproduces."""
    by_id = {i.node: i for i in items}
    root = by_id[0]
    root_loss = root.values("val_loss")
    rows = []
    for item in items:
        loss = item.values("val_loss")
        tps = item.values("tokens_per_s")
        m, s = mean_std(loss.values())
        tm, ts = mean_std(tps.values())
        paired = [loss[k] - root_loss[k] for k in loss if k in root_loss]
        dm, ds = mean_std(paired)
        parent = by_id.get(item.parent)
        dpm = dps = None
        if parent is not None and item.node != 0:
            parent_loss = parent.values("val_loss")
            dpm, dps = mean_std([loss[k] - parent_loss[k] for k in loss if k in parent_loss])
        spread = None
        if len(loss) > 1:
            spread = max(loss.values()) - min(loss.values())
        reproduction = None
        rec = item.recorded
        same = [seed for seed in seeds if seed in loss and (item.originals.get(seed) or {}).get("val_loss") is not None]
        if same:  # the first seed the run itself evaluated at this tier
            original = item.originals[same[0]]
            reproduction = {
                "seed": same[0],
                "kind": original["kind"],
                "recorded": original["val_loss"],
                "replayed": loss[same[0]],
                "difference": loss[same[0]] - original["val_loss"],
            }
        env_changes = {}
        if rec:
            for run in item.ok_runs():
                for key in ("torch", "python", "device", "cuda"):
                    before, now = rec["env"].get(key), run["env"].get(key)
                    if before is not None and now is not None and before != now:
                        env_changes[key] = {"recorded": before, "replay": now}
        rows.append(
            {
                "node": item.node,
                "parent": item.parent,
                "operator": item.operator,
                "status": item.status,
                "ok": len(loss),
                "failed": [
                    {"seed": r["seed"], "reason": r["reason"], "detail": r["detail"]} for r in item.runs if not r["ok"]
                ],
                "val_loss": loss,
                "val_loss_mean": m,
                "val_loss_std": s,
                "spread": spread,
                "tokens_per_s_mean": tm,
                "tokens_per_s_std": ts,
                "vs_root_mean": dm if item.node != 0 else 0.0,
                "vs_root_std": ds if item.node != 0 else None,
                "vs_parent_mean": dpm,
                "vs_parent_std": dps,
                "recorded": rec["val_loss"] if rec else None,
                "reproduction": reproduction,
                "env_changes": env_changes,
                "evaluations": [r["evaluation"] for r in item.runs],
                "cached": sum(r["cached"] for r in item.runs),
            }
        )
    return {"tier": tier, "seeds": seeds, "nodes": rows}


def replay(
    run_dir: Path,
    node_id: int,
    *,
    tier: str | None = None,
    seeds: int = 3,
    lineage: bool = False,
    threads: int | None = None,
    force: bool = False,
    workers: int = 1,
    on_start: Callable[[int], None] = lambda total: None,
    on_eval: Callable[[int, int, dict], None] = lambda n, s, r: None,
) -> dict:
    """Replay a node (and with lineage=True every ancestor) beside the root; see summarise()."""
    r = Replayer(run_dir, tier, threads, force)
    r.store.node(node_id)
    nodes = r.lineage_of(node_id) if lineage else [0, node_id]
    seed_list = r.seeds(seeds)
    on_start(r.pending(list(dict.fromkeys([0] + nodes)), seed_list))
    items = r.replay(nodes, seed_list, on_eval, workers)
    facts = summarise(items, r.tier, seed_list)
    facts.update(run=str(Path(run_dir)), node=node_id, lineage=lineage, config_tier=r.config.tier)
    return facts


# -- presentation (shared by the CLI's table and anything else that prints a replay) ----------------
def _pm(mean: float | None, std: float | None, digits: int = 4, signed: bool = False) -> str:
    if mean is None:
        return "-"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text + (f"±{std:.{digits}f}" if std is not None else "")


def table(facts: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: val_loss mean±std, the paired difference to the root (and to the
    parent for a lineage), throughput, the run's own val_loss and replay minus it."""
    lineage = facts.get("lineage")
    headers = (
        ["node", "operator", "val_loss", "Δ root"]
        + (["Δ parent"] if lineage else [])
        + ["tokens/s", "recorded", "replay−rec."]
    )
    rows = []
    for n in facts["nodes"]:
        if not n["ok"]:
            reasons = ", ".join(sorted({f["reason"] or "?" for f in n["failed"]}))
            rows.append(
                [str(n["node"]), n["operator"] or "", f"failed: {reasons}", ""]
                + ([""] if lineage else [])
                + ["", _pm(n["recorded"], None), ""]
            )
            continue
        rep = n["reproduction"]
        row = [
            str(n["node"]),
            n["operator"] or "",
            _pm(n["val_loss_mean"], n["val_loss_std"]),
            "root" if n["node"] == 0 else _pm(n["vs_root_mean"], n["vs_root_std"], signed=True),
        ]
        if lineage:
            row.append("" if n["vs_parent_mean"] is None else _pm(n["vs_parent_mean"], n["vs_parent_std"], signed=True))
        row += [
            _pm(n["tokens_per_s_mean"], n["tokens_per_s_std"], digits=0),
            _pm(n["recorded"], None),
            "" if rep is None else f"{rep['difference']:+.1e}",
        ]
        rows.append(row)
    return headers, rows
