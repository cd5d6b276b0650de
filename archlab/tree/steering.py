"""Steering a running search from outside: `archlab steer RUN pin NODE | veto NODE | note TEXT | stop`.

Each command is a trace (role "user", kind "steer", its decision the action) that another process
writes into the run's database, so it is kept with the run, shown with the other traces, and read
by the driver between candidates (agents/graph.py): a pinned node's subtree is where most parents
come from, a vetoed node is never a parent again, a note goes to the next researcher (once), and a
stop lets the candidates in flight finish and starts no new one. Pins and vetoes hold for the rest
of the run; notes and stops are used once (the run's meta remembers the last one used).
"""

from dataclasses import dataclass, field

from archlab.errors import UserError
from archlab.tree.store import Store

ACTIONS = ("pin", "veto", "note", "stop")
ROLE, KIND = "user", "steer"
NOTES_USED, STOP_USED = "steer:notes_used", "steer:stop_used"  # meta keys: the last note / stop acted on


@dataclass
class Steering:
    pinned: set[int] = field(default_factory=set)
    vetoed: set[int] = field(default_factory=set)
    notes: list[tuple[int, str]] = field(default_factory=list)  # (trace id, text) not yet given to a researcher
    stop: int | None = None  # the trace id of a stop not yet acted on


def add(store: Store, action: str, node: int | None = None, text: str | None = None) -> None:
    """Record one steering command; refused (one line) when it names nothing it can act on."""
    if action not in ACTIONS:
        raise UserError(f"steer {action!r}: choose one of {', '.join(ACTIONS)}")
    if action in ("pin", "veto"):
        if node is None or not store.has_node(node):
            raise UserError(f"steer {action}: give the id of a node of this run (archlab tree RUN lists them)")
        if action == "veto" and node == 0:
            raise UserError("steer veto 0: the root cannot be vetoed (pin a branch instead)")
    if action == "note" and not (text or "").strip():
        raise UserError('steer note: give the hypothesis as text, e.g. archlab steer RUN note "try a longer conv"')
    store.add_trace(node if action in ("pin", "veto") else None, ROLE, KIND,
                    response=text if action == "note" else None, decision={"action": action, "node": node})


def read(store: Store) -> Steering:
    """What the steering commands recorded so far ask of the driver now."""
    notes_used, stop_used = int(store.get_meta(NOTES_USED, "0")), int(store.get_meta(STOP_USED, "0"))
    state = Steering()
    for row in store.traces_of(ROLE, KIND):
        action = (row["decision"] or {}).get("action")
        if action == "pin":
            state.pinned.add(row["node_id"])
        elif action == "veto":
            state.vetoed.add(row["node_id"])
        elif action == "note" and row["id"] > notes_used:
            state.notes.append((row["id"], row["response"]))
        elif action == "stop" and row["id"] > stop_used:
            state.stop = row["id"]
    return state
