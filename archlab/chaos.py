"""Fault injection for crash tests: ARCHLAB_CHAOS=POINT[:N] kills this process with SIGKILL the
N-th time (default 1st) execution reaches `point(POINT)`. Unset, it costs one dict lookup.

Points (in the order a candidate meets them): select, llm_call, after_commit, after_row,
during_evaluation (a timer fires while the sandbox runs), after_evaluation, during_analysis,
after_record.
"""

import os
import signal
import threading
from collections import Counter

_hits: Counter = Counter()
_lock = threading.Lock()


def _armed(name: str) -> bool:
    spec = os.environ.get("ARCHLAB_CHAOS")
    if not spec:
        return False
    point, _, nth = spec.partition(":")
    if point != name:
        return False
    with _lock:
        _hits[name] += 1
        return _hits[name] == int(nth or 1)


def point(name: str) -> None:
    if _armed(name):
        os.kill(os.getpid(), signal.SIGKILL)


def point_later(name: str, seconds: float = 1.0) -> None:
    """Kill the process `seconds` from now (for crashes in the middle of a long step)."""
    if _armed(name):
        threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGKILL)).start()
