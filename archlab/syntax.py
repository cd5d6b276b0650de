"""ast.parse that threads can share.

CPython 3.11 (and 3.12 before python/cpython#106905) keeps the AST converter's recursion depth
in one process-wide counter: when a garbage collection inside ast.parse runs a finalizer that
lets another thread parse, both can fail with "SystemError: AST constructor recursion depth
mismatch". archlab parses in threads (evaluations side by side, agents at work), so every parse
goes through this one lock. Parsing takes milliseconds; the lock costs nothing measurable.
"""

import ast
import threading

_lock = threading.Lock()


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    with _lock:
        return ast.parse(source, filename)
