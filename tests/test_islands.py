"""Islands (archlab/search/islands.py) on a real store and a real run directory: where parents come
from, migration at its interval, a new island on stagnation, the options. Real runs at the micro
tier are in test_islands_run.py."""

import collections
import random
import time

import pytest

import helpers
from archlab.config import RunConfig
from archlab.search import islands, pipeline, sampling
from archlab.search.driver import Run
from archlab.tree.store import DONE, Store


def tree(store: Store, rows: dict[int, tuple]) -> None:
    """Nodes by id: (parent, island, fitness), finished one second apart in id order (fitness None: failed)."""
    start = time.time() - 10_000
    for node_id, (parent, island, fitness) in rows.items():
        store.add_node(
            id=node_id,
            parent_id=parent,
            island=island,
            status="done" if fitness is not None else "failed",
            fitness=fitness,
            finished=start + node_id,
        )


def legal_parents(store: Store, island: int) -> set[int]:
    own = {n["id"] for n in store.nodes(f"{DONE} and island = ?", [island])}
    moved = {m["node_id"] for m in store.migrations() if m["to_island"] == island}
    return own | moved | {0}


# nodes 1-9 over three islands (1, 4, 7 on island 0, ...); 8 and 9 lost to the root
THREE = {
    0: (None, None, 0.0),
    1: (0, 0, 0.10),
    2: (0, 1, 0.05),
    3: (0, 2, 0.30),
    4: (1, 0, 0.20),
    5: (2, 1, 0.07),
    6: (3, 2, 0.40),
    7: (4, 0, 0.25),
    8: (5, 1, -0.10),
    9: (6, 2, None),
}


@pytest.mark.parametrize("strategy", ["asi-qd", "asi", "ucb", "evolution", "random"])
def test_every_strategy_draws_parents_from_its_island_its_migrants_and_the_root(tmp_path, strategy):
    store = Store(tmp_path, create=True)
    tree(store, THREE)
    store.add_migrations([dict(kind="migrate", node_id=6, from_island=2, to_island=0, fitness=0.4, finished=6)])
    config = RunConfig(islands=3)
    for island in range(3):
        where = f"{DONE} and {islands.condition(store, config, island)}"
        picks = collections.Counter(
            sampling.select_parent(store, strategy, random.Random(seed), where)["id"] for seed in range(300)
        )
        assert set(picks) <= legal_parents(store, island), (island, picks)
        refs = {
            r["id"]
            for s in range(50)
            for r in sampling.sample_references(store, store.node(0), random.Random(s), where=where)
        }
        assert refs <= legal_parents(store, island), (island, refs)
    if strategy == "asi":  # the fittest node of the tree is island 2's; island 0 reaches it only as a migrant
        island0 = f"{DONE} and {islands.condition(store, config, 0)}"
        drawn = collections.Counter(
            sampling.select_parent(store, "asi", random.Random(s), island0)["id"] for s in range(300)
        )
        assert drawn.most_common(1)[0][0] == 6, drawn


def test_islands_take_proposals_in_turn_by_node_id():
    assert [islands.island_of(i, 3) for i in range(1, 8)] == [0, 1, 2, 0, 1, 2, 0]
    assert {islands.island_of(i, 1) for i in range(1, 20)} == {0}


def test_with_one_island_a_proposal_is_selected_exactly_as_without_islands(tmp_path):
    config = RunConfig(tier="micro", seed=7)
    Run.create(tmp_path / "run", config)
    run = Run(tmp_path / "run", config, brain=None)
    tree(run.store, {k: (p, None, f) for k, (p, _, f) in THREE.items()})  # an older run's nodes: no island
    state = pipeline.select(run, {})
    rng = random.Random(7 * 1_000_003 + 10)
    parent = sampling.select_parent(run.store, "asi", rng, DONE)
    refs = sampling.sample_references(run.store, parent, rng)
    assert (state["node_id"], state["parent_id"], state["references"]) == (10, parent["id"], [r["id"] for r in refs])
    assert state["island"] == 0
    trace = run.store.traces_of("selector", "offline")[-1]["decision"]
    assert "island" not in trace and run.store.migrations() == []


def test_an_island_run_selects_within_the_island_of_the_node_id(tmp_path):
    config = RunConfig(tier="micro", islands=3, stagnation=50)
    Run.create(tmp_path / "run", config)
    run = Run(tmp_path / "run", config, brain=None)
    tree(run.store, THREE)
    state = pipeline.select(run, {})
    assert state["node_id"] == 10 and state["island"] == 0  # (10 - 1) % 3
    assert state["parent_id"] in legal_parents(run.store, 0)
    assert run.store.traces_of("selector", "offline")[-1]["decision"]["island"] == 0


def test_elites_migrate_along_the_ring_every_interval_without_being_evaluated_again(tmp_path):
    store = Store(tmp_path, create=True)
    config = RunConfig(islands=3, migration_interval=4, stagnation=100)
    rows = list(THREE.items())
    rounds = []
    for count in range(1, len(rows) + 1):  # the tree grows one finished node at a time
        tree(store, dict(rows[count - 1 : count]))
        islands.tend(store, config)
        rounds.append(len(store.migrations()))
    moves = [(m["node_id"], m["from_island"], m["to_island"], m["finished"]) for m in store.migrations()]
    # at 4 finished nodes (0-3) each island's best so far moves on, at 8 (0-7) the new bests
    expected = [(1, 0, 1, 4), (2, 1, 2, 4), (3, 2, 0, 4), (7, 0, 1, 8), (5, 1, 2, 8), (6, 2, 0, 8)]
    assert moves == expected, moves
    assert rounds == [0, 0, 0, 3, 3, 3, 3, 6, 6, 6]
    tree(store, {10: (7, 0, None), 11: (8, 1, None)})  # at 12: the same bests, already where they go
    islands.tend(store, config)
    assert len(store.migrations()) == 6 and store.get_meta(islands.MIGRATED_AT) == "12"
    assert all(
        m["kind"] == "migrate" and m["fitness"] == store.node(m["node_id"])["fitness"] for m in store.migrations()
    )
    assert store.evaluations(6) == [] and store.node(6)["island"] == 2, "a migrant stays where it was made"


