"""`archlab import asi-arch`: ASI-Arch's published search as a run to review, replay and fork.

The inputs are tests/fixtures/asi_arch (tree.json, 106.json): a small search in ASI-Arch's
published format, with programs written for these tests (make.py regenerates the JSON); ASI-Arch's
own programs are not copied into this repository. Everything runs for real: the CLI in a child
process, the run's SQLite and git, the sandbox for replays and the forked search.
"""

import json
import textwrap
from pathlib import Path

import pytest

import helpers
from archlab.interop import asi_arch
from archlab.sandbox.static import static_check

FIXTURES = Path(__file__).parent / "fixtures" / "asi_arch"
TREE, PROGRAMS = FIXTURES / "tree.json", FIXTURES / "106.json"


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """The fixtures imported once (read-only for the tests that use it)."""
    run = tmp_path_factory.mktemp("import") / "asi"
    proc = helpers.cli("import", "asi-arch", run, PROGRAMS, TREE)  # either order: told apart by content
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Imported 8 nodes" in proc.stdout and "5 with code" in proc.stdout, proc.stdout
    return run


def test_every_node_keeps_its_lineage_score_and_published_figures(imported):
    tree = json.loads(TREE.read_text())["results"]
    with helpers.connect(imported) as db:
        nodes = {r["id"]: dict(r) for r in db.execute("select * from nodes")}
        external = [dict(r) for r in db.execute("select * from evaluations")]
    assert len(nodes) == len(tree) and {n["status"] for n in nodes.values()} == {"imported"}
    for row in tree:  # node N is ASI-Arch's index N, its root node 0
        node = nodes[0 if row["parent"] is None else row["index"]]
        assert node["operator"] == row["name"]
        assert node["parent_id"] == (None if row["parent"] is None else 0 if row["parent"] == 1 else row["parent"])
        assert json.loads(node["metrics"])["asi_score"] == row["score"]
    assert nodes[3]["commit_sha"] is None and nodes[9]["commit_sha"] is None  # published without code
    # the 5 designs: ASI-Arch's figures as external evaluations, never as archlab's tiers
    assert sorted(e["node_id"] for e in external) == [2, 4, 6, 7, 12]
    assert {(e["tier"], e["kind"]) for e in external} == {("asi-arch", "external")}
    m = json.loads(next(e for e in external if e["node_id"] == 2)["metrics"])
    assert m["train_loss"] == 3.41 and m["train_steps"] == 2000 and m["bench_average"] == 0.401
    assert "bench_lam_ppl" not in m  # "nan" in the published CSV is left out, not stored as a number
    curve = json.loads(next(e for e in external if e["node_id"] == 2)["curves"])[0]["train"]
    assert curve[0] == [1, 11.0] and curve[-1] == [2000, 3.41] and len(curve) == 21


def test_the_git_lineage_follows_the_tree_through_nodes_without_code(imported):
    import git

    repo = git.Repo(imported / "repo")
    with helpers.connect(imported) as db:
        sha = {r["id"]: r["commit_sha"] for r in db.execute("select id, commit_sha from nodes")}
    # node 7's parent (3) has no code: its commit descends from the nearest ancestor with code, the root
    assert [p.hexsha for p in repo.commit(sha[7]).parents] == [sha[0]]
    assert [p.hexsha for p in repo.commit(sha[4]).parents] == [sha[2]]
    doctor = helpers.cli("doctor", imported)  # records without code are no damage (it said so, 2026-12-05)
    assert doctor.returncode == 0 and doctor.stdout.strip().endswith("consistent"), doctor.stdout
    show = helpers.cli("show", imported, 4, "--json")
    facts = json.loads(show.stdout)
    assert "-        use_gate: bool = True," in facts["diff"] and "+        use_gate: bool = False," in facts["diff"]


