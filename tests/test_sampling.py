"""Parent selection on a real store: the default exploits the top of the tree, never the
children that lost to the root."""

import collections
import random

from archlab.search import sampling
from archlab.tree.store import Store


def test_the_default_exploits_only_nodes_at_least_as_fit_as_the_root(tmp_path):
    store = Store(tmp_path, create=True)
    store.add_node(id=0, parent_id=None, status="done", fitness=0.0)
    fitness = {1: -0.01, 2: -0.02, 3: -0.03, 4: -0.04, 5: -0.05, 6: -0.06, 7: 0.02}
    for node_id, value in fitness.items():
        store.add_node(id=node_id, parent_id=0, status="done", fitness=value)
    store.add_node(id=8, parent_id=0, status="failed", reason="nan")
    picks = collections.Counter(sampling.select_parent(store, "asi", random.Random(seed))["id"] for seed in range(1000))
    assert set(picks) <= set(range(8)), "failed nodes are never parents"
    assert not any(picks[n] for n in range(1, 7)), f"children that lost to the root are not built on: {picks}"
    assert picks[7] > picks[0] > 0, picks
