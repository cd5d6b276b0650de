"""Git lineage: every node is a commit (tagged node-N) whose parent commit is its parent node's.

Commits are built from objects directly (no working tree, no checkout), so writing a node
never touches files a user may be reading, and the author is fixed (no git config needed).
"""

import functools
import io
import threading
from pathlib import Path

import git
from git.index.typ import BaseIndexEntry
from gitdb import IStream

CANDIDATE_FILE = "candidate.py"
ACTOR = git.Actor("archlab", "archlab@localhost")


def _locked(method):
    """GitPython keeps one `git cat-file` process per repo: calls from worker threads take turns."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class Lineage:
    def __init__(self, repo_dir: Path, create: bool = False):
        self.repo = git.Repo.init(repo_dir) if create and not (repo_dir / ".git").exists() else git.Repo(repo_dir)
        self._lock = threading.RLock()

    @_locked
    def commit(self, node_id: int, code: str, message: str, parent_sha: str | None) -> str:
        """Commit a node's code and tag it node-N. Idempotent: the same code again returns the
        existing commit; new code (an engineer's repair) replaces the node's commit."""
        tag = f"node-{node_id}"
        if tag in self.repo.tags:
            existing = self.repo.tags[tag].commit
            if self.code(existing.hexsha) == code:
                return existing.hexsha
            self.repo.delete_tag(self.repo.tags[tag])
        data = code.encode("utf-8")
        blob = self.repo.odb.store(IStream("blob", len(data), io.BytesIO(data))).binsha
        index = git.IndexFile.new(self.repo)
        index.add([BaseIndexEntry((0o100644, blob, 0, CANDIDATE_FILE))], write=False)
        parents = [self.repo.commit(parent_sha)] if parent_sha else []
        commit = git.Commit.create_from_tree(
            self.repo, index.write_tree(), message, parent_commits=parents, head=False, author=ACTOR, committer=ACTOR
        )
        self.repo.create_tag(tag, ref=commit)
        return commit.hexsha

    @_locked
    def code(self, sha: str) -> str:
        return self.repo.commit(sha).tree[CANDIDATE_FILE].data_stream.read().decode("utf-8")

    @_locked
    def diff(self, parent_sha: str | None, sha: str) -> str:
        if parent_sha is None:
            return ""
        return self.repo.git.diff(parent_sha, sha, "--", CANDIDATE_FILE)

    @_locked
    def node_tags(self) -> dict[int, str]:
        return {int(t.name[5:]): t.commit.hexsha for t in self.repo.tags if t.name.startswith("node-") and t.name[5:].isdigit()}

    @_locked
    def drop_tag(self, node_id: int) -> None:
        self.repo.delete_tag(self.repo.tags[f"node-{node_id}"])
