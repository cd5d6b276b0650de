"""Fault injection: SIGKILL the driver at every write point, restart, and check the store."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from archlab.commands.doctor import check

sys.path.insert(0, str(Path(__file__).parent))
import helpers  # noqa: E402
from llm_server import API_KEY, Script, ScriptedServer  # noqa: E402

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]  # killed runs resumed (900 s bound each)

NODES = 3


def run(run_dir: Path, chaos: str | None = None, extra: tuple = ()) -> subprocess.CompletedProcess:
    env = dict(os.environ, OPENAI_API_KEY=API_KEY)
    env.pop("ARCHLAB_CHAOS", None)
    if chaos:
        env["ARCHLAB_CHAOS"] = chaos
    return subprocess.run(
        [*helpers.CLI, "run", str(run_dir), "--tier", "micro", "--max-nodes", str(NODES), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def assert_consistent(run_dir: Path) -> None:
    report = check(run_dir)
    assert report.ok, report.as_json()
    with sqlite3.connect(run_dir / "archlab.db") as db:
        ids = [r[0] for r in db.execute("select id from nodes order by id")]
        assert ids == list(range(NODES)), ids
        assert db.execute("select count(*) from nodes where status = 'evaluating'").fetchone()[0] == 0
        assert db.execute("select count(*) from meta where key like 'thread:%'").fetchone()[0] == 0
        # A finished node has exactly the evaluations of its attempts: none lost, none doubled.
        for node_id, attempts in db.execute("select id, attempts from nodes where status = 'done'"):
            n = db.execute(
                "select count(*) from evaluations where node_id = ? and kind = 'search'", [node_id]
            ).fetchone()[0]
            assert n == attempts, (node_id, n, attempts)
    tags = subprocess.run(
        ["git", "-C", str(run_dir / "repo"), "tag", "--list", "node-*"], capture_output=True, text=True
    ).stdout.split()
    assert sorted(tags) == sorted(f"node-{i}" for i in range(NODES))
    commits = subprocess.run(
        ["git", "-C", str(run_dir / "repo"), "log", "--all", "--format=%H"], capture_output=True, text=True
    ).stdout.split()
    assert len(commits) == NODES


@pytest.mark.parametrize(
    "point",
    [
        "select:2",
        "after_commit:1",
        "after_row:1",
        "during_evaluation:2",
        "after_evaluation:2",
        "during_analysis:1",
        "after_record:1",
    ],
)
def test_sigkill_at_each_write_point_then_resume(tmp_path, point):
    run_dir = tmp_path / "run"
    killed = run(run_dir, chaos=point)
    assert killed.returncode == -9, (point, killed.returncode, killed.stderr[-2000:])
    done = run(run_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_consistent(run_dir)


def test_sigkill_during_an_llm_call_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    with ScriptedServer(Script()) as server:
        extra = ("--llm", "openai:scripted", "--base-url", server.url)
        killed = run(run_dir, chaos="llm_call:2", extra=extra)
        assert killed.returncode == -9, killed.stderr[-2000:]
        done = run(run_dir, extra=extra)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_consistent(run_dir)


def test_doctor_repairs_an_orphan_commit_and_a_stuck_node(tmp_path):
    run_dir = tmp_path / "run"
    killed = run(run_dir, chaos="after_commit:1")  # node 1's commit exists, its row does not
    assert killed.returncode == -9
    (run_dir / "checkpoints.db").unlink()  # and the checkpoint that would resume it is gone
    report = check(run_dir)
    assert not report.ok and any("no row" in f.what for f in report.findings)
    found = subprocess.run([*helpers.CLI, "doctor", str(run_dir), "--json"], capture_output=True, text=True)
    assert found.returncode == 1 and not json.loads(found.stdout)["run"]["ok"]
    repaired = subprocess.run(
        [*helpers.CLI, "doctor", str(run_dir), "--repair", "--json"], capture_output=True, text=True
    )
    assert repaired.returncode == 0, repaired.stdout
    assert all(f["repaired"] for f in json.loads(repaired.stdout)["run"]["findings"] if f["severity"] == "error")
    assert check(run_dir).ok
    done = run(run_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_consistent(run_dir)
