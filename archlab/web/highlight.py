"""Syntax-highlighted code and diffs as HTML (Pygments), built on the server.

Both files are highlighted whole (so a docstring that spans lines is coloured right), then
the lines are aligned by a diff with a time budget (archlab.text): a unified diff whose every
line keeps its Python colours. Everything in the output is escaped by Pygments or by html.escape.
"""

import html

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from archlab.text import hunks, line_opcodes

CSS_CLASS = "hl"
CONTEXT = 3


def _lines(code: str) -> list[str]:
    """One HTML fragment per source line (Pygments closes its spans at every line end)."""
    out = highlight(code, PythonLexer(stripnl=False, ensurenl=True), HtmlFormatter(nowrap=True))
    lines = out.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    n = len(code.splitlines())
    return (lines + [""] * n)[:n]


def code_html(code: str) -> str:
    rows = [_row("ctx", i + 1, i + 1, line) for i, line in enumerate(_lines(code))]
    return _table(rows, "code")


def diff_html(old: str, new: str, context: int = CONTEXT, against: str = "the parent") -> str:
    old_src, new_src = old.splitlines(), new.splitlines()
    old_hl, new_hl = _lines(old), _lines(new)
    rows, added, removed = [], 0, 0
    for group in hunks(line_opcodes(old_src, new_src), context):
        first, last = group[0], group[-1]
        rows.append(
            f"<tr class='hunk'><td class='ln'></td><td class='ln'></td><td class='src'>"
            f"@@ -{first[1] + 1},{last[2] - first[1]} +{first[3] + 1},{last[4] - first[3]} @@</td></tr>"
        )
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                rows += [_row("ctx", i + 1, j + 1, new_hl[j]) for i, j in zip(range(i1, i2), range(j1, j2))]
                continue
            if tag in ("replace", "delete"):
                rows += [_row("del", i + 1, None, old_hl[i]) for i in range(i1, i2)]
                removed += i2 - i1
            if tag in ("replace", "insert"):
                rows += [_row("add", None, j + 1, new_hl[j]) for j in range(j1, j2)]
                added += j2 - j1
    if not rows:
        return f"<p class='muted diff-empty'>the code is identical to {html.escape(against)}'s</p>"
    summary = f"<p class='diff-stat'><span class='add'>+{added}</span> <span class='del'>&minus;{removed}</span> lines vs {html.escape(against)}</p>"
    return summary + _table(rows, "diff")


def _row(kind: str, old_no: int | None, new_no: int | None, fragment: str) -> str:
    sign = {"add": "+", "del": "-", "ctx": " "}[kind]
    return (
        f"<tr class='{kind}'><td class='ln'>{old_no or ''}</td><td class='ln'>{new_no or ''}</td>"
        f"<td class='src'><span class='sign'>{html.escape(sign)}</span>{fragment}</td></tr>"
    )


def _table(rows: list[str], kind: str) -> str:
    return f"<table class='{kind} {CSS_CLASS}'>{''.join(rows)}</table>"


def stylesheet() -> str:
    rules = HtmlFormatter(style="default").get_style_defs(f".{CSS_CLASS}").splitlines()
    return "\n".join(r for r in rules if r.startswith(f".{CSS_CLASS} ") and not r.startswith(f".{CSS_CLASS} {{"))
