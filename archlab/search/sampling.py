"""Parent selection and reference sampling: pluggable strategies over the stored tree.

Each strategy asks the store for rows by a condition (ordered by an index, limited), so picking a parent
stays fast on runs of any size, and draws from a seeded random.Random for reproducibility.
"""

import math
import random

from archlab.tree.store import DONE, Store

EXPLORE_SHARE = 0.2  # `asi`: parents drawn beyond the top of the tree (`asi-qd`: from the archive)


def select_parent(store: Store, strategy: str, rng: random.Random, where: str = DONE) -> dict | None:
    """A parent among the nodes `where` selects. `asi-qd` and `qd` mark theirs with how it was drawn
    (`drawn`: "archive" or "asi"), which the selector's trace records and the researcher reads."""
    if strategy == "qd":
        parent = _elite(store, where, rng)
        return None if parent is None else parent | {"drawn": "archive"}
    if strategy in ("asi", "asi-qd"):
        # ASI-Arch: mostly exploit the top of the tree (rank-weighted: the best half the time),
        # sometimes explore anywhere else. Only among nodes at least as fit as the root (fitness 0),
        # as ASI-Arch samples parents from its top candidates only: in a young tree the top ten are
        # all there is, and building on children that lost to the root spent evaluations that
        # tournament selection did not (bench/search_efficiency.py). `asi-qd` exploits alike and
        # explores from the quality-diversity archive (archive.py): the elites of the cells, rank-weighted
        # as the top is (a cell drawn uniformly spent a fifth of the evaluations on weak parents and
        # ended behind asi on the best gain), marking that parent: its proposal then aims at a set of
        # mechanisms no node has (a quarter of parents from the archive on top of asi's exploring share
        # cost AUC and widened nothing: bench/README.md).
        good = f"{where} and fitness >= 0"
        top = store.nodes(good, order="fitness desc, id", limit=10)
        if not top:  # the root itself failed or was re-scored below zero: fall back to everything
            good, top = where, store.nodes(where, order="fitness desc, id", limit=10)
        if not top:
            return None
        if rng.random() < 1 - EXPLORE_SHARE:
            parent = _ranked(top, rng)
            return parent | {"drawn": "asi"} if strategy == "asi-qd" else parent
        if strategy == "asi-qd":
            parent = _elite(store, where, rng, ranked=True)
            if parent is not None:
                return parent | {"drawn": "archive"}
        return _any(store, good, rng)
    if strategy == "ucb":
        # UCB over subtrees: a node's value is the mean fitness of itself and its children
        # (failed children count as the node's fitness minus a penalty), plus a bonus for
        # subtrees that have been expanded rarely.
        rows = store.expansion_stats(where, limit=50)
        if not rows:
            return None
        expansions = sum(r[2] for r in rows) + 1
        best = max(
            rows,
            key=lambda r: (r[1] + (r[3] or 0)) / (1 + r[2]) + 0.05 * math.sqrt(2 * math.log(expansions) / (1 + r[2])),
        )
        return store.node(best[0])
    if strategy == "evolution":
        # Regularized evolution: a tournament among the most recent population.
        population = store.nodes(where, order="id desc", limit=20)
        return max(rng.sample(population, min(5, len(population))), key=lambda n: n["fitness"]) if population else None
    if strategy == "random":
        return _any(store, where, rng)
    raise ValueError(f"unknown strategy {strategy!r}")


def sample_references(store: Store, parent: dict, rng: random.Random, k: int = 4, where: str = DONE) -> list[dict]:
    """Context for a proposal, as in ASI-Arch: some of the best nodes and some from the next
    ranks (good but different ideas), never the parent itself; among the nodes `where` admits."""
    where = f"{where} and id != {int(parent['id'])}"
    top = store.nodes(where, order="fitness desc, id", limit=10)
    best = rng.sample(top, min(k // 2, len(top)))
    following = store.node_ids(where, order="fitness desc, id", limit=40, offset=10)
    nxt = [store.node(i) for i in rng.sample(following, min(k - len(best), len(following)))]
    return best + nxt


def _elite(store: Store, where: str, rng: random.Random, ranked: bool = False) -> dict | None:
    """MAP-Elites' draw: a cell uniformly (`ranked`: rank-weighted by its elite's fitness) among the
    occupied ones whose elite did not lose to the root (all occupied cells when none did; building on
    nodes that lost to the root spends evaluations, as `asi` found), then that cell's elite. None
    before any node is in the archive."""
    elites = store.archive_elites(where) or []
    good = [e for e in elites if e["fitness"] >= 0] or elites
    if not good:
        return None
    pick = _ranked(sorted(good, key=lambda e: (-e["fitness"], e["id"])), rng) if ranked else rng.choice(good)
    return store.node(pick["id"])


def _ranked(best_first: list[dict], rng: random.Random) -> dict:
    """One of `best_first`, the first half the time, the next a quarter, and so on."""
    return rng.choices(best_first, weights=[0.5**i for i in range(len(best_first))])[0]


def _any(store: Store, where: str, rng: random.Random) -> dict | None:
    """A uniformly drawn id, moved to the next node that qualifies: O(log n) on the primary key.
    (Nodes right after a run of failures are a little likelier; fine for exploration.)"""
    top = store.max_node_id()
    if top is None:
        return None
    pick = rng.randint(0, top)
    found = store.node_ids(f"{where} and id >= ?", [pick], limit=1) or store.node_ids(where, limit=1)
    return store.node(found[0]) if found else None
