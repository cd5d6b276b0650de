"""The web UI's API on a 100,000-node tree: summarised, paged and fast enough to stay responsive.

The run is written through the real Store (the driver's own writer) with synthetic nodes, so
no training is involved; the API is exercised through Starlette's test client."""

import json
import random
import sqlite3
from pathlib import Path

import pytest

from archlab.config import RunConfig
from archlab.tree.lineage import Lineage
from archlab.tree.store import Store

N = 100_000


@pytest.fixture(scope="module")
def big_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("big") / "run"
    run.mkdir()
    RunConfig(tier="micro").save(run)
    Lineage(run / "repo", create=True)
    store = Store(run, create=True)
    rng = random.Random(0)
    start = 1_800_000_000.0
    nodes, evaluations = [], []
    for i in range(N):
        parent = None if i == 0 else (rng.randrange(max(0, i - 2000), i) if rng.random() < 0.9 else rng.randrange(i))
        failed = i and rng.random() < 0.2
        fit = None if failed else (0.0 if i == 0 else rng.gauss(-0.05, 0.08) + i * 1e-6)
        metrics = (
            None
            if failed
            else json.dumps(
                {
                    "val_loss": 4.3 - (fit or 0),
                    "tokens_per_s": rng.uniform(2e3, 2e4),
                    "mixer_params": 21520,
                    "peak_mem_mb": rng.uniform(50, 80),
                }
            )
        )
        nodes.append(
            {
                "id": i,
                "parent_id": parent,
                "status": "failed" if failed else "done",
                "operator": "op",
                "fitness": fit,
                "val_loss": None if failed else 4.3 - fit,
                "reason": "params" if failed else None,
                "created": start + i,
                "finished": start + i + 0.5,
                "metrics": metrics,
                "attempts": 1,
            }
        )
        evaluations.append(
            {
                "node_id": i,
                "tier": "micro",
                "seed": 0,
                "ok": int(not failed),
                "metrics": json.dumps({"wall_s": 5.0}),
                "env": "{}",
                "created": start + i + 0.4,
                "kind": "search",
            }
        )
    conn = store.db.conn
    conn.execute("begin")
    for table, rows in (("nodes", nodes), ("evaluations", evaluations)):
        keys = list(rows[0])
        conn.executemany(
            f"insert into {table} ({', '.join(keys)}) values ({', '.join('?' * len(keys))})",
            [tuple(r[k] for k in keys) for r in rows],
        )
    conn.execute("commit")
    conn.close()
    return run


def test_tree_api_summarises_and_pages_a_100k_tree(big_run):
    from starlette.testclient import TestClient

    from archlab.web.app import create_app

    with TestClient(create_app(big_run), base_url="http://127.0.0.1") as client:
        # Timings are measured by bench/store_scale.py, not asserted here.
        tree = client.get("/api/tree?limit=600").json()
        assert tree["total"] == N
        assert 1 <= tree["shown"] <= 600 and len(tree["nodes"]) == tree["shown"]
        assert client.get("/api/tree?limit=600").json() == tree, "an unchanged run gives the same (cached) tree"

        shown = {n["id"]: n for n in tree["nodes"]}
        assert 0 in shown and tree["best"] in shown, "the root and the best node are always shown"
        # Every shown node's ancestors are shown (the client can draw one connected tree) ...
        for n in tree["nodes"]:
            assert n["parent_id"] is None or n["parent_id"] in shown, n
        # ... and every node says how many of its children were left out.
        for n in tree["nodes"]:
            kids_shown = sum(1 for m in tree["nodes"] if m["parent_id"] == n["id"])
            assert n["hidden"] == n["children"] - kids_shown
        assert shown[0]["size"] == N  # descendants, itself included

        # The hidden children come page by page.
        parent = next(n for n in tree["nodes"] if n["hidden"] > 0)
        page = client.get(f"/api/children/{parent['id']}?offset=0&limit=50").json()
        assert page["total"] == parent["children"]
        assert len(page["nodes"]) == min(50, parent["children"])
        assert all(c["parent_id"] == parent["id"] for c in page["nodes"])

        # Plots are decimated and keep every improvement.
        plots = client.get("/api/plots").json()
        assert len(plots["best_over_time"]) <= 3000
        improvements = [p for p in plots["best_over_time"] if p["improved"]]
        bests = [p["best"] for p in improvements]
        assert bests == sorted(bests) and bests[-1] == pytest.approx(shown[tree["best"]]["fitness"])
        axes = {a["key"]: a for a in plots["pareto"]}
        assert set(axes) == {"tokens_per_s", "peak_mem_mb"}
        assert all(len(a["points"]) <= 3000 and a["front"] for a in axes.values())
        beat = (
            sqlite3.connect(big_run / "archlab.db")
            .execute("select count(*) from nodes where status = 'done' and fitness > 0")
            .fetchone()[0]
        )
        assert beat > 0 and plots["discovery"][-1]["y"] == beat

        # Any node's page answers.
        node = client.get(f"/api/node/{N - 1}").json()
        assert node["id"] == N - 1
        assert client.get("/api/node/100000").status_code == 404


def test_api_answers_for_a_run_that_has_no_node_yet(tmp_path):
    """`archlab serve` right after `archlab run` created the run: empty answers, not errors."""
    from starlette.testclient import TestClient

    from archlab.web.app import create_app

    run = tmp_path / "fresh"
    run.mkdir()
    RunConfig().save(run)
    Lineage(run / "repo", create=True)
    Store(run, create=True).db.conn.close()
    with TestClient(create_app(run), base_url="http://127.0.0.1") as client:
        assert client.get("/api/tree").json()["total"] == 0
        assert client.get("/api/run").json()["nodes"] == 0
        assert client.get("/api/live").json()["nodes"] == 0
        plots = client.get("/api/plots").json()
        assert plots["best_over_time"] == [] and plots["discovery"] == []
        assert client.get("/api/traces").json()["total"] == 0
        assert client.get("/api/node/0").status_code == 404
        assert client.get("/").status_code == 200
