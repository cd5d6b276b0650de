"""Lessons kept across runs: real runs write them into the test's own $ARCHLAB_HOME (conftest.py),
later runs weigh them as priors, `archlab knowledge` lists, shows and deletes them."""

import json
import random
import sqlite3
from pathlib import Path

import pytest

import helpers
from archlab.agents import code_edits
from archlab.agents.offline import OfflineBrain
from archlab.agents.schema import Context
from archlab.knowledge import KnowledgeIndex
from archlab.knowledge import lessons as store
from archlab.knowledge.lessons import Lesson, code_hash
from archlab.templates import ROOTS, render

ROOT_DESIGN = ROOTS["deltanet"][1]
ROOT_CODE = render(ROOT_DESIGN)


def lesson(run_id: str, operator: str, arm: str, gain: float, root_hash: str, trials: int = 3, **extra) -> Lesson:
    fields = dict(
        id=Lesson.make_id(run_id, root_hash, operator, arm),
        run=f"/runs/{run_id}",
        run_id=run_id,
        root="deltanet",
        root_hash=root_hash,
        operator=operator,
        arm=arm,
        change=f"{operator} -> {arm}",
        parent_kind="template",
        parent_mechanisms=["delta"],
        parents={"root": trials, "descendants": 0},
        trials=trials,
        mean_gain=gain,
        std_gain=0.01,
        failed=0,
        nodes=list(range(1, trials + 1)),
        tier="micro",
        seeds=[0],
        text=f"{operator} {arm} changed fitness by {gain:+.3f}",
    )
    return Lesson(**{**fields, **extra})


def lesson_files(home: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((home / "lessons").glob("lesson-*.json"))]


def researcher_decisions(run_dir: Path) -> dict[int, dict]:
    with sqlite3.connect(run_dir / "archlab.db") as db:
        rows = db.execute("select node_id, decision from traces where role = 'researcher' order by id").fetchall()
    return {node: json.loads(decision) for node, decision in rows}


# --- units: the store and the brain's priors ---------------------------------------------------


def test_store_writes_atomically_rewrites_per_run_and_skips_a_corrupt_file(archlab_home):
    a = [lesson("runA", "heads", "2", 0.1, "h1"), lesson("runA", "beta", '"const"', -0.2, "h1")]
    store.write_run("runA", a)
    store.write_run("runB", [lesson("runB", "heads", "2", 0.3, "h1")])
    store.write_run("runA", a[:1])  # the same run again: its lesson replaced, the one it no longer has removed
    (archlab_home / "lessons" / "lesson-00000000-0000000000.json").write_text("{not json")
    found, problems = store.load()
    assert sorted((x.run_id, x.operator) for x in found) == [("runA", "heads"), ("runB", "heads")]
    assert len(problems) == 1 and "lesson-00000000-0000000000.json" in problems[0] and "\n" not in problems[0]
    assert not list((archlab_home / "lessons").glob(".tmp-*"))  # no temporary file left behind
    pooled = store.priors(found, "h1")
    assert pooled[("heads", "2")]["trials"] == 6 and pooled[("heads", "2")]["mean_gain"] == pytest.approx(0.2)
    assert store.priors(found, "another root") == {}


def context(seed: int) -> Context:
    root = {"id": 0, "design": ROOT_DESIGN.model_dump(), "fitness": 0.0, "metrics": {"val_loss": 2.3}, "analysis": None}
    return Context(node_id=1, parent=root, root=root, code=lambda node_id: ROOT_CODE, rng=random.Random(seed))


