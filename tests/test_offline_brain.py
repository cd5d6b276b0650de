"""The offline researcher's choices: the guided default reuses what worked elsewhere in the
tree; the baselines draw uniformly."""

import random

from archlab.agents.offline import BY_NAME, OPERATORS, OfflineBrain
from archlab.agents.schema import Context
from archlab.knowledge import KnowledgeIndex
from archlab.templates import ROOTS

ABLATED = ROOTS["deltanet_ablated"][1].model_dump()
SPEED_ONLY = {op.name for op in OPERATORS if op.speed_only}


def context(history: list[dict], seed: int, val_loss: float = 2.3) -> Context:
    parent = {"id": 3, "design": ABLATED, "fitness": 0.01, "metrics": {"val_loss": val_loss}, "analysis": None}
    return Context(
        node_id=9,
        parent=parent,
        root={"id": 0, "metrics": {"val_loss": 2.34}},
        history=history,
        rng=random.Random(seed),
    )


def every_value_set(gain: float, but) -> list[dict]:
    """A history in which every value of every operator was set once with this gain, except where but(op, value)."""
    changes = [(op, value) for op in OPERATORS for value in op.values if not but(op, value)]
    return [
        {"node": 100 + n, "operator": op.name, "fitness": gain, "parent_fitness": 0.0, "change": {op.field: value}}
        for n, (op, value) in enumerate(changes)
    ]


def test_guided_researcher_transplants_the_best_change_found_elsewhere():
    knowledge = KnowledgeIndex.load(embeddings=False)
    history = [  # node 4 gained from an output gate, node 5 lost from a forget gate, node 6 gained less
        {
            "node": 4,
            "operator": "output_gate",
            "fitness": 0.09,
            "parent_fitness": 0.0,
            "change": {"output_gate": "silu"},
        },
        {
            "node": 5,
            "operator": "forget_gate",
            "fitness": -0.2,
            "parent_fitness": 0.0,
            "change": {"forget_gate": "data"},
        },
        {"node": 6, "operator": "short_conv", "fitness": 0.03, "parent_fitness": 0.0, "change": {"short_conv": True}},
    ]
    guided, blind = OfflineBrain(knowledge), OfflineBrain(knowledge, guided=False)
    transplanted = 0
    for seed in range(40):
        proposal, (trace,) = guided.research(context(history, seed))
        if trace.decision["transplant"]:
            transplanted += 1
            assert trace.decision["transplant"] == {"node": 4, "gain": 0.09, "mean_gain": 0.09, "times": 1}
            assert proposal.design["output_gate"] == "silu" and "node 4" in proposal.motivation
        proposal, (trace,) = blind.research(context(history, seed))
        assert trace.decision["transplant"] is None
    assert 10 <= transplanted <= 30  # about half of the time, not always


def test_a_transplant_the_parent_already_has_is_not_proposed():
    knowledge = KnowledgeIndex.load(embeddings=False)
    history = [{"node": 4, "operator": "qk_norm", "fitness": 0.09, "parent_fitness": 0.0, "change": {"qk_norm": False}}]
    for seed in range(10):  # the ablated parent already has qk_norm False
        _, (trace,) = OfflineBrain(knowledge).research(context(history, seed))
        assert trace.decision["transplant"] is None


def test_a_gain_within_seed_noise_is_not_transplanted():
    knowledge = KnowledgeIndex.load(embeddings=False)
    history = [
        {
            "node": 4,
            "operator": "output_gate",
            "fitness": 0.015,
            "parent_fitness": 0.0,
            "change": {"output_gate": "silu"},
        }
    ]
    for seed in range(20):
        _, (trace,) = OfflineBrain(knowledge).research(context(history, seed))
        assert trace.decision["transplant"] is None
    history[0]["fitness"] = 0.03  # above the noise floor: reused about half of the time
    assert any(
        OfflineBrain(knowledge).research(context(history, seed))[1][0].decision["transplant"] for seed in range(20)
    )


