"""Lessons kept across runs: the user-level store of what a change did, learned from finished trees.

A lesson says what one change (an offline-brain operator and the arm it is credited to: the value
a template operator set, or a code edit's arm) did to the fitness of its parents in one run: mean
gain, spread, trials, on which root (the hash of its code) and which kind of parent (template
design or file, the mechanisms the parents' code had), with provenance (run directory and id,
nodes, tier, seeds, verified figures). The analyst writes them when a run stops and when a node
is verified (archlab/search/lessons.py); later runs retrieve them beside the curated entries and
the offline brain starts its operator statistics from them as discounted priors.

They live in `$ARCHLAB_HOME/lessons/` (default `~/.archlab/lessons/`), one JSON file per lesson,
named by its id. A lesson's id is fixed by its run and its change, so writing a run's lessons again
(a resumed run, a later verification) replaces them instead of adding copies; each file is written
to a private temporary name and renamed, so two runs ending at once never clobber each other's
files and a crash leaves the old file or the new one. A file that cannot be read is named in one
line and skipped: the others still load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .base import OPERATORS, Entry, KnowledgeError

SCHEMA = "archlab.lesson/1"
PREFIX = "lesson-"  # every learned id starts so: `archlab knowledge show/delete` tell them from curated ones
_ID = re.compile(r"^lesson-[0-9a-f]{8}-[0-9a-f]{10}$")


# Mechanisms read from a parent's code: a description of the parent that means the same in any run.
def home() -> Path:
    """The user-level archlab directory: $ARCHLAB_HOME, else ~/.archlab."""
    return Path(os.environ.get("ARCHLAB_HOME") or Path.home() / ".archlab").expanduser()


def lessons_dir() -> Path:
    return home() / "lessons"


def code_hash(code: str) -> str:
    """A root's identity across runs: the hash of its code."""
    return hashlib.sha256(code.encode()).hexdigest()[:16]


@dataclass
class Lesson:
    id: str
    run: str  # the run directory
    run_id: str  # the run's id (meta run_id): stays the same when a run directory is moved
    root: str  # the root's name (built-in name or file) as its run gave it
    root_hash: str  # code_hash of the root's code: what a later run matches on
    operator: str  # as the offline brain names it: output_gate, code:gate, ...
    arm: str  # what the brain credits within the operator: a JSON value, or code_edits.arm()
    change: str  # the change in words
    parent_kind: str  # "template" (a design) or "code" (a file edited in place)
    parent_mechanisms: list[str]  # mechanisms every parent's code had
    parents: dict  # {"root": n, "descendants": n}: where the change was made
    trials: int
    mean_gain: float  # fitness over the parent; a failed child counts as the brain counts it
    std_gain: float
    failed: int
    nodes: list[int]  # the children that made the change
    tier: str
    seeds: list[int]  # the run's seed (its search evaluations are trained with it)
    verified: list[dict] = field(default_factory=list)  # promoted children: node, tier, seeds, fitness, fitness_std
    text: str = ""  # the analyst's sentence
    created: float = 0.0

    @staticmethod
    def make_id(run_id: str, root_hash: str, operator: str, arm: str) -> str:
        digest = hashlib.sha256(json.dumps([root_hash, operator, arm]).encode()).hexdigest()
        return f"{PREFIX}{hashlib.sha256(run_id.encode()).hexdigest()[:8]}-{digest[:10]}"

    @property
    def verdict(self) -> str:
        return "helped" if self.mean_gain > 0 else "hurt" if self.mean_gain < 0 else "did nothing"

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, **asdict(self)}

    def entry(self) -> Entry:
        """The lesson as a knowledge entry, retrieved beside the curated ones. Only a change that
        helped names its operator (an entry's operators are recommendations)."""
        op = self.operator
        return Entry(
            id=self.id,
            title=f"Learned: {self.change} {self.verdict} ({self.mean_gain:+.3f} over {self.trials} trial(s))",
            source=f"run {self.run} (id {self.run_id}), nodes {', '.join(map(str, self.nodes))}",
            tags=["learned", self.parent_kind, *self.parent_mechanisms],
            operators=[op] if op in OPERATORS and self.mean_gain > 0 else [],
            problem=f"Root {self.root} ({self.root_hash}); parents: {self.parent_kind} with "
            f"{', '.join(self.parent_mechanisms) or 'no named mechanism'}.",
            insight=self.text,
            when=f"a {self.parent_kind} parent from root {self.root}",
            how=f"operator {self.operator}, arm {self.arm}",
            costs=f"{self.failed} of {self.trials} trial(s) failed" if self.failed else "",
        )


def _parse(path: Path) -> Lesson:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KnowledgeError(f"{path}: not a readable lesson ({' '.join(str(e).split())}); skipped") from None
    names = {f.name for f in fields(Lesson)}
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not names <= set(data):
        raise KnowledgeError(
            f"{path}: not a lesson (expected {SCHEMA} with fields {', '.join(sorted(names))}); skipped"
        )
    lesson = Lesson(**{k: data[k] for k in names})
    if lesson.id != path.stem or not _ID.match(lesson.id):
        raise KnowledgeError(f"{path}: its id {lesson.id!r} does not match its file name; skipped")
    return lesson


def load(directory: Path | None = None) -> tuple[list[Lesson], list[str]]:
    """Every lesson in the store, by id, and one line per file that could not be read."""
    directory = directory or lessons_dir()
    lessons, problems = [], []
    if not directory.is_dir():
        return [], []
    for path in sorted(directory.glob(f"{PREFIX}*.json")):
        try:
            lessons.append(_parse(path))
        except KnowledgeError as e:
            problems.append(str(e))
    return lessons, problems


def write_run(run_id: str, lessons: list[Lesson], directory: Path | None = None) -> None:
    """Replace the lessons of one run with these (idempotent: ids are fixed by run and change)."""
    directory = directory or lessons_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for lesson in lessons:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(lesson.to_dict(), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, directory / f"{lesson.id}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    keep = {lesson.id for lesson in lessons}
    for old in load(directory)[0]:
        if old.run_id == run_id and old.id not in keep:
            (directory / f"{old.id}.json").unlink(missing_ok=True)


def delete(ids: list[str], directory: Path | None = None) -> None:
    """Delete learned entries by id; a KnowledgeError naming the first unknown id deletes nothing."""
    directory = directory or lessons_dir()
    for lesson_id in ids:
        if not _ID.match(lesson_id) or not (directory / f"{lesson_id}.json").is_file():
            raise KnowledgeError(f"no learned entry with id '{lesson_id}' (see `archlab knowledge list --learned`)")
    for lesson_id in ids:
        (directory / f"{lesson_id}.json").unlink(missing_ok=True)


def priors(lessons: list[Lesson], root_hash: str) -> dict[tuple[str, str], dict]:
    """What the lessons about this root say per (operator, arm): their pooled mean gain, trials and ids."""
    pooled: dict[tuple[str, str], dict] = {}
    for lesson in lessons:
        if lesson.root_hash != root_hash:
            continue
        p = pooled.setdefault((lesson.operator, lesson.arm), {"trials": 0, "sum": 0.0, "lessons": []})
        p["trials"] += lesson.trials
        p["sum"] += lesson.mean_gain * lesson.trials
        p["lessons"].append(lesson.id)
    return {
        key: {"trials": p["trials"], "mean_gain": p["sum"] / p["trials"], "lessons": p["lessons"]}
        for key, p in pooled.items()
        if p["trials"] > 0
    }
