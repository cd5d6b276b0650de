"""The discovery benchmarks' --quick modes: they run end to end on real runs and write
well-formed results (their figures are not judged here: timings and gains are the benchmarks'
business, reported in the README)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from archlab.config import RunConfig

pytestmark = [pytest.mark.bench, pytest.mark.timeout(900)]  # a benchmark's --quick mode (900 s bound)

BENCH = Path(__file__).resolve().parents[1] / "bench"


def quick(script: str, out: Path | None, *extra: str, timeout: float = 900) -> str:
    args = [sys.executable, str(BENCH / script), "--quick", *extra, *(["--out", str(out)] if out else [])]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=BENCH.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_search_efficiency_quick(tmp_path):
    out = quick("search_efficiency.py", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["strategy"] for r in results["runs"]} == {"asi-qd", "asi", "evolution", "random"}
    for r in results["runs"]:
        assert len(r["curve"]) == 2 and r["curve"] == sorted(r["curve"]) and r["best_gain"] == r["curve"][-1] >= 0
        assert 0 <= r["failed_rate"] <= 1 and r["root_val_loss"] > 0
        # the root and up to 2 candidates in the micro grid's 1,600 cells, each elite at least the floor
        assert 1 <= r["qd_cells"] <= 3 and r["qd_coverage"] == r["qd_cells"] / 1600 and r["qd_score"] >= 1.0
    assert (tmp_path / "best_so_far-deltanet.svg").read_text().startswith("<svg")
    assert "QD coverage" in out and "deltanet: asi-qd " in out and "on qd coverage" in out
    qd_run = Path(next(r["run"] for r in results["runs"] if r["strategy"] == "asi-qd"))
    selections = [t for t in helpers.table_rows(qd_run, "traces") if t["role"] == "selector"]
    assert len(selections) == 2 and all(json.loads(t["decision"])["drawn"] in ("archive", "asi") for t in selections)
    assert all(n["cell"] for n in helpers.node_rows(qd_run) if n["status"] == "done"), "each node placed when recorded"
    for baseline in ("asi", "evolution", "random"):  # the default, asi-qd, against each
        paired = results["summary"][f"deltanet/asi-qd-vs-{baseline}"]
        assert paired["seeds"] == 1 and set(paired["wins"]) == {"best_gain", "auc", "qd_coverage", "qd_score"}
        assert set(paired["wins"].values()) <= {0, 1}


def test_search_efficiency_with_islands_labels_its_rows(tmp_path):
    out = quick("search_efficiency.py", tmp_path, "--strategies", "asi", "--islands", "2")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["islands"] == 2 and [r["islands"] for r in results["runs"]] == [2]
    assert "2 islands" in out and "asi-i2" in out
    assert (tmp_path / "runs" / "deltanet-asi-i2-s0" / "archlab.toml").read_text().count("islands = 2") == 1


def test_rediscovery_quick(tmp_path):
    out = quick("rediscovery.py", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    (run,) = results["runs"]
    assert run["gap"] == run["root_val_loss"] - run["target_val_loss"]
    assert len(run["curve"]) == 2 and set(run["parts_back"]) <= {"short_conv", "output_gate", "qk_norm"}
    assert run["best_gain"] >= run["auc"] >= 0  # the best-so-far fitness curve starts at the root's 0 and never falls
    assert "gap closed" in out and "AUC" in out


def test_foreign_rediscovery_quick(tmp_path):
    """From a root outside the template family: the code operators' lineage is what comes back."""
    out = quick("rediscovery.py", tmp_path, "--foreign")
    (run,) = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert run["gap"] == run["root_val_loss"] - run["target_val_loss"] and len(run["curve"]) == 2
    assert all(
        op
        in {
            "conv",
            "gate",
            "norm",
            "skip",
            "layers",
            "ffn",
            "activation",
            "norm_swap",
            "constant",
            "ablate",
            "crossover",
        }
        for op in run["parts_back"]
    ), run["parts_back"]
    assert "root gla_ablated -> hidden answer gla_full" in out


def test_verified_improvement_quick(tmp_path):
    out = quick("verified_improvement.py", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["candidates"] == 2 and isinstance(results["verified"], bool)
    for n in results["nodes"]:
        assert len(n["val_loss"]) == 2 and n["verified"] == (n["difference"] > 2 * n["pooled_std"])
    assert "verified improvement:" in out


def test_store_scale_quick():
    out = quick("store_scale.py", None)
    assert "select_parent[asi" in out and "archlab status" in out and "web /api/tree" in out


def test_fidelity_quick(tmp_path):
    """ASI-Arch-format fixtures imported and trained at micro: every causal design is ranked against the
    published figures, the leaking one is named, and the figures agree with the run's own rows."""
    out = quick("fidelity.py", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["designs"] == 5 and results["budget"] == "1.2x the root mixer"
    assert results["trained"]["micro"] + sum(results["failures"]["micro"].values()) == 5
    assert results["failures"]["micro"].get("non_causal") == 1  # delta_net_global_pool reads the future
    rows = {r["asi_arch"]: r for r in results["vs_asi_arch"]}
    assert set(rows) == {"train_loss", "bench_average", "asi_score"}
    assert all(r["n"] == results["trained"]["micro"] and r["verdict"] == "too few nodes" for r in rows.values())
    assert (tmp_path / "scatter-micro.svg").read_text().startswith("<svg") and "| micro |" in out
    assert results["reliability"]["micro"]["seed_vs_seed_rho"] is None  # one seed: no second ranking to compare
    import sqlite3

    with sqlite3.connect(
        tmp_path / "run" / "archlab.db"
    ) as db:  # the replays are the run's: status and serve read them
        kinds = db.execute("select kind, count(*) from evaluations where tier = 'micro' group by kind").fetchall()
    assert kinds == [("replay", 6)]  # the root and the five designs, one seed
    # a variant of the tier (tuning), compared with the first out's figures design by design
    variant = tmp_path / "variant"
    quick("fidelity.py", variant, "--tier-set", "lr=0.004", "--reference", str(tmp_path / "results.json"))
    tuned = json.loads((variant / "results.json").read_text())
    assert tuned["tiers"] == ["micro (lr=0.004)"] and set(tuned["figures"]["micro (lr=0.004)"]) == set(
        results["figures"]["micro"]
    )
    assert tuned["figures"]["micro (lr=0.004)"] != results["figures"]["micro"]  # the variant trained differently
    (row,) = tuned["between_tiers"]
    assert (row["cheap"], row["dear"], row["n"]) == ("micro (lr=0.004)", "micro", results["trained"]["micro"])


def test_lessons_quick(tmp_path):
    """Run 1 writes lessons into its own store; run 2 runs with them and without (--no-lessons)."""
    out = quick("lessons.py", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    (run,) = results["runs"]
    assert len(run["with_curve"]) == len(run["without_curve"]) == 3 and run["run1_best"] == run["run1_curve"][-1]
    for k in ("with", "without"):
        assert run[f"{k}_reached"] is None or 1 <= run[f"{k}_reached"] <= 3
    assert list((tmp_path / "homes" / "deltanet-s0" / "lessons").glob("lesson-*.json"))  # run 1's lessons
    for name in ("lessons", "none"):  # run 2 trains as run 1 did (its seed), drawing anew (search seed)
        config = RunConfig.load(tmp_path / "runs" / f"deltanet-s0-run2-{name}")
        assert (config.seed, config.search_seed, config.lessons) == (0, 100, name == "lessons")
    assert "reaches it" in out
