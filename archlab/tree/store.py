"""The search tree's SQLite store (WAL mode, written with sqlite-utils).

The driver (`archlab run`) writes, and so do `replay` (its evaluations), `fork` and `import` (a
new run), `steer` (its traces) and `doctor --repair`: one writer at a time, the others wait their
turn (WAL, a busy timeout). Readers (status, tree, show, serve) open their own connection and
never block a writer. JSON columns hold metrics, designs and decisions.
"""

import json
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import sqlite_utils

from archlab.errors import UserError

DB_FILE = "archlab.db"
WEIGHTS_DIR = "weights"  # trained weights kept beside the database (search, promotions, replays) for export and fork
SCHEMA = {
    "nodes": {
        "id": int,
        "parent_id": int,
        "status": str,
        "operator": str,
        "motivation": str,
        "design": str,
        "commit_sha": str,
        "created": float,
        "finished": float,
        "fitness": float,
        "val_loss": float,
        "reason": str,
        "detail": str,
        "analysis": str,
        "attempts": int,
        "references_used": str,
        "metrics": str,
        "knowledge": str,
        # multi-fidelity (archlab/search/promotion.py): where fitness/val_loss come from, and their spread
        "search_fitness": float,
        "tier": str,
        "seeds": int,
        "fidelity": int,
        "fitness_std": float,
        "val_loss_std": float,
    },
    "evaluations": {
        "id": int,
        "node_id": int,
        "tier": str,
        "seed": int,
        "ok": int,
        "reason": str,
        "detail": str,
        "metrics": str,
        "env": str,
        "log": str,
        "created": float,
        "kind": str,
        # compute spent, out of the JSON so that summing 100k evaluations stays fast (Store.spend)
        "wall_s": float,
        "threads": int,
        "gpus": int,
        "curves": str,  # loss over steps, one dict per seed (archlab/sandbox/curves.py); display-only
    },
    "traces": {
        "id": int,
        "node_id": int,
        "role": str,
        "attempt": int,
        "kind": str,
        "model": str,
        "prompt": str,
        "response": str,
        "decision": str,
        "tokens_in": int,
        "tokens_out": int,
        "cost": float,
        "latency_s": float,
        "error": str,
        "created": float,
        "request_hash": str,
    },
    "events": {"id": int, "ts": float, "kind": str, "node_id": int, "message": str},
    "meta": {"key": str, "value": str},
    # A second copy of each node's code beside its git blob: `archlab doctor --repair` rewrites a
    # damaged git object from it (same bytes, same hash), so a corrupted repository loses nothing.
    "code": {"node_id": int, "code": str},
}
PRIMARY_KEYS = {"meta": "key", "code": "node_id"}
# The compute of an evaluation as stored in its JSON (rows written before the columns existed).
WALL_SQL = "coalesce(json_extract(metrics, '$.wall_s'), 0.0)"
THREADS_SQL = "coalesce(json_extract(env, '$.executor.threads'), json_extract(env, '$.threads'), 1)"
GPUS_SQL = (
    "coalesce(json_extract(env, '$.executor.gpus'), case when json_extract(env, '$.device') = 'cuda' then 1 else 0 end)"
)


def writable(run_dir: Path) -> bool:
    """Whether this user may write the run's database (and the folder where SQLite keeps its WAL files)."""
    return os.access(run_dir, os.W_OK) and os.access(Path(run_dir) / DB_FILE, os.W_OK)


class DamagedStore(UserError):
    """The database file is there but SQLite cannot read it (truncated, overwritten, corrupted)."""

    exit_code = 1  # not a usage error: the same command fails until the file is restored

    def __str__(self) -> str:
        return f"{super().__str__()}; `archlab doctor RUN_DIR` says how to recover it"


