"""Multi-fidelity promotion: the asynchronous successive-halving rule on a real store, and a real
run whose top slice is re-evaluated at a higher tier with several seeds."""

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

from archlab.commands.doctor import check
from archlab.sandbox.averaging import average
from archlab.sandbox.runner import Result
from archlab.search.fitness import fitness
from archlab.search.promotion import KIND, Plan, Promoter
from archlab.tree.store import Store

sys.path.insert(0, str(Path(__file__).parent))
import helpers  # noqa: E402


def metrics(val_loss: float, tokens_per_s: float = 1000.0) -> dict:
    return {
        "val_loss": val_loss,
        "val_bpb": val_loss / math.log(2),
        "tokens_per_s": tokens_per_s,
        "mixer_params": 1000,
        "wall_s": 2.0,
    }


def test_the_rule_promotes_the_root_first_then_the_top_slice(tmp_path):
    store = Store(tmp_path, create=True)
    search = {1: 0.30, 2: -0.10, 3: 0.20, 4: 0.05, 5: 0.10, 6: -0.20}  # node -> search fitness
    store.add_node(
        id=0, parent_id=None, status="done", fitness=0.0, search_fitness=0.0, tier="micro", seeds=1, fidelity=1
    )
    for node_id, score in search.items():
        store.add_node(
            id=node_id,
            parent_id=0,
            status="done",
            fitness=score,
            search_fitness=score,
            tier="micro",
            seeds=1,
            fidelity=1,
        )
    store.add_node(id=7, parent_id=0, status="failed", reason="nan")
    promoter = Promoter(store, Plan(0.5, "smoke", [0, 1]), speed_weight=0.05)

    assert promoter.due() == [1, 3, 5]  # the best floor(0.5 x 6) by search fitness; failed nodes do not count
    assert promoter.next(set()) == 0, "the root is promoted before anyone is compared with it"
    assert promoter.next({0}) is None, "while the root's promotion runs, a free slot starts a new candidate"
    for seed, loss in ((0, 4.0), (1, 4.2)):
        store.add_evaluation(0, "smoke", seed, Result(ok=True, metrics=metrics(loss)), None, kind=KIND)
    assert promoter.state(0) == "partial"
    promoter.finish(0)
    root = store.node(0)
    assert (root["tier"], root["seeds"], root["fitness"], root["fidelity"]) == ("smoke", 2, 0.0, 2)
    assert math.isclose(root["val_loss"], 4.1) and math.isclose(root["val_loss_std"], statistics.stdev([4.0, 4.2]))
    assert promoter.next(set()) == 1 and promoter.next({1}) == 3

    # node 1: both seeds better than the root's, paired by seed
    runs = [metrics(3.8, 900.0), metrics(4.1, 1100.0)]
    for seed, m in enumerate(runs):
        store.add_evaluation(1, "smoke", seed, Result(ok=True, metrics=m), None, kind=KIND)
    first = promoter.finish(1)
    assert promoter.finish(1) == first, "deriving a node's figures again changes nothing"
    node = store.node(1)
    root_runs = [metrics(4.0), metrics(4.2)]
    assert node["fitness"] == fitness(average(runs), average(root_runs), 0.05)
    assert math.isclose(node["fitness_std"], statistics.stdev(fitness(m, r, 0.05) for m, r in zip(runs, root_runs)))
    assert (node["tier"], node["seeds"], node["search_fitness"]) == ("smoke", 2, 0.30)
    assert promoter.state(1) == "done" and promoter.due() == [3, 5]

    # a failed seed ends that node's promotion (it keeps its search figures); a half-done one is finished
    store.add_evaluation(3, "smoke", 0, Result(ok=False, reason="timeout", metrics={"wall_s": 9.0}), None, kind=KIND)
    store.add_evaluation(
        6, "smoke", 0, Result(ok=True, metrics=metrics(4.5)), None, kind=KIND
    )  # a crash left seed 1 to do
    assert "failed" in promoter.finish(3) and store.node(3)["tier"] == "micro"
    assert promoter.due() == [5, 6]

    # the leaderboard puts the highest-fidelity figures first, then fitness
    assert [n["id"] for n in store.leaderboard(4)] == [1, 0, 3, 5]
    spent = {(r["tier"], r["kind"]): r for r in store.spend()}
    assert spent[("smoke", KIND)]["evaluations"] == 6 and math.isclose(spent[("smoke", KIND)]["cpu_hours"], 19.0 / 3600)


