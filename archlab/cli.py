"""The archlab command line: parses, calls the library, prints. Nothing else lives here."""

import errno
import json
import math
import os
import shlex
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

from archlab.config import (
    CONFIG_FILE,
    MAX_SEED,
    MAX_THREADS,
    RunConfig,
    parse_overrides,
    run_options,
    validation_message,
)
from archlab.errors import UserError
from archlab.knowledge.cli import app as knowledge_app
from archlab.sandbox.tiers import TIERS
from archlab.text import duration, printable, terminal

app = typer.Typer(
    help="archlab: autonomous architecture discovery for sequence models.\n\n"
    "Agents propose changes to a mixer layer, a sandbox trains every candidate, and a search "
    "tree in RUN_DIR (SQLite + git) keeps code, metrics, analyses and traces.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # docstring paragraphs are re-wrapped to the terminal, not cut at source line breaks
)
app.add_typer(
    knowledge_app, name="knowledge", help="The cognition base: curated entries plus your own (list, search, show)."
)
console = Console()
err = Console(stderr=True, soft_wrap=True)  # one error = one line, however long

RunDir = typer.Argument(..., metavar="RUN_DIR", help="the run directory (e.g. runs/demo)")


@app.command()
def run(
    run_dir: Path = RunDir,
    max_nodes: Optional[int] = typer.Option(
        None, "--max-nodes", min=1, help="stop at this many nodes, root included (default: 12)"
    ),
    hours: Optional[float] = typer.Option(None, "--hours", help="stop after this many hours of run time (> 0)"),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="seed for training, and for selection and proposals unless --search-seed (default: 0)"
    ),
    search_seed: Optional[int] = typer.Option(
        None,
        "--search-seed",
        help="seed for selection and proposals only: search anew with the same training seeds (default: --seed)",
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", help="a text file or folder to train on (default: built-in Python docs/sources)"
    ),
    root: Optional[str] = typer.Option(
        None, "--root", help="deltanet | gated_deltanet | deltanet_ablated | transformer | FILE"
    ),
    strategy: Optional[str] = typer.Option(
        None, "--strategy", help="parent selection: asi-qd (default) | asi | qd | ucb | evolution | random"
    ),
    islands: Optional[int] = typer.Option(
        None,
        "--islands",
        help="sub-populations taking proposals in turn, each drawing parents from its own nodes (default: 1)",
    ),
    migration_interval: Optional[int] = typer.Option(
        None,
        "--migration-interval",
        help="with --islands: every this many finished nodes each island's best moves to the next (default: 10)",
    ),
    stagnation: Optional[int] = typer.Option(
        None,
        "--stagnation",
        help="with --islands: start a new island (up to twice as many) when the best has not improved for this many nodes (default: 20)",
    ),
    tier: Optional[str] = typer.Option(
        None, "--tier", help="evaluation tier for every candidate: micro | smoke | explore | verify"
    ),
    tier_set: Optional[list[str]] = typer.Option(
        None,
        "--tier-set",
        help="override a field of the search tier, e.g. --tier-set d_model=512 (a bigger model on a GPU)",
    ),
    llm: Optional[str] = typer.Option(
        None, "--llm", help="'offline' (embedded brain, no API key) or openai:MODEL for any OpenAI-compatible endpoint"
    ),
    base_url: Optional[str] = typer.Option(
        None, "--base-url", help="endpoint URL, e.g. http://localhost:8000/v1 (vLLM, llama.cpp, Ollama)"
    ),
    api_key_env: Optional[str] = typer.Option(
        None, "--api-key-env", help="environment variable holding the API key (default: OPENAI_API_KEY)"
    ),
    trust_endpoint: bool = typer.Option(
        False,
        "--trust-endpoint",
        help="resume a run (or a fork) whose archlab.toml names another endpoint, key variable or Ray cluster without repeating them: its key goes to its URL, its candidates to its cluster",
    ),
    researcher_model: Optional[str] = typer.Option(
        None,
        "--researcher-model",
        help="model for the researcher (default: the --llm model); a,b,c: a bandit picks by gain per dollar",
    ),
    engineer_model: Optional[str] = typer.Option(
        None, "--engineer-model", help="model for the engineer; a,b,c: a bandit picks by gain per dollar"
    ),
    analyst_model: Optional[str] = typer.Option(
        None, "--analyst-model", help="model for the analyst and judge; a,b,c: a bandit picks by gain per dollar"
    ),
    max_cost: Optional[float] = typer.Option(
        None, "--max-cost", min=0.0, help="stop when LLM spend reaches this many USD (prices: archlab.toml)"
    ),
    allow_quadratic: Optional[bool] = typer.Option(
        None,
        "--allow-quadratic/--linear-only",
        help="accept candidates whose cost grows faster than linearly (default: only with --root transformer)",
    ),
    judge_weight: Optional[float] = typer.Option(
        None,
        "--judge-weight",
        min=0.0,
        help="weight of an LLM judge's novelty-minus-complexity score in fitness (default: 0, no judge)",
    ),
    code_edits: Optional[float] = typer.Option(
        None,
        "--code-edits",
        min=0.0,
        max=1.0,
        help="with --llm: the share of proposals made by the offline brain's code operators instead (local refinements of what the LLM wrote; default: 0)",
    ),
    llm_timeout: Optional[float] = typer.Option(
        None, "--llm-timeout", min=0.1, help="seconds before one LLM request is abandoned and retried (default: 120)"
    ),
    llm_patience: Optional[float] = typer.Option(
        None, "--llm-patience", min=0.0, help="seconds to wait out a failing endpoint before stopping (default: 600)"
    ),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads per evaluation"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="candidates evaluated at once (default: 1)"),
    param_ratio: Optional[float] = typer.Option(
        None, "--param-ratio", help="mixer parameter budget relative to the root (default: 1.2)"
    ),
    knowledge: Optional[list[Path]] = typer.Option(
        None, "--knowledge", help="a folder of your own knowledge entries (repeatable)"
    ),
    lessons: Optional[bool] = typer.Option(
        None,
        "--lessons/--no-lessons",
        help="weigh earlier runs' lessons from $ARCHLAB_HOME/lessons (default ~/.archlab/lessons) and write this run's there (default: on; kept on resume)",
    ),
    executor: Optional[str] = typer.Option(
        None, "--executor", help="local (slots on this machine) | ray (one Ray task per evaluation) (default: local)"
    ),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster to join: auto | HOST:PORT (default: start a private local Ray instance)"
    ),
    device: Optional[str] = typer.Option(
        None, "--device", help="cpu | cuda | auto (one slot per GPU when there are GPUs) (default: auto)"
    ),
    cpu_hours: Optional[float] = typer.Option(
        None, "--cpu-hours", help="stop when evaluations have used this many CPU-hours (> 0)"
    ),
    gpu_hours: Optional[float] = typer.Option(
        None, "--gpu-hours", help="stop when evaluations have used this many GPU-hours (> 0)"
    ),
    promote: Optional[float] = typer.Option(
        None,
        "--promote",
        min=0.0,
        max=1.0,
        help="fraction of finished candidates re-evaluated at --promote-tier with several seeds (default: 0.25 at the explore tier, else 0)",
    ),
    promote_tier: Optional[str] = typer.Option(
        None, "--promote-tier", help="smoke | explore | verify: the tier of promoted nodes (default: verify)"
    ),
    promote_seeds: Optional[int] = typer.Option(
        None, "--promote-seeds", min=1, help="seeds per promoted node (default: 3)"
    ),
    promote_set: Optional[list[str]] = typer.Option(
        None, "--promote-set", help="override a field of the promotion tier, e.g. --promote-set steps=2000"
    ),
    keep_weights: Optional[int] = typer.Option(
        None,
        "--keep-weights",
        min=0,
        help="keep the trained weights of this many best nodes, besides the root and promoted nodes, so `archlab export` of them needs no training (default: 3)",
    ),
    mirror: Optional[str] = typer.Option(
        None,
        "--mirror",
        help="mirror each finished node to tensorboard, mlflow and/or wandb (comma-separated; none: stop; files under RUN_DIR/mirror; pip install 'archlab\\[tensorboard]' etc.)",
    ),
) -> None:
    """Start a discovery run in RUN_DIR, or resume the one that is there.

    Resuming (the same command after Ctrl-C or a crash) continues from the stored tree:
    no node is lost or duplicated. Budgets (--max-nodes, --hours, --max-cost, --threads) may
    be changed on resume. With --llm openai:MODEL the key is read from $OPENAI_API_KEY (or
    --api-key-env) and is never stored.

    With --executor ray every evaluation is a Ray task (pip install 'archlab\\[ray]'); without
    --address a private Ray instance is started here. On a cluster, a --data path must be readable
    at the same place on every node (the built-in corpus ships with archlab).
    """
    # Every option but these two sets a RunConfig field (named alike, or renamed in config.OPTION_NAMES).
    # First line of the body: locals() holds the parameters only.
    options = {k: v for k, v in locals().items() if k not in ("run_dir", "trust_endpoint")}
    if mirror is not None:
        options["mirror"] = _mirror_targets(mirror)  # export's parser: config is below it
    given = run_options(options)  # the fields to set, paths absolute and checked; else one line
    from archlab.search.driver import Run
    from archlab.search.lock import hold_driver_lock

    if (run_dir / CONFIG_FILE).exists():
        stored = RunConfig.load(run_dir)
        _refuse_imported(run_dir)
        lock = hold_driver_lock(run_dir)  # held (open) until this process ends
        _check_endpoint(run_dir, stored, given, trust_endpoint)
        config = stored.resumed(given, run_dir)
        from archlab.agents.brains import check_brain_options

        check_brain_options(config)  # a key gone or an endpoint down since: say so before anything trains
        config.save(run_dir)
        store = _store(run_dir)
        open_ = len(store.evaluating())
        console.print(
            f"Resuming [bold]{run_dir}[/] ({store.count() - open_} nodes finished"
            + (f", {open_} interrupted to finish first)" if open_ else ")")
        )
    else:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UserError(f"{run_dir} exists, is not empty and is not an archlab run")
        config = RunConfig.for_new_run(given)
        from archlab.search.root import root_source

        root_source(config.root)  # fail before creating anything when the root is wrong
        from archlab.agents.brains import check_brain_options

        check_brain_options(config)  # and when --llm or --knowledge is: archlab.toml would keep them
        Run.create(run_dir, config)
        lock = hold_driver_lock(run_dir)  # noqa: F841  (held open, so locked, until this process ends)
        console.print(
            f"Started [bold]{run_dir}[/] from root [bold]{config.root}[/] ({config.tier} tier, {config.strategy} selection)"
        )
    _warn_weak_sandbox(config)
    from archlab.agents.brains import make_brain
    from archlab.search.context import experiences
    from archlab.search.lessons import started_from

    store = _store(run_dir)
    learned, unreadable = started_from(store, config)
    for line in unreadable:
        err.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
    brain = make_brain(
        config, store, experiences(store), on_wait=lambda message: err.print(message, markup=False), lessons=learned
    )
    session = Run(run_dir, config, brain)
    mirror_node = _live_mirror(run_dir, config, session.store)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[best]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("nodes", total=config.max_nodes, completed=session.store.finished_count(), best="")

        def on_node(node: dict) -> None:
            best = session.store.leaderboard(1)  # the highest-fidelity figure first (multi-fidelity promotion)
            progress.update(
                task,
                completed=session.store.finished_count(),
                best=f"best: node {best[0]['id']} fitness {best[0]['fitness']:+.4f}" if best else "",
            )
            progress.console.print(_node_line(node))
            mirror_node(node)
            if node["id"] == 0:  # the root measured this machine: what the run will take, and the limits
                progress.console.print(session.forecast(), markup=False, highlight=False)

        # SIGTERM stops like Ctrl-C, and so does SIGINT even when it was inherited ignored (a run
        # started in the background by a script: `archlab run ... &`), so `kill -INT` always stops it
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.default_int_handler)
        done = threading.Event()
        watcher = threading.Thread(
            target=_show_in_flight, args=(progress, run_dir, done), daemon=True, name="archlab-progress"
        )
        watcher.start()
        try:
            why = session.run(on_node)
        except KeyboardInterrupt:
            progress.stop()
            err.print(
                f"interrupted; run the same command to resume where it stopped: {shlex.join(['archlab', *sys.argv[1:]])}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            sys.stdout.flush()
            sys.stderr.flush()
            # Every write is already durable (SQLite statements, git objects, langgraph checkpoints),
            # so leave now instead of waiting for an LLM call in a worker thread to time out.
            os._exit(130)
        finally:
            done.set()
            watcher.join(timeout=5)
    console.print(f"Stopped: {why}. See [bold]archlab tree {run_dir}[/] and [bold]archlab status {run_dir}[/].")
    if session.lessons_written:
        console.print(
            f"{len(session.lessons_written)} lesson(s) of this run kept for later runs: archlab knowledge list --learned",
            markup=False,
            highlight=False,
        )
    if session.endpoint_down:  # not a budget reached: scripts must see the failure
        err.print(
            f"error: {session.endpoint_down}; fix it and run the same command to resume: {shlex.join(['archlab', *sys.argv[1:]])}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


def _show_in_flight(progress: Progress, run_dir: Path, stop: threading.Event) -> None:
    """A line per candidate in flight under the run's bar: stage, step/steps, the last training loss,
    seconds spent of its limit; read from the sandbox's progress files every second."""
    from archlab.commands.status import in_flight

    store, lines = _store(run_dir, reading=True), {}
    while not stop.wait(1.0):
        try:
            now = {n["id"]: n for n in in_flight(store)}
        except sqlite3.Error:  # busy or locked for a moment: the display waits, the run goes on
            continue
        for node_id in set(lines) - set(now):
            progress.remove_task(lines.pop(node_id))
        for node_id, n in sorted(now.items()):
            fields = dict(
                description=f"  node {node_id}: {n['stage']}",
                total=n.get("steps"),
                completed=n.get("step", 0),
                best=_in_flight_words(n, steps=False),
            )
            if node_id in lines:
                progress.update(lines[node_id], **fields)
            else:
                lines[node_id] = progress.add_task(**fields)
    for task in lines.values():
        progress.remove_task(task)


def _in_flight_words(n: dict, steps: bool = True) -> str:
    """'training · step 50/120 · loss 2.603 · 38 s of up to 480 s' (the stage and step where the bar shows them)."""
    words = [n["stage"]] if steps else []
    if steps and n.get("steps"):
        words.append(f"step {n['step'] + 1}/{n['steps']}")
    if n.get("loss") is not None:
        words.append(f"loss {n['loss']:.3f}")
    if "elapsed_s" in n:
        words.append(f"{n['elapsed_s']:.0f} s of up to {n['limit_s']:.0f} s")
    return " · ".join(words)


@app.command()
def status(run_dir: Path = RunDir, as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Progress of a run: nodes, failures, the best node, time spent."""
    from archlab.commands.status import run_status

    facts = run_status(_store(run_dir, reading=True), RunConfig.load(run_dir))
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    t = Table(title=f"archlab run {run_dir}", show_header=False)
    pid = facts["driver_pid"]
    if facts["imported"]:
        t.add_row("state", f"imported records ({facts['imported']} nodes): `archlab fork` a node to search from it")
    else:
        t.add_row("state", f"running (archlab run, pid {pid})" if pid else "stopped (`archlab run` resumes it)")
    for key in ("nodes", "done", "failed"):
        t.add_row(key, str(facts[key]))
    if facts["evaluating"]:
        t.add_row("evaluating" if pid else "interrupted", str(facts["evaluating"]))
    for n in facts["in_flight"]:
        t.add_row(f"  node {n['id']}", _in_flight_words(n))
    t.add_row("run time", duration(facts["elapsed_s"]))
    for key in ("root", "best"):
        if facts[key]:
            n = facts[key]
            t.add_row(
                key,
                f"node {n['id']} fitness {n['fitness']:+.4f} val_loss {n['val_loss']:.4f}  {terminal(n['operator'])}"
                if n["fitness"] is not None
                else f"node {n['id']} {n['status']} ({terminal(n['reason'])})",
            )
    t.add_row("failures", terminal(", ".join(f"{k}: {v}" for k, v in facts["failure_reasons"].items()) or "none"))
    sp = facts["spend"]
    t.add_row(
        "compute",
        f"{sp['evaluations']} evaluations, {sp['cpu_hours']:.3f} CPU-h"
        + (f" of {sp['max_cpu_hours']}" if sp["max_cpu_hours"] else "")
        + (
            f", {sp['gpu_hours']:.3f} GPU-h" + (f" of {sp['max_gpu_hours']}" if sp["max_gpu_hours"] else "")
            if sp["gpu_hours"] or sp["max_gpu_hours"]
            else ""
        )
        + (f", {sp['evaluations_per_cpu_hour']:.1f} evaluations/CPU-h" if sp["evaluations_per_cpu_hour"] else "")
        + (f", {sp['evaluations_per_gpu_hour']:.1f} evaluations/GPU-h" if sp["evaluations_per_gpu_hour"] else ""),
    )
    if facts["promotion"]:
        p = facts["promotion"]
        t.add_row(
            "promotion",
            f"top {p['fraction']:.0%} to {p['tier']} x {p['seeds']} seeds: {len(p['promoted'])} promoted"
            f" (root included), {len(p['due'])} due, {len(p['failed'])} failed",
        )
    for a in facts["tier_agreement"]:  # Spearman's rho of fitness between tiers, 95% bootstrap interval over nodes
        t.add_row(f"{a['cheap']} vs {a['dear']}", terminal(a["sentence"]))
    for i in facts["islands"] or []:
        t.add_row(
            f"island {i['island']}",
            f"{i['nodes']} nodes"
            + (f", best node {i['best_node']} fitness {i['best_fitness']:+.4f}" if i["best_node"] is not None else "")
            + (
                f", started from node {i['seeded_from']} after {i['started_after']} nodes"
                if i["seeded_from"] is not None
                else ""
            )
            + (f", {len(i['migrants'])} migrant(s)" if i["migrants"] else ""),
        )
    console.print(t)
    gpu = bool(sp["gpu_hours"])
    s = Table(
        "tier",
        "kind",
        "evals",
        "ok",
        "wall h",
        "CPU-h",
        *(("GPU-h",) if gpu else ()),
        "evals/CPU-h",
        *(("evals/GPU-h",) if gpu else ()),
        title="spend per tier",
    )
    for r in sp["by_tier"]:
        per_cpu, per_gpu = r["evaluations_per_cpu_hour"], r["evaluations_per_gpu_hour"]
        s.add_row(
            r["tier"],
            r["kind"],
            str(r["evaluations"]),
            str(r["ok"]),
            f"{r['wall_hours']:.3f}",
            f"{r['cpu_hours']:.3f}",
            *((f"{r['gpu_hours']:.3f}",) if gpu else ()),
            f"{per_cpu:.1f}" if per_cpu else "",
            *((f"{per_gpu:.1f}" if per_gpu else "",) if gpu else ()),
        )
    if sp["by_tier"]:
        console.print(s)
    if facts["leaderboard"]:
        b = Table(
            "node",
            "fitness",
            "val_loss",
            "tier",
            "operator",
            title="leaderboard (highest fidelity first, mean ± std over seeds)",
        )
        for n in facts["leaderboard"]:
            b.add_row(
                str(n["id"]),
                _pm(n["fitness"], n["fitness_std"], signed=True),
                _pm(n["val_loss"], n["val_loss_std"]),
                _tier_tag(n),
                n["operator"] or "",
            )
        console.print(b)


@app.command()
def tree(run_dir: Path = RunDir, limit: int = typer.Option(500, help="show at most this many nodes")) -> None:
    """The search tree in the terminal, with fitness per node (green: beats its parent)."""
    store = _store(run_dir, reading=True)
    nodes = store.nodes(limit=limit)
    if not nodes:
        console.print("the run has no nodes yet")
        return
    from archlab.search.lock import driver_pid

    if driver_pid(run_dir) is None:  # stopped: what it left `evaluating` resumes with the next `archlab run`
        nodes = [n | {"status": "interrupted"} if n["status"] == "evaluating" else n for n in nodes]
    by_id = {n["id"]: n for n in nodes}
    branches = {}
    root = nodes[0]
    marks = _steer_marks(store)
    top = Tree(_tree_label(root, None) + marks.get(root["id"], ""))
    branches[root["id"]] = top
    for n in nodes[1:]:
        parent = by_id.get(n["parent_id"])
        holder = branches.get(n["parent_id"], top)
        branches[n["id"]] = holder.add(_tree_label(n, parent) + marks.get(n["id"], ""))
    console.print(top)


def _steer_marks(store) -> dict[int, str]:
    """node id -> "  [pinned]" / "  [vetoed]" (rich markup) for the nodes `archlab steer` pinned or vetoed."""
    from archlab.search import steering

    held = steering.read(store)
    marks: dict[int, str] = {}
    for ids, badge in ((held.pinned, "[bold blue]\\[pinned][/]"), (held.vetoed, "[bold red]\\[vetoed][/]")):
        for n in ids:
            marks[n] = marks.get(n, "") + "  " + badge
    return marks


@app.command()
def show(
    run_dir: Path = RunDir,
    node: int = typer.Argument(..., metavar="NODE", help="node id"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """One node: motivation, diff against its parent, metrics beside parent and root, analysis."""
    from archlab.commands.status import node_report

    facts = node_report(run_dir, _store(run_dir, reading=True), node)
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    console.rule(f"node {node} — {facts['status']}" + (f" ({terminal(facts['reason'])})" if facts["reason"] else ""))
    parent = "none (the root)" if facts["parent_id"] is None else facts["parent_id"]
    console.print(
        f"[bold]parent[/] {parent}   [bold]operator[/] {terminal(facts['operator'])}   "
        f"[bold]fitness[/] {_pm(facts['fitness'], facts['fitness_std'], signed=True)} {_tier_tag(facts)}"
        + (
            f"   [bold]search fitness[/] {facts['search_fitness']:+.4f}"
            if facts["search_fitness"] is not None and facts["search_fitness"] != facts["fitness"]
            else ""
        )
    )
    for tier, promoted in (facts["promoted"] or {}).items():
        m = promoted["metrics"] or {}
        console.print(
            f"[bold]promoted to {tier}[/] seeds {', '.join(map(str, promoted['seeds']))}: "
            + (f"val_loss {_pm(m.get('val_loss'), m.get('val_loss_std'))}" if m else "")
            + "".join(f"  [red]seed {f['seed']} failed: {terminal(f['reason'])}[/]" for f in promoted["failed"])
        )
    console.print(f"[bold]motivation[/] {terminal(facts['motivation'])}")
    if facts["detail"]:
        console.print(f"[bold]failure[/] {terminal(facts['detail'])}")
    t = Table("metric", "this node", "parent", "root")
    for key, row in facts["metrics_table"].items():
        t.add_row(terminal(key), *[terminal(_fmt(v)) for v in row])
    console.print(t)
    console.print(f"[bold]analysis[/] {terminal(facts['analysis'])}")
    if facts["knowledge"]:
        console.print(f"[bold]knowledge used[/] {terminal(', '.join(facts['knowledge']))}")
    if facts["diff"]:
        console.print(Syntax(printable(facts["diff"]), "diff", theme="ansi_dark"))
    console.print(
        f"[dim]{len(facts['evaluations'])} evaluation(s), {facts['traces']} trace(s): archlab traces {run_dir} {node}[/]"
    )


@app.command()
def traces(
    run_dir: Path = RunDir,
    node: Optional[int] = typer.Argument(None, metavar="NODE", help="only this node's traces"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list with every field"),
) -> None:
    """Every decision and LLM call that produced the tree (or one node), in order."""
    store = _store(run_dir, reading=True)
    if node is not None:
        store.node(node)  # a clear error for an unknown node
    rows = store.traces(node)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    t = Table("id", "node", "role", "attempt", "kind", "model", "tokens", "latency", "response")
    for r in rows:
        tokens = f"{r['tokens_in'] or 0}+{r['tokens_out'] or 0}" if r["tokens_in"] is not None else ""
        t.add_row(
            str(r["id"]),
            str(r["node_id"]),
            terminal(r["role"]),
            str(r["attempt"] or 0),
            terminal(r["kind"]),
            terminal(r["model"] or ""),
            tokens,
            f"{r['latency_s']:.2f}s" if r["latency_s"] else "",
            terminal((r["response"] or json.dumps(r["decision"]))[:100]),
        )
    console.print(t)


PARAM_RATIO_HELP = (
    "parameter budget per block: the root DeltaNet mixer's parameter count at this width times RATIO "
    "(default 1.2, as `archlab run --param-ratio`)"
)
NO_BUDGET_HELP = "no parameter budget at all (the metrics show param_limit null)"


@app.command()
def check(
    file: Path = typer.Argument(..., metavar="FILE", help="a candidate .py file"),
    as_json: bool = typer.Option(False, "--json", help="print {ok, reason, metrics} as JSON"),
    allow_quadratic: bool = typer.Option(
        False, "--allow-quadratic", help="accept mixers whose cost grows faster than linearly"
    ),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for the sandbox"),
    param_ratio: Optional[float] = typer.Option(None, "--param-ratio", help=PARAM_RATIO_HELP),
    no_budget: bool = typer.Option(False, "--no-budget", help=NO_BUDGET_HELP),
) -> None:
    """Contract, static, causality, complexity, step() and parameter-budget checks plus one forward/backward, no training.

    The parameter budget per block is the root DeltaNet mixer's parameter count at the tier's width
    times --param-ratio (1.2 by default, as `archlab run`), or none with --no-budget; the metrics
    say which (param_limit, null for none).

    Exit code 0: accepted, 1: rejected (the reason says why), 2: usage error.
    """
    _sandbox_command(
        file,
        "check",
        as_json,
        seed=0,
        data=None,
        allow_quadratic=allow_quadratic,
        threads=threads,
        **_budget_options(param_ratio, no_budget),
    )


@app.command(name="eval")
def evaluate(
    file: Path = typer.Argument(..., metavar="FILE", help="a candidate .py file"),
    tier: str = typer.Option("smoke", "--tier", help=f"one of: {', '.join(TIERS)}"),
    seed: int = typer.Option(0, "--seed"),
    data: Optional[Path] = typer.Option(None, "--data", help="a text file or folder to train on"),
    as_json: bool = typer.Option(False, "--json", help="print {ok, reason, metrics} as JSON"),
    allow_quadratic: bool = typer.Option(
        False, "--allow-quadratic", help="accept mixers whose cost grows faster than linearly"
    ),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for the sandbox"),
    seeds: Optional[int] = typer.Option(
        None, "--seeds", min=1, help="seeds from --seed up (default: the tier's); metrics are means"
    ),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="override a tier field, e.g. --set steps=800 --set probes.steps=300"
    ),
    param_ratio: Optional[float] = typer.Option(None, "--param-ratio", help=PARAM_RATIO_HELP),
    no_budget: bool = typer.Option(False, "--no-budget", help=NO_BUDGET_HELP),
) -> None:
    """Check and train a candidate at a tier; prints its metrics.

    The parameter budget per block is the root DeltaNet mixer's parameter count at the tier's width
    times --param-ratio (1.2 by default, as `archlab run`), or none with --no-budget; the metrics
    say which (param_limit, null for none).

    Exit code 0: accepted, 1: rejected (the reason says why), 2: usage error.
    """
    if tier not in TIERS:
        raise UserError(f"--tier {tier!r}: choose one of {', '.join(TIERS)}")
    if data and not data.exists():
        raise UserError(f"--data {data}: no such file or folder")
    budget = _budget_options(param_ratio, no_budget)
    _sandbox_command(
        file,
        tier,
        as_json,
        seed=seed,
        data=str(data) if data else None,
        allow_quadratic=allow_quadratic,
        threads=threads,
        seeds=seeds or TIERS[tier].seeds,
        tier_overrides=parse_overrides(tier, overrides or []),
        **budget,
    )


def _budget_options(param_ratio: float | None, no_budget: bool) -> dict:
    """runner.evaluate's budget options (the scorer computes the limit from them, as for a run's nodes)."""
    if no_budget and param_ratio is not None:
        raise UserError("--param-ratio and --no-budget exclude each other: give one of them")
    if no_budget:
        return {"param_limit": -1}
    if param_ratio is None:
        return {}
    if not math.isfinite(param_ratio) or param_ratio <= 0:
        raise UserError(
            f"--param-ratio {param_ratio}: give a number above 0 (1.2 allows 20% more than the root's mixer)"
        )
    return {"param_ratio": param_ratio}


def _sandbox_command(file: Path, tier: str, as_json: bool, seed: int, data: str | None, **options) -> None:
    """Evaluate FILE once, as `options` (EvaluationRequest fields) say, in this process; print the verdict."""
    from archlab.sandbox import runner
    from archlab.sandbox.request import EvaluationRequest

    _bounds(threads=options.get("threads"), seed=seed)
    if not file.is_file():
        raise UserError(f"{file}: no such file")
    try:
        source = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{file}: cannot read it as UTF-8 text ({e})") from None
    request = EvaluationRequest(source=source, tier=tier, seed=seed, data=data, **options)
    if as_json:
        result = runner.evaluate(request)
    else:
        with console.status(f"evaluating {file} at the {tier} tier in the sandbox ..."):
            result = runner.evaluate(request)
    if as_json:
        print(json.dumps(result.as_json()))
    elif result.ok:
        console.print(f"[green]accepted[/] {file} ({tier})")
        for key, value in result.metrics.items():
            console.print(
                f"  {key:22} {'none (--no-budget)' if key == 'param_limit' and value is None else _fmt(value)}"
            )
    else:
        console.print(f"[red]rejected[/] {file}: {terminal(result.reason)}: {terminal(result.detail)}")
    raise typer.Exit(0 if result.ok else 1)


def _warn_weak_sandbox(config) -> None:
    """Say plainly, first thing, when candidates run without the full boundary (launch.py)."""
    if config.executor == "ray":
        return  # probed where the workers run
    from archlab.sandbox import launch

    lx = launch.launcher()
    if lx.kind != "bwrap":
        console.print(
            f"[yellow]warning:[/] the sandbox runs on the weaker '{lx.kind}' launcher here "
            f"(not bubblewrap: {terminal(launch.why_not_bwrap(lx))}); see `archlab doctor`",
            highlight=False,
        )


@app.command()
def doctor(
    run_dir: Optional[Path] = typer.Argument(
        None, metavar="RUN_DIR", help="a run directory to check (omit: only the sandbox)"
    ),
    repair: bool = typer.Option(False, "--repair", help="fix what can be fixed without losing data"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Check a run's consistency (database <-> git <-> logs <-> checkpoints) and which sandbox
    protections are active on this machine (each one is probed, not assumed).

    Exit code 0: consistent (or repaired), 1: problems remain.
    """
    from archlab.sandbox import launch

    if run_dir is not None and not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if run_dir is not None and not (run_dir / CONFIG_FILE).is_file():  # what every other command says of such a folder
        raise UserError(f"{run_dir} is not an archlab run (no {CONFIG_FILE})")
    facts = {"sandbox": launch.report(refresh=True)}
    if run_dir is not None:
        from archlab.commands.doctor import check

        facts["run"] = check(run_dir, repair=repair).as_json()
    if as_json:
        print(json.dumps(facts, indent=2))
    else:
        sandbox = facts["sandbox"]
        t = Table(
            "protection", "active", "how", title=f"archlab sandbox on this machine (launcher: {sandbox['launcher']})"
        )
        for p in sandbox["protections"]:
            t.add_row(p["name"], "[green]yes[/]" if p["active"] else "[red]no[/]", p["detail"])
        console.print(t)
        if "run" in facts:
            run = facts["run"]
            console.print(f"run {run_dir}: {', '.join(f'{k} {v}' for k, v in run['checked'].items())}")
            for f in run["findings"]:
                mark = (
                    "[green]repaired[/]"
                    if f["repaired"]
                    else "[red]error[/]"
                    if f["severity"] == "error"
                    else "[yellow]warning[/]"
                )
                console.print(f"  {mark} {f['what']}", highlight=False)
            hint = "" if repair or not run["repairable"] else " (try --repair)"  # no advice that cannot help
            console.print("[green]consistent[/]" if run["ok"] else f"[red]problems remain[/]{hint}")
    if "run" in facts and not facts["run"]["ok"]:
        raise typer.Exit(1)


# -- review and replay: serve, replay, fork, export (archlab/web, archlab/commands, archlab/export) --
@app.command()
def serve(
    run_dir: Path = RunDir,
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="TCP port (0: any free port)"),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="address to listen on (the default is only reachable from this machine)"
    ),
    allow_steer: bool = typer.Option(
        False,
        "--allow-steer",
        help="let the page pin, veto, note and stop (127.0.0.1 only; "
        "the printed URL carries a token that every steering request must show)",
    ),
) -> None:
    """Web UI of a run: tree, nodes (diff, metrics, curves, analysis, traces), plots; updates while the run goes.
    Read-only unless --allow-steer."""
    import secrets

    from archlab.tree.store import writable
    from archlab.web.server import serve as serve_ui

    _store(run_dir)
    if allow_steer and host != "127.0.0.1":
        raise UserError(f"--allow-steer serves on 127.0.0.1 only (not --host {host}): steering writes to the run")
    if allow_steer and not writable(run_dir):
        raise UserError(f"--allow-steer: this user cannot write {run_dir / 'archlab.db'}, where steering is recorded")
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(
            f"warning: --host {host} makes the run's code, traces and prompts readable from the network", markup=False
        )

    def ready(url: str) -> None:
        mode = "with steering (keep the URL to yourself: its token allows it)" if allow_steer else "read-only"
        console.print(
            f"Serving {run_dir} {mode} at {url} (Ctrl-C to stop)", markup=False, highlight=False, soft_wrap=True
        )
        console.file.flush()

    serve_ui(run_dir, host, port, on_ready=ready, steer_token=secrets.token_urlsafe(24) if allow_steer else None)