def test_each_conversion_is_logged_and_every_converted_design_passes_the_static_checks(imported):
    traces = json.loads(helpers.cli("traces", imported, 2, "--json").stdout)
    convert = [t for t in traces if t["role"] == "import"]
    assert len(convert) == 1
    changes = convert[0]["decision"]["changes"]
    assert any("self._step" in c and "training progress" in c for c in changes), changes
    assert any("bfloat16" in c for c in changes) and any("adapter class Mixer" in c for c in changes)
    assert convert[0]["decision"]["static_check"] == "passed"
    with helpers.connect(imported) as db:
        rejected = db.execute("select id, reason, detail from nodes where reason is not null").fetchall()
    assert not rejected, [tuple(r) for r in rejected]
    for name in ("tree", "status"):
        proc = helpers.cli(name, imported)
        assert proc.returncode == 0, proc.stderr
    assert "ASI-Arch score 2.3100" in helpers.cli("tree", imported).stdout
    facts = json.loads(helpers.cli("status", imported, "--json").stdout)
    assert facts["imported"] == 8 and facts["nodes"] == 8


def test_convert_rewrites_only_what_the_contract_needs():
    program = textwrap.dedent('''\
        """Un modèle « réécrit » — non-ASCII text before the edits keeps their offsets right."""
        from __future__ import annotations
        import torch
        import torch.nn as nn


        class DeltaNet(nn.Module):
            def __init__(self, hidden_size=64, num_heads=4, **kwargs):
                super().__init__()
                self.proj = nn.Linear(hidden_size, hidden_size)
                self.register_buffer("step", torch.zeros(1), persistent=False)

            def forward(self, hidden_states, attention_mask=None, **kwargs):
                w = (self.proj.weight + 0.0).to(torch.bfloat16)  # « cast »
                scale = 1.0 / (1.0 + self.step.item())
                self.step += 1.0
                return self.proj(hidden_states) * scale, None, None
        ''')
    out = asi_arch.convert(program)
    assert out.problem is None
    static_check(out.code.replace("from archlab.candidate import training_progress", "training_progress = None"))
    assert "w = (self.proj.weight + 0.0)  # « cast »" in out.code
    assert "scale = 1.0 / (1.0 + _asi_step(self.step).item())" in out.code
    assert "self.step += 1.0" not in out.code and 'register_buffer("step"' in out.code
    assert out.code.index("from __future__") < out.code.index("from archlab.candidate import training_progress")
    assert out.code.rstrip().endswith("return out[0] if isinstance(out, tuple) else out")
    assert len(out.changes) == 3
    compile(out.code, "converted.py", "exec")


@pytest.mark.parametrize(
    "program, problem",
    [
        ("import torch\nx = 1\n", "no nn.Module class with forward(self, hidden_states"),
        (
            "import torch.nn as nn\nclass Mixer(nn.Module):\n    pass\n"
            "class DeltaNet(nn.Module):\n    def forward(self, hidden_states):\n        return hidden_states\n",
            "already defines",
        ),
        ("def broken(:\n", "does not parse"),
    ],
)
def test_a_program_that_cannot_be_converted_says_why(program, problem):
    assert problem in asi_arch.convert(program).problem


def test_bad_input_is_one_line_and_loses_nothing(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([{"name": "x", "index": 99, "program": "import torch"}]))
    cycle = tmp_path / "cycle.json"
    cycle.write_text(
        json.dumps(
            {
                "results": [
                    {"index": 1, "name": "a", "parent": None, "score": 1.0},
                    {"index": 2, "name": "b", "parent": 3, "score": 1.0},
                    {"index": 3, "name": "c", "parent": 2, "score": 1.0},
                ]
            }
        )
    )
    # each once ended in "internal error" (red team, 2026-12-05): an index SQLite cannot hold, a second
    # node 0 (the root's id), a number where text goes, and an expression nested past the stack
    results = [{"index": 1, "name": "a", "parent": None}, {"index": 2, "name": "b", "parent": 1}]
    huge, zero = tmp_path / "huge.json", tmp_path / "zero.json"
    huge.write_text(json.dumps({"results": [results[0], {**results[1], "index": 2**70}]}))
    zero.write_text(json.dumps({"results": [results[0], {**results[1], "index": 0}]}))
    tree = tmp_path / "tree.json"
    tree.write_text(json.dumps({"results": results}))
    number, nested = tmp_path / "number.json", tmp_path / "nested.json"
    number.write_text(json.dumps([{"name": "b", "index": 2, "program": "import torch\n", "summary": 10**400}]))
    nested.write_text("[" * 100_000 + "]" * 100_000)
    for args, words in [
        (("asi-arch", tmp_path / "r7", huge), "indices run from 0"),
        (("asi-arch", tmp_path / "r8", zero), "only the root"),
        (("asi-arch", tmp_path / "r9", tree, number), "summary is not text"),
        (("asi-arch", tmp_path / "r10", nested), "tree.json"),
        (("mlflow", tmp_path / "r1", TREE), "only format"),
        (("asi-arch", tmp_path / "r2", bad), "not JSON"),
        (("asi-arch", tmp_path / "r3", PROGRAMS), "needs data/tree.json"),
        (("asi-arch", tmp_path / "r4", TREE, unknown), "is not a node of"),
        (("asi-arch", tmp_path / "r5", cycle), "cycle"),
        (("asi-arch", tmp_path / "r6", tmp_path / "missing.json"), "cannot read"),
    ]:
        line = helpers.assert_user_error(helpers.cli("import", *args))
        assert words in line, line
        assert not (Path(args[1]) / "archlab.db").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    assert "not empty" in helpers.assert_user_error(helpers.cli("import", "asi-arch", kept, TREE))
    assert (kept / "notes.txt").read_text() == "mine" and len(list(kept.iterdir())) == 1