@pytest.mark.timeout(900)
@pytest.mark.e2e
def test_a_run_promotes_its_top_slice_with_several_seeds(cli, run_dir):
    proc = cli(
        "run",
        run_dir,
        "--tier",
        "micro",
        "--max-nodes",
        3,
        "--workers",
        2,
        "--threads",
        helpers.THREADS,
        *helpers.PROMOTE,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert check(run_dir).ok
    rows = {r["id"]: r for r in helpers.assert_lineage(run_dir)}
    evaluations = helpers.table_rows(run_dir, "evaluations")
    search = [e for e in evaluations if e["kind"] == "search"]
    assert sorted(e["node_id"] for e in search) == sorted(rows) and all(e["tier"] == "micro" for e in search)

    children = sorted(
        (r for r in rows.values() if r["id"] and r["status"] == "done"), key=lambda r: (-r["search_fitness"], r["id"])
    )
    assert len(children) == 2, (
        f"both children should train at the micro tier: {[(r['id'], r['reason']) for r in rows.values()]}"
    )
    top = {r["id"] for r in children[:1]}  # floor(0.5 x 2)
    promoted = {r["id"] for r in rows.values() if r["tier"] == "smoke"}
    assert promoted == {0} | top

    root_runs = {e["seed"]: json.loads(e["metrics"]) for e in evaluations if e["node_id"] == 0 and e["kind"] == KIND}
    for node_id, r in rows.items():
        mine = [e for e in evaluations if e["node_id"] == node_id and e["kind"] == KIND]
        if node_id not in promoted:
            assert not mine and (r["tier"], r["seeds"], r["fitness"], r["fitness_std"]) == (
                "micro",
                1,
                r["search_fitness"],
                None,
            )
            continue
        assert sorted(e["seed"] for e in mine) == [0, 1] and all(e["ok"] and e["tier"] == "smoke" for e in mine)
        runs = [json.loads(e["metrics"]) for e in sorted(mine, key=lambda e: e["seed"])]
        assert all("peak_mem_mb" in m for m in runs), "the promotion tier measures more than the search tier"
        assert r["seeds"] == 2 and math.isclose(r["val_loss"], statistics.fmean(m["val_loss"] for m in runs))
        assert math.isclose(r["val_loss_std"], statistics.stdev(m["val_loss"] for m in runs))
        if node_id:
            assert math.isclose(r["fitness"], fitness(average(runs), average([root_runs[0], root_runs[1]]), 0.05))
            assert r["fitness_std"] is not None
            assert math.isclose(r["search_fitness"], fitness(r["metrics"], rows[0]["metrics"], 0.05)), (
                "the search figure is kept"
            )

    facts = json.loads(cli("status", run_dir, "--json").stdout)
    board = facts["leaderboard"]
    assert [n["tier"] for n in board[: len(promoted)]] == ["smoke"] * len(promoted), board
    assert all(n["seeds"] == 2 and n["val_loss_std"] is not None for n in board[: len(promoted)])
    assert facts["promotion"]["promoted"] == sorted(promoted) and facts["promotion"]["due"] == []
    by_tier = {(r["tier"], r["kind"]): r for r in facts["spend"]["by_tier"]}
    assert by_tier[("micro", "search")]["evaluations"] == 3
    assert by_tier[("smoke", KIND)]["evaluations"] == 2 * len(promoted)
    assert facts["spend"]["cpu_hours"] > 0 and facts["spend"]["evaluations_per_cpu_hour"] > 0

    tree = cli("tree", run_dir).stdout
    for node_id, r in rows.items():
        line = next(line for line in tree.splitlines() if f"node {node_id} " in line)
        if node_id in promoted:
            assert "[smoke x2]" in line and "±" in line, line
        else:
            assert "[micro]" in line and "±" not in line, line
    table = cli("status", run_dir).stdout
    assert "spend per tier" in table and "promotion" in table and "[smoke x2]" in table
