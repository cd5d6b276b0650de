"""Islands: sub-populations of one run, with migration of elites and new islands on stagnation.

With `--islands N` (N >= 2) every node belongs to one island, the one its proposal worked on:
islands take proposals in turn by node id, so the candidates in flight with `--workers` spread over
them. A parent is drawn by the run's strategy from its island's nodes only, the root (shared by
all) and the nodes that migrated to it; so are the references. What operators did is still learnt
over the whole tree: the islands differ in the population they build on, not in what they know.

Between candidates (`tend`, called under the run's lock before a parent is chosen):
- every `migration_interval` finished nodes, each island's elite becomes available to the next
  island on the ring (a `migrations` row, kind "migrate"; it is not evaluated again);
- when the run's best fitness has not improved for `stagnation` finished nodes, a new island is
  started (up to MAX_ISLAND_FACTOR times the islands the run started with), seeded from the node
  among the ten fittest that is farthest in the tree from the best: a good node of another line
  than the one that stopped improving (the best of the least-used island would, after a few
  migrations, often be a copy of the same line). Kind "seed", and an event.

Everything is read from the store, so a resumed run continues the same schedule.
"""

from archlab.tree.store import DONE, Store

MIGRATION_INTERVAL = 10  # finished nodes between migrations, unless --migration-interval says
STAGNATION = 20  # finished nodes without a better best before a new island, unless --stagnation says
MAX_ISLAND_FACTOR = 2  # a run grows to at most this many times the islands it started with
MIGRATED_AT = "islands:migrated_at"  # meta: the finished-node count of the last migration round


def count(store: Store, config) -> int:
    """How many islands the run has now: those it started with and those started since."""
    if config.islands < 2:
        return 1
    return config.islands + len(store.migrations("seed"))


def island_of(node_id: int, islands: int) -> int:
    """The island a proposal works on: in turn by node id (the first child goes to island 0)."""
    return (node_id - 1) % islands


def condition(store: Store, config, island: int) -> str | None:
    """The condition on `nodes` of what the island may build on; None when the run has one island."""
    return store.island_condition(island) if count(store, config) > 1 else None


def tend(store: Store, config) -> None:
    """Migrate and start islands as they are due (idempotent: what was done is in the store)."""
    if config.islands < 2:
        return
    finished = store.finished_count()
    _migrate(store, config, finished)
    _spawn(store, config, finished)


def _migrate(store: Store, config, finished: int) -> None:
    interval = config.migration_interval or MIGRATION_INTERVAL
    if finished - int(store.get_meta(MIGRATED_AT, "0")) < interval:
        return
    islands = count(store, config)
    moves = []
    for island in range(islands):
        elite, to = store.island_elite(island), (island + 1) % islands
        # an elite that lost to the root is none: no strategy should build on it elsewhere
        if elite is not None and elite["fitness"] >= 0 and not store.migrated(elite["id"], to):
            moves.append(
                dict(
                    kind="migrate",
                    node_id=elite["id"],
                    from_island=island,
                    to_island=to,
                    fitness=elite["fitness"],
                    finished=finished,
                )
            )
    if moves:
        store.add_migrations(moves)
    store.set_meta(MIGRATED_AT, str(finished))


def _spawn(store: Store, config, finished: int) -> None:
    islands = count(store, config)
    best = store.nodes(DONE, order="fitness desc, id", limit=1)
    if islands >= MAX_ISLAND_FACTOR * config.islands or not best:
        return
    seeds = store.migrations("seed")
    # Stagnant since the best was found, or since the last island was started, whichever is later.
    since = max(store.finished_by(best[0]["finished"] or 0.0), *(s["finished"] for s in seeds), 0)
    stagnation = config.stagnation or STAGNATION
    if finished - since < stagnation:
        return
    seed = _diverse_seed(store, best[0], {s["node_id"] for s in seeds})
    new = islands
    store.add_migrations(
        [
            dict(
                kind="seed",
                node_id=seed["id"],
                from_island=seed["island"],
                to_island=new,
                fitness=seed["fitness"],
                finished=finished,
            )
        ]
    )
    store.event(
        "island",
        f"island {new} started from node {seed['id']} (fitness {seed['fitness']:+.4f}): the best, node "
        f"{best[0]['id']}, has not improved for {finished - since} finished nodes",
        seed["id"],
    )


def _diverse_seed(store: Store, best: dict, used: set[int]) -> dict:
    """Among the ten fittest nodes at least as fit as the root (not the best, not a seed already),
    the one farthest in the tree from the best, the fitter on a tie; the root when there is none."""
    candidates = [
        n
        for n in store.nodes(f"{DONE} and fitness >= 0", order="fitness desc, id", limit=10 + len(used) + 1)
        if n["id"] != best["id"] and n["id"] not in used
    ][:10]
    if not candidates:
        return store.node(0)
    parents = store.parents()
    line = _ancestors(best["id"], parents)
    depth = {node: i for i, node in enumerate(line)}  # the best's ancestors, by distance from it

    def distance(node_id: int | None) -> int:
        steps = 0
        while node_id not in depth and node_id is not None:
            node_id, steps = parents.get(node_id), steps + 1
        return steps + depth.get(node_id, len(parents))  # another root's line (a fork's): as far as can be

    return max(candidates, key=lambda n: (distance(n["id"]), n["fitness"]))


def _ancestors(node_id: int, parents: dict[int, int | None]) -> list[int]:
    """The node, its parent, ... up to the root."""
    line = [node_id]
    while parents.get(line[-1]) is not None:
        line.append(parents[line[-1]])
    return line
