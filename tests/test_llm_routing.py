"""Several researcher models routed by value, over real HTTP against the scripted endpoint: the
bandit moves the calls to the model with the best fitness gain per dollar, every choice and
reward is a trace, and --max-cost holds with an expensive model among the arms."""

import json
import os
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

sys.path.insert(0, str(Path(__file__).parent))
import helpers  # noqa: E402
from llm_server import API_KEY, NO_CODE, Script, ScriptedServer  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # LLM runs that train (micro tier)

ARMS = ("good", "bad", "pricey")
# USD per 1M tokens. "good" and "pricey" answer alike (real edits of the parent); "bad" never gives
# code (its node fails after two re-asks, gain 0). "good" has the best gain per dollar.
PRICES = {"good": [1.0, 1.0], "bad": [3.0, 3.0], "pricey": [10.0, 10.0]}
FIRST = len(ARMS)  # every arm is tried once first


def routed_run(server, run_dir: Path, nodes: int, *extra) -> subprocess.CompletedProcess:
    """A micro-tier run whose researcher has the three models (the root first, to set the prices)."""
    args = [
        *helpers.CLI,
        "run",
        str(run_dir),
        "--tier",
        "micro",
        "--llm",
        "openai:scripted",
        "--base-url",
        server.url,
        "--researcher-model",
        ",".join(ARMS),
        "--llm-timeout",
        "5",
        "--llm-patience",
        "60",
        "--threads",
        helpers.THREADS,
    ]
    env = dict(os.environ, OPENAI_API_KEY=API_KEY)
    if not run_dir.exists():
        root = subprocess.run([*args, "--max-nodes", "1"], env=env, capture_output=True, text=True, timeout=600)
        assert root.returncode == 0, root.stderr
        config = tomllib.loads((run_dir / "archlab.toml").read_text())
        config["prices"] = PRICES  # the analyst's "scripted" is free: only the researcher's calls cost
        (run_dir / "archlab.toml").write_text(tomli_w.dumps(config))
    return subprocess.run(
        [*args, "--max-nodes", str(nodes), *extra], env=env, capture_output=True, text=True, timeout=600
    )


def rows(run_dir, sql, params=()):
    with sqlite3.connect(run_dir / "archlab.db") as db:
        return db.execute(sql, params).fetchall()


def test_the_bandit_moves_researcher_calls_to_the_best_gain_per_dollar(tmp_path):
    run_dir = tmp_path / "run"
    script = Script(by_model={"bad": NO_CODE})
    with ScriptedServer(script) as server:
        half = routed_run(server, run_dir, 7)  # stopped half-way: the resumed run goes on with what it learnt
        assert half.returncode == 0, half.stderr
        done = routed_run(server, run_dir, 14)
    assert done.returncode == 0, done.stderr
    assert "reached --max-nodes 14" in done.stdout

    choices = rows(
        run_dir,
        "select node_id, model, decision from traces where role = 'router' and kind = 'choice' order by id",
    )
    assert len(choices) == 13  # one per child: the re-asks of a node keep its model
    models = [m for _, m, _ in choices]
    assert sorted(models[:FIRST]) == sorted(ARMS)  # every arm once, first (and not again after the resume)
    later = models[FIRST:]
    share = later.count("good") / len(later)
    print(f"routing: {later.count('good')}/{len(later)} researcher choices after the first {FIRST} went to 'good'")
    assert share >= 0.7, models
    for _, model, decision in choices:  # the arms' statistics are in each choice
        d = json.loads(decision)
        assert d["role"] == "researcher" and d["model"] == model and {a["model"] for a in d["arms"]} == set(ARMS)

    # Every researcher call went to its node's chosen model; the other roles kept the --llm model.
    chosen = {n: m for n, m, _ in choices}
    calls = rows(run_dir, "select node_id, model from traces where role = 'researcher' and kind = 'llm'")
    assert calls and all(chosen[n] == m for n, m in calls)
    assert {e["model"] for e in script.log if e["role"] == "researcher"} == set(ARMS)
    assert {e["model"] for e in script.log if e["role"] != "researcher"} == {"scripted"}

    # Each recorded node has one reward trace: its gain over its parent and what its researcher cost.
    rewards = rows(run_dir, "select node_id, model, decision from traces where role = 'router' and kind = 'reward'")
    assert sorted(n for n, _, _ in rewards) == sorted(chosen)
    for node_id, model, decision in rewards:
        d = json.loads(decision)
        status, fit, parent_fit = rows(
            run_dir,
            "select n.status, n.fitness, p.fitness from nodes n join nodes p on p.id = n.parent_id where n.id = ?",
            [node_id],
        )[0]
        gain = max(0.0, fit - parent_fit) if status == "done" else 0.0
        cost = rows(
            run_dir,
            "select sum(cost) from traces where node_id = ? and role = 'researcher' and kind = 'llm'",
            [node_id],
        )[0][0]
        assert model == chosen[node_id] and d["model"] == model
        assert abs(d["gain"] - gain) < 1e-9 and abs(d["cost"] - cost) < 1e-9
        assert d["reward"] == pytest.approx(gain / cost)
    assert any(json.loads(d)["gain"] > 0 for _, _, d in rewards)
    bad = [r for r in rewards if r[1] == "bad"]
    assert bad and all(json.loads(d)["gain"] == 0 for _, _, d in bad)

    # `archlab show`, `archlab traces` and the web API list the router's traces beside the roles'.
    node = choices[0][0]
    shown = helpers.cli("show", run_dir, str(node))
    assert shown.returncode == 0, shown.stderr
    listed = helpers.cli("traces", run_dir, str(node), "--json")
    assert listed.returncode == 0, listed.stderr
    assert {(t["role"], t["kind"]) for t in json.loads(listed.stdout)} >= {("router", "choice"), ("router", "reward")}
    from starlette.testclient import TestClient

    from archlab.web.app import create_app

    with TestClient(create_app(run_dir), base_url="http://127.0.0.1") as client:
        page = client.get(f"/api/node/{node}/traces")
        assert page.status_code == 200 and '"router"' in page.text and '"reward"' in page.text


def test_max_cost_holds_with_an_expensive_model_among_the_arms(tmp_path):
    """A budget an expensive model's call does not fit: the router leaves it out, and the run stops
    before any call would pass --max-cost."""
    run_dir = tmp_path / "run"
    with ScriptedServer(Script(by_model={"bad": NO_CODE})) as server:
        capped = routed_run(server, run_dir, 20, "--max-cost", "0.04")
    assert capped.returncode == 0, capped.stderr
    assert "max-cost" in capped.stdout
    spent, priciest = rows(run_dir, "select sum(cost), max(cost) from traces where kind = 'llm'")[0]
    print(f"max-cost 0.04: spent {spent:.4f} USD")
    assert 0 < spent <= 0.04
    assert rows(run_dir, "select count(*) from nodes where status != 'evaluating'")[0][0] < 20
    # "pricey" (~0.06 USD a call here) was never called: once an answer's length is known (from the
    # second choice on), each choice says it was left out.
    assert rows(run_dir, "select count(*) from traces where kind = 'llm' and model = 'pricey'")[0][0] == 0
    arms = [json.loads(d)["arms"] for (d,) in rows(run_dir, "select decision from traces where kind = 'choice'")]
    assert len(arms) >= 2
    assert all(next(a for a in stats if a["model"] == "pricey").get("left_out") for stats in arms[1:])