def test_the_researcher_tries_first_what_a_lesson_says_helped_and_the_trace_names_it():
    knowledge = KnowledgeIndex.load(embeddings=False)
    h = code_hash(ROOT_CODE)
    learned = [lesson("earlier", "heads", "2", 0.3, h), lesson("earlier", "output_gate", '"none"', -0.3, h)]
    guided, unaware, other_root = (
        OfflineBrain(knowledge, lessons=learned),
        OfflineBrain(knowledge),
        OfflineBrain(knowledge, lessons=[lesson("x", "heads", "2", 0.3, "another root")]),
    )
    template = 0
    for seed in range(8):
        proposal, (trace,) = guided.research(context(seed))
        if proposal.design is None:  # a code edit of the template root (its share of proposals)
            continue
        template += 1
        assert (proposal.operator, proposal.design["heads"]) == ("heads", 2)
        assert trace.decision["prior_chosen"] == [learned[0].id]
        assert trace.decision["priors"]["heads=2"]["lessons"] == [learned[0].id]
        assert trace.decision["ranked"][-1] == "output_gate"  # what hurt comes last
        for brain in (unaware, other_root):
            _, (plain,) = brain.research(context(seed))
            assert "priors" not in plain.decision
    assert template >= 4


def test_template_lessons_go_before_code_edit_lessons_on_a_template_parent():
    """A code edit turns a template parent into a file for good: a helpful template change from the
    lessons is made first even when a code edit gained more; once it is made, the code edit's turn."""
    knowledge = KnowledgeIndex.load(embeddings=False)
    h = code_hash(ROOT_CODE)
    learned = [
        lesson("earlier", "code:gate", code_edits.arm("gate", {"variant": "silu"}), 0.3, h),
        lesson("earlier", "heads", "2", 0.1, h),
    ]
    brain = OfflineBrain(knowledge, lessons=learned)
    for seed in range(6):
        ctx = context(seed)
        ctx.parent_code = ROOT_CODE
        proposal, _ = brain.research(ctx)
        assert (proposal.operator, proposal.design["heads"]) == ("heads", 2)
    made = [
        {"node": 1, "parent": 0, "operator": "heads", "fitness": 0.1, "parent_fitness": 0.0, "change": {"heads": 2}}
    ]
    for seed in range(6):
        ctx = context(seed)
        ctx.history, ctx.parent_code = made, ROOT_CODE
        proposal, (trace,) = brain.research(ctx)
        assert proposal.operator == "code:gate" and proposal.design is None, proposal.operator
        assert trace.decision["prior_chosen"] == [learned[0].id]


