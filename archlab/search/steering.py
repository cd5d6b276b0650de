"""Steering a running search from outside: `archlab steer RUN pin NODE | veto NODE | note TEXT | stop`.

Each command is a trace (role "user", kind "steer", its decision the action) that another process
writes into the run's database, so it is kept with the run, shown with the other traces, and read
by the driver between candidates (search/pipeline.py): a pinned node's subtree is where most parents
come from, a vetoed node is never a parent again, a note goes to the next researcher (once), and a
stop lets the candidates in flight finish and starts no new one. Pins and vetoes hold for the rest
of the run; notes and stops are used once (the run's meta remembers the last one used). Each
trace says who asked and through what (`by`: "alice via cli"); its `created` says when.
"""

import getpass
from dataclasses import dataclass, field

from archlab.errors import UserError
from archlab.search.lock import driver_pid
from archlab.tree.store import Store

ACTIONS = ("pin", "veto", "note", "stop")
ROLE, KIND = "user", "steer"
NOTES_USED, STOP_USED = "steer:notes_used", "steer:stop_used"  # meta keys: the last note / stop acted on
MAX_NOTE = 2000  # characters: a note goes into every LLM prompt of one candidate's researcher


@dataclass
class Steering:
    pinned: set[int] = field(default_factory=set)
    vetoed: set[int] = field(default_factory=set)
    notes: list[tuple[int, str]] = field(default_factory=list)  # (trace id, text) not yet given to a researcher
    stop: int | None = None  # the trace id of a stop not yet acted on


def who(via: str) -> str:
    """Who steers, for the trace: this process's user and the way in ("cli", "web")."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry or $USER
        user = "unknown user"
    return f"{user} via {via}"


def add(store: Store, action: str, node: int | None = None, text: str | None = None, by: str | None = None) -> None:
    """Record one steering command; refused (one line) when it names nothing it can act on."""
    if action not in ACTIONS:
        raise UserError(f"steer {action!r}: choose one of {', '.join(ACTIONS)}")
    if action in ("pin", "veto"):
        _check_node(store, action, node)
    if action == "note":
        if not (text or "").strip():
            raise UserError('steer note: give the hypothesis as text, e.g. archlab steer RUN note "try a longer conv"')
        if len(text) > MAX_NOTE:
            raise UserError(
                f"steer note: {len(text)} characters; keep a note under {MAX_NOTE} (it goes into the researcher's prompt)"
            )
    if action == "stop" and driver_pid(store.path.parent) is None:
        # Kept, it would stop the next `archlab run` before it did anything.
        raise UserError("steer stop: no `archlab run` is driving this run now; there is nothing to stop")
    store.add_trace(
        node if action in ("pin", "veto") else None,
        ROLE,
        KIND,
        response=text if action == "note" else None,
        decision={"action": action, "node": node, **({"by": by} if by else {})},
    )


def _check_node(store: Store, action: str, node: int | None) -> None:
    """A pin or veto names a node that is, or may become, a parent: not the root for a veto, not a failed node."""
    if node is None or not store.has_node(node):
        raise UserError(f"steer {action}: give the id of a node of this run (archlab tree RUN lists them)")
    if action == "veto" and node == 0:
        raise UserError("steer veto 0: the root cannot be vetoed (pin a branch instead)")
    row = store.node(node)
    if row["status"] == "failed":
        hint = "it is never a parent anyway" if action == "veto" else "pin a finished node of the branch you prefer"
        raise UserError(f"steer {action} {node}: node {node} failed ({row.get('reason') or 'no reason'}); {hint}")


def forget_stops(store: Store) -> None:
    """A driver starting: a stop asked of an earlier driver that ended before acting on it (a crash,
    Ctrl-C) does not apply to this one, which the user has just started."""
    stops = [row["id"] for row in store.traces_of(ROLE, KIND) if (row["decision"] or {}).get("action") == "stop"]
    if stops and stops[-1] > int(store.get_meta(STOP_USED, "0")):
        store.set_meta(STOP_USED, str(stops[-1]))


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