@app.command()
def replay(
    run_dir: Path = RunDir,
    node: int = typer.Argument(..., metavar="NODE", help="node id"),
    tier: Optional[str] = typer.Option(
        None, "--tier", help="micro | smoke | explore | verify (default: the run's tier)"
    ),
    seeds: int = typer.Option(3, "--seeds", min=1, help="seeds, counting up from the run's seed"),
    lineage: bool = typer.Option(False, "--lineage", help="replay every ancestor from the root to NODE"),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, help="CPU threads per evaluation (default: the run's)"
    ),
    force: bool = typer.Option(False, "--force", help="re-run evaluations that an earlier replay stored"),
    workers: int = typer.Option(
        1, "--workers", min=1, help="evaluations at once, each in its own sandbox (on a GPU they share it)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Re-evaluate a node's exact code with the run's recorded config; mean ± std against the root evaluated the same way.

    Replays are stored beside the original evaluations (kind "replay") and reused by later
    replays with the same tier and seed.
    """
    from archlab.commands.replay import replay as replay_nodes
    from archlab.commands.replay import table

    _bounds(threads=threads)
    _store(run_dir)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=as_json,
    )
    task = progress.add_task("replaying", total=None)

    def start(total: int) -> None:  # only once the arguments are checked: a mistake stays one line
        progress.update(task, total=total)
        progress.start()

    try:
        facts = replay_nodes(
            run_dir,
            node,
            tier=tier,
            seeds=seeds,
            lineage=lineage,
            threads=threads,
            force=force,
            workers=workers,
            on_start=start,
            on_eval=lambda n, s, r: None if r["cached"] else progress.advance(task),
        )
    finally:
        if progress.live.is_started:
            progress.stop()
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    headers, rows = table(facts)
    from rich import box

    t = Table(
        *headers,
        title=f"replay of node {node}: {facts['tier']} tier, seeds {', '.join(map(str, facts['seeds']))}",
        box=box.SIMPLE_HEAD,
    )
    for row in rows:
        t.add_row(*map(terminal, row))
    (console if console.is_terminal else Console(width=200)).print(t)  # a pipe gets whole numbers, not "4.46…"
    console.print(
        "[dim]val_loss: nats/byte, mean±std over seeds, lower is better; Δ: paired by seed; "
        "replay−rec.: against the run's own evaluation (same tier and seed)[/]"
    )
    for n in facts["nodes"]:
        for key, change in n["env_changes"].items():
            err.print(
                f"note: node {n['node']} was evaluated with {key} {change['recorded']}, replayed with {change['replay']}",
                markup=False,
            )


@app.command()
def fork(
    run_dir: Path = RunDir,
    node: int = typer.Argument(..., metavar="NODE", help="node id"),
    new_run: Path = typer.Argument(
        ..., metavar="NEW_RUN", help="directory of the new run (must not exist or be empty)"
    ),
    tier: Optional[str] = typer.Option(None, "--tier", help="the new run's tier (default: the source run's)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="the new run's seed (default: the source run's)"),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="asi-qd | asi | qd | ucb | evolution | random"),
    max_nodes: Optional[int] = typer.Option(None, "--max-nodes", min=1, help="the new run's node budget"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Start a new run whose root is NODE of RUN (its code, design, evaluations and traces, with a link back)."""
    from archlab.commands.fork import fork as fork_node

    _bounds(seed=seed)
    _store(run_dir)
    facts = fork_node(run_dir, node, new_run, tier=tier, seed=seed, strategy=strategy, max_nodes=max_nodes)
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    console.print(
        f"Forked [bold]{run_dir}[/] node {node} into [bold]{new_run}[/] (root: {new_run / 'root.py'}; "
        f"{facts['evaluations']} evaluation(s) copied)"
    )
    if not facts["root_ready"]:
        console.print(f"The root will be evaluated at the {facts['config']['tier']} tier when the run starts.")
    if not facts["design"] and facts["config"]["llm"] == "offline":
        err.print(
            f"note: node {node} has no template design: the offline brain will change its code with its code "
            "operators (gate, conv, norm, constants, ...); an LLM brain can propose anything",
            markup=False,
        )
    console.print(f"Grow it with: archlab run {new_run}")


@app.command(name="import")
def import_records(
    source: str = typer.Argument(
        ..., metavar="FORMAT", help="whose records: asi-arch (GAIR-NLP/ASI-Arch's published search)"
    ),
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="the new run directory (must not exist or be empty)"),
    files: list[Path] = typer.Argument(
        ...,
        metavar="FILES...",
        help="asi-arch: data/tree.json, and data/106.json for the designs' code and measurements",
    ),
    tier: str = typer.Option(
        "smoke",
        "--tier",
        help="the tier replays and forks of this run use by default (micro | smoke | explore | verify)",
    ),
    param_ratio: float = typer.Option(
        1.2,
        "--param-ratio",
        help="parameter budget of replays and forks, relative to the root (ASI-Arch's designs often exceed 1.2x at small widths)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Turn another system's published search into an archlab run to review, replay and fork.

    asi-arch: download data/tree.json and data/106.json from github.com/GAIR-NLP/ASI-Arch, then
    `archlab import asi-arch runs/asi tree.json 106.json`. Node N is ASI-Arch's index N (its root
    is node 0); the 106 designs become commits (converted to archlab's contract, each change logged
    as an `import` trace) with ASI-Arch's figures as `external` evaluations. `archlab replay RUN N`
    trains one in archlab's sandbox; `archlab fork RUN N NEW_RUN` starts a search from it.
    """
    from archlab.interop.importer import import_asi_arch

    if source != "asi-arch":
        raise UserError(f"FORMAT {source!r}: the only format so far is asi-arch")
    tree_file, programs = _asi_arch_files(files)
    try:
        config = RunConfig(tier=tier, param_ratio=param_ratio)
    except Exception as e:
        raise UserError(validation_message(e)) from None
    progress = Progress(
        TextColumn("[bold]importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=as_json,
    )
    task = progress.add_task("importing", total=None)
    with progress:
        facts = import_asi_arch(
            tree_file,
            programs,
            run_dir,
            config,
            on_node=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    console.print(
        f"Imported {facts['nodes']} nodes of ASI-Arch's tree into [bold]{run_dir}[/]: {facts['designs']} with code, "
        f"{facts['converted']} of them pass archlab's static checks"
        + (
            f", {facts['rejected']} do not (their reason is on the node: archlab show {run_dir} N)"
            if facts["rejected"]
            else ""
        )
    )
    console.print(
        f"Review: archlab tree {run_dir} | archlab serve {run_dir}.  Train one here: archlab replay {run_dir} N.  "
        f"Search from one: archlab fork {run_dir} N NEW_RUN"
    )


def _asi_arch_files(files: list[Path]) -> tuple[Path, Path | None]:
    """ASI-Arch's tree.json and 106.json in either order, told apart by their content."""
    if len(files) > 2:
        raise UserError("asi-arch takes two files at most: tree.json and 106.json")
    tree_file, programs = None, None
    for f in files:
        try:
            with open(f, encoding="utf-8") as handle:
                head = handle.read(256).lstrip()[:1]
        except OSError as e:
            raise UserError(f"cannot read {f}: {e.strerror or e}") from None
        if head == "{" and tree_file is None:
            tree_file = f
        elif head == "[" and programs is None:
            programs = f
        else:
            raise UserError(f"{f}: neither ASI-Arch's tree.json (an object) nor its 106.json (a list), or given twice")
    if tree_file is None:
        raise UserError("asi-arch needs data/tree.json (the tree); data/106.json alone has no lineage")
    return tree_file, programs


def _refuse_imported(run_dir: Path) -> None:
    """An imported run holds another system's scores: archlab does not grow it, a fork does."""
    from archlab.interop.importer import IMPORTED_META

    if _store(run_dir, reading=True).get_meta(IMPORTED_META):
        raise UserError(
            f"{run_dir} holds imported records, not an archlab search; start one from a node: "
            f"archlab fork {run_dir} NODE NEW_RUN"
        )


@app.command()
def export(
    run_dir: Path = RunDir,
    node: int = typer.Argument(..., metavar="NODE", help="node id"),
    out_dir: Path = typer.Argument(..., metavar="OUT_DIR", help="directory for the model (must not exist or be empty)"),
    tier: Optional[str] = typer.Option(None, "--tier", help="export weights trained at this tier (trains one if none)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed when a training is needed (default: the run's)"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads if a training is needed"),
    force: bool = typer.Option(False, "--force", help="write into a non-empty OUT_DIR"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Write a Hugging Face transformers model directory for NODE (loads with trust_remote_code=True)."""
    from archlab.export.hf import export as export_node

    _bounds(threads=threads, seed=seed)
    _store(run_dir)
    if as_json:
        facts = export_node(run_dir, node, out_dir, tier=tier, seed=seed, threads=threads, force=force)
        print(json.dumps(facts, indent=2))
        return
    with console.status(f"exporting node {node} ...") as status:
        done = threading.Event()
        threading.Thread(target=_show_training, args=(run_dir, status, done), daemon=True).start()
        try:
            facts = export_node(
                run_dir,
                node,
                out_dir,
                tier=tier,
                seed=seed,
                threads=threads,
                force=force,
                on_status=lambda message: (console.print(message), status.update(message)),
            )
        finally:
            done.set()
    console.print(
        f"Exported node {node} ({facts['layers']}, d_model {facts['d_model']}, weights from the {facts['tier']} tier, "
        f"seed {facts['seed']}, val_loss {facts['val_loss']:.4f}) to [bold]{out_dir}[/]"
    )
    console.print(f"Load it with AutoModelForCausalLM.from_pretrained({str(out_dir)!r}, trust_remote_code=True)")
    console.print("[yellow]Loading it runs the node's code[/] (candidate.py, written by the search): read it first.")


@app.command()
def steer(
    run_dir: Path = RunDir,
    action: str = typer.Argument(..., metavar="ACTION", help="pin NODE | veto NODE | note TEXT | stop"),
    arg: Optional[str] = typer.Argument(
        None, metavar="[NODE|TEXT]", help="the node to pin or veto, or the note's text"
    ),
) -> None:
    """Steer a run while it goes (or before it resumes): `pin NODE` draws most parents from NODE's
    subtree, `veto NODE` never expands NODE again, `note TEXT` gives a hypothesis to the next
    researcher, `stop` lets the candidates in flight finish and starts no new one (only while an
    `archlab run` drives the run). Each is kept as a trace of the run (who, when); the driver picks
    it up before its next candidate."""
    from archlab.search import steering
    from archlab.search.lock import driver_pid

    store = _store(run_dir)
    node = None
    if action in ("pin", "veto"):
        if arg is None or not arg.lstrip("-").isdigit():
            raise UserError(f"steer {action}: give a node id, e.g. archlab steer {run_dir} {action} 5")
        node = int(arg)
    elif action == "stop" and arg is not None:
        raise UserError("steer stop takes nothing after it")
    steering.add(store, action, node=node, text=arg if action == "note" else None, by=steering.who("cli"))
    said = {
        "pin": f"pinned node {node}: most parents come from its subtree from the next candidate on",
        "veto": f"vetoed node {node}: it is never a parent again",
        "note": "noted: the next researcher gets it",
        "stop": "stop asked: the candidates in flight finish, no new one starts",
    }[action]
    running = driver_pid(run_dir)
    console.print(
        said + ("" if running else f" (no `archlab run` is driving {run_dir} now: it applies when it resumes)"),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _show_training(run_dir: Path, status, stop: threading.Event) -> None:
    """While a node is trained for export: the replay's progress (its sandbox's progress file)."""
    from archlab.sandbox import progress

    while not stop.wait(1.0):
        try:
            newest = max(
                (run_dir / "logs").glob(f"replay-*.log{progress.SUFFIX}"), key=lambda f: f.stat().st_mtime, default=None
            )
        except OSError:  # one ended while we looked
            continue
        now = newest and progress.read(newest.with_name(newest.name.removesuffix(progress.SUFFIX)))
        if now:
            status.update(f"training: {_in_flight_words(now)}")


@app.command()
def report(
    run_dir: Path = RunDir,
    out: Optional[Path] = typer.Option(None, "--out", help="the report file (default: RUN_DIR/report.html, or .md)"),
    top: int = typer.Option(5, "--top", min=1, help="how many of the best nodes to show in full"),
    fmt: Optional[str] = typer.Option(
        None,
        "--format",
        help="html (one self-contained file) | md (FILE.md + FILE-plotN.svg) "
        "(default: md when --out ends in .md, else html)",
    ),
) -> None:
    """A self-contained report of a run: summary, plots, and the top nodes' motivation, metrics, diff and analysis."""
    from archlab.web.report import write_report

    facts = write_report(run_dir, out, top=top, fmt=fmt)
    extra = f" and {len(facts['plots'])} SVG plots beside it" if facts["plots"] else ""
    console.print(f"Wrote the report of [bold]{run_dir}[/] to [bold]{facts['path']}[/]{extra}")


# -- the ecosystem: mirrors to TensorBoard / MLflow / W&B, the proposal dataset (archlab/export) --------
@app.command(name="mirror")
def mirror_run(
    run_dir: Path = RunDir,
    to: str = typer.Option(..., "--to", help="tensorboard | mlflow | wandb, or several: --to tensorboard,mlflow"),
    out: Optional[Path] = typer.Option(None, "--out", help="where the mirrors go (default: RUN_DIR/mirror)"),
) -> None:
    """Mirror a run's finished nodes (figures, metrics, loss curves, events) to TensorBoard, MLflow or W&B.

    Adds the nodes a target does not hold yet, so it also completes a live `--mirror` or an
    interrupted one. MLflow: $MLFLOW_TRACKING_URI, else a SQLite store in the --out folder.
    W&B: offline in the --out folder unless $WANDB_MODE is set (upload later with `wandb sync`).
    """
    from archlab.export.mirrors import Mirror

    targets = _mirror_targets(to, "--to")
    store = _store(run_dir, reading=True)
    RunConfig.load(run_dir)  # a clear error for a folder that is not a run
    total = len(store.evaluated())
    mirror = Mirror(run_dir, targets, out)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("mirroring", total=total)
        try:
            written = mirror.sync(store, on_node=lambda node_id: progress.advance(task))
        finally:
            mirror.close()
    for target in targets:
        console.print(
            f"{target}: {written[target]} node(s) mirrored, {total - written[target]} already there; {_mirror_hint(target, mirror.out)}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )  # one line per target, whatever the width


@app.command()
def dataset(
    run_dir: Path = RunDir,
    out: Path = typer.Argument(..., metavar="OUT.jsonl", help="the file to write ('-': standard output)"),
    force: bool = typer.Option(False, "--force", help="replace an existing OUT.jsonl"),
) -> None:
    """Every proposal of a run as one JSON line (parent code, diff, traces, measured outcome), to train a proposer on.

    The schema is in README.md ("The proposal dataset"). Nodes still being evaluated are left out.
    """
    from archlab.export.dataset import write
    from archlab.tree.outputs import check_out

    store = _store(run_dir, reading=True)
    RunConfig.load(run_dir)  # a clear error for a folder that is not a run
    if str(out) == "-":
        facts = write(run_dir, store, sys.stdout)
        sys.stdout.flush()
    else:
        check_out(run_dir, out, "", (".jsonl", ".json"), "proposals.jsonl")
        if out.exists() and not force:
            raise UserError(f"{out} exists; pass --force to replace it")
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                facts = write(run_dir, store, f)
            tmp.replace(out)  # whole or not at all: a reader never sees half a file
        finally:
            tmp.unlink(missing_ok=True)
    skipped = f" ({facts['in_flight']} in flight left out)" if facts["in_flight"] else ""
    (err if str(out) == "-" else console).print(
        f"Wrote {facts['proposals']} proposal(s) of {run_dir} to {out}{skipped}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _mirror_targets(text: str, flag: str = "--mirror") -> list[str]:
    """Parse and check a --mirror/--to list; a missing package is one line, before anything is written."""
    from archlab.export.mirrors import check_installed, parse_targets

    targets = parse_targets(text, flag)
    check_installed(targets)
    return targets


def _mirror_hint(target: str, out: Path) -> str:
    if target == "tensorboard":
        return f"view: tensorboard --logdir {out / 'tensorboard'}"
    if target == "mlflow":
        where = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}"
        return f"view: mlflow ui --backend-store-uri {where}"
    return (
        f"upload: wandb sync {out / 'wandb'}/offline-run-*"
        if (os.environ.get("WANDB_MODE") or "offline") == "offline"
        else "sent to W&B"
    )


def _live_mirror(run_dir: Path, config: RunConfig, store):
    """A callback that mirrors each finished node (`archlab run --mirror`), after adding the finished
    nodes the targets lack (a resume, a --mirror added later). A target that fails is dropped with one
    warning: a mirror is a copy, the run goes on, and `archlab mirror` completes it later."""
    if not config.mirror:
        return lambda node: None
    from archlab.export.mirrors import Mirror, brief

    mirror = Mirror(run_dir, list(config.mirror))

    def dropped(target: str, e: Exception) -> None:
        err.print(
            f"warning: mirroring to {target} stopped ({brief(e)}); the run goes on; "
            f"`archlab mirror {run_dir} --to {target}` completes it later",
            markup=False,
            highlight=False,
        )

    mirror.sync(store, on_error=dropped)
    return lambda node: mirror.node(store, node, on_error=dropped)


# -- helpers ----------------------------------------------------------------------------------------
def _store(run_dir: Path, reading: bool = False):
    """The run's Store; `reading`: a command that only reads, which also works on a run this user cannot write."""
    from archlab.tree.store import Store, writable

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if reading and (run_dir / "archlab.db").is_file() and not writable(run_dir):
        from archlab.tree.readonly import ReadOnlyStore

        return ReadOnlyStore(run_dir)
    return Store(run_dir)


def _bounds(threads: int | None = None, seed: int | None = None) -> None:
    """The limits RunConfig puts on a run's --threads and --seed, for the commands without a RunConfig."""
    if threads is not None and threads > MAX_THREADS:
        raise UserError(f"--threads {threads}: at most {MAX_THREADS} threads per evaluation")
    if seed is not None and not 0 <= seed < MAX_SEED:
        raise UserError(f"--seed {seed}: choose a seed from 0 to {MAX_SEED - 1}")


def _check_endpoint(run_dir: Path, config: RunConfig, given: dict, trusted: bool) -> None:
    """A run directory may come from elsewhere (a download, a colleague, a fork of theirs): its
    archlab.toml must not send one of this user's secrets to a URL they did not choose, nor join a
    Ray cluster they did not choose (a cluster runs what it is sent, and a doctored file once made a
    resume dial one). An endpoint, key variable or cluster other than the defaults must be repeated
    on the command line, or trusted."""
    if trusted:
        return
    keys = () if config.address in (None, "auto") else ("address",)  # auto: this machine's own cluster
    keys += () if config.llm == "offline" else ("base_url", "api_key_env")
    unconfirmed = [
        k
        for k in keys
        if getattr(config, k) != RunConfig.model_fields[k].default and given.get(k) != getattr(config, k)
    ]
    if unconfirmed:
        would = []
        if {"base_url", "api_key_env"} & set(unconfirmed):
            would.append(f"send the key in ${config.api_key_env} to {config.base_url or 'the OpenAI API'}")
        if "address" in unconfirmed:
            would.append(f"join the Ray cluster at {config.address}")
        raise UserError(
            f"{run_dir}/archlab.toml would {' and '.join(would)}; if that is yours, repeat "
            + " ".join(f"--{k.replace('_', '-')} {getattr(config, k)}" for k in unconfirmed)
            + " (or pass --trust-endpoint)"
        )


def _node_line(node: dict) -> str:
    if node["status"] == "done":
        return (
            f"  node {node['id']:>4}  [green]done[/]    fitness {_pm(node['fitness'], node.get('fitness_std'), signed=True)}  "
            f"val_loss {_pm(node['val_loss'], node.get('val_loss_std'))}  {_tier_tag(node)}  {terminal(node['operator'])}"
        )
    return f"  node {node['id']:>4}  [red]{node['status']}[/]  {terminal(node['reason'])}  {terminal(node['operator'])}"


def _tree_label(node: dict, parent: dict | None) -> str:
    what = node["operator"] or ""
    if node["design"] and parent and parent.get("design"):
        changed = [f"{k}={v}" for k, v in node["design"].items() if parent["design"].get(k) != v]
        what = f"{what}: {', '.join(changed)}" if changed else what
    if node["status"] == "done":
        better = parent is None or parent.get("fitness") is None or node["fitness"] > parent["fitness"]
        colour = "green" if better else "yellow"
        return (
            f"[{colour}]node {node['id']}[/]  fitness {_pm(node['fitness'], node.get('fitness_std'), signed=True)}  "
            f"loss {_pm(node['val_loss'], node.get('val_loss_std'))}  {_tier_tag(node)}  [dim]{terminal(what)}[/]"
        )
    if node["status"] == "failed":
        return f"[red]node {node['id']}  failed: {terminal(node['reason'])}[/]  [dim]{terminal(what)}[/]"
    if node["status"] == "imported":  # another system's node: its own score, whether its code came along and passes
        score = (node.get("metrics") or {}).get("asi_score")
        parts = [f"[cyan]node {node['id']}[/]"] + ([f"ASI-Arch score {score:.4f}"] if score is not None else [])
        parts += ["[bold]code[/]"] if node["commit_sha"] else []
        parts += [f"[red]{terminal(node['reason'])}[/]"] if node["reason"] else []
        return "  ".join(parts + [f"[dim]{terminal(what)}[/]"])
    return f"[cyan]node {node['id']}  {node['status']}[/]  [dim]{terminal(what)}[/]"


def _pm(value, std, signed: bool = False) -> str:
    """A figure with its spread over seeds: +0.0123 ± 0.0040 (no ± for a single seed)."""
    if value is None:
        return ""
    text = f"{value:+.4f}" if signed else f"{value:.4f}"
    return f"{text} ± {std:.4f}" if std is not None else text


def _tier_tag(node: dict) -> str:
    """Where a node's figures come from: [micro] for one search evaluation, [verify x3] for a promoted mean."""
    if not node.get("tier"):
        return ""
    seeds = node.get("seeds") or 1
    return f"\\[{node['tier']}{f' x{seeds}' if seeds > 1 else ''}]"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)


def _os_error(e: OSError) -> str:
    """One line per kind of OSError: only a full disk is fixed by freeing space and retrying."""
    import git

    where = f": {e.filename}" if e.filename else ""
    if isinstance(e, git.exc.NoSuchPathError):
        return (
            f"the run's git repository {e} is missing; `archlab doctor RUN_DIR --repair` rebuilds it "
            f"from the database's copy of every node's code"
        )
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({e.strerror}{where}); nothing stored so far is lost: free space and run the command again"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where} ({e.strerror})"
    if e.errno == errno.EISDIR:
        return f"{e.filename or 'the path'} is a directory, not a file"
    if e.errno == errno.ENOENT:
        return f"no such file or directory{where}"
    return str(e)


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except UserError as e:
        err.print(f"error: {e}", markup=False, highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except OSError as e:
        err.print(f"error: {_os_error(e)}", markup=False, highlight=False)
        sys.exit(1)
    except sqlite3.OperationalError as e:
        hint = "free disk space" if "full" in str(e) else "is another archlab process writing this run?"
        err.print(f"error: database: {e} ({hint}); nothing stored so far is lost", markup=False, highlight=False)
        sys.exit(1)
    except sqlite3.DatabaseError as e:  # a damaged file, not a bug of ours: say so, and where recovery starts
        err.print(
            f"error: a database of the run is damaged ({e}); nothing was changed: "
            f"`archlab doctor RUN_DIR` says how to recover it",
            markup=False,
            highlight=False,
        )
        sys.exit(1)
    except Exception as e:  # a bug of ours: still one line, the traceback on request
        if os.environ.get("ARCHLAB_DEBUG"):
            raise
        err.print(
            f"internal error: {type(e).__name__}: {e} (set ARCHLAB_DEBUG=1 for the traceback)",
            markup=False,
            highlight=False,
        )
        sys.exit(3)
