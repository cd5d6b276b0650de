"""A run's lessons: what it starts from, and what its analyst writes back for later runs.

The lessons a run starts from are read from the user's store (archlab/knowledge/lessons.py) once,
when it first starts, and kept in its own database (meta `lessons`), so a resumed run weighs the
same priors whatever other runs have written since (it continues exactly), and a run never counts
its own lessons twice. The lessons it writes are computed from its tree the way the offline
researcher credits changes (offline.credits): per (operator, arm), the gains over the parents, with
provenance. They are written when the run stops (any stop the driver sees: a budget, `archlab steer
stop`, Ctrl-C) and when a promotion finishes (a verified node's figures join its lesson), and they
replace the run's earlier ones (ids are fixed by run and change).
"""

import json
import statistics
import time
import uuid

from archlab.agents import code_edits
from archlab.agents.offline import BY_NAME, CODE, credits
from archlab.knowledge import lessons as store_of_lessons
from archlab.knowledge.lessons import Lesson, code_hash
from archlab.sandbox.mechanisms import mechanisms
from archlab.search.context import history
from archlab.tree.store import Store

RUN_ID, STARTED_FROM = "run_id", "lessons"  # meta keys


def run_id(store: Store) -> str:
    """The run's id, made when first asked (it names the run's lessons wherever the directory goes)."""
    found = store.get_meta(RUN_ID)
    if found is None:
        found = uuid.uuid4().hex
        store.set_meta(RUN_ID, found)
    return found


def started_from(store: Store, config) -> tuple[list[Lesson], list[str]]:
    """The earlier runs' lessons this run weighs (none with --no-lessons), and one line per lesson
    file that could not be read (only when they are read: at the run's first start)."""
    if not config.lessons:
        return [], []
    kept = store.get_meta(STARTED_FROM)
    if kept is not None:
        return [Lesson(**{k: v for k, v in d.items() if k != "schema"}) for d in json.loads(kept)], []
    own = run_id(store)
    found, problems = store_of_lessons.load()
    found = [lesson for lesson in found if lesson.run_id != own]
    store.set_meta(STARTED_FROM, json.dumps([lesson.to_dict() for lesson in found]))
    return found, problems


def write(run) -> list[Lesson]:
    """Compute this run's lessons from its tree and write them to the user's store (replacing the
    run's earlier ones); nothing with --no-lessons or before the root is measured."""
    if not run.config.lessons or not run.store.has_node(0) or run.store.node(0).get("fitness") is None:
        return []
    root = run.store.node(0)
    root_hash = code_hash(run.lineage.code(root["commit_sha"]))
    rid = run_id(run.store)
    grouped: dict[tuple[str, str], list[tuple[float, dict]]] = {}
    for operator, arm, gain, row in credits(history(run.store)):
        if arm is not None:
            grouped.setdefault((operator, arm), []).append((gain, row))
    lessons = [_lesson(run, rid, root["id"], root_hash, key, rows) for key, rows in sorted(grouped.items())]
    store_of_lessons.write_run(rid, lessons)
    run.store.event("lessons", f"{len(lessons)} lesson(s) written to {store_of_lessons.lessons_dir()}")
    return lessons


def _lesson(run, rid: str, root_id: int, root_hash: str, key: tuple[str, str], rows: list) -> Lesson:
    operator, arm = key
    gains = [gain for gain, _ in rows]
    parents = sorted({row["parent"] for _, row in rows})
    parent_mechanisms = None
    for parent in parents:
        found = mechanisms(run.store.code_copy(parent) or "")  # the archive's reader (AST, not words)
        parent_mechanisms = found if parent_mechanisms is None else parent_mechanisms & found
    nodes = [row["node"] for _, row in rows]
    verified = []
    for node_id in nodes:
        node = run.store.node(node_id)
        if node.get("tier") and node["tier"] != run.config.tier:
            verified.append(
                {
                    "node": node_id,
                    "tier": node["tier"],
                    "seeds": node.get("seeds"),
                    "fitness": node.get("fitness"),
                    "fitness_std": node.get("fitness_std"),
                }
            )
    mean = statistics.fmean(gains)
    std = statistics.stdev(gains) if len(gains) > 1 else 0.0
    failed = sum(row["fitness"] is None for _, row in rows)
    change = _change(operator, arm)
    on_root = sum(p == root_id for p in (row["parent"] for _, row in rows))
    verdict = "helped" if mean > 0 else "hurt" if mean < 0 else "did nothing to"
    text = (
        f"{change[0].upper()}{change[1:]} {verdict} its parents: fitness {mean:+.4f} ± {std:.4f} on average over "
        f"{len(gains)} trial(s) ({on_root} on the root, {len(gains) - on_root} on descendants"
        + (f"; {failed} failed" if failed else "")
        + f"), nodes {', '.join(map(str, nodes))}, {run.config.tier} tier, seed {run.config.seed}."
    )
    return Lesson(
        id=Lesson.make_id(rid, root_hash, operator, arm),
        run=str(run.dir.resolve()),
        run_id=rid,
        root=run.config.root,
        root_hash=root_hash,
        operator=operator,
        arm=arm,
        change=change,
        parent_kind="code" if operator.startswith(CODE) else "template",
        parent_mechanisms=sorted(parent_mechanisms or ()),
        parents={"root": on_root, "descendants": len(gains) - on_root},
        trials=len(gains),
        mean_gain=round(mean, 6),
        std_gain=round(std, 6),
        failed=failed,
        nodes=nodes,
        tier=run.config.tier,
        seeds=[run.config.seed],
        verified=verified,
        text=text,
        created=time.time(),
    )


def _change(operator: str, arm: str) -> str:
    """The change in words: what the template operator's value does, or the code edit and its arm."""
    if operator in BY_NAME:
        value = json.loads(arm)
        says = BY_NAME[operator].says
        return says.get(value, f"set {operator} to {value!r}") if isinstance(value, (str, int, float, bool)) else arm
    name = operator[len(CODE) :]
    return f"{code_edits.OPERATORS[name][0]} ({arm})" if name in code_edits.OPERATORS else arm
