"""The run's store opened read-only: what `serve`, `doctor` and every reading command use on a run
they must not (or cannot) write, e.g. another user's or one on a read-only disk."""

import sqlite3
import threading
from pathlib import Path

import sqlite_utils

from archlab.errors import UserError
from archlab.tree.store import DB_FILE, Store


class ReadOnlyStore(Store):
    """The run's Store, opened read-only: the reading methods of Store, and no way to write."""

    def __init__(self, run_dir: Path):
        path = Path(run_dir).resolve() / DB_FILE
        if not path.is_file():
            raise UserError(f"{run_dir} is not an archlab run (no {DB_FILE})")
        self._watch = None  # set before Store.__init__, which calls close() when the file cannot be read
        self._watch_lock = threading.Lock()
        super().__init__(path.parent)
        self._watch = self._connect().conn  # data_version's own connection (see there)

    def _connect(self) -> sqlite_utils.Database:
        conn = None
        # mode=ro still needs the WAL's -shm file, which SQLite cannot create in a folder this user may
        # not write (chmod a-w, another user's run): then nothing can be writing it either, and
        # immutable=1 reads the file as it is.
        for mode in ("mode=ro", "immutable=1"):
            conn = sqlite3.connect(
                f"{self.path.as_uri()}?{mode}", uri=True, timeout=10, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("select 1 from sqlite_master limit 1")
                break
            except sqlite3.OperationalError:
                if mode == "immutable=1":
                    raise
                conn.close()
        conn.execute("PRAGMA query_only = 1")
        return sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)

    def data_version(self) -> int:
        """A number that changes when another process commits. SQLite compares the commits that one
        connection saw, so every thread asks the same connection, one at a time."""
        with self._watch_lock:
            return self._watch.execute("PRAGMA data_version").fetchone()[0]

    def close(self) -> None:
        with self._watch_lock:
            if self._watch is not None:
                self._watch.close()
        super().close()