def test_an_imported_run_is_not_grown_but_forked(imported):
    line = helpers.assert_user_error(helpers.cli("run", imported, "--max-nodes", 2))
    assert "archlab fork" in line


@pytest.mark.timeout(600)
@pytest.mark.e2e
def test_replay_trains_imported_designs_in_the_sandbox_and_catches_the_leak(imported, tmp_path):
    run = tmp_path / "asi"
    helpers.copy_run(imported, run)
    ok = helpers.cli("replay", run, 2, "--tier", "micro", "--seeds", 1, "--json", timeout=600)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    node = next(n for n in json.loads(ok.stdout)["nodes"] if n["node"] == 2)
    assert node["ok"] and node["val_loss_mean"] > 0, node
    leak = helpers.cli("replay", run, 7, "--tier", "micro", "--seeds", 1, "--json", timeout=600)
    node = next(n for n in json.loads(leak.stdout)["nodes"] if n["node"] == 7)
    assert not node["ok"] and {f["reason"] for f in node["failed"]} == {"non_causal"}, node


@pytest.mark.timeout(900)
@pytest.mark.e2e
def test_a_fork_of_an_imported_design_is_searched_by_the_offline_brain(imported, tmp_path):
    new = tmp_path / "branch"
    proc = helpers.cli("fork", imported, 6, new, "--tier", "micro", "--max-nodes", 3)
    assert proc.returncode == 0, proc.stderr
    with helpers.connect(imported) as db:
        code = db.execute("select code from code where node_id = 6").fetchone()[0]
    assert (new / "root.py").read_text() == code and "class Mixer" in code
    run = helpers.cli("run", new, "--threads", helpers.THREADS, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    with helpers.connect(new) as db:
        rows = [dict(r) for r in db.execute("select id, status, operator, reason from nodes order by id")]
    assert rows[0]["status"] == "done", rows
    assert len(rows) == 3 and all(r["operator"] != "root" for r in rows[1:]), rows
    assert any(r["status"] == "done" for r in rows[1:]), rows  # a code operator changed the imported design


@pytest.mark.browser
def test_the_web_ui_shows_an_imported_design_with_its_published_curve(imported, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from helpers import CHROMIUM, CHROMIUM_ARGS, Server

    run = tmp_path / "asi"
    helpers.copy_run(imported, run)
    server = Server(run)
    problems = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(server.url)
            page.wait_for_selector('g.node[data-node="12"]', timeout=30_000)
            expect(page.locator("g.node")).to_have_count(8)
            page.goto(server.url + "#/node/2")
            expect(page.locator("body")).to_contain_text("delta_net_gated_fir in one sentence.", timeout=30_000)
            expect(page.locator("body")).to_contain_text("bench_average")
            expect(page.locator("body")).to_contain_text("ASI-Arch's published training loss")
            page.screenshot(path=str(tmp_path / "imported-node.png"))
            browser.close()
    finally:
        server.stop()
    assert not problems, problems
