"""The quality-diversity archive: mechanisms read from code, fixed bins, elites, coverage and
QD-score, parents drawn from it, and runs from before it (real SQLite stores, real root files)."""

import random
import sqlite3
import textwrap
from pathlib import Path

import pytest

from archlab.config import RunConfig
from archlab.sandbox.mechanisms import mechanisms, named
from archlab.sandbox.tiers import TIERS
from archlab.search import archive, context, pipeline, sampling
from archlab.search.driver import Run
from archlab.templates import render_root
from archlab.tree.readonly import ReadOnlyStore
from archlab.tree.store import Store

REPO = Path(__file__).resolve().parents[1]
MICRO, SMOKE, EXPLORE = TIERS["micro"], TIERS["smoke"], TIERS["explore"]
# The micro root's measured figures (d_model 64, 2 layers): 16,384 embedding + 320 norm numbers,
# then per block 21,520 in the mixer and 36,864 in the harness MLP.
ROOT = {"params": 133472, "mixer_params": 21520, "tokens_per_s": 25000.0}


def mixer(body: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
        {extra}

        class Mixer(nn.Module):
            def __init__(self, d_model, n_heads, **kwargs):
                super().__init__()
                self.proj = nn.Linear(d_model, d_model)
                self.g = nn.Linear(d_model, d_model)

            def forward(self, x):
        {textwrap.indent(textwrap.dedent(body), "        ")}
        """
    )


@pytest.mark.parametrize(
    "root, found, called",
    [
        ("deltanet", {"delta", "convolution", "gating"}, "delta+gating+convolution"),
        ("gated_deltanet", {"delta", "decay", "convolution", "gating"}, "delta+decay+gating+convolution"),
        ("deltanet_ablated", {"delta"}, "delta"),  # its helper takes log_decay=None: read, never given a value
        ("transformer", set(), "none"),
    ],
)
def test_mechanisms_of_the_template_roots(root, found, called):
    assert mechanisms(render_root(root)) == found
    assert named(found) == called


def test_mechanisms_of_code_outside_the_template():
    retention = mechanisms((REPO / "tests/roots/retention.py").read_text())
    assert retention == {"decay", "gating"} and named(retention) == "decay+gating"  # a gammas buffer, a sigmoid gate
    assert mechanisms((REPO / "bench/roots/gla_ablated.py").read_text()) == {"decay"}
    assert mechanisms((REPO / "bench/roots/gla_full.py").read_text()) == {"decay", "gating", "convolution"}


def test_mechanism_rules_on_small_mixers():
    assert mechanisms(mixer("return self.proj(x) * torch.sigmoid(self.g(x))")) == {"gating"}
    assert mechanisms(mixer("return self.proj(x) * self.g(x).sigmoid()")) == {"gating"}
    assert mechanisms(mixer("return 2 * self.g(x).sigmoid()")) == set(), "a constant times a sigmoid is no gate"
    assert mechanisms(mixer("return F.conv1d(x, self.proj.weight[:, :, None])")) == {"convolution"}
    assert mechanisms(mixer("log_decay = None\nreturn self.proj(x)")) == set()
    assert mechanisms(mixer("log_decay = F.logsigmoid(self.g(x))\nreturn self.proj(x) * log_decay.exp()")) == {"decay"}
    assert mechanisms(mixer("forget_gate = self.g(x)\nreturn self.proj(x)")) == {"decay"}, "a forget gate decays"
    hybrid = mixer("return self.proj(x)", extra='LAYERS = "MA"')
    assert mechanisms(hybrid) == {"hybrid"} and named(mechanisms(hybrid)) == "hybrid"
    assert mechanisms(mixer("return self.proj(x)", extra='LAYERS = "A"')) == set(), "attention alone is no hybrid"
    ffn = mixer("return self.proj(x)") + textwrap.dedent(
        """
        class FFN(nn.Module):
            def forward(self, x):
                return F.silu(self.up(x)) * self.gate(x)
        """
    )
    assert mechanisms(ffn) == set(), "the FFN's GLU is not the mixer's gate"
    assert mechanisms("class Mixer(:") == set() and named(set()) == "none"
    assert named({"gating", "delta", "hybrid"}) == "hybrid+delta+gating", "in MECHANISMS' order"


def test_bins_are_fixed_and_relative_to_the_root():
    values = archive.describe(ROOT, ROOT, render_root("deltanet"), MICRO)
    assert values["mechanisms"] == ["convolution", "delta", "gating"] and values["speed"] == 0.0
    assert values["share"] == pytest.approx(21520 / (21520 + 36864))
    assert archive.cell(values, MICRO) == "mechanisms=26;speed=2;share=3"  # delta 2 + gating 8 + convolution 16
    assert archive.MECHANISM_LABELS[26] == "delta+gating+convolution"
    twice = archive.describe({**ROOT, "tokens_per_s": 50000.0}, ROOT, None, MICRO)
    assert twice["mechanisms"] == [] and archive.bins(archive.cell(twice, MICRO))["speed"] == 4  # 2x: the top bin
    half = archive.describe({**ROOT, "tokens_per_s": 12600.0}, ROOT, None, MICRO)
    assert archive.bins(archive.cell(half, MICRO))["speed"] == 1  # just above 1/2
    assert archive.cell(archive.describe({**ROOT, "tokens_per_s": None}, ROOT, None, MICRO), MICRO) == ""
    # Only what the tier measures: micro has neither state bytes nor probes, explore has both.
    assert archive.axes(MICRO) == ("mechanisms", "speed", "share") and archive.reachable(MICRO) == 32 * 5 * 10
    assert archive.axes(SMOKE)[-1] == "state" and archive.reachable(SMOKE) == 32 * 5 * 10 * 5
    assert archive.reachable(EXPLORE) == 32 * 5 * 10 * 5 * 4
    root = {**ROOT, "state_bytes": 4096, "mqar_acc_p2": 1.0, "mqar_acc_p8": 0.3}
    node = {**root, "state_bytes": 16384, "mqar_acc_p8": 0.8}
    values = archive.describe(node, root, None, EXPLORE)
    assert values["state"] == 2.0 and values["recall"] == 0.8  # the hardest level: 8 pairs
    # (the share is read at explore's width, d_model 128: 21,520 of (133,472 - 32,768 - 640) / 2 per block)
    assert archive.bins(archive.cell(values, EXPLORE)) == {
        "mechanisms": 0,
        "speed": 2,
        "share": 4,
        "state": 4,
        "recall": 3,
    }


def _store(tmp_path: Path, nodes: list[tuple]) -> Store:
    """A real run store holding (id, status, fitness, cell) nodes."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = Store(tmp_path, create=True)
    for node_id, status, fit, key in nodes:
        store.add_node(id=node_id, parent_id=None if node_id == 0 else 0, status=status, fitness=fit, cell=key)
    return store


CELL_A, CELL_B, CELL_C = (
    "mechanisms=26;speed=2;share=3",
    "mechanisms=26;speed=4;share=3",
    "mechanisms=27;speed=2;share=5",
)


def test_elites_coverage_and_qd_score(tmp_path):
    store = _store(
        tmp_path,
        [
            (0, "done", 0.0, CELL_A),
            (1, "done", 0.3, CELL_A),
            (2, "done", 0.3, CELL_A),  # ties go to the older node
            (3, "done", -0.5, CELL_B),
            (4, "done", -2.0, CELL_C),  # below the floor: occupies its cell, adds nothing to the score
            (5, "failed", None, None),
            (6, "done", 0.9, ""),  # could not be placed
        ],
    )
    found = archive.load(store, MICRO)
    assert {k: e["id"] for k, e in found.elites.items()} == {CELL_A: 1, CELL_B: 3, CELL_C: 4}
    assert found.coverage == 3 / 1600
    assert found.qd_score == pytest.approx((0.3 + 1) + (-0.5 + 1) + 0)
    assert {at: e["id"] for at, e in found.projection("mechanisms", "share").items()} == {(26, 3): 1, (27, 5): 4}
    g = archive.grid(found)
    assert (g["x"], g["y"]) == ("mechanisms", "share") and g["occupied"] == 3 and len(g["cells"]) == 2
    with pytest.raises(ValueError, match="no 'recall' axis"):
        archive.grid(found, "mechanisms", "recall")
    assert (
        archive.load(store, MICRO, where="status = 'done' and fitness is not null and id != 1").elites[CELL_A]["id"]
        == 2
    )


def test_qd_strategy_draws_elites_deterministically(tmp_path):
    store = _store(
        tmp_path,
        [(0, "done", 0.0, CELL_A), (1, "done", 0.2, CELL_A), (2, "done", 0.1, CELL_B), (3, "done", -0.4, CELL_C)],
    )
    draws = [sampling.select_parent(store, "qd", random.Random(seed))["id"] for seed in range(40)]
    assert draws == [sampling.select_parent(store, "qd", random.Random(seed))["id"] for seed in range(40)]
    assert set(draws) == {1, 2}, "uniform over the cells whose elite did not lose to the root, then the elite"
    mixed = [sampling.select_parent(store, "asi-qd", random.Random(seed)) for seed in range(200)]
    ways = [p["drawn"] for p in mixed]
    assert 0.1 < ways.count("archive") / len(ways) < 0.3  # asi's exploring share, EXPLORE_SHARE = 0.2
    assert {p["id"] for p in mixed if p["drawn"] == "archive"} == {1, 2}
    # asi-qd weighs the cells by their elites' rank (the best half the time), qd draws them uniformly
    four = _store(
        tmp_path / "four",
        [(0, "done", 0.0, CELL_A), (1, "done", 0.3, CELL_B), (2, "done", 0.2, CELL_C), (3, "done", 0.1, CELL_A)],
    )
    ranked = [sampling.select_parent(four, "asi-qd", random.Random(seed)) for seed in range(2000)]
    ranked = [p["id"] for p in ranked if p["drawn"] == "archive"]
    uniform = [sampling.select_parent(four, "qd", random.Random(seed))["id"] for seed in range(400)]
    assert 0.45 < ranked.count(1) / len(ranked) < 0.65 and ranked.count(2) > ranked.count(3)  # 4/7, 2/7, 1/7
    assert all(0.25 < uniform.count(i) / len(uniform) < 0.42 for i in (1, 2, 3))  # the elites of 3 cells
    # the rest is asi's own draw, parent for parent: asi-qd exploits exactly as asi does
    plain = [sampling.select_parent(store, "asi", random.Random(seed))["id"] for seed in range(200)]
    assert all(p["id"] == q for p, q in zip(mixed, plain) if p["drawn"] == "asi")
    only_losers = _store(tmp_path / "losers", [(0, "done", -0.1, CELL_A), (1, "done", -0.3, CELL_B)])
    assert sampling.select_parent(only_losers, "qd", random.Random(0))["id"] in {0, 1}
    assert sampling.select_parent(_store(tmp_path / "empty", []), "qd", random.Random(0)) is None


def test_a_run_from_before_the_archive_opens_and_is_described(tmp_path):
    """A store without the archive's columns: read-only it is described in memory, and opening it
    for writing (as resuming does) adds the columns and fills them with the same cells."""
    store = Store(tmp_path, create=True)
    code = render_root("deltanet")
    for node_id, speed in ((0, 25000.0), (1, 51000.0)):
        store.add_node(
            id=node_id,
            parent_id=None if node_id == 0 else 0,
            status="done",
            fitness=0.1 * node_id,
            metrics={**ROOT, "tokens_per_s": speed},
        )
        store.save_code(node_id, code)
    store.close()
    db = sqlite3.connect(tmp_path / "archlab.db")
    db.execute("drop index if exists idx_nodes_cell_fitness")
    db.execute("alter table nodes drop column cell")
    db.execute("alter table nodes drop column descriptors")
    db.commit()
    db.close()

    old = ReadOnlyStore(tmp_path)
    assert not old.has_column("nodes", "cell") and old.archive_elites() is None
    lazily = archive.load(old, MICRO)
    old.close()
    assert {k: e["id"] for k, e in lazily.elites.items()} == {CELL_A: 0, CELL_B: 1}

    resumed = Store(tmp_path, create=True)
    assert len(resumed.undescribed(archive.OUTDATED)) == 2
    assert archive.backfill(resumed, MICRO) == 2 and resumed.undescribed(archive.OUTDATED) == []
    assert resumed.node(1)["descriptors"]["mechanisms"] == ["convolution", "delta", "gating"]
    assert resumed.node(1)["cell"] == CELL_B
    assert archive.load(resumed, MICRO).elites == lazily.elites
    assert archive.backfill(resumed, MICRO) == 0
    # A cell of the archive before the mechanisms axis (one "family" bin) is described again too.
    resumed.update_node(1, cell="family=1;speed=4;share=3")
    assert archive.load(resumed, MICRO).elites == lazily.elites  # read: placed anew, in memory
    assert archive.backfill(resumed, MICRO) == 1 and resumed.node(1)["cell"] == CELL_B


def test_the_frontier_of_a_cell_is_its_empty_neighbours_in_words(tmp_path):
    """What an exploring researcher is told: the parent's cell and the cells one step away (any other
    mechanism more or fewer; one bin up or down elsewhere) that no node holds; and the sets of
    mechanisms held."""
    near = "mechanisms=26;speed=3;share=3"  # next to CELL_A on the speed axis, occupied
    store = _store(
        tmp_path, [(0, "done", 0.0, CELL_A), (1, "done", 0.2, CELL_A), (2, "done", 0.1, near), (3, "failed", None, "")]
    )
    assert archive.words(CELL_A) == (
        "mechanisms delta+gating+convolution, training tokens/s vs the root 0.84-1.19x, "
        "mixer share of a block's parameters 30-40%"
    )
    empty = archive.frontier(store.archive_elites(), CELL_A, limit=20)
    assert len(empty) == 5 + 1 + 2 and near not in empty and CELL_A not in empty
    assert "mechanisms=27;speed=2;share=3" in empty and "mechanisms=24;speed=2;share=3" in empty  # +hybrid, -delta
    assert "mechanisms=26;speed=1;share=3" in empty
    assert "mechanisms=26;speed=2;share=4" in empty and "mechanisms=26;speed=2;share=2" in empty
    assert archive.frontier(store.archive_elites(), CELL_A) == empty[:6]
    assert archive.frontier(store.archive_elites(), "mechanisms=0;speed=0;share=0", limit=20)[-2:] == [
        "mechanisms=0;speed=1;share=0",
        "mechanisms=0;speed=0;share=1",
    ]  # no bin below the first
    assert context.explore(store, store.node(1)) == {
        "cell": archive.words(CELL_A),
        "empty": [archive.words(k) for k in empty[:6]],
        "held": ["delta+gating+convolution"],
    }


def test_asi_qd_marks_the_parents_it_draws_from_the_archive_for_exploring(tmp_path):
    config = RunConfig(tier="micro", strategy="asi-qd")
    Run.create(tmp_path / "run", config)
    run = Run(tmp_path / "run", config, brain=None)
    for node_id, fit, key in ((1, 0.2, CELL_A), (2, 0.1, CELL_B), (3, 0.3, CELL_A)):
        run.store.add_node(id=node_id, parent_id=0, status="done", fitness=fit, cell=key)
    states = [pipeline.select(run, {}) for _ in range(60)]
    drawn = [t["decision"]["drawn"] for t in run.store.traces_of("selector", "offline")]
    assert [s["explore"] for s in states] == [d == "archive" for d in drawn]
    assert 3 <= drawn.count("archive") <= 25
    assert {s["parent_id"] for s in states if s["explore"]} <= {2, 3}  # the elites of the cells
