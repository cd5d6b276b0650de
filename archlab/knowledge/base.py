"""The cognition base: curated entries on disk, loaded into `Entry` objects.

Two on-disk formats are read:

* our Markdown format (`entries/<id>.md`): TOML front matter between `+++` lines (id, title,
  source, tags, operators) followed by `## Problem`, `## Key insight`, `## When to apply`,
  `## How to implement in a mixer` and `## Known costs` sections;
* ASI-Arch cognition JSON files: an object or a list of objects with upper-case fields
  (DESIGN_INSIGHT, EXPERIMENTAL_TRIGGER_PATTERNS, ...), possibly nested under a paper key,
  so a user can point archlab at an existing ASI-Arch cognition directory unchanged.

User files are validated and any problem becomes a one-line `KnowledgeError` naming the
file, because the CLI shows that line to the user instead of a traceback.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

BUILTIN_DIR = Path(__file__).parent / "entries"

# The offline brain's mutation operators; an entry's `operators` must name only these.
OPERATORS = (
    "short_conv",
    "conv_size",
    "feature_map",
    "qk_norm",
    "beta",
    "forget_gate",
    "output_gate",
    "output_norm",
    "heads",
    "chunk_size",
    "hybrid",
    "ffn",
)

# Markdown section heading (lower case, as a prefix) -> Entry field.
_SECTIONS = (
    ("problem", "problem"),
    ("key insight", "insight"),
    ("insight", "insight"),
    ("when", "when"),
    ("how", "how"),
    ("known costs", "costs"),
    ("costs", "costs"),
)

_FRONT_MATTER = re.compile(r"\A\ufeff?\s*\+\+\+[ \t]*\r?\n(.*?)\r?\n\+\+\+[ \t]*(?:\r?\n|\Z)(.*)\Z", re.S)


class KnowledgeError(ValueError):
    """A knowledge file or directory cannot be used; the message is one line naming it."""


@dataclass
class Entry:
    """One idea of the cognition base (a paper, a technique, a known failure mode)."""

    id: str
    title: str
    source: str
    tags: list[str]
    operators: list[str]
    problem: str
    insight: str
    when: str
    how: str
    costs: str
    path: Path | None = None
    text: str = ""  # everything searchable; derived from the fields when not given
    extra: str = field(default="", repr=False)  # sections with headings we do not map

    def __post_init__(self) -> None:
        if not self.text:
            parts = [
                self.title,
                " ".join(self.tags),
                " ".join(self.operators),
                self.problem,
                self.insight,
                self.when,
                self.how,
                self.costs,
                self.extra,
            ]
            self.text = "\n\n".join(p for p in parts if p)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path) if self.path else None
        del d["extra"], d["text"]
        return d

    def markdown(self) -> str:
        """The entry as Markdown, for prompts and `archlab knowledge show`."""
        lines = [f"# {self.title}", "", f"*id:* `{self.id}`  ", f"*source:* {self.source}  "]
        if self.tags:
            lines.append(f"*tags:* {', '.join(self.tags)}  ")
        if self.operators:
            lines.append(f"*operators:* {', '.join(self.operators)}  ")
        for heading, body in (
            ("Problem", self.problem),
            ("Key insight", self.insight),
            ("When to apply", self.when),
            ("How to implement in a mixer", self.how),
            ("Known costs", self.costs),
            ("Notes", self.extra),
        ):
            if body:
                lines += ["", f"## {heading}", body]
        return "\n".join(lines) + "\n"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _str_list(value: object, key: str, path: Path) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise KnowledgeError(f"{path}: front-matter field '{key}' must be a list of strings")
    return [v.strip() for v in value if v.strip()]


def parse_markdown(path: Path, text: str | None = None) -> Entry:
    """Parse one entry in our Markdown + TOML front-matter format."""
    if text is None:
        text = _read(path)
    m = _FRONT_MATTER.match(text)
    if not m:
        raise KnowledgeError(
            f"{path}: missing TOML front matter (the file must start with a '+++' line and close it with another)"
        )
    try:
        meta = tomllib.loads(m.group(1))
    except tomllib.TOMLDecodeError as e:
        raise KnowledgeError(f"{path}: invalid TOML front matter: {_one_line(e)}") from None
    unknown = set(meta) - {"id", "title", "source", "tags", "operators"}
    if unknown:
        raise KnowledgeError(f"{path}: unknown front-matter field(s): {', '.join(sorted(unknown))}")
    entry_id = meta.get("id", path.stem)
    title = meta.get("title")
    if not isinstance(entry_id, str) or not entry_id.strip():
        raise KnowledgeError(f"{path}: front-matter field 'id' must be a non-empty string")
    if not isinstance(title, str) or not title.strip():
        raise KnowledgeError(f"{path}: front matter needs a non-empty 'title'")
    source = meta.get("source", "")
    if not isinstance(source, str):
        raise KnowledgeError(f"{path}: front-matter field 'source' must be a string")
    operators = _str_list(meta.get("operators", []), "operators", path)
    bad = [op for op in operators if op not in OPERATORS]
    if bad:
        raise KnowledgeError(f"{path}: unknown operator(s) {', '.join(bad)} (known: {', '.join(OPERATORS)})")

    sections = {"problem": [], "insight": [], "when": [], "how": [], "costs": [], "extra": []}
    current = "problem"  # text before the first heading counts as the problem statement
    for line in m.group(2).splitlines():
        if line.startswith("## "):
            heading = line[3:].strip().lower()
            current = next((f for prefix, f in _SECTIONS if heading.startswith(prefix)), "extra")
            if current == "extra":
                sections["extra"].append(line)
            continue
        sections[current].append(line)
    fields = {k: "\n".join(v).strip() for k, v in sections.items()}
    if not any(fields.values()):
        raise KnowledgeError(f"{path}: the entry has no text after the front matter")
    return Entry(
        id=entry_id.strip(),
        title=title.strip(),
        source=source.strip(),
        tags=_str_list(meta.get("tags", []), "tags", path),
        operators=operators,
        path=path,
        **fields,
    )


# --- ASI-Arch cognition JSON -------------------------------------------------------------

_ASI_FIELDS = (
    "DESIGN_INSIGHT",
    "EXPERIMENTAL_TRIGGER_PATTERNS",
    "BACKGROUND",
    "ALGORITHMIC_INNOVATION",
    "IMPLEMENTATION_GUIDANCE",
    "DESIGN_AI_INSTRUCTIONS",
)


def _flatten(value: object) -> str:
    """ASI-Arch fields are usually strings but sometimes nested lists/dicts: make them text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return "\n".join(f"- {_flatten(v)}" for v in value if _flatten(v))
    if isinstance(value, dict):
        return "\n".join(f"{k.replace('_', ' ')}: {_flatten(v)}" for k, v in value.items() if _flatten(v))
    return str(value)


