"""Shared by the discovery benchmarks (search_efficiency.py, rediscovery.py): start real
`archlab run`s with a given config, run several at once, read what they found, draw curves.

A run here is an ordinary run directory: `archlab status DIR` / `archlab serve DIR` work on it.
"""

import json
import os
import sqlite3
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from archlab.config import RunConfig
from archlab.sandbox.tiers import resolve
from archlab.search import archive
from archlab.search.driver import Run
from archlab.tree.readonly import ReadOnlyStore
from archlab.web.report import chart

sys.stdout.reconfigure(line_buffering=True)  # these run for an hour: show progress even when redirected to a file
ARCHLAB = [sys.executable, "-c", "from archlab.cli import main; main()"]
COLOURS = {
    "asi-qd": "#059669",
    "qd": "#db2777",
    "asi": "#2563eb",
    "ucb": "#7c3aed",
    "evolution": "#d97706",
    "random": "#6b7280",
}


def archlab(*args, timeout: float | None = None, home: Path | None = None) -> subprocess.CompletedProcess:
    """`archlab ARGS`; `home`: its $ARCHLAB_HOME (where lessons are read and written)."""
    env = {**os.environ, **({"ARCHLAB_HOME": str(home)} if home else {})}
    proc = subprocess.run([*ARCHLAB, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"archlab {' '.join(map(str, args))} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc


def search(run_dir: Path, evaluations: int, config: dict, home: Path | None = None) -> dict:
    """One run of `evaluations` candidates (the root not counted) with the given RunConfig fields;
    resumes a run directory that is already there. Returns its history. `home`: the $ARCHLAB_HOME
    whose lessons it weighs and where it writes its own; by default one of its own beside it, so
    that no run of a benchmark learns from another (or from the user's) unless asked to."""
    if not (run_dir / "archlab.toml").exists():
        Run.create(run_dir, RunConfig(**config))
    print(f"{run_dir}: searching (watch it with: archlab status {run_dir})")
    archlab(
        "run",
        run_dir,
        "--max-nodes",
        evaluations + 1,
        "--threads",
        1,
        home=home or run_dir.with_name(f"{run_dir.name}.home"),
    )
    found = history(run_dir)
    print(f"{run_dir}: done in {found['wall_s'] / 60:.1f} min")
    return {"run": str(run_dir), **found}


def history(run_dir: Path) -> dict:
    """The root and the candidates in the order they finished, and the run's wall time (summed
    over every `archlab run` of it, so a resumed run counts its earlier sessions too)."""
    with sqlite3.connect(run_dir / "archlab.db") as db:
        db.row_factory = sqlite3.Row
        rows = [
            dict(r)
            for r in db.execute(
                "select id, parent_id, status, fitness, val_loss, operator, design, reason, metrics from nodes "
                "where status != 'evaluating' order by finished, id"
            )
        ]
        elapsed = db.execute("select value from meta where key = 'elapsed_s'").fetchone()
    for r in rows:
        metrics = json.loads(r.pop("metrics") or "{}")
        r["flagged"] = bool(metrics.get("flagged"))
        r["design"] = json.loads(r["design"]) if r["design"] else None
    root = next(r for r in rows if r["id"] == 0)
    return {
        "root": root,
        "candidates": [r for r in rows if r["id"] != 0],
        "wall_s": float(elapsed[0]) if elapsed else 0.0,
    }


def quality_diversity(run_dir: Path) -> dict:
    """The finished tree's QD coverage and QD-score, with archlab's own archive (the same fixed
    bins whatever the strategy: archlab/search/archive.py)."""
    config = RunConfig.load(run_dir)
    store = ReadOnlyStore(run_dir)
    try:
        found = archive.load(store, resolve(config.tier, config.tier_overrides))
    finally:
        store.close()
    return {"qd_coverage": found.coverage, "qd_score": found.qd_score, "qd_cells": len(found.elites)}


def best_so_far(candidates: list[dict], start: float = 0.0) -> list[float]:
    """The best fitness after each evaluation (the root's 0 before any)."""
    curve, best = [], start
    for c in candidates:
        if c["status"] == "done" and c["fitness"] is not None:
            best = max(best, c["fitness"])
        curve.append(best)
    return curve


def run_all(jobs: list[tuple], workers: int) -> list:
    """Run `fn(*args)` for every (fn, *args) in jobs, `workers` at a time; results in job order."""
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(job[0], *job[1:]) for job in jobs]
        return [f.result() for f in futures]


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], digits: int = 4) -> str:
    m, s = mean_std(values)
    return f"{m:+.{digits}f} ± {s:.{digits}f}"


def curves_svg(title: str, y_label: str, curves: dict[str, list[list[float]]]) -> str:
    """Mean curve per strategy over seeds, as a standalone SVG."""
    series = []
    for name, per_seed in curves.items():
        n = min(len(c) for c in per_seed)
        mean = [statistics.fmean(c[i] for c in per_seed) for i in range(n)]
        series.append(
            {
                "label": name,
                "type": "line",
                "markers": True,
                "colour": COLOURS.get(name, "#111827"),
                "points": [{"x": i + 1, "y": y} for i, y in enumerate(mean)],
            }
        )
    return chart(title, "evaluations", y_label, series).standalone()