class Store:
    """The run's database. Each thread works through a connection of its own (the run's worker
    threads, the replay pool, the web server's threads): sqlite-utils opens a transaction per
    write, or a savepoint inside one already open, and sqlite3 reuses prepared statements per
    connection, so threads sharing one connection ended each other's savepoints ("no such
    savepoint") and read each other's rows (Python 3.12: a table's columns came back short)."""

    def __init__(self, run_dir: Path, create: bool = False):
        self.path = Path(run_dir) / DB_FILE
        if not create and not self.path.exists():
            raise UserError(f"{run_dir} is not an archlab run (no {DB_FILE})")
        self._local = threading.local()
        self._opened: list[sqlite_utils.Database] = []
        self._opened_lock = threading.Lock()
        try:
            if create:
                self._create()
            self.db.execute("select 1 from nodes limit 1")
        except sqlite3.DatabaseError as e:
            self.close()
            full = (
                shutil.disk_usage(self.path.parent).free < 2**20
            )  # SQLite needs a little space even to read a WAL database
            if full:
                raise UserError(f"cannot open {self.path}: {e} (the disk is full: free some space and retry)") from None
            raise DamagedStore(f"cannot open {self.path}: {e}") from None

    def _connect(self) -> sqlite_utils.Database:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")  # WAL: one writer at a time, the others wait their turn
        return sqlite_utils.Database(conn)

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection, opened on first use."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
            with self._opened_lock:
                self._opened.append(db)
        return db

    def close(self) -> None:
        """Close every thread's connection (check_same_thread=False allows it from any thread)."""
        with self._opened_lock:
            for db in self._opened:
                db.conn.close()
            self._opened.clear()
        self._local = threading.local()

    def _create(self) -> None:
        self.db.enable_wal()
        for name, columns in SCHEMA.items():
            if name not in self.db.table_names():
                self.db[name].create(columns, pk=PRIMARY_KEYS.get(name, "id"))
            else:  # a store from an older archlab: add what is missing, keep everything
                missing = {c: t for c, t in columns.items() if c not in self.db[name].columns_dict}
                for column, kind in missing.items():
                    self.db[name].add_column(column, kind)
                if name == "evaluations" and "wall_s" in missing:
                    self.db.execute(
                        f"update evaluations set wall_s = {WALL_SQL}, threads = {THREADS_SQL}, gpus = {GPUS_SQL}"
                    )
        self.db["evaluations"].create_index(["node_id"], if_not_exists=True)
        if "wall_s" in self.db["evaluations"].columns_dict:  # covers Store.spend: it never reads the rows themselves
            self.db["evaluations"].create_index(["tier", "kind", "ok", "wall_s", "threads", "gpus"], if_not_exists=True)
        self.db["traces"].create_index(["node_id", "role", "request_hash"], if_not_exists=True)
        self.db["traces"].create_index(["role", "kind"], if_not_exists=True)  # steering, read before every candidate
        self.db["nodes"].create_index(["status", "fitness"], if_not_exists=True)
        self.db["nodes"].create_index(["parent_id"], if_not_exists=True)
        self.db["nodes"].create_index(["status", "id"], if_not_exists=True)  # recent finished nodes (evolution)
        # the leaderboard's order (highest fidelity first), so `archlab status` reads ten rows, not all
        self.db.execute(
            "create index if not exists idx_nodes_rank on nodes (status, coalesce(fidelity, 0) desc, fitness desc, id)"
        )

    # -- nodes ---------------------------------------------------------------------------
    def next_node_id(self) -> int:
        row = self.db.execute("select max(id) from nodes").fetchone()
        return 0 if row[0] is None else row[0] + 1

    def add_node(self, **fields) -> None:
        fields.setdefault("created", time.time())
        fields.setdefault("attempts", 0)
        self.db["nodes"].insert(_encode(fields), pk="id")

    def update_node(self, node_id: int, **fields) -> None:
        self.db["nodes"].update(node_id, _encode(fields))

    def node(self, node_id: int) -> dict:
        try:
            return _decode(self.db["nodes"].get(node_id))
        except (sqlite_utils.db.NotFoundError, OverflowError):  # OverflowError: an id beyond SQLite's 64-bit integers
            raise UserError(f"no node {node_id} in this run") from None

    def has_node(self, node_id: int) -> bool:
        if not -(2**63) <= node_id < 2**63:  # SQLite cannot even compare it
            return False
        return self.db.execute("select 1 from nodes where id = ?", [node_id]).fetchone() is not None

    def nodes(
        self, where: str | None = None, params: list | None = None, order: str = "id", limit: int | None = None
    ) -> list[dict]:
        return [_decode(r) for r in self.db["nodes"].rows_where(where, params or [], order_by=order, limit=limit)]

    def count(self, where: str | None = None, params: list | None = None) -> int:
        return self.db["nodes"].count_where(where or "1", params or [])

    def best(self, limit: int = 1) -> list[dict]:
        return self.nodes("status = 'done' and fitness is not null", order="fitness desc, id", limit=limit)

    def children(self, node_id: int) -> list[dict]:
        return self.nodes("parent_id = ?", [node_id])

    def save_code(self, node_id: int, code: str) -> None:
        self.db["code"].upsert({"node_id": node_id, "code": code}, pk="node_id")

    def code_copy(self, node_id: int) -> str | None:
        if "code" not in self.db.table_names():  # a store from an older archlab, opened read-only
            return None
        row = self.db.execute("select code from code where node_id = ?", [node_id]).fetchone()
        return row[0] if row else None

    # -- evaluations, traces, events ---------------------------------------------------------
    def add_evaluation(self, node_id: int, tier: str, seed: int, result, log: str | None, kind: str = "search") -> None:
        env = result.env or {}
        executor = env.get("executor") or {}
        self.db["evaluations"].insert(
            {
                "node_id": node_id,
                "tier": tier,
                "seed": seed,
                "ok": int(result.ok),
                "reason": result.reason,
                "detail": result.detail,
                "metrics": json.dumps(result.metrics),
                "env": json.dumps(result.env),
                "log": log,
                "created": time.time(),
                "kind": kind,
                "wall_s": (result.metrics or {}).get("wall_s") or 0.0,
                "threads": executor.get("threads") or env.get("threads") or 1,
                "gpus": executor["gpus"] if executor.get("gpus") is not None else int(env.get("device") == "cuda"),
                "curves": json.dumps(result.curves) if getattr(result, "curves", None) else None,
            }
        )

    def evaluations(self, node_id: int) -> list[dict]:
        return [_decode(r) for r in self.db["evaluations"].rows_where("node_id = ?", [node_id], order_by="id")]

    def add_trace(self, node_id: int | None, role: str, kind: str, **fields) -> None:
        self.db["traces"].insert(
            _encode({"node_id": node_id, "role": role, "kind": kind, "created": time.time(), **fields})
        )

    def traces_of(self, role: str, kind: str) -> list[dict]:
        """Every trace of one role and kind, in order (steering commands: role "user", kind "steer")."""
        return [_decode(r) for r in self.db["traces"].rows_where("role = ? and kind = ?", [role, kind], order_by="id")]

    def subtree(self, node_ids: set[int]) -> list[int]:
        """The given nodes and all their descendants."""
        if not node_ids:
            return []
        marks = ",".join("?" * len(node_ids))
        return [
            r[0]
            for r in self.db.execute(
                f"with recursive sub(id) as (select id from nodes where id in ({marks}) "
                f"union select n.id from nodes n join sub on n.parent_id = sub.id) select id from sub",
                list(node_ids),
            )
        ]

    def traces(self, node_id: int | None = None) -> list[dict]:
        where, params = ("node_id = ?", [node_id]) if node_id is not None else (None, [])
        return [_decode(r) for r in self.db["traces"].rows_where(where, params, order_by="id")]

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("select value from meta where key = ?", [key]).fetchone()
        return default if row is None else row[0]

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self.db.execute("delete from meta where key = ?", [key])
        else:
            self.db["meta"].upsert({"key": key, "value": value}, pk="key")

    def event(self, kind: str, message: str, node_id: int | None = None) -> None:
        self.db["events"].insert({"ts": time.time(), "kind": kind, "node_id": node_id, "message": message})

    def events(self, node_id: int | None = None) -> list[dict]:
        """The audit trail in order: every event, or one node's (evaluation attempts, recoveries, promotions)."""
        where, params = ("node_id = ?", [node_id]) if node_id is not None else (None, [])
        return list(self.db["events"].rows_where(where, params, order_by="id"))

    # -- multi-fidelity leaderboard and compute spend ------------------------------------------------
    def leaderboard(self, limit: int = 10) -> list[dict]:
        """Finished nodes, highest-fidelity figure first (promoted before search-tier only), then fitness."""
        if "fidelity" not in self.db["nodes"].columns_dict:  # a store from an older archlab, opened read-only
            return self.best(limit)
        return self.nodes(
            "status = 'done' and fitness is not null", order="coalesce(fidelity, 0) desc, fitness desc, id", limit=limit
        )

    def multi_tier_evaluations(self) -> list[dict]:
        """The successful evaluations (node_id, tier, seed, kind, metrics) of every node evaluated
        successfully at more than one tier (search and promotion, or a replay), oldest first.
        Such a node has an evaluation outside the tier with the most, so only those are looked up
        through the (tier, kind, ok) index, not every search evaluation of a big run."""
        counts = self.db.execute(
            "select tier, count(*) from evaluations where ok = 1 group by tier order by count(*) desc"
        ).fetchall()
        if len(counts) < 2:
            return []
        others = [t for t, _ in counts[1:]]
        rows = self.db.execute(
            f"select node_id, tier, seed, kind, metrics from evaluations where ok = 1 and node_id in ("
            f"select distinct node_id from evaluations where tier in ({', '.join('?' * len(others))}) and ok = 1) order by id",
            others,
        ).fetchall()
        tiers: dict = {}
        for node_id, tier, *_ in rows:
            tiers.setdefault(node_id, set()).add(tier)
        return [
            _decode({"node_id": r[0], "tier": r[1], "seed": r[2], "kind": r[3], "metrics": r[4]})
            for r in rows
            if len(tiers[r[0]]) > 1
        ]

    def spend(self, kinds: tuple[str, ...] | None = None) -> list[dict]:
        """Evaluations and compute per (tier, kind): wall hours, CPU-hours (wall x threads), GPU-hours."""
        where, params = ("where kind in (%s)" % ", ".join("?" * len(kinds)), list(kinds)) if kinds else ("", [])
        if "wall_s" in self.db["evaluations"].columns_dict:
            wall, threads, gpus = "coalesce(wall_s, 0.0)", "coalesce(threads, 1)", "coalesce(gpus, 0)"
        else:  # a store from an older archlab, opened read-only
            wall, threads, gpus = WALL_SQL, THREADS_SQL, GPUS_SQL
        rows = self.db.execute(
            f"select tier, kind, count(*), sum(ok), sum({wall}) / 3600.0, sum({wall} * {threads}) / 3600.0, "
            f"sum({wall} * {gpus}) / 3600.0 from evaluations {where} group by tier, kind order by min(id)",
            params,
        ).fetchall()
        return [
            {
                "tier": r[0],
                "kind": r[1],
                "evaluations": r[2],
                "ok": r[3] or 0,
                "wall_hours": r[4] or 0.0,
                "cpu_hours": r[5] or 0.0,
                "gpu_hours": r[6] or 0.0,
            }
            for r in rows
        ]


def _encode(fields: dict) -> dict:
    """JSON columns are written with json.dumps' defaults, so equal designs compare equal in SQL."""
    return {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in fields.items()}


def _decode(row: dict) -> dict:
    for key in ("design", "metrics", "env", "decision", "references_used", "knowledge", "curves"):
        if isinstance(row.get(key), str):
            try:
                row[key] = json.loads(row[key])
            except ValueError:
                pass
    return row
