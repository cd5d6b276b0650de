"""Consistency checks of a run directory: database <-> git <-> logs <-> checkpoints.

`check(run_dir)` only reads. `check(run_dir, repair=True)` also fixes what can be fixed
without losing data: orphan commits (a tag whose row was never written) are removed, nodes
left "evaluating" with no checkpoint to resume are marked failed ("interrupted"), stale
open-thread markers are dropped, a node's damaged git blob/tree is rewritten from the
database's copy of its code (and missing copies are taken from git), a deleted git repository
is rebuilt from those copies. Everything else is reported for a person to look at: a damaged
database with how to recover it, since no guess at its rows could be trusted.
"""

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import git

from archlab.config import RunConfig
from archlab.errors import UserError
from archlab.tree.lineage import DamagedObject, Lineage
from archlab.tree.store import DB_FILE, DamagedStore, Store, checkpointed_threads, writable


@dataclass
class Finding:
    severity: str  # "error" | "warning"
    what: str
    repaired: bool = False


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    checked: dict = field(default_factory=dict)
    repairable: bool = True  # False: --repair cannot help (a damaged database needs a person)

    def add(self, severity: str, what: str, repaired: bool = False) -> None:
        self.findings.append(Finding(severity, what, repaired))

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" and not f.repaired for f in self.findings)

    def as_json(self) -> dict:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "findings": [f.__dict__ for f in self.findings],
            "repairable": self.repairable,
        }


# What to do with a damaged archlab.db: nothing here rewrites it, since a wrong guess would lose rows.
DAMAGED_DB = (
    "copy the run directory aside, then restore archlab.db from a backup, or salvage its readable rows with "
    "`sqlite3 archlab.db .recover | sqlite3 recovered.db` and put recovered.db in its place "
    "(every node's code is also in the run's git repository, tags node-N)"
)


def check(run_dir: Path, repair: bool = False) -> Report:
    report = Report()
    if not (Path(run_dir) / DB_FILE).is_file():
        raise UserError(f"{run_dir} is not an archlab run (no {DB_FILE})")
    try:
        _check(Path(run_dir), repair, report)
    except (DamagedStore, sqlite3.DatabaseError) as e:
        report.add("error", f"the database is damaged ({e.args[0] if e.args else e}): {DAMAGED_DB}")
        report.repairable = False
    return report


def _check(run_dir: Path, repair: bool, report: Report) -> None:
    try:
        RunConfig.load(run_dir)
    except UserError as e:  # the other checks do not need it: report it beside them
        report.add("error", str(e))
    if repair or writable(run_dir):
        store = Store(run_dir)
    else:  # another user's run, or one made read-only: check it without writing
        from archlab.tree.readonly import ReadOnlyStore

        store = ReadOnlyStore(run_dir)
    integrity = store.integrity_check()
    if integrity != "ok":
        report.add("error", f"SQLite integrity check: {integrity}; {DAMAGED_DB}")
        report.repairable = False
    if not (run_dir / "repo" / ".git").exists():
        if not repair:
            report.add(
                "error",
                "the git repository (repo/) is missing; --repair rebuilds it from the database's copy of the code",
            )
            return
        if not _rebuild_repo(run_dir, store, report):
            return
    try:
        lineage = Lineage(run_dir / "repo")
        tags = lineage.node_tags()
    except (git.exc.GitError, ValueError, OSError) as e:
        report.add(
            "error",
            f"the git repository cannot be read: {e}; restore repo/ from a backup, "
            f"or move it aside and run `archlab doctor {run_dir} --repair` to rebuild it from the database",
        )
        return
    nodes = store.nodes()
    report.checked.update(nodes=len(nodes), commits=len(tags))
    by_id = {n["id"]: n for n in nodes}
    for node in nodes:
        _check_node(node, by_id, tags, lineage, report)
    _check_code(store, nodes, tags, lineage, repair, report)
    for node_id in sorted(set(tags) - set(by_id)):
        if repair:
            lineage.drop_tag(node_id)
        report.add("error", f"commit node-{node_id} has no row (a crash between commit and row)", repaired=repair)
    _check_threads(run_dir, store, repair, report)
    _check_evaluations(run_dir, store, by_id, report)
    try:
        lineage.repo.git.fsck("--no-dangling")
    except git.exc.GitCommandError as e:
        lines = [line.strip().removeprefix("stderr:").strip(" '") for line in (e.stderr or str(e)).splitlines()]
        problems = [line for line in lines if line and not line.startswith("notice:")]
        report.add("error", f"git fsck: {problems[0] if problems else 'failed'}")


def _rebuild_repo(run_dir: Path, store: Store, report: Report) -> bool:
    """A new git repository with one commit per node, written from the database's copy of the code.
    The commits are new (new hashes, recorded in the rows); code, parents and tags are as before."""
    nodes = store.nodes()  # by id: a parent's id is always below its children's
    uncopied = [n["id"] for n in nodes if store.code_copy(n["id"]) is None]
    if uncopied:
        report.add(
            "error",
            f"the git repository (repo/) is missing and the database has no copy of node {uncopied[0]}'s code "
            f"(a run from an older archlab): restore repo/ from a backup",
        )
        return False
    lineage = Lineage(run_dir / "repo", create=True)
    shas: dict[int, str] = {}
    for n in nodes:
        parent = n["parent_id"]
        message = (
            f"node {n['id']}: {n['operator'] or 'proposal'}"
            + (f" (from node {parent})" if parent is not None else "")
            + f"\n\n{n['motivation'] or ''}\n\nRebuilt by archlab doctor --repair from the database's copy of the code."
        )
        shas[n["id"]] = lineage.commit(n["id"], store.code_copy(n["id"]), message, shas.get(parent))
        store.update_node(n["id"], commit_sha=shas[n["id"]])
    lineage.repo.close()
    report.add(
        "error",
        f"the git repository (repo/) was missing: rebuilt with {len(shas)} commit(s) from the database",
        repaired=True,
    )
    return True


