"""Islands in real offline runs at the micro tier: the schedule, parents within their island,
migration at its interval, a new island when the best stalls, a killed run resuming the same
schedule, parallel workers spread over islands, and what status and the web UI show."""

import json
import signal
import subprocess
from pathlib import Path

import pytest

import helpers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def island_run(run_dir: Path, max_nodes: int, *extra, env: dict | None = None) -> subprocess.CompletedProcess:
    """`archlab run` with 3 islands and a migration every 3 finished nodes (and `extra` options)."""
    args = ["run", run_dir, "--tier", "micro", "--max-nodes", max_nodes, "--threads", helpers.THREADS]
    return subprocess.run(
        [*helpers.CLI, *map(str, [*args, "--islands", 3, "--migration-interval", 3, *extra])],
        capture_output=True,
        text=True,
        timeout=600,
        env={**helpers.cli_env(), **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def schedule(run_dir: Path) -> tuple[list, list]:
    """The islands of nodes 1.. and the migrations as (kind, from, to, finished)."""
    nodes = helpers.node_rows(run_dir)
    moves = helpers.table_rows(run_dir, "migrations")
    return [n["island"] for n in nodes[1:]], [
        (m["kind"], m["from_island"], m["to_island"], m["finished"]) for m in moves
    ]


def assert_islands_kept(run_dir: Path, islands: int) -> None:
    """With one worker node k is selected when k nodes have finished: its island is k-1 modulo the
    islands there were then, and its parent is the root, one of its island's, or a node moved to
    its island before."""
    nodes = helpers.node_rows(run_dir)
    moves = helpers.table_rows(run_dir, "migrations")
    for n in nodes[1:]:
        k = n["id"]
        count = islands + sum(m["kind"] == "seed" and m["finished"] <= k for m in moves)
        assert n["island"] == (k - 1) % count, (k, n["island"], count)
        parent = nodes[n["parent_id"]]
        moved = {m["node_id"] for m in moves if m["to_island"] == n["island"] and m["finished"] <= k}
        assert parent["id"] == 0 or parent["island"] == n["island"] or parent["id"] in moved, (k, parent["id"], moves)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("islands") / "run"
    proc = island_run(run_dir, 10)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir


def test_nodes_follow_the_schedule_and_elites_migrate_at_the_interval(uninterrupted):
    helpers.assert_finished_run(uninterrupted, 10)
    assert_islands_kept(uninterrupted, 3)
    isl, moves = schedule(uninterrupted)
    assert isl == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert moves and {m[3] for m in moves} <= {3, 6, 9}, moves  # every 3 finished nodes (the root counts)
    assert all(kind == "migrate" and to == (frm + 1) % 3 for kind, frm, to, _ in moves), moves
    evaluated = {e["node_id"] for e in helpers.table_rows(uninterrupted, "evaluations")}
    rows = helpers.table_rows(uninterrupted, "evaluations")
    assert all(sum(e["node_id"] == m for e in rows) == 1 for m in evaluated), "a migrant is not evaluated again"


def test_a_killed_island_run_resumes_the_same_schedule(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    # SIGKILL while the 6th evaluation (node 5) trains, then the same command
    killed = island_run(run_dir, 10, env={"ARCHLAB_CHAOS": "during_evaluation:6"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    interrupted = [n for n in helpers.node_rows(run_dir) if n["status"] == "evaluating"]
    assert len(interrupted) == 1 and interrupted[0]["id"] >= 4, interrupted
    helpers.kill_pids(helpers.sandbox_servers_of(run_dir))
    proc = island_run(run_dir, 10)
    assert proc.returncode == 0 and "Resuming" in proc.stdout, proc.stdout + proc.stderr
    helpers.assert_finished_run(run_dir, 10)
    assert_islands_kept(run_dir, 3)
    again = helpers.node_rows(run_dir)[interrupted[0]["id"]]
    assert (again["island"], again["parent_id"]) == (interrupted[0]["island"], interrupted[0]["parent_id"])
    mine, theirs = schedule(run_dir), schedule(uninterrupted)
    assert mine[0] == theirs[0], "the same islands per node id"
    # (which elites move depends on fitness, which includes measured speed: not the same in two runs)
    assert {m[3] for m in mine[1]} <= {3, 6, 9} and helpers.meta(run_dir)["islands:migrated_at"] == "9"
    assert helpers.meta(uninterrupted)["islands:migrated_at"] == "9"


@pytest.mark.browser
def test_a_stalled_best_starts_an_island_that_status_and_the_web_ui_show(tmp_path):
    run_dir = tmp_path / "run"
    proc = island_run(run_dir, 11, "--stagnation", 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_islands_kept(run_dir, 3)
    seeds = [m for m in helpers.table_rows(run_dir, "migrations") if m["kind"] == "seed"]
    assert seeds, "two nodes without a better best start an island"
    assert [s["to_island"] for s in seeds] == list(range(3, 3 + len(seeds))) and len(seeds) <= 3, seeds
    events = [e for e in helpers.table_rows(run_dir, "events") if e["kind"] == "island"]
    assert len(events) == len(seeds) and f"from node {seeds[0]['node_id']}" in events[0]["message"], events
    status = helpers.cli("status", run_dir, "--json")
    assert status.returncode == 0, status.stderr
    facts = json.loads(status.stdout)["islands"]
    nodes = helpers.node_rows(run_dir)
    assert [i["island"] for i in facts] == list(range(3 + len(seeds)))
    for i in facts:
        mine = [n for n in nodes if n["island"] == i["island"]]
        assert i["nodes"] == len(mine)
        done = [n["fitness"] for n in mine if n["status"] == "done"]
        assert i["best_fitness"] == (max(done) if done else None)
    assert facts[3]["seeded_from"] == seeds[0]["node_id"]
    server = helpers.Server(run_dir)
    try:
        node = nodes[-1]
        assert server.get_json(f"/api/node/{node['id']}")["island"] == node["island"]
        from playwright.sync_api import expect, sync_playwright

        with sync_playwright() as p:  # the node page, in a real headless Chromium
            browser = p.chromium.launch(executable_path=helpers.CHROMIUM, args=helpers.CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"{server.url}#/node/{node['id']}")
            expect(page.get_by_test_id("island")).to_have_text(f"island {node['island']}")
            browser.close()
    finally:
        server.stop()


def test_parallel_workers_spread_over_islands(tmp_path):
    run_dir = tmp_path / "run"
    proc = helpers.cli(
        "run", run_dir, "--tier", "micro", "--max-nodes", 7, "--threads", helpers.THREADS,
        "--islands", 2, "--workers", 2, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nodes = helpers.node_rows(run_dir)[1:]
    assert [n["island"] for n in nodes] == [(n["id"] - 1) % 2 for n in nodes]
    overlapping = [
        (a["island"], b["island"])
        for a in nodes
        for b in nodes
        if a["id"] < b["id"] and b["created"] < a["finished"]  # b was committed while a was in flight
    ]
    assert overlapping and any(x != y for x, y in overlapping), overlapping
