"""The store at scale: a synthetic run of 100,000 nodes with traces and evaluations.

Measures parent/reference sampling per strategy (target < 20 ms), `archlab status --json`
as a whole command (target < 1 s) and the web UI's tree endpoint (first and cached request).

    python bench/store_scale.py [--nodes 100000] [--quick]
"""

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from archlab.config import RunConfig
from archlab.search import sampling
from archlab.tree.lineage import Lineage
from archlab.tree.store import Store


def build(run: Path, n: int) -> None:
    run.mkdir(parents=True)
    RunConfig(tier="micro").save(run)
    Lineage(run / "repo", create=True)
    store = Store(run, create=True)
    rng = random.Random(0)
    nodes, evaluations, traces = [], [], []
    for i in range(n):
        parent = None if i == 0 else rng.randrange(max(0, i - 2000), i)
        failed = i > 0 and rng.random() < 0.2
        fit = None if failed else (0.0 if i == 0 else rng.gauss(-0.05, 0.08))
        metrics = (
            None
            if failed
            else json.dumps({"val_loss": 4.3 - fit, "tokens_per_s": rng.uniform(2e3, 2e4), "mixer_params": 21520})
        )
        design = json.dumps({"core": "delta", "variant": i})
        nodes.append(
            (
                i,
                parent,
                "failed" if failed else "done",
                "op",
                fit,
                None if failed else 4.3 - fit,
                "params" if failed else None,
                float(i),
                metrics,
                1,
                design,
                f"motivation {i}",
            )
        )
        evaluations.append(
            (i, "smoke", 0, int(not failed), json.dumps({"wall_s": 45.0}), "{}", float(i), "search", 45.0, 2, 0)
        )
        for role in ("researcher", "engineer", "analyst"):
            traces.append((i, role, "llm", 0, "m", "prompt " * 200, "response " * 100, 1500, 400, 0.01, 2.0, float(i)))
    conn = store.db.conn
    conn.execute("begin")
    conn.executemany(
        "insert into nodes (id, parent_id, status, operator, fitness, val_loss, reason, created, metrics, attempts, design, motivation) "
        "values (?,?,?,?,?,?,?,?,?,?,?,?)",
        nodes,
    )
    conn.executemany(
        "insert into evaluations (node_id, tier, seed, ok, metrics, env, created, kind, wall_s, threads, gpus) "
        "values (?,?,?,?,?,?,?,?,?,?,?)",
        evaluations,
    )
    conn.executemany(
        "insert into traces (node_id, role, kind, attempt, model, prompt, response, tokens_in, tokens_out, cost, latency_s, created) "
        "values (?,?,?,?,?,?,?,?,?,?,?,?)",
        traces,
    )
    conn.execute("commit")


def ms(fn, repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="5,000 nodes: checks that it all works")
    args = parser.parse_args()
    if args.quick:
        args.nodes = 5_000
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        started = time.perf_counter()
        build(run, args.nodes)
        print(
            f"built {args.nodes:,} nodes with {3 * args.nodes:,} traces in {time.perf_counter() - started:.1f} s "
            f"({(run / 'archlab.db').stat().st_size / 2**20:.0f} MiB)"
        )
        store = Store(run)
        rng = random.Random(1)
        for strategy in ("asi", "ucb", "evolution", "random"):
            parent_ms = ms(lambda: sampling.select_parent(store, strategy, rng))
            parent = sampling.select_parent(store, strategy, rng)
            refs_ms = ms(lambda: sampling.sample_references(store, parent, rng))
            print(
                f"select_parent[{strategy:9}] {parent_ms:7.2f} ms   sample_references {refs_ms:6.2f} ms   (target < 20 ms)"
            )
        cmd = [sys.executable, "-c", "from archlab.cli import main; main()", "status", str(run), "--json"]
        walls = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            walls.append(time.perf_counter() - started)
        print(f"archlab status --json (whole command, median of 3): {statistics.median(walls):.2f} s   (target < 1 s)")
        from starlette.testclient import TestClient

        from archlab.web.app import create_app

        with TestClient(create_app(run), base_url="http://127.0.0.1") as client:
            started = time.perf_counter()
            tree = client.get("/api/tree?limit=600").json()
            first = time.perf_counter() - started
            cached = ms(lambda: client.get("/api/tree?limit=600"), repeat=5)
        print(
            f"web /api/tree: first {first:.2f} s, cached {cached:.1f} ms, {tree['shown']} of {tree['total']:,} nodes shown"
        )


if __name__ == "__main__":
    main()