def test_an_elite_that_lost_to_the_root_does_not_migrate(tmp_path):
    store = Store(tmp_path, create=True)
    tree(store, {0: (None, None, 0.0), 1: (0, 0, -0.2), 2: (0, 1, 0.1)})
    islands.tend(store, RunConfig(islands=2, migration_interval=3))
    assert [(m["node_id"], m["to_island"]) for m in store.migrations()] == [(2, 0)]


def test_stagnation_starts_an_island_from_a_good_node_far_from_the_best_up_to_the_cap(tmp_path):
    store = Store(tmp_path, create=True)
    # the best (node 4) is found early; its line is 0-1-4; node 3 (0.3) is one of its cousins,
    # node 6 (0.2) the farthest good node: 6-5-2-0-1-4
    rows = {
        0: (None, None, 0.0),
        1: (0, 0, 0.1),
        2: (0, 1, 0.05),
        3: (1, 0, 0.3),
        4: (1, 1, 0.5),
        5: (2, 0, 0.02),
        6: (5, 1, 0.2),
        7: (4, 0, -0.3),
        8: (4, 1, 0.1),
    }
    config = RunConfig(islands=2, migration_interval=100, stagnation=3)
    for node_id, row in rows.items():
        tree(store, {node_id: row})
        islands.tend(store, config)
    seeds = store.migrations("seed")
    # the best finished as the 5th node: stagnant for 3 at 8 nodes (0-7)
    assert [(s["node_id"], s["from_island"], s["to_island"], s["finished"]) for s in seeds] == [(6, 1, 2, 8)]
    assert islands.count(store, config) == 3
    event = [e for e in store.events() if e["kind"] == "island"]
    assert len(event) == 1 and "island 2 started from node 6" in event[0]["message"], event
    assert 6 in legal_parents(store, 2)
    for node_id in range(9, 16):  # still no better best: one more island every 3 nodes, up to 2 x 2
        tree(store, {node_id: (0, 0, 0.01)})
        islands.tend(store, config)
    assert islands.count(store, config) == 4
    assert [s["finished"] for s in store.migrations("seed")] == [8, 11]
    assert len({s["node_id"] for s in store.migrations("seed")}) == 2, "each island from another node"


def test_a_better_best_resets_the_stagnation_count(tmp_path):
    store = Store(tmp_path, create=True)
    config = RunConfig(islands=2, stagnation=3)
    for node_id, fitness in enumerate([0.0, 0.1, 0.05, 0.2, 0.15, 0.3, 0.1, 0.1]):
        tree(store, {node_id: (None if node_id == 0 else 0, None if node_id == 0 else node_id % 2, fitness)})
        islands.tend(store, config)
    assert store.migrations("seed") == []


@pytest.mark.parametrize(
    "args, says",
    [
        (["--islands", "0"], "--islands: Input should be greater than or equal to 1"),
        (["--islands", "3", "--migration-interval", "-1"], "--migration-interval: Input should be greater"),
        (["--islands", "3", "--stagnation", "0"], "--stagnation: Input should be greater"),
        (["--stagnation", "5"], "--stagnation: only with --islands 2 or more"),
        (["--migration-interval", "5"], "--migration-interval: only with --islands 2 or more"),
    ],
)
def test_bad_island_options_are_one_line_and_exit_2(tmp_path, args, says):
    proc = helpers.cli("run", tmp_path / "run", "--tier", "micro", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == f"error: {says}" or proc.stderr.strip().startswith(f"error: {says}"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists(), "nothing is created"


def test_island_options_are_saved_and_fixed_on_resume(tmp_path):
    run_dir = tmp_path / "run"
    config = RunConfig(tier="micro", islands=3, migration_interval=5, stagnation=7)
    Run.create(run_dir, config)
    stored = RunConfig.load(run_dir)
    assert (stored.islands, stored.migration_interval, stored.stagnation) == (3, 5, 7)
    proc = helpers.cli("run", run_dir, "--islands", "2")
    assert proc.returncode == 2 and "was started with --islands 3" in proc.stderr, proc.stderr
    assert RunConfig.load(run_dir).islands == 3


def test_a_search_seed_changes_the_draws_and_equal_to_the_seed_changes_nothing(tmp_path):
    """--search-seed: the same evaluations (a run trains with --seed) under other selection draws."""
    picks = {}
    for name, search_seed in (("plain", None), ("same", 7), ("other", 107)):
        config = RunConfig(tier="micro", seed=7, search_seed=search_seed)
        Run.create(tmp_path / name, config)
        run = Run(tmp_path / name, config, brain=None)
        tree(run.store, {k: (p, None, f) for k, (p, _, f) in THREE.items()})
        first = sampling.select_parent(run.store, "asi", random.Random((search_seed or 7) * 1_000_003 + 10), DONE)
        picks[name] = [pipeline.select(run, {}) for _ in range(12)]
        assert picks[name][0]["parent_id"] == first["id"]
    drawn = {name: [(s["parent_id"], tuple(s["references"])) for s in p] for name, p in picks.items()}
    assert drawn["plain"] == drawn["same"] != drawn["other"]