# --- end to end: real runs ------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_a_run_writes_lessons_a_second_run_weighs_them_and_resume_does_not_duplicate(tmp_path, archlab_home):
    first = tmp_path / "first"
    proc = helpers.cli("run", first, "--tier", "micro", "--max-nodes", 4, "--threads", helpers.THREADS, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lesson(s) of this run kept" in proc.stdout
    written = lesson_files(archlab_home)
    assert written, "the run wrote no lesson"
    nodes = {n["id"]: n for n in helpers.node_rows(first)}
    for x in written:  # provenance: this run, its nodes made this change, at its tier and seed
        assert x["run"] == str(first.resolve()) and x["tier"] == "micro" and x["seeds"] == [0]
        assert x["trials"] == len(x["nodes"]) and all(nodes[n]["operator"] == x["operator"] for n in x["nodes"])
    root_hash = written[0]["root_hash"]

    # resumed with a bigger budget: the same ids rewritten, no (operator, arm) twice
    proc = helpers.cli("run", first, "--max-nodes", 5, "--threads", helpers.THREADS, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    again = lesson_files(archlab_home)
    assert {x["id"] for x in written} <= {x["id"] for x in again}
    assert len({(x["operator"], x["arm"]) for x in again}) == len(again)
    assert sum(x["trials"] for x in again) >= sum(x["trials"] for x in written)

    # an earlier run's lesson about this root: a second run tries it first and says so
    told = lesson("told", "heads", "2", 0.9, root_hash)
    store.write_run("told", [told])
    second = tmp_path / "second"
    proc = helpers.cli(
        "run", second, "--tier", "micro", "--max-nodes", 2, "--seed", 1, "--threads", helpers.THREADS, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    decision = researcher_decisions(second)[1]
    assert (decision["operator"], decision["to"]) == ("heads", 2), decision
    assert told.id in decision["prior_chosen"] and told.id in decision["priors"]["heads=2"]["lessons"]

    # --no-lessons: kept in archlab.toml, no priors weighed, nothing written
    before = lesson_files(archlab_home)
    blind = tmp_path / "blind"
    proc = helpers.cli(
        "run", blind, "--tier", "micro", "--max-nodes", 2, "--seed", 1, "--no-lessons", "--threads", helpers.THREADS
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "lessons = false" in (blind / "archlab.toml").read_text()
    assert "priors" not in researcher_decisions(blind)[1]
    assert len(lesson_files(archlab_home)) == len(before)


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_a_promotion_writes_the_verified_figures_into_the_lesson(run_dir, archlab_home):
    proc = helpers.cli(
        "run",
        run_dir,
        "--tier",
        "micro",
        "--max-nodes",
        3,
        "--threads",
        helpers.THREADS,
        *helpers.PROMOTE,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    promoted = {n["id"]: n for n in helpers.node_rows(run_dir) if n["id"] and n["tier"] == "smoke"}
    assert promoted, "no child was promoted"
    verified = [v for x in lesson_files(archlab_home) for v in x["verified"]]
    assert {v["node"] for v in verified} == set(promoted)
    for v in verified:
        assert v["tier"] == "smoke" and v["seeds"] == 2 and v["fitness"] == promoted[v["node"]]["fitness"]


# --- `archlab knowledge` on learned entries ---------------------------------------------------


def test_knowledge_cli_lists_shows_searches_and_deletes_learned_entries(cli, archlab_home):
    a, b = lesson("runA", "heads", "2", 0.12, "h1"), lesson("runA", "beta", '"const"', -0.2, "h1")
    c = lesson("runB", "short_conv", "true", 0.05, "h1")
    store.write_run("runA", [a, b])
    store.write_run("runB", [c])
    listed = json.loads(cli("knowledge", "list", "--learned", "--json").stdout)
    assert sorted(x["id"] for x in listed) == sorted([a.id, b.id, c.id])
    shown = cli("knowledge", "show", a.id, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["run_id"] == "runA"
    assert "Provenance" in cli("knowledge", "show", a.id).stdout
    hits = json.loads(cli("knowledge", "search", "heads", "--bm25", "--json").stdout)["hits"]
    assert a.id in [h["id"] for h in hits]
    hits = json.loads(cli("knowledge", "search", "heads", "--bm25", "--no-lessons", "--json").stdout)["hits"]
    assert a.id not in [h["id"] for h in hits]

    for args in (
        ("show", "lesson-deadbeef-0123456789"),
        ("delete", "lesson-deadbeef-0123456789", a.id, "--yes"),  # one bad id: nothing deleted
        ("delete", "--run", "no-such-run", "--yes"),
        ("delete", a.id),  # not at a terminal: --yes is required
        ("delete",),
    ):
        proc = cli("knowledge", *args)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc
        assert "Traceback" not in proc.stderr
    assert len(lesson_files(archlab_home)) == 3

    assert cli("knowledge", "delete", a.id, "--yes").returncode == 0
    assert sorted(x["id"] for x in lesson_files(archlab_home)) == sorted([b.id, c.id])
    assert cli("knowledge", "delete", "--run", "runB", "--yes").returncode == 0
    assert [x["id"] for x in lesson_files(archlab_home)] == [b.id]


def test_a_corrupt_lesson_file_is_one_warning_and_the_others_still_list(cli, archlab_home):
    store.write_run("runA", [lesson("runA", "heads", "2", 0.12, "h1")])
    bad = archlab_home / "lessons" / "lesson-0badf11e-0000000000.json"
    bad.write_bytes(b"\xff\xfe not a lesson")
    proc = cli("knowledge", "list", "--learned", "--json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 1
    assert proc.stderr.count("\n") == 1 and str(bad) in proc.stderr and "Traceback" not in proc.stderr