def test_a_change_that_stopped_paying_off_is_no_longer_transplanted():
    knowledge = KnowledgeIndex.load(embeddings=False)
    history = [  # a large gain once (node 4), then three transplants of the same change that hurt
        {
            "node": 4,
            "operator": "output_gate",
            "fitness": 0.3,
            "parent_fitness": 0.0,
            "change": {"output_gate": "silu"},
        },
        *(
            {
                "node": n,
                "operator": "output_gate",
                "fitness": 0.4,
                "parent_fitness": 0.5,
                "change": {"output_gate": "silu"},
            }
            for n in (5, 6, 7)
        ),
        {"node": 8, "operator": "short_conv", "fitness": 0.05, "parent_fitness": 0.0, "change": {"short_conv": True}},
    ]
    transplants = [
        OfflineBrain(knowledge).research(context(history, seed))[1][0].decision["transplant"] for seed in range(20)
    ]
    assert {t["node"] for t in transplants if t} == {8}, transplants
    # after one failed transplant the average (+0.10) still clears the noise floor
    proposals = [OfflineBrain(knowledge).research(context(history[:2] + history[4:], seed)) for seed in range(20)]
    transplanted = [p for p, (trace,) in proposals if trace.decision["transplant"]]
    assert transplanted and all(p.design["output_gate"] == "silu" for p in transplanted)
    assert "+0.1000 on average over 2 tries" in transplanted[0].motivation


def test_bandit_tries_every_operator_once_before_the_one_that_hurt():
    knowledge = KnowledgeIndex.load(embeddings=False)
    history = [
        {
            "node": 4,
            "operator": "output_gate",
            "fitness": 0.09,
            "parent_fitness": 0.0,
            "change": {"output_gate": "silu"},
        },
        {
            "node": 5,
            "operator": "forget_gate",
            "fitness": -0.2,
            "parent_fitness": 0.0,
            "change": {"forget_gate": "data"},
        },
    ]
    for seed in range(10):
        _, (trace,) = OfflineBrain(knowledge).research(context(history, seed))
        ranked = trace.decision["ranked"]
        assert ranked[-2:] == ["output_gate", "forget_gate"], ranked


def test_credit_goes_to_the_value_an_operator_set():
    # Removing the output norm helped three times; putting it back hurt. The parent lacks the norm,
    # so its only output_norm move is the one that hurt: an operator-level mean would still rank it first.
    knowledge = KnowledgeIndex.load(embeddings=False)
    history = every_value_set(-0.01, but=lambda op, value: op.name == "output_norm")
    history += [
        {
            "node": 20 + n,
            "operator": "output_norm",
            "fitness": 0.3,
            "parent_fitness": 0.0,
            "change": {"output_norm": False},
        }
        for n in range(3)
    ]
    history.append(
        {
            "node": 30,
            "operator": "output_norm",
            "fitness": -0.35,
            "parent_fitness": 0.0,
            "change": {"output_norm": True},
        }
    )
    for seed in range(10):
        ctx = context(history, seed)
        ctx.parent = {**ctx.parent, "design": {**ABLATED, "output_norm": False}}
        proposal, (trace,) = OfflineBrain(knowledge).research(ctx)
        quality = [name for name in trace.decision["ranked"] if name not in SPEED_ONLY]
        assert quality[-1] == "output_norm" and proposal.operator != "output_norm", trace.decision["ranked"]
        assert trace.decision["values"]["output_norm=true"] == {"n": 1, "mean_gain": -0.35}
    # on a parent that has the norm (the ablated root does), the move that helped comes first
    assert ABLATED["output_norm"] is True
    _, (trace,) = OfflineBrain(knowledge).research(context(history, 0))
    assert trace.decision["ranked"][0] == "output_norm"


