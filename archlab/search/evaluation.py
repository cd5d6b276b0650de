"""A node's evaluations in a run: asked of the sandbox through the run's executor, stored as they arrive.

`search` evaluates a candidate once per attempt at the search tier (a re-run after a crash reuses
the stored result); `promote` evaluates a node at the promotion tier once per seed. Both build one
`EvaluationRequest` per evaluation (RunConfig.request) and keep the trained weights named like its log.
"""

import re
from concurrent.futures import as_completed
from pathlib import Path

from archlab import chaos
from archlab.sandbox import executors, runner
from archlab.sandbox.averaging import average
from archlab.sandbox.request import param_budget
from archlab.search import promotion
from archlab.tree import space
from archlab.tree.store import WEIGHTS_DIR

SEARCH_WEIGHTS = re.compile(r"node-(\d+)-(\d+)\.safetensors")  # a search evaluation's (a promotion's name its tier)


def search(
    run, node_id: int, code: str, attempt: int, root: bool = False, timeout_s: int | None = None
) -> runner.Result:
    """Evaluate a node's code once per attempt; a re-run after a crash reuses a stored result."""
    stored = [e for e in run.store.evaluations(node_id) if e["kind"] == "search"]
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
    log = run.dir / "logs" / f"node-{node_id}-{attempt}.log"
    root_node = None if root else run.store.node(0)
    limit = -1 if root else param_budget(root_node["metrics"]["mixer_params"], run.config.param_ratio)
    run.store.event("evaluate", f"attempt {attempt}", node_id)  # an audit trail: evaluations redone after crashes
    chaos.point_later("during_evaluation")
    job = executors.Job(
        key=f"node-{node_id} search {attempt}",
        request=run.config.request(
            code,
            run.config.tier,
            run.config.seed,
            log,
            weights_path(run.dir, log),
            param_limit=limit,
            reference=root_node["metrics"] if root_node else None,
            tier_overrides=run.config.tier_overrides or None,
            timeout_s=timeout_s or (None if root else run.candidate_timeout()),
        ),
    )
    result = run.executor.evaluate(job)
    add_evaluation(run, node_id, run.config.tier, run.config.seed, result, log)
    run.store.update_node(node_id, attempts=attempt + 1)
    chaos.point("after_evaluation")
    return result


def promote(run, node_id: int) -> str:
    """Evaluate a node at the promotion tier once per seed (in parallel through the executor), record
    each seed's row as it arrives, then derive the node's figures. Idempotent: stored seeds are reused."""
    plan = run.promoter.plan
    node = run.store.node(node_id)
    code = run.lineage.code(node["commit_sha"])
    limit, reference = -1, None
    if node_id != 0:  # the budget at the promotion tier: the root's mixer there times the run's ratio
        root_rows = run.promoter.rows(0)
        limit = param_budget(root_rows[plan.seeds[0]]["metrics"]["mixer_params"], run.config.param_ratio)
        # the root's mean at this tier: an implausible gain over it is rechecked and flagged, as in the search
        reference = average([root_rows[s]["metrics"] for s in plan.seeds])
    stored = run.promoter.rows(node_id)
    futures = {}
    for seed in plan.seeds:
        if seed in stored:
            continue
        log = run.dir / "logs" / f"node-{node_id}-{plan.tier}-s{seed}.log"
        job = executors.Job(
            key=f"node-{node_id} {plan.tier} seed {seed}",
            request=run.config.request(
                code,
                plan.tier,
                seed,
                log,
                weights_path(run.dir, log),
                param_limit=limit,
                reference=reference,
                tier_overrides=plan.overrides or None,
            ),
        )
        run.store.event("promote", f"evaluating at {plan.tier}, seed {seed}", node_id)
        futures[run.executor.submit(job)] = (seed, log)
    for future in as_completed(futures):
        seed, log = futures[future]
        result = executors.result_of(future)
        add_evaluation(run, node_id, plan.tier, seed, result, log, kind=promotion.KIND)
    message = run.promoter.finish(node_id)
    run.store.event("promote", message, node_id)
    return message


def search_figures(config, score: float) -> dict:
    """Node columns of a search-tier result (one seed); a promotion replaces them with its own."""
    return dict(
        search_fitness=score,
        tier=config.tier,
        seeds=1,
        fidelity=promotion.fidelity(config.tier),
        fitness_std=None,
        val_loss_std=None,
    )


def add_evaluation(
    run, node_id: int, tier: str, seed: int, result: runner.Result, log: Path, kind: str = "search"
) -> None:
    if (
        not result.ok
    ):  # a full disk kills sandboxes too: stop (the evaluation is redone on resume), don't blame the candidate
        space.ensure_free(run.dir)
    weights = weights_path(run.dir, log)
    if result.ok and weights.is_file():  # what `archlab export` and `fork` load instead of training again
        result.env = {**result.env, "weights": str(weights.relative_to(run.dir))}
    run.store.add_evaluation(node_id, tier, seed, result, str(log.relative_to(run.dir)), kind=kind)


def weights_path(run_dir: Path, log: Path) -> Path:
    """Where an evaluation keeps its trained weights: named like its log."""
    return run_dir / WEIGHTS_DIR / f"{log.stem}.safetensors"


def prune_weights(run) -> None:
    """Keep the search weights of the root and the `keep_weights` best nodes (promoted nodes keep theirs:
    promotions are few and verified nodes are the ones worth exporting); the rest would grow with the tree."""
    keep = {0} | {n["id"] for n in run.store.leaderboard(run.config.keep_weights)} if run.config.keep_weights else {0}
    for path in (run.dir / WEIGHTS_DIR).glob("node-*.safetensors"):
        match = SEARCH_WEIGHTS.fullmatch(path.name)
        if match and int(match[1]) not in keep:
            path.unlink(missing_ok=True)
