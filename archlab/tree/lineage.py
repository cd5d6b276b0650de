"""Git lineage: every node is a commit (tagged node-N) whose parent commit is its parent node's.

Commits are built from objects directly (no working tree, no checkout), so writing a node
never touches files a user may be reading, and the author is fixed (no git config needed).
A node's blob and tree depend on its code alone, so a damaged one can be rewritten from a
copy of the code (the store keeps one) and gets the same hash back.
"""

import functools
import hashlib
import io
import threading
from pathlib import Path

import git
import gitdb.exc
from gitdb import IStream

from archlab.errors import UserError

CANDIDATE_FILE = "candidate.py"
ACTOR = git.Actor("archlab", "archlab@localhost")
READ_ERRORS = (ValueError, git.exc.GitError, gitdb.exc.ODBError)


class DamagedObject(UserError):
    """A git object of the lineage cannot be read: a file under repo/.git was corrupted or deleted."""


def _locked(method):
    """GitPython keeps one `git cat-file` process per repo: calls from worker threads take turns."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


def _reading(method):
    """Turn git's many read failures into one clear error that says what to do."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except READ_ERRORS as e:
            detail = (getattr(e, "stderr", None) or str(e)).strip().splitlines()[-1].strip(" '")
            run_dir = Path(self.repo.working_dir).parent
            raise DamagedObject(
                f"{self.repo.working_dir}: a git object of commit {str(args[-1])[:12]} cannot be read ({detail}); "
                f"`archlab doctor {run_dir}` names the damaged nodes and `--repair` rewrites their code "
                f"from the database's copy"
            ) from None

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
        tree = git.Tree(self.repo, self._write_tree(code))
        parents = [self.repo.commit(parent_sha)] if parent_sha else []
        commit = git.Commit.create_from_tree(
            self.repo, tree, message, parent_commits=parents, head=False, author=ACTOR, committer=ACTOR
        )
        self.repo.create_tag(tag, ref=commit)
        return commit.hexsha

    def _write_tree(self, code: str, rewrite: bool = False) -> bytes:
        """Store the blob of `code` and a tree holding it as candidate.py; returns the tree's binary sha.
        rewrite=True first deletes existing (possibly damaged) loose files of those two objects."""
        blob = code.encode("utf-8")
        tree = b"100644 " + CANDIDATE_FILE.encode() + b"\0" + hashlib.sha1(b"blob %d\0" % len(blob) + blob).digest()
        sha = b""
        for kind, data in (("blob", blob), ("tree", tree)):
            if rewrite:
                hexsha = hashlib.sha1(b"%s %d\0" % (kind.encode(), len(data)) + data).hexdigest()
                (Path(self.repo.git_dir) / "objects" / hexsha[:2] / hexsha[2:]).unlink(missing_ok=True)
            sha = self.repo.odb.store(IStream(kind, len(data), io.BytesIO(data))).binsha
        return sha

    @_locked
    @_reading
    def code(self, sha: str) -> str:
        return self.repo.commit(sha).tree[CANDIDATE_FILE].data_stream.read().decode("utf-8")

    @_locked
    def restore(self, sha: str, code: str) -> bool:
        """Rewrite a commit's blob and tree from a copy of its code; True when the commit reads back as `code`."""
        self._write_tree(code, rewrite=True)
        try:
            return self.code(sha) == code
        except DamagedObject:
            return False

    @_locked
    @_reading
    def diff(self, parent_sha: str | None, sha: str) -> str:
        if parent_sha is None:
            return ""
        return self.repo.git.diff(parent_sha, sha, "--", CANDIDATE_FILE)

    @_locked
    def node_tags(self) -> dict[int, str]:
        return {
            int(t.name[5:]): t.commit.hexsha
            for t in self.repo.tags
            if t.name.startswith("node-") and t.name[5:].isdigit()
        }

    @_locked
    def drop_tag(self, node_id: int) -> None:
        self.repo.delete_tag(self.repo.tags[f"node-{node_id}"])