def _asi_title(obj: dict, paper: str | None) -> str:
    # DESIGN_INSIGHT usually opens with "### DESIGN_INSIGHT_1: <title>"; use that line.
    for line in _flatten(obj.get("DESIGN_INSIGHT")).splitlines():
        line = re.sub(r"^[#*\s]*(DESIGN_INSIGHT[_\w]*\s*[:\-–]\s*)?", "", line).strip(" *#")
        if line:
            return line[:120]
    return paper or ""


def _asi_records(data: object, paper: str | None = None) -> list[tuple[dict, str | None]]:
    """Find the objects carrying ASI-Arch fields, remembering the paper key they sit under."""
    if isinstance(data, list):
        return [r for item in data for r in _asi_records(item, paper)]
    if isinstance(data, dict):
        if any(k in data for k in _ASI_FIELDS):
            return [(data, paper)]
        return [r for k, v in data.items() if isinstance(v, (dict, list)) for r in _asi_records(v, k)]
    return []


def parse_asi_json(path: Path) -> list[Entry]:
    try:
        data = json.loads(_read(path))
    except json.JSONDecodeError as e:
        raise KnowledgeError(f"{path}: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    records = _asi_records(data)
    if not records:
        raise KnowledgeError(
            f"{path}: no ASI-Arch cognition entries found (expected objects with fields like "
            "DESIGN_INSIGHT, EXPERIMENTAL_TRIGGER_PATTERNS, IMPLEMENTATION_GUIDANCE)"
        )
    entries = []
    for i, (obj, paper) in enumerate(records, 1):
        background = _flatten(obj.get("BACKGROUND"))
        # The paper's title is the best citation we have: from the nesting key or a "Title:" line.
        m = re.search(r"\btitle\W*\s*[:\-]\s*(.+)", background, re.I)
        source = paper or (m.group(1).strip(" *\"'") if m else f"ASI-Arch cognition file {path.name}")
        insight = "\n\n".join(
            t for t in (_flatten(obj.get("DESIGN_INSIGHT")), _flatten(obj.get("ALGORITHMIC_INNOVATION"))) if t
        )
        how = "\n\n".join(
            t for t in (_flatten(obj.get("IMPLEMENTATION_GUIDANCE")), _flatten(obj.get("DESIGN_AI_INSTRUCTIONS"))) if t
        )
        title = _asi_title(obj, paper) or f"{path.stem} #{i}"
        entries.append(
            Entry(
                id=f"{path.stem}-{i}",
                title=title,
                source=source,
                tags=["asi-arch"],
                operators=[],
                problem=background,
                insight=insight,
                when=_flatten(obj.get("EXPERIMENTAL_TRIGGER_PATTERNS")),
                how=how,
                costs="",
                path=path,
            )
        )
    return entries


# --- loading -----------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KnowledgeError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise KnowledgeError(f"{path}: cannot read: {e.strerror or e}") from None


def load_file(path: Path) -> list[Entry]:
    """Entries from one `.md` or `.json` file. The file is data: whatever in it cannot be read
    (nesting deeper than the parser's stack, a 5,000-digit number, an escaped lone surrogate: each
    once ended the command with "internal error") is that file's error, in one line."""
    path = Path(path)
    if path.suffix.lower() not in (".md", ".json"):
        raise KnowledgeError(f"{path}: unsupported knowledge file type (use .md or .json)")
    try:
        entries = [parse_markdown(path)] if path.suffix.lower() == ".md" else parse_asi_json(path)
        for entry in entries:
            "".join(str(v) for v in vars(entry).values()).encode("utf-8")  # stored and printed as UTF-8
    except KnowledgeError:
        raise
    except (RecursionError, ValueError, UnicodeError, TypeError) as e:
        raise KnowledgeError(f"{path}: cannot be read as knowledge ({type(e).__name__}: {str(e)[:100]})") from None
    return entries


def _dir_files(directory: Path) -> list[Path]:
    # A README next to the entries is documentation, not an entry.
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix.lower() in (".md", ".json") and p.stem.lower() != "readme"
    )


def load_entries(extra_dirs: Sequence[Path] = ()) -> list[Entry]:
    """The built-in entries plus those in `extra_dirs` (directories, or single files).

    Later sources win on duplicate ids, so a user's entry overrides the built-in one with the
    same id (it keeps the built-in's position in the list).
    """
    by_id: dict[str, Entry] = {}
    for path in _dir_files(BUILTIN_DIR):
        for e in load_file(path):
            by_id[e.id] = e
    for d in extra_dirs:
        d = Path(d).expanduser()
        if d.is_dir():
            files = _dir_files(d)
        elif d.is_file():
            files = [d]
        else:
            raise KnowledgeError(f"{d}: knowledge directory does not exist")
        for path in files:
            for e in load_file(path):
                by_id[e.id] = e
    return list(by_id.values())
