"""SQL lives in archlab/tree: every other part asks the Store by name (store.open_threads(),
store.has_design(...)) and never reaches for its connection. The named queries are checked here
on a small synthetic store (no training)."""

import ast
import json
import sqlite3
from pathlib import Path

import archlab
from archlab.tree.readonly import ReadOnlyStore
from archlab.tree.store import Store, checkpointed_threads

ROOT = Path(archlab.__file__).parent
# The parts that own a database: the run's store, and the knowledge base's own full-text index.
OWNERS = {"tree", "knowledge"}
EXECUTE = {"execute", "executemany", "executescript"}


def _raw_sql(path: Path) -> list[str]:
    """Where a module reaches a database connection itself: `X.db` (a Store's connection) or a
    call of `.execute(...)` on anything."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr == "db":
            found.append(f"line {node.lineno}: .db")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in EXECUTE:
            found.append(f"line {node.lineno}: .{node.func.attr}(")
    return sorted(found)


def test_no_module_outside_tree_runs_sql_on_a_store():
    wrong = []
    modules = sorted(ROOT.rglob("*.py"))
    assert len(modules) > 50
    for path in modules:
        rel = path.relative_to(ROOT)
        if rel.parts[0] in OWNERS:
            continue
        wrong += [f"archlab/{rel} {where}" for where in _raw_sql(path)]
    assert not wrong, "SQL belongs in a Store method (archlab/tree/store.py):\n" + "\n".join(wrong)


def test_the_scan_sees_raw_sql(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text(
        "def f(store):\n"
        "    db = store.db\n"
        "    store.db.execute('select 1')\n"
        "    return db['nodes'].columns_dict, conn.executemany('x', [])\n"
    )
    assert _raw_sql(bad) == ["line 2: .db", "line 3: .db", "line 3: .execute(", "line 4: .executemany("]


# -- the named queries --------------------------------------------------------------------------
def _store(tmp_path: Path) -> Store:
    """A root (0), two done children (1, 2; 2 the fittest), a failed grandchild (3) and node 4
    promoted to verify with two seeds (one failed there), a researcher's code edit, open threads."""
    store = Store(tmp_path, create=True)
    design = {"mixer": "deltanet", "conv": 4}
    store.add_node(id=0, parent_id=None, status="done", fitness=0.0, design=design, metrics={"val_loss": 4.0})
    store.add_node(id=1, parent_id=0, status="done", fitness=0.1, design={**design, "conv": 2}, analysis="fine")
    store.add_node(id=2, parent_id=0, status="done", fitness=0.3, design=design, search_fitness=0.2)
    store.add_node(id=3, parent_id=1, status="failed", reason="params", design={**design, "conv": 8})
    store.add_node(id=4, parent_id=0, status="done", fitness=0.05, tier="verify", seeds=2, fidelity=4)
    store.add_node(id=5, parent_id=2, status="evaluating", attempts=2)
    store.save_code(1, "class Mixer: pass\n")
    for seed, ok in ((0, 1), (1, 0)):
        store.db["evaluations"].insert({"node_id": 4, "tier": "verify", "seed": seed, "ok": ok, "kind": "promotion"})
    store.add_trace(1, "researcher", "decision", decision={"edit": {"find": "a", "replace": "b"}})
    store.add_trace(2, "researcher", "decision", decision={"operator": "conv"})
    store.add_trace(2, "engineer", "llm", cost=0.5, tokens_in=10, tokens_out=5, request_hash="h", response="ok")
    for thread in ("b", "a"):
        store.set_meta(f"thread:{thread}", "open")
    return store