def test_a_value_not_yet_tried_comes_before_retrying_its_sibling():
    knowledge = KnowledgeIndex.load(embeddings=False)
    history = [
        {"node": n, "operator": op.name, "fitness": -0.01, "parent_fitness": 0.0, "change": {}}
        for n, op in enumerate(OPERATORS)
        if op.name != "feature_map"
    ]
    history += [
        {
            "node": 20 + n,
            "operator": "feature_map",
            "fitness": 0.015,
            "parent_fitness": 0.0,
            "change": {"feature_map": "identity"},
        }
        for n in range(3)
    ]
    for seed in range(10):
        proposal, _ = OfflineBrain(knowledge).research(context(history, seed))
        assert proposal.operator == "feature_map" and proposal.design["feature_map"] in ("elu1", "relu"), (
            proposal.design
        )
    # doubling the heads hurt; halving them is a different bet and is tried before anything is retried
    history = every_value_set(0.01, but=lambda op, value: (op.name, value) == ("heads", 0.5))
    history[[r["change"] for r in history].index({"heads": 2})]["fitness"] = -0.16
    for seed in range(5):
        proposal, _ = OfflineBrain(knowledge).research(context(history, seed))
        assert proposal.design["heads"] == 0.5, proposal.design


def test_the_roots_placeholder_analysis_recommends_nothing():
    # The root's analysis only says that it is the root; entries retrieved with those words were
    # arbitrary, and the untried operators were ordered by them.
    knowledge = KnowledgeIndex.load(embeddings=False)
    root = {
        "id": 0,
        "design": ABLATED,
        "fitness": 0.0,
        "metrics": {"val_loss": 2.34},
        "analysis": "The root: every fitness in this run is relative to it.",
    }
    firsts = set()
    for seed in range(12):
        ctx = Context(node_id=1, parent=root, root=root, history=[], rng=random.Random(seed))
        assert ctx.knowledge_query() == ""
        _, (trace,) = OfflineBrain(knowledge).research(ctx)
        assert trace.decision["query"] == "" and trace.decision["retrieved"] == []
        firsts.add(trace.decision["operator"])
    assert len(firsts) >= 5, f"with nothing known against the root, the first operator is drawn uniformly: {firsts}"
    child = {**root, "id": 3, "analysis": "Node 3 (short_conv from node 0): validation loss worse than the root"}
    assert "short_conv" in Context(node_id=4, parent=child, root=root).knowledge_query()


def test_untried_operators_the_knowledge_base_recommends_come_first():
    knowledge = KnowledgeIndex.load(embeddings=False)
    for seed in range(10):
        ctx = context([], seed, val_loss=2.45)  # worse than the root: knowledge is searched for that weakness
        _, (trace,) = OfflineBrain(knowledge).research(ctx)
        recommended = {
            op
            for hit in trace.decision["retrieved"]
            if hit["kind"] == "entry"
            for op in knowledge.entry(hit["id"]).operators
        }
        ranked = trace.decision["ranked"]
        first = recommended & set(ranked) - SPEED_ONLY
        assert first and set(ranked[: len(first)]) == first, (recommended, ranked)


def test_operators_that_only_change_the_speed_are_swept_last():
    knowledge = KnowledgeIndex.load(embeddings=False)
    assert SPEED_ONLY == {"chunk_size"}  # the chunkwise delta rule is exact for any chunk size
    tried = [
        {
            "node": 4,
            "operator": "output_gate",
            "fitness": 0.09,
            "parent_fitness": 0.0,
            "change": {"output_gate": "silu"},
        }
    ]
    for seed in range(10):
        _, (trace,) = OfflineBrain(knowledge).research(context(tried, seed, val_loss=2.45))
        assert trace.decision["ranked"][-2:] == ["chunk_size", "output_gate"], trace.decision["ranked"]
    # once tried, a speed-only operator whose zero gain beats every real change that cost a little
    # still comes last; one that earned more than noise competes like the others
    tried = [
        {
            "node": n,
            "operator": op.name,
            "fitness": 0.0 if op.name == "chunk_size" else -0.01,
            "parent_fitness": 0.0,
            "change": {},
        }
        for n, op in enumerate(OPERATORS)
    ]
    assert OfflineBrain(knowledge).research(context(tried, 0))[1][0].decision["ranked"][-1] == "chunk_size"
    tried[OPERATORS.index(BY_NAME["chunk_size"])]["fitness"] = 0.05
    assert OfflineBrain(knowledge).research(context(tried, 0))[1][0].decision["ranked"][0] == "chunk_size"