def _check_code(store: Store, nodes: list[dict], tags: dict, lineage: Lineage, repair: bool, report: Report) -> None:
    """Every node's code must read back from git and match the database's copy."""
    uncopied = []
    for node in nodes:
        nid, copy = node["id"], store.code_copy(node["id"])
        if nid not in tags:
            continue
        try:
            code = lineage.code(tags[nid])
        except DamagedObject:
            restored = repair and copy is not None and lineage.restore(tags[nid], copy)
            report.add(
                "error",
                f"node {nid}: its code cannot be read from git"
                + ("" if copy is not None else " and the database has no copy of it"),
                repaired=bool(restored),
            )
            continue
        if copy is None:
            uncopied.append(nid)
            if repair:
                store.save_code(nid, code)
        elif copy != code:
            report.add("error", f"node {nid}: its code in git differs from the database's copy")
    if uncopied:
        report.add(
            "warning",
            f"{len(uncopied)} node(s) have no database copy of their code (e.g. node {uncopied[0]}; "
            f"runs from an older archlab)",
            repaired=repair,
        )


def _check_node(node: dict, by_id: dict, tags: dict, lineage: Lineage, report: Report) -> None:
    nid = node["id"]
    if nid not in tags:
        if not (node["status"] == "imported" and node["commit_sha"] is None):  # a record published without code
            report.add("error", f"node {nid} has no commit (tag node-{nid} missing)")
        return
    if node["commit_sha"] != tags[nid]:
        report.add("error", f"node {nid}: row says commit {node['commit_sha']}, tag says {tags[nid]}")
    parent = by_id.get(node["parent_id"]) if node["parent_id"] is not None else None
    try:
        parents = [p.hexsha for p in lineage.repo.commit(tags[nid]).parents]
    except (ValueError, git.exc.GitError) as e:
        report.add("error", f"node {nid}: commit {tags[nid]} cannot be read ({e})")
        return
    coded = parent  # the nearest ancestor with code: an imported record without any is skipped in git
    while coded is not None and coded["commit_sha"] is None and coded["parent_id"] is not None:
        coded = by_id.get(coded["parent_id"])
    wanted = [coded["commit_sha"]] if coded else []
    if node["parent_id"] is not None and parent is None:
        report.add("error", f"node {nid}: parent {node['parent_id']} has no row")
    elif parents != wanted:
        report.add("error", f"node {nid}: commit parents {parents} differ from its parent node's commit {wanted}")
    if node["status"] == "done" and node["fitness"] is None:
        report.add("error", f"node {nid} is done but has no fitness")
    if node["status"] == "failed" and not node["reason"]:
        report.add("warning", f"node {nid} failed without a reason")


def _check_threads(run_dir: Path, store: Store, repair: bool, report: Report) -> None:
    """Open candidate threads must have a checkpoint; in-flight nodes must belong to one."""
    open_threads = store.open_threads()
    checkpointed: set[str] = set()
    path = Path(run_dir) / "checkpoints.db"
    if path.exists():
        try:
            checkpointed = checkpointed_threads(path)
        except sqlite3.DatabaseError:
            report.add("warning", "checkpoints.db cannot be read: interrupted candidates will start over")
    resumable = set()
    for thread in open_threads:
        if thread in checkpointed:
            resumable.add(thread)
        elif repair:
            store.set_meta(f"thread:{thread}", None)
            report.add("warning", f"open candidate {thread} has no checkpoint yet (nothing to resume)", repaired=True)
    report.checked["open_candidates"] = len(open_threads)
    evaluating = store.evaluating()
    if evaluating and not resumable:
        for node in evaluating:
            if repair:
                store.update_node(node["id"], status="failed", reason="interrupted", finished=time.time())
            report.add(
                "error", f"node {node['id']} is still 'evaluating' and no checkpoint resumes it", repaired=repair
            )


def _check_evaluations(run_dir: Path, store: Store, by_id: dict, report: Report) -> None:
    rows = store.evaluation_outcomes()
    report.checked["evaluations"] = len(rows)
    missing_logs = [r for r in rows if r["log"] and not (Path(run_dir) / r["log"]).exists()]
    if missing_logs:
        report.add(
            "warning",
            f"{len(missing_logs)} evaluation log(s) are missing (e.g. {missing_logs[0]['log']}); "
            f"metrics are kept in the database",
        )
    ok_nodes = {r["node_id"] for r in rows if r["ok"]}
    for node in by_id.values():
        if node["status"] == "done" and node["id"] not in ok_nodes:
            report.add("error", f"node {node['id']} is done but has no accepted evaluation")
    orphans = {r["node_id"] for r in rows} - set(by_id)
    if orphans:
        report.add("error", f"evaluations of unknown nodes: {sorted(orphans)[:10]}")