def test_node_queries(tmp_path):
    store = _store(tmp_path)
    assert store.max_node_id() == 5 and store.next_node_id() == 6
    assert store.status_counts() == {"done": 4, "failed": 1, "evaluating": 1}
    assert store.failure_reasons() == {"params": 1}
    assert store.live_counts() == (6, 1)
    assert store.evaluating_attempts() == [(5, 2)]
    assert store.node_ids("status = 'done'", order="fitness desc, id", limit=2, offset=1) == [1, 4]
    assert store.node_ids("status = ?", ["done"], offset=3) == [4]
    assert store.fittest_ids(2) == [2, 1]
    assert store.leaderboard_ids(2) == [4, 2]  # the promoted figure first
    assert store.leaderboard_ids(10, children_only=True) == [4, 2, 1]
    assert store.newest_ids(2) == [5, 4]
    assert store.parents() == {0: None, 1: 0, 2: 0, 3: 1, 4: 0, 5: 2}
    assert store.node_columns({3, 1}, ("id", "status")) == [{"id": 1, "status": "done"}, {"id": 3, "status": "failed"}]
    assert [c["id"] for c in store.child_summaries(0, limit=2)] == [1, 2]
    assert store.neighbour_ids(0) == (None, 1) and store.neighbour_ids(5) == (4, None)
    assert store.analysis(1) == "fine" and store.analysis(2) is None and store.analyses() == [(1, "fine")]
    pairs = {p["child"]: p for p in store.parent_child_pairs()}
    assert set(pairs) == {1, 2, 3, 4} and pairs[3]["parent_fitness"] == 0.1 and pairs[1]["design"]["conv"] == 2
    assert store.has_design({"mixer": "deltanet", "conv": 8}) and not store.has_design({"mixer": "x"})
    assert store.has_code("class Mixer: pass\n") and not store.has_code("other")
    assert store.candidates_by_search_fitness() == [2, 1, 4]
    assert store.nodes_at_tier("verify") == [4] and store.nodes_at_tier("verify", 3) == []
    assert store.evaluated_node_ids("promotion", "verify") == [4]
    assert store.evaluated_node_ids("promotion", "verify", failed=True) == [4]
    assert store.evaluated_node_ids("promotion", "smoke") == []
    assert store.has_column("nodes", "fidelity") and not store.has_column("nodes", "nope")
    assert store.integrity_check() == "ok"
    total, rows = store.leaderboard_page("fitness", "desc", ["done"], 0, 2)
    assert total == 4 and [r["id"] for r in rows] == [2, 1]


def test_trace_meta_and_evaluation_queries(tmp_path):
    store = _store(tmp_path)
    assert store.open_threads() == ["a", "b"]
    assert store.code_edits() == {1: {"find": "a", "replace": "b"}}  # node 2's decision edits no code
    assert store.llm_spend() == (0.5, 15)
    assert store.answered_call(2, "engineer", "h")["response"] == "ok"
    assert store.answered_call(2, "engineer", "other") is None
    assert store.trace_count() == 3 and store.trace_count(2) == 2 and store.trace_count(role="researcher") == 2
    assert [t["node_id"] for t in store.trace_page(role="researcher", offset=1, limit=5)] == [2]
    assert store.trace_page(1)[0]["decision"] == {"edit": {"find": "a", "replace": "b"}}  # decoded
    assert [t["role"] for t in store.trace_totals()] == ["researcher", "engineer"]
    assert store.evaluation_facts(1)["has_log"] == 0 and store.evaluation_facts(99) is None
    assert store.log_path(1) is None
    assert [e["ok"] for e in store.evaluation_outcomes()] == [1, 0]
    assert store.latest_curves(4) is None
    # the read-only store asks the same questions
    store.close()
    readonly = ReadOnlyStore(tmp_path)
    assert readonly.open_threads() == ["a", "b"] and readonly.leaderboard_ids(1) == [4]
    readonly.close()


def test_checkpointed_threads(tmp_path):
    path = tmp_path / "checkpoints.db"
    db = sqlite3.connect(path)
    db.execute("create table checkpoints (thread_id text, checkpoint_id text)")
    db.executemany("insert into checkpoints values (?, ?)", [("t1", "a"), ("t1", "b"), ("t2", "c")])
    db.commit()
    db.close()
    assert checkpointed_threads(path) == {"t1", "t2"}
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    try:
        checkpointed_threads(tmp_path / "junk.db")
    except sqlite3.DatabaseError:
        pass
    else:
        raise AssertionError("an unreadable checkpoint database raises sqlite3.DatabaseError")
    assert json.dumps(sorted(checkpointed_threads(path)))  # a plain set of names


def test_a_rate_over_seconds_of_compute_is_not_shown():
    """`status` showed 4.5 million evaluations per CPU-hour for a run whose candidates were rejected in
    0 s (newcomer, 2026-12-05): under 10 s of compute there is no rate."""
    from archlab.commands.status import per_hour

    assert per_hour(5, 5 / 3600) is None and per_hour(5, 0.0) is None
    assert per_hour(6, 0.5) == 12.0
