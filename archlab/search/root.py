"""The root: node 0, committed and evaluated before any candidate; every fitness is relative to it."""

import time
from pathlib import Path
from typing import Callable

from archlab.errors import UserError
from archlab.search import archive, evaluation
from archlab.templates import ROOTS, render_root

# A root's failures that the run's settings or the machine caused, not its code: resuming evaluates it again.
ROOT_RETRY_REASONS = ("data", "config", "timeout", "memory")


def ensure_root(run, on_node: Callable[[dict], None]) -> None:
    """Commit and evaluate the root unless it is done; a rejected root stops the run with its reason."""
    if run.store.has_node(0) and run.store.node(0)["status"] == "done":
        return
    code, design = root_source(run.config.root)
    sha = run.lineage.commit(0, code, f"node 0: root ({run.config.root})", None)
    if not run.store.has_node(0):
        run.store.add_node(
            id=0,
            parent_id=None,
            status="evaluating",
            operator="root",
            commit_sha=sha,
            motivation=f"the root design: {run.config.root}",
            design=design,
        )
    run.store.save_code(0, code)
    root = run.store.node(0)
    # A root rejected for its data or its tier settings was not at fault: once the user fixed the
    # cause, resuming evaluates it again (a new attempt) instead of reusing the stored failure.
    retry = root["status"] == "failed" and root["reason"] in ROOT_RETRY_REASONS
    attempt = (root["attempts"] or 0) if retry else 0
    result = evaluation.search(run, 0, code, attempt=attempt, root=True)
    if not result.ok and result.reason == "timeout":  # the trusted root is slow only on a busy machine
        run.store.event("evaluate", "the root timed out: evaluating it once more, with twice the time", 0)
        result = evaluation.search(run, 0, code, attempt=attempt + 1, root=True, timeout_s=2 * run.tier().timeout_s)
    if not result.ok:
        run.store.update_node(0, status="failed", reason=result.reason, detail=result.detail, finished=time.time())
        hint = (
            "; fix the cause and run the same command again: the root is then evaluated again"
            if result.reason in ROOT_RETRY_REASONS
            else f"; a run keeps the root it started with: fix the file and start a new run directory, "
            f"or delete {run.dir}"  # (re-running here met the stored root again, whatever the file said)
        )
        raise UserError(f"the root candidate was rejected ({result.reason}): {result.detail}{hint}")
    run.store.update_node(
        0,
        status="done",
        fitness=0.0,
        val_loss=result.metrics["val_loss"],
        metrics=result.metrics,
        analysis="The root: every fitness in this run is relative to it.",
        finished=time.time(),
        **evaluation.search_figures(run.config, 0.0),
        **archive.node_fields(result.metrics, result.metrics, code, run.tier()),
    )
    on_node(run.store.node(0))


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
