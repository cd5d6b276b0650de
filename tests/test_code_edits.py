"""The offline brain's code operators (agents/code_edits.py): edits of any candidate file, made
in place, valid before they cost an evaluation, accepted by the real sandbox, chosen and credited
by the offline researcher, and a default run that grows a tree from a root written outside the
template family."""

import difflib
import json
import random
from pathlib import Path

import pytest

import helpers
from archlab.agents import code_edits
from archlab.agents.offline import CODE, CODE_SHARE, OfflineBrain
from archlab.agents.schema import Context
from archlab.knowledge import KnowledgeIndex
from archlab.sandbox import runner
from archlab.templates import ROOTS, render_root

HERE = Path(__file__).parent
RETENTION = (HERE / "roots" / "retention.py").read_text()  # no step(), LayerNorm, a sigmoid gate, GELU features
GLA = (HERE.parent / "bench" / "roots" / "gla_ablated.py").read_text()  # a step(), no gate, no norm
IN_PLACE = ("activation", "norm_swap", "constant", "ablate")
COMPOSED = ("conv", "gate", "norm", "skip", "layers", "ffn")


def changed_lines(a: str, b: str) -> list[str]:
    return [
        line
        for line in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def test_every_operator_edits_a_file_written_outside_the_template_family():
    for op in code_edits.OPERATORS:
        if op == "crossover":
            continue
        made = code_edits.edits(RETENTION, op)
        assert made, op
        for edit in made:
            assert edit.operator == op and edit.says and json.dumps(edit.spec)
            code_edits.Source(edit.code)  # parses
            if op in IN_PLACE:  # one line changed, the rest of the file (comments, layout) as it was
                assert len(changed_lines(RETENTION, edit.code)) == 2, (op, changed_lines(RETENTION, edit.code))
            elif op != "ffn":  # composition and layout only add to the file
                assert edit.code.startswith(RETENTION.rstrip("\n")), op


def test_in_place_edits_change_what_they_say():
    by_says = {e.says: e for op in IN_PLACE for e in code_edits.edits(RETENTION, op)}
    swapped = by_says["use silu instead of gelu in Mixer.forward"]
    assert changed_lines(RETENTION, swapped.code)[1].count("F.silu(q)") == 1
    assert "nn.RMSNorm(d_model, eps=1e-5)" in by_says["use RMSNorm instead of LayerNorm in Mixer.__init__"].code
    assert "eps=1e-06" in by_says["set eps to 1e-06 (was 1e-05) in Mixer.__init__ (site 3)"].code
    ungated = by_says["remove the gate torch.sigmoid(self.gate(x)) in Mixer.forward"].code
    assert "self.proj_out((self.out_norm(o)))" in ungated
    assert "self.proj_out((o) * torch.sigmoid" in by_says["remove self.out_norm (LayerNorm) in Mixer.forward"].code
    # a factor of a constant is a scale, not a gate: `F.gelu(q) * 0.5` keeps its activation
    assert not any("remove the gate F.gelu" in s for s in by_says)
    # a size stays below the training length (a chunk as long as the sequence is rejected as quadratic)
    sizes = {
        e.spec["to"]
        for e in code_edits.edits(render_root("deltanet"), "constant", max_size=64)
        if e.says.startswith("set CHUNK_SIZE")
    }
    assert sizes == {32}, sizes


def test_a_spec_makes_the_same_edit_again_on_this_file_and_on_others():
    for op in (*IN_PLACE, *COMPOSED):
        for edit in code_edits.edits(RETENTION, op):
            assert code_edits.redo(RETENTION, op, edit.spec).code == edit.code
    # a composition transplants to any file, a site edit only where the site is the same
    gate = next(e for e in code_edits.edits(RETENTION, "gate") if e.spec == {"variant": "silu"})
    other = code_edits.redo(GLA, "gate", gate.spec)
    assert other is not None and other.code.startswith(GLA.rstrip("\n"))
    assert code_edits.redo(GLA, "norm_swap", {"site": "Mixer.__init__#1", "from": "LayerNorm", "to": "RMSNorm"}) is None


def test_edits_that_would_fail_at_once_are_skipped():
    # A graft whose forward reads attributes the parent's __init__ never sets is not offered, nor one
    # that names something neither file defines; the whole class, which brings both along, is.
    donor = GLA.replace(
        "        return self.to_out(o.transpose(1, 2).reshape(b, t, d))\n",
        "        return self.extra(self.to_out(o.transpose(1, 2).reshape(b, t, d))) * helper_scale()\n",
    )
    donor = donor.replace(
        "        self.to_out = nn.Linear(d_model, d_model, bias=False)\n",
        "        self.to_out = nn.Linear(d_model, d_model, bias=False)\n        self.extra = nn.Identity()\n",
    )
    parts = [e.spec["part"] for e in code_edits.edits(GLA, "crossover", {5: donor})]
    assert "Mixer.forward" not in parts and "Mixer" not in parts and "Mixer.__init__" in parts
    donor_ok = donor + "\n\ndef helper_scale():\n    return 1.0\n"
    grafts = {e.spec["part"]: e for e in code_edits.edits(GLA, "crossover", {5: donor_ok})}
    assert "Mixer" in grafts and "def helper_scale" in grafts["Mixer"].code  # its dependency comes with it
    assert grafts["Mixer"].says == "take class Mixer from node 5 (with helper_scale)"
    # a file the static rules reject is never an edit, and seen files are never chosen again
    assert code_edits.edits("import os\n" + RETENTION, "gate") == []
    assert code_edits.first(code_edits.edits(RETENTION, "norm_swap"), RETENTION, seen=lambda code: True) is None


@pytest.mark.e2e
@pytest.mark.parametrize("root", ["retention", "gla"])
def test_every_composition_passes_the_sandbox(root):
    """Each wrapper, layout and FFN on a file with step() (its decoding must agree with forward)
    and on one without, through the real sandbox's checks (contract, causality, budget, step)."""
    code = {"retention": RETENTION, "gla": GLA}[root]
    for op in COMPOSED:
        for edit in code_edits.edits(code, op):
            result = runner.evaluate(edit.code, "check", threads=1)
            assert result.ok, (op, edit.spec, result.reason, result.detail)
            assert result.metrics["has_step"] == (root == "gla"), (
                op,
                result.metrics,
            )  # the wrapper keeps decoding recurrent


@pytest.mark.e2e
def test_an_edit_of_forward_is_made_in_step_too():
    """A forward and its step compute the same gate: an edit of one alone is rejected by the
    sandbox's step check (seen in a benchmark run). Every in-place edit of a gated file with a
    step() keeps them in agreement, through the real sandbox. (The gate wrapper's code, made the
    file's own: in-place edits leave what code operators appended alone.)"""
    gated = code_edits.edits(GLA, "gate")[0].code.replace(code_edits.MARK, "#")
    made = [e for op in ("ablate", "activation") for e in code_edits.edits(gated, op)][:5]
    assert made and all("1 more place(s) that read the same" in e.says for e in made), [e.says for e in made]
    for edit in made:
        assert len(changed_lines(gated, edit.code)) == 4, edit.says  # forward's line and step's
        result = runner.evaluate(edit.code, "check", threads=1)
        assert result.ok, (edit.says, result.reason, result.detail)


def context(
    parent_code: str, design: dict | None, history: list[dict], seed: int, references=(), codes=None
) -> Context:
    parent = {"id": 3, "design": design, "fitness": 0.01, "metrics": {"val_loss": 2.3}, "analysis": None}
    return Context(
        node_id=9,
        parent=parent,
        root={"id": 0, "metrics": {"val_loss": 2.34}},
        parent_code=parent_code,
        history=history,
        references=list(references),
        rng=random.Random(seed),
        code=lambda node_id: (codes or {})[node_id],
    )


def code_row(node: int, op: str, gain: float, edit: dict | None = None) -> dict:
    return {
        "node": node,
        "operator": CODE + op,
        "fitness": None if gain is None else gain,
        "parent_fitness": 0.0,
        "change": None,
        "edit": edit,
    }


def test_a_file_without_a_design_gets_code_edits_untried_operators_first():
    knowledge = KnowledgeIndex.load(embeddings=False)
    brain = OfflineBrain(knowledge)
    history = [code_row(4, "gate", -0.2), code_row(5, "conv", 0.05)]
    for seed in range(10):
        proposal, (trace,) = brain.research(context(RETENTION, None, history, seed))
        ranked = trace.decision["ranked"]
        assert ranked[-2:] == [CODE + "conv", CODE + "gate"], ranked  # tried last, the one that hurt at the end
        assert proposal.operator.startswith(CODE) and proposal.design is None and proposal.code != RETENTION
        assert trace.decision["edit"] and proposal.motivation.endswith(".")


def test_untried_operators_come_in_the_prior_order_after_the_recommended():
    """With no record, the parts a root most likely lacks (gate, conv, norm) come first, unless the
    knowledge base recommends others for the parent's weaknesses."""
    knowledge = KnowledgeIndex.load(embeddings=False)
    prior = list(code_edits.OPERATORS)
    firsts = set()
    for seed in range(8):
        proposal, (trace,) = OfflineBrain(knowledge).research(context(GLA, None, [], seed))
        recommended = {
            op
            for hit in trace.decision["retrieved"]
            if hit["kind"] == "entry"
            for op in knowledge.entry(hit["id"]).operators
        }
        ranked = [name.removeprefix(CODE) for name in trace.decision["ranked"]]
        assert ranked == sorted(
            ranked, key=lambda op: (code_edits.OPERATORS[op][1] not in recommended, prior.index(op))
        ), ranked
        firsts.add(ranked[0])
        assert proposal.operator == CODE + ranked[0]
    assert firsts & {"gate", "conv", "norm"}, firsts


def test_where_scaling_a_constant_cost_the_opposite_is_the_bet():
    """Credit per arm, not per operator: one constant scaled up that hurt makes the same constant
    scaled down the next bet (the operator's mean alone had sunk it), and the other way round."""
    knowledge = KnowledgeIndex.load(embeddings=False)
    site = "Mixer.parts#1"  # the decay divisor `/ 8`
    others = [code_row(10 + i, op, 0.0) for i, op in enumerate(code_edits.OPERATORS) if op != "constant"]
    hurt = [code_row(4, "constant", -0.12, {"site": site, "from": 8, "to": 16})]
    for seed in range(6):
        proposal, (trace,) = OfflineBrain(knowledge).research(context(GLA, None, others + hurt, seed))
        assert trace.decision["edit"] == {"site": site, "from": 8, "to": 4}, trace.decision["edit"]
        assert "/ 4" in proposal.code and trace.decision["arms"]
    helped = [code_row(4, "constant", 0.12, {"site": site, "from": 16, "to": 8})]  # down helped: keep going down
    _, (trace,) = OfflineBrain(knowledge).research(context(GLA, None, others + helped, 0))
    assert trace.decision["edit"] == {"site": site, "from": 8, "to": 4}, trace.decision["edit"]
    assert code_edits.arm("constant", {"site": site, "from": 8, "to": 4}) == code_edits.arm(
        "constant", {"site": site, "from": 16, "to": 8}
    )
    assert code_edits.arm("gate", {"variant": "silu"}, flip=True) is None


def test_in_place_edits_leave_what_code_operators_appended_alone():
    """Swapping or removing the gate a wrapper just added undoes the edit that made the parent: the
    wrapper's own variants are its operator's. The file's own code is still edited."""
    gated = code_edits.edits(GLA, "gate")[0].code
    appended = gated[gated.index(code_edits.MARK) :]
    for op in IN_PLACE:
        made = code_edits.edits(gated, op)
        assert [e.spec for e in made] == [e.spec for e in code_edits.edits(GLA, op)], (
            op
        )  # the same sites as without the wrapper
        assert all(e.code.endswith(appended) for e in made), op


def test_the_code_edit_that_paid_elsewhere_is_made_again_here():
    knowledge = KnowledgeIndex.load(embeddings=False)
    history = [code_row(4, "gate", 0.09, {"variant": "sigmoid"}), code_row(5, "skip", -0.1, {"variant": "learned"})]
    proposals = [OfflineBrain(knowledge).research(context(GLA, None, history, seed)) for seed in range(20)]
    transplanted = [(p, t) for p, (t,) in proposals if t.decision["transplant"]]
    assert 4 <= len(transplanted) <= 16  # about half of the time
    for p, t in transplanted:
        assert t.decision["edit"] == {"variant": "sigmoid"} and t.decision["transplant"]["node"] == 4
        assert "sigmoid(self.gate_up" in p.code and "node 4" in p.motivation
    blind = [
        OfflineBrain(knowledge, guided=False).research(context(GLA, None, history, seed))[1][0] for seed in range(10)
    ]
    assert not any(t.decision["transplant"] for t in blind)


def test_crossover_takes_parts_from_the_references():
    knowledge = KnowledgeIndex.load(embeddings=False)
    full = (HERE.parent / "bench" / "roots" / "gla_full.py").read_text()
    refs = [{"id": 7, "fitness": 0.2}]
    tried = [code_row(10 + i, op, -0.05) for i, op in enumerate(code_edits.OPERATORS) if op != "crossover"]
    seen = set()
    for seed in range(10):
        proposal, (trace,) = OfflineBrain(knowledge).research(context(GLA, None, tried, seed, refs, {7: full}))
        assert trace.decision["donors"] == [7]
        seen.add(proposal.operator)
        if proposal.operator == CODE + "crossover":
            assert trace.decision["edit"]["donor"] == 7 and "from node 7" in proposal.motivation
    assert CODE + "crossover" in seen


def test_a_template_parent_mixes_both_kinds_and_learns_which_pays():
    knowledge = KnowledgeIndex.load(embeddings=False)
    design, code = ROOTS["deltanet"][1].model_dump(), render_root("deltanet")

    def share(history):
        ops = [OfflineBrain(knowledge).research(context(code, design, history, seed))[0].operator for seed in range(60)]
        return sum(op.startswith(CODE) for op in ops) / len(ops)

    assert 0.03 <= share([]) <= 0.35  # CODE_SHARE of the proposals: the bandit gets to see code edits
    assert CODE_SHARE < 0.35
    template = [
        {
            "node": n,
            "operator": "output_gate",
            "fitness": -0.05,
            "parent_fitness": 0.0,
            "change": {"output_gate": "none"},
        }
        for n in range(10, 13)
    ]
    paying = [code_row(n, "gate", 0.1, {"variant": "silu"}) for n in range(20, 23)]
    assert share(template + paying) >= 0.35  # once code edits paid more, they get the larger share
    blind = [
        OfflineBrain(knowledge, guided=False).research(context(code, design, [], s))[0].operator for s in range(20)
    ]
    assert not any(op.startswith(CODE) for op in blind)  # the baselines keep their published template search


@pytest.mark.timeout(600)
@pytest.mark.e2e
def test_the_default_brain_grows_a_tree_from_a_foreign_root(tmp_path):
    run_dir = tmp_path / "run"
    root = tmp_path / "my_retention.py"
    root.write_text(RETENTION)
    done = helpers.cli(
        "run", run_dir, "--root", root, "--tier", "micro", "--max-nodes", 7, "--threads", helpers.THREADS, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = helpers.assert_finished_run(run_dir, 7)
    children = rows[1:]
    assert all(r["operator"].startswith(CODE) and r["design"] is None for r in children), [
        r["operator"] for r in children
    ]
    assert sum(r["status"] == "done" for r in children) >= 4, [(r["operator"], r["reason"]) for r in children]
    assert len({r["operator"] for r in children}) >= 4  # untried operators first
    traces = helpers.table_rows(run_dir, "traces")
    for r in children:
        decision = next(
            json.loads(t["decision"]) for t in traces if t["node_id"] == r["id"] and t["role"] == "researcher"
        )
        assert decision["operator"] == r["operator"] and decision["edit"], decision
        parent = next(p for p in rows if p["id"] == r["parent_id"])
        assert changed_lines(helpers.code_at(run_dir, parent["commit_sha"]), helpers.code_at(run_dir, r["commit_sha"]))
