"""`archlab replay` and `archlab fork` on a copy of a small micro-tier run (real sandbox, real
training, real git): a replay repeats the recorded validation loss, stores its evaluations
beside the originals, and a fork grows a new run from a node."""

import json
import sqlite3
from pathlib import Path

import pytest

import helpers
from archlab.commands.replay import Replayer
from archlab.config import RunConfig
from archlab.sandbox import executors

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # replays and forks (600 s bound each)


@pytest.fixture
def run(review_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    helpers.copy_run(review_run, copy)
    return copy


def _done_child_of_root(run: Path) -> dict:
    return next(n for n in helpers.node_rows(run) if n["parent_id"] == 0 and n["status"] == "done")


def _replay(run: Path, *args) -> dict:
    proc = helpers.cli("replay", run, *map(str, args), "--threads", helpers.THREADS, "--json", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_replay_reproduces_the_recorded_val_loss_within_the_seed_spread(run, review_run):
    nodes = {n["id"]: n for n in helpers.node_rows(run)}
    child = _done_child_of_root(run)

    # The root with two seeds: seed 0 is the run's own seed, seed 1 measures the spread.
    facts = _replay(run, 0, "--seeds", 2)
    assert facts["tier"] == "micro" and facts["seeds"] == [0, 1]
    root = facts["nodes"][0]
    assert root["node"] == 0 and root["ok"] == 2
    spread = root["spread"]
    assert spread > 1e-3, "two seeds train different models"
    rep = root["reproduction"]
    assert rep["seed"] == 0 and rep["recorded"] == pytest.approx(nodes[0]["val_loss"], abs=1e-9)
    assert abs(rep["difference"]) < 1e-4, "the same code, config and seed give the same validation loss"
    assert abs(rep["difference"]) < spread / 10

    # A child along its lineage (root -> child): the root's replays are reused, the child's run.
    facts = _replay(run, child["id"], "--seeds", 1, "--lineage")
    assert [n["node"] for n in facts["nodes"]] == [0, child["id"]]
    root_again, node = facts["nodes"]
    assert root_again["cached"] == 1 and node["cached"] == 0
    assert node["reproduction"]["recorded"] == pytest.approx(child["val_loss"], abs=1e-9)
    assert abs(node["reproduction"]["difference"]) < 1e-4
    assert abs(node["reproduction"]["difference"]) < spread / 10
    assert node["vs_root_mean"] == pytest.approx(node["val_loss"]["0"] - root_again["val_loss"]["0"])
    assert node["vs_parent_mean"] == pytest.approx(node["vs_root_mean"])  # its parent is the root

    # Stored beside the originals: kind "replay", the commit and the weights recorded.
    replays = [e for e in helpers.table_rows(run, "evaluations") if e["kind"] == "replay"]
    assert sorted((e["node_id"], e["seed"]) for e in replays) == [(0, 0), (0, 1), (child["id"], 0)]
    for e in replays:
        env = json.loads(e["env"])
        assert env["commit"] == nodes[e["node_id"]]["commit_sha"]
        assert (run / env["weights"]).is_file() and (run / e["log"]).is_file()
    # ... and the originals are untouched.
    original = [e for e in helpers.table_rows(review_run, "evaluations") if e["kind"] == "search"]
    assert [e for e in helpers.table_rows(run, "evaluations") if e["kind"] == "search"] == original

    # The table for people says the same.
    proc = helpers.cli("replay", run, child["id"], "--seeds", 1, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{node['val_loss']['0']:.4f}" in proc.stdout and "+0.0e+00" in proc.stdout


def test_a_run_with_tier_overrides_trains_and_replays_that_shape(tmp_path, review_run):
    # --tier-set changes the search tier for every evaluation (a bigger model on a GPU); replay uses it too.
    run = tmp_path / "small"
    proc = helpers.cli(
        "run",
        run,
        "--tier",
        "micro",
        "--max-nodes",
        1,
        "--threads",
        helpers.THREADS,
        "--tier-set",
        "d_model=32",
        "--tier-set",
        "steps=5",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "d_model = 32" in (run / "archlab.toml").read_text()
    (search,) = [json.loads(e["metrics"]) for e in helpers.table_rows(run, "evaluations")]
    assert search["train_tokens"] == 5 * 8 * 64, "5 steps of micro's 8 x 64 batch"
    default = next(
        json.loads(e["metrics"])
        for e in helpers.table_rows(review_run, "evaluations")
        if e["node_id"] == 0 and e["kind"] == "search"
    )
    assert search["mixer_params"] < default["mixer_params"] / 3, "d_model 32 instead of micro's 64"
    replayed = _replay(run, 0, "--seeds", 1)["nodes"][0]
    assert abs(replayed["reproduction"]["difference"]) < 1e-4, "the replay trains the overridden shape, as the run did"
    bad = helpers.cli("run", tmp_path / "bad", "--tier", "micro", "--tier-set", "d_model=big", timeout=60)
    assert "--tier-set" in helpers.assert_user_error(bad)


class RecordingExecutor(executors.LocalExecutor):
    """A real local executor that keeps the requests it was given."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.requests = []

    def evaluate(self, job):
        self.requests.append(job.request)
        return super().evaluate(job)


def test_replay_goes_through_the_executor_it_is_given(run):
    ex = RecordingExecutor(slots=1, threads=1)
    try:
        (root,) = Replayer(run, threads=1, executor=ex).replay([0], [0])
    finally:
        ex.shutdown()
    (row,) = root.runs
    assert row["ok"] and not row["cached"], row["detail"]
    (request,) = ex.requests
    assert (request.tier, request.seed, request.seeds or 1, request.param_limit) == ("micro", 0, 1, -1)  # one seed
    assert request.log_path == run / "logs" / "replay-node-0-micro-s0.log" and request.source.strip()
    config = RunConfig.load(run)  # the run's own rules, built by the one request builder the search uses
    assert (request.data, request.allow_quadratic) == (config.data, config.allow_quadratic)
    assert row["env"]["executor"]["kind"] == "local" and row["env"]["executor"]["threads"] == 1
    assert (run / row["env"]["weights"]).is_file()


def test_replay_user_errors(run):
    assert "no node 999" in helpers.assert_user_error(helpers.cli("replay", run, 999, timeout=60))
    assert "check" in helpers.assert_user_error(helpers.cli("replay", run, 0, "--tier", "check", timeout=60))
    assert "tier" in helpers.assert_user_error(helpers.cli("replay", run, 0, "--tier", "huge", timeout=60))


def test_fork_starts_a_run_rooted_at_the_node_and_grows_it(run, tmp_path):
    source = helpers.node_rows(run)
    child = _done_child_of_root(run)
    new = tmp_path / "branch"
    proc = helpers.cli("fork", run, child["id"], new, "--json", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["root_ready"] and bool(facts["design"]) == bool(child["design"])  # (a code-edited child has none)

    # The new run's root is the node: its code (committed and as root.py), design, metrics.
    root = helpers.node_rows(new)[0]
    assert root["id"] == 0 and root["status"] == "done" and root["fitness"] == 0.0
    assert root["design"] == child["design"] and root["metrics"] == child["metrics"]
    assert helpers.code_at(new, root["commit_sha"]) == helpers.code_at(run, child["commit_sha"])
    assert (new / "root.py").read_text() == helpers.code_at(run, child["commit_sha"])
    # Its evaluations and traces come along; the link back is in meta, events and the traces.
    evaluations = helpers.table_rows(new, "evaluations")
    assert [json.loads(e["metrics"])["val_loss"] for e in evaluations if e["ok"]] == [child["val_loss"]]
    assert all((new / e["log"]).is_file() for e in evaluations if e["log"])
    link = json.loads(helpers.meta(new)["forked_from"])
    assert link["run"] == str(run.resolve()) and link["node"] == child["id"] and link["commit"] == child["commit_sha"]
    assert any(e["kind"] == "fork" and str(child["id"]) in e["message"] for e in helpers.table_rows(new, "events"))
    assert {t["role"] for t in helpers.table_rows(new, "traces")} >= {"researcher", "fork"}
    # The source run is unchanged but for an event naming the fork.
    assert helpers.node_rows(run) == source

    # The offline brain keeps mutating the forked node: one more node, a child of the new root (one
    # design field changed, or now and then a code edit of its file).
    proc = helpers.cli("run", new, "--max-nodes", 2, "--threads", helpers.THREADS, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nodes = helpers.node_rows(new)
    assert len(nodes) == 2 and nodes[1]["parent_id"] == 0
    if nodes[1]["design"] is None:
        assert nodes[1]["operator"].startswith("code:"), nodes[1]
    else:
        changed = {k for k in nodes[1]["design"] if nodes[1]["design"][k] != root["design"][k]}
        assert len(changed) == 1, changed
    assert helpers.git(new, "diff", root["commit_sha"], nodes[1]["commit_sha"]).strip()
    # The root was not evaluated again (its metrics came from the source run).
    assert len([e for e in helpers.table_rows(new, "evaluations") if e["node_id"] == 0]) == len(evaluations)


def test_fork_user_errors(run, tmp_path):
    child = _done_child_of_root(run)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    assert "not empty" in helpers.assert_user_error(helpers.cli("fork", run, child["id"], busy, timeout=60))
    assert "no node 999" in helpers.assert_user_error(helpers.cli("fork", run, 999, tmp_path / "x", timeout=60))
    conn = sqlite3.connect(run / "archlab.db")
    with conn:  # a node that failed (as children over the parameter budget do)
        conn.execute("update nodes set status = 'failed', reason = 'params' where id = ?", [child["id"]])
    conn.close()
    line = helpers.assert_user_error(helpers.cli("fork", run, child["id"], tmp_path / "y", timeout=60))
    assert "failed (params)" in line and not (tmp_path / "y").exists()
    line = helpers.assert_user_error(helpers.cli("fork", run, 0, tmp_path / "z", "--strategy", "nope", timeout=60))
    assert "strategy" in line and not (tmp_path / "z").exists()