EXPLORE = {"cell": "mechanisms delta, ...", "empty": ["mechanisms hybrid+delta, ..."]}


def test_an_exploring_parent_gets_the_change_to_a_new_set_the_bandit_rates_best():
    """Exploring (ctx.explore set, asi-qd's archive draws): among the changes that reach a set of
    mechanisms no node has, the one that gained most (output_gate=sigmoid: delta+gating), not the
    run's best change (qk_norm: the set the parent already has) nor a worse new set (hybrid); no
    transplant of a known gain. The same history without explore exploits qk_norm."""
    knowledge = KnowledgeIndex.load(embeddings=False)
    gains = {("output_gate", "sigmoid"): 0.10, ("qk_norm", True): 0.20, ("hybrid", "MA"): -0.30}
    history = every_value_set(0.0, but=lambda op, value: False)
    for row in history:
        row["fitness"] = gains.get((row["operator"], *row["change"].values()), -0.05)
    explore = {**EXPLORE, "held": ["delta"]}  # the ablated parent's set: every mechanism added is new
    designs = []
    for seed in range(30):
        ctx = context(history, seed)
        ctx.explore = explore
        proposal, (trace,) = OfflineBrain(knowledge).research(ctx)
        assert trace.decision["explore"]["new_set"] is True and trace.decision["explore"]["held"] == ["delta"]
        if proposal.operator.startswith("code:"):  # a template parent's share of code edits
            continue
        designs.append(proposal.design)
        assert trace.decision["transplant"] is None
        assert trace.decision["explore"]["empty"] == EXPLORE["empty"]
        assert trace.decision["ranked"][0] == "output_gate", trace.decision["ranked"]
        assert proposal.design["output_gate"] == "sigmoid", proposal.design
    assert len(designs) >= 20
    exploiting = [OfflineBrain(knowledge).research(context(history, seed))[0] for seed in range(10)]
    assert all(p.operator.startswith("code:") or p.design["qk_norm"] for p in exploiting)


def test_an_exploring_parent_first_gets_a_change_to_a_set_of_mechanisms_no_node_has():
    """Such a child opens a cell whatever its speed and share: read from the rendered code, it goes
    before an untried value (beta=const), which the bandit would try first otherwise. When no change reaches a new set, the parent is built on as any other (aiming at a speed or share
    bin alone chased timing noise)."""
    knowledge = KnowledgeIndex.load(embeddings=False)
    history = every_value_set(0.0, but=lambda op, value: op.name == "beta" and value == "const")
    held = ["delta", "delta+gating", "delta+convolution", "hybrid+delta"]  # the ablated parent is "delta"
    made = []
    for seed in range(20):
        ctx = context(history, seed)
        ctx.explore = {**EXPLORE, "held": held}
        proposal, _ = OfflineBrain(knowledge).research(ctx)
        if not proposal.operator.startswith("code:"):
            made.append(proposal.design["forget_gate"])
    assert made and set(made) <= {"data", "fixed"}, made  # the one change to delta+decay, a set not held
    for seed in range(10):
        ctx = context(history, seed)
        ctx.explore = {**EXPLORE, "held": [*held, "delta+decay"]}  # every set one change reaches is held
        proposal, (trace,) = OfflineBrain(knowledge).research(ctx)
        assert proposal == OfflineBrain(knowledge).research(context(history, seed))[0]
        assert trace.decision["explore"]["new_set"] is False
