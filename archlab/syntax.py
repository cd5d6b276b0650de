"""ast.parse that threads can share, and that refuses what archlab's tree walkers cannot walk.

CPython 3.11 (and 3.12 before python/cpython#106905) keeps the AST converter's recursion depth
in one process-wide counter: when a garbage collection inside ast.parse runs a finalizer that
lets another thread parse, both can fail with "SystemError: AST constructor recursion depth
mismatch". archlab parses in threads (evaluations side by side, agents at work), so every parse
goes through this one lock. Parsing takes milliseconds; the lock costs nothing measurable.

Code from outside (a model's answer, an imported program) may nest deeper than the parser's or a
recursive visitor's stack: a 3,000-term sum raised RecursionError from ast.parse and stopped a
run (and every resume, which replays the answer). Such code is a SyntaxError like any other.
"""

import ast
import threading

_lock = threading.Lock()


MAX_DEPTH = 100  # syntax-tree levels: ASI-Arch's 106 programs reach 17, archlab's own code 22


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    with _lock:
        try:
            tree = ast.parse(source, filename)
        except (RecursionError, MemoryError, ValueError) as e:  # ValueError: a NUL byte (Python 3.11)
            raise SyntaxError(f"cannot be parsed: {str(e)[:100]}", (filename, 1, 0, "")) from None
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            line = getattr(node, "lineno", 1)
            raise SyntaxError(f"nested more than {MAX_DEPTH} levels deep", (filename, line, 0, ""))
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree
