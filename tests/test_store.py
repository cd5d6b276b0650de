"""The search tree of a finished micro run: SQLite rows, git lineage and what `show` reports.

The shared run (conftest.micro_run) has 5 nodes and a parameter budget of 0.5x the root's
mixer, so the root is trained and every child fails with reason params. (Deeper trees with
trained children are checked the same way by test_run.py, through helpers.assert_finished_run.)"""

import json
import math
import re
import sqlite3

import pytest

import helpers
from archlab.sandbox import contract
from archlab.sandbox.tiers import TIERS
from archlab.templates import render_root


def apply_unified_diff(old: str, diff: str) -> list[str]:
    """Apply git's unified diff of one file to `old`; returns the new file's lines."""
    old_lines, out, pos = old.splitlines(), [], 0
    lines = diff.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("@@"))
    for line in lines[start:]:
        if line.startswith("@@"):
            m = re.match(r"@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@", line)
            first, count = int(m[1]), int(m[2] if m[2] is not None else 1)
            hunk_start = first if count == 0 else first - 1
            assert hunk_start >= pos, "hunks out of order"
            out += old_lines[pos:hunk_start]
            pos = hunk_start
        elif line.startswith("\\"):
            continue  # "\ No newline at end of file"
        elif line.startswith("+"):
            out.append(line[1:])
        elif line.startswith("-"):
            assert old_lines[pos] == line[1:], (pos, line)
            pos += 1
        else:  # context (an empty context line is " ")
            assert old_lines[pos] == line[1:], (pos, line)
            out.append(line[1:])
            pos += 1
    return out + old_lines[pos:]


def test_every_node_is_a_row_with_one_commit_on_its_parents_commit(micro_run):
    rows = helpers.assert_finished_run(micro_run, 5)
    assert len(helpers.commits(micro_run)) == 5
    # the commit message names the node and its parent
    for r in rows[1:]:
        subject = helpers.git(micro_run, "log", "-1", "--format=%s", r["commit_sha"]).strip()
        assert subject.startswith(f"node {r['id']}: ") and subject.endswith(f"(from node {r['parent_id']})"), subject


def test_database_is_in_wal_mode(micro_run):
    conn = sqlite3.connect(micro_run / "archlab.db")
    try:
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_root_commit_is_the_root_template(micro_run):
    root = helpers.node_rows(micro_run)[0]
    assert helpers.code_at(micro_run, root["commit_sha"]) == render_root("deltanet")
    assert root["operator"] == "root" and root["fitness"] == 0.0


@pytest.mark.parametrize("node_id", range(5))
def test_show_json_diff_turns_the_parent_commit_into_the_node_commit(micro_run, node_id):
    proc = helpers.cli("show", micro_run, node_id, "--json")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    row = helpers.node_rows(micro_run)[node_id]
    assert facts["id"] == node_id and facts["commit_sha"] == row["commit_sha"] and facts["status"] == row["status"]
    code = helpers.code_at(micro_run, row["commit_sha"])
    if row["parent_id"] is None:
        assert facts["diff"] == "" and facts["parent"] is None
        return
    parent_code = helpers.code_at(micro_run, helpers.node_rows(micro_run)[row["parent_id"]]["commit_sha"])
    assert facts["diff"], "a child's code always differs from its parent's"
    assert apply_unified_diff(parent_code, facts["diff"]) == code.splitlines()
    assert facts["parent"]["id"] == row["parent_id"]
    assert facts["design"] == row["design"]


def mixer_numbers(code: str, d_model: int, n_heads: int) -> int:
    """What one mixer of `code` stores (parameters and buffers), counted here, in-process: what the
    scorer counts per block from the weights a model server sends."""
    return sum(v.numel() for v in contract.build_mixer(contract.load(code), d_model, n_heads).state_dict().values())


def test_failed_nodes_are_rows_and_the_budget_decides_who_fails(micro_run):
    rows = helpers.node_rows(micro_run)
    tier = TIERS["micro"]
    root = mixer_numbers(helpers.code_at(micro_run, rows[0]["commit_sha"]), tier.d_model, tier.n_heads)
    limit = int(root * 0.5)
    assert rows[0]["metrics"]["mixer_params"] == root
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["id"] for r in failed] == [1, 2, 3, 4], "the run was set up so that every child exceeds the budget"
    for r in rows[1:]:
        n = mixer_numbers(helpers.code_at(micro_run, r["commit_sha"]), tier.d_model, tier.n_heads)
        if n > limit:
            assert r["status"] == "failed" and r["reason"] == "params", (r["id"], n, limit, r["status"], r["reason"])
            assert f"{n:,}" in r["detail"] and f"{limit:,}" in r["detail"]
        else:
            assert r["reason"] != "params", r
    for r in failed:
        assert r["reason"] and r["detail"] and r["fitness"] is None and r["finished"] >= r["created"]
        evals = [e for e in helpers.table_rows(micro_run, "evaluations") if e["node_id"] == r["id"]]
        assert evals and evals[-1]["ok"] == 0 and evals[-1]["reason"] == r["reason"]
        assert r["analysis"] and r["reason"] in r["analysis"]


def test_the_root_has_metrics_and_fitness_zero(micro_run):
    root = helpers.node_rows(micro_run)[0]
    m = root["metrics"]
    assert root["status"] == "done" and root["fitness"] == 0.0 and root["val_loss"] == m["val_loss"] > 0
    assert m["val_bpb"] == pytest.approx(m["val_loss"] / math.log(2))
    assert m["tokens_per_s"] > 0 and m["params"] > m["mixer_params"] > 0


def test_every_node_has_its_evaluations_and_logs(micro_run):
    evals = helpers.table_rows(micro_run, "evaluations")
    for r in helpers.node_rows(micro_run):
        mine = [e for e in evals if e["node_id"] == r["id"]]
        assert len(mine) == r["attempts"] >= 1
        assert all(e["tier"] == "micro" and e["kind"] == "search" for e in mine)
        for e in mine:
            assert (micro_run / e["log"]).is_file()
            assert json.loads(e["env"])["torch"]


def test_traces_record_every_role_and_the_selection(micro_run):
    rows = helpers.node_rows(micro_run)
    traces = helpers.table_rows(micro_run, "traces")
    for r in rows[1:]:
        mine = [t for t in traces if t["node_id"] == r["id"]]
        roles = [t["role"] for t in mine]
        assert roles[0] == "selector" and {"researcher", "engineer", "analyst"} <= set(roles), roles
        selection = json.loads(mine[0]["decision"])
        assert selection["parent"] == r["parent_id"]
        research = json.loads(next(t for t in mine if t["role"] == "researcher")["decision"])
        assert research["operator"] == r["operator"]
        assert all(t["kind"] == "offline" for t in mine)


def test_worker_threads_write_through_one_store_at_once(tmp_path):
    """The run's worker threads write at once. On one shared connection each sqlite-utils write
    opened a transaction or, inside another thread's, a savepoint that thread's commit ended ("no
    such savepoint"), and on Python 3.12 threads read each other's rows (InvalidColumns): each
    thread now has a connection of its own."""
    import threading

    from archlab.tree.store import Store

    store = Store(tmp_path, create=True)
    errors = []

    def write(base):
        try:
            for i in range(200):
                store.add_node(id=base + i, status="done", fitness=0.1)
                store.update_node(base + i, fitness=0.2)
        except Exception as e:  # noqa: BLE001  (collected for the assertion)
            errors.append(repr(e))

    threads = [threading.Thread(target=write, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and store.count("fitness = 0.2") == 800, errors[:2]
