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
DONE = "status = 'done' and fitness is not null"  # a node that can be ranked, and be a parent
# What a trace records beyond its node, role, kind and time: what fork copies and the dataset exports.
TRACE_FIELDS = (
    "attempt",
    "model",
    "prompt",
    "response",
    "decision",
    "tokens_in",
    "tokens_out",
    "cost",
    "latency_s",
    "error",
)
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
        # the sub-population the node was proposed in (archlab/search/islands.py); the root, shared by
        # every island, and nodes of older runs have none
        "island": int,
        # the quality-diversity archive (archlab/search/archive.py): what was measured and read from
        # the code, and the cell it places the node in ("" when it cannot be placed; null: not yet described)
        "descriptors": str,
        "cell": str,
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
    # Nodes made available to another island (archlab/search/islands.py): an island's elite moved
    # along the ring ("migrate"), or the node a new island was started from ("seed"); `finished` is
    # how many nodes had finished when it happened.
    "migrations": {
        "id": int,
        "kind": str,
        "node_id": int,
        "from_island": int,
        "to_island": int,
        "fitness": float,
        "finished": int,
        "created": float,
    },
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

# The leaderboard's sortable columns (Store.leaderboard_page): name -> SQL over the nodes table (metrics from its JSON).
LEADERBOARD_COLUMNS = {
    "id": "id",
    "parent_id": "parent_id",
    "status": "status",
    "operator": "operator",
    "fitness": "fitness",
    "val_loss": "val_loss",
    "train_loss": "json_extract(metrics, '$.train_loss')",
    "tokens_per_s": "json_extract(metrics, '$.tokens_per_s')",
    "mixer_params": "json_extract(metrics, '$.mixer_params')",
    "wall_s": "json_extract(metrics, '$.wall_s')",
    "reason": "reason",
}


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
        self.db["nodes"].create_index(["cell", "fitness"], if_not_exists=True)  # the archive's elites
        self.db["nodes"].create_index(["status", "id"], if_not_exists=True)  # recent finished nodes (evolution)
        # the leaderboard's order (highest fidelity first), so `archlab status` reads ten rows, not all
        self.db.execute(
            "create index if not exists idx_nodes_rank on nodes (status, coalesce(fidelity, 0) desc, fitness desc, id)"
        )

    def has_column(self, table: str, column: str) -> bool:
        """Whether the table has the column (a store from an older archlab, opened read-only, may not)."""
        return column in self.db[table].columns_dict

    def integrity_check(self) -> str:
        """SQLite's verdict on the database file: "ok", or the first problems it found."""
        return self.db.execute("pragma integrity_check").fetchone()[0]

    # -- nodes ---------------------------------------------------------------------------
    def max_node_id(self) -> int | None:
        """The highest node id, None in an empty store."""
        return self.db.execute("select max(id) from nodes").fetchone()[0]

    def next_node_id(self) -> int:
        top = self.max_node_id()
        return 0 if top is None else top + 1

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

    # Node states the driver and the commands ask about by name.
    def finished_count(self) -> int:
        """Nodes no longer being evaluated: what --max-nodes and the progress bar count."""
        return self.count("status != 'evaluating'")

    def evaluating(self) -> list[dict]:
        """Nodes in flight (or left in flight by a crash, until the driver recovers them)."""
        return self.nodes("status = 'evaluating'")

    def evaluated(self) -> list[dict]:
        """Nodes this run's search evaluated to an end: done or failed (not in flight, not imported)."""
        return self.nodes("status in ('done', 'failed')")

    def children(self, node_id: int) -> list[dict]:
        return self.nodes("parent_id = ?", [node_id])

    def node_ids(
        self,
        where: str | None = None,
        params: list | None = None,
        order: str = "id",
        limit: int | None = None,
        offset: int | None = None,
    ) -> list[int]:
        """The ids of the nodes `nodes()` would return (and `offset` of them skipped), without their rows."""
        sql, args = f"select id from nodes where {where or '1'} order by {order}", list(params or [])
        if limit is not None or offset:
            sql, args = sql + " limit ? offset ?", [*args, -1 if limit is None else limit, offset or 0]
        return [r[0] for r in self.db.execute(sql, args)]

    def fittest_ids(self, limit: int) -> list[int]:
        """The finished nodes with the highest fitness (whatever tier it comes from), best first."""
        return self.node_ids(DONE, order="fitness desc, id", limit=limit)

    def leaderboard_ids(self, limit: int, children_only: bool = False) -> list[int]:
        """The ids of `leaderboard(limit)`; `children_only`: not the roots."""
        children = " and parent_id is not null" if children_only else ""
        return self.node_ids(DONE + children, order=self._ranking(), limit=limit)

    def _ranking(self) -> str:
        """The leaderboard's order: the highest-fidelity figure first (promoted before search-tier only),
        then fitness (a store from an older archlab, opened read-only, has no fidelity column)."""
        fidelity = "coalesce(fidelity, 0) desc, " if self.has_column("nodes", "fidelity") else ""
        return f"{fidelity}fitness desc, id"

    def newest_ids(self, limit: int) -> list[int]:
        """The most recently created nodes, newest first."""
        return self.node_ids(order="id desc", limit=limit)

    def status_counts(self) -> dict[str, int]:
        """How many nodes have each status ("done", "failed", "evaluating", "imported")."""
        return dict(self.db.execute("select status, count(*) from nodes group by status").fetchall())

    def failure_reasons(self) -> dict[str, int]:
        """How many nodes failed for each reason, the commonest first."""
        return dict(
            self.db.execute(
                "select reason, count(*) from nodes where status = 'failed' group by reason order by count(*) desc"
            ).fetchall()
        )

    def live_counts(self) -> tuple[int, int]:
        """(nodes, nodes being evaluated), in one read."""
        row = self.db.execute("select count(*), sum(status = 'evaluating') from nodes").fetchone()
        return row[0], row[1] or 0

    def evaluating_attempts(self) -> list[tuple[int, int]]:
        """(id, attempts so far) of every node being evaluated, by id."""
        return self.db.execute(
            "select id, coalesce(attempts, 0) from nodes where status = 'evaluating' order by id"
        ).fetchall()

    def first_created(self) -> float | None:
        """When the first node was created (the run's start), None in an empty store."""
        return self.db.execute("select min(created) from nodes").fetchone()[0]

    def last_activity(self) -> float | None:
        """The latest time a node was created or finished."""
        return self.db.execute("select max(max(coalesce(finished, 0)), max(created)) from nodes").fetchone()[0]

    def parents(self) -> dict[int, int | None]:
        """Every node's parent id (None for a root), by node id."""
        return dict(self.db.execute("select id, parent_id from nodes order by id").fetchall())

    def node_columns(self, ids, columns: tuple[str, ...]) -> list[dict]:
        """Some columns (as stored: JSON undecoded) of the given nodes, by id, read 500 at a time."""
        ids, rows = sorted(ids), []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows += self.db.execute(
                f"select {', '.join(columns)} from nodes where id in ({','.join('?' * len(chunk))}) order by id", chunk
            ).fetchall()
        return [dict(zip(columns, r)) for r in rows]

    def child_summaries(self, node_id: int, limit: int = 200) -> list[dict]:
        """id, status, fitness and operator of a node's first `limit` children, by id."""
        rows = self.db.execute(
            "select id, status, fitness, operator from nodes where parent_id = ? order by id limit ?", [node_id, limit]
        ).fetchall()
        return [dict(zip(("id", "status", "fitness", "operator"), r)) for r in rows]

    def neighbour_ids(self, node_id: int) -> tuple[int | None, int | None]:
        """The ids just below and just above a node's (None at either end)."""
        row = self.db.execute(
            "select (select max(id) from nodes where id < ?), (select min(id) from nodes where id > ?)",
            [node_id, node_id],
        ).fetchone()
        return row[0], row[1]

    def analysis(self, node_id: int) -> str | None:
        """A node's analysis (its experience), None when it has none or there is no such node."""
        row = self.db.execute("select analysis from nodes where id = ?", [node_id]).fetchone()
        return row[0] if row else None

    def analyses(self) -> list[tuple[int, str]]:
        """(id, analysis) of every node that has one."""
        return self.db.execute("select id, analysis from nodes where analysis is not null").fetchall()

    def parent_child_pairs(self) -> list[dict]:
        """Every finished or failed node beside its scored parent: child, parent, operator, fitness,
        parent_fitness, design, parent_design (designs decoded)."""
        rows = self.db.execute(
            "select c.id, p.id, c.operator, c.fitness, p.fitness, c.design, p.design from nodes c join nodes p on c.parent_id = p.id "
            "where c.status in ('done', 'failed') and p.fitness is not null"
        ).fetchall()
        keys = ("child", "parent", "operator", "fitness", "parent_fitness", "design", "parent_design")
        return [_decode(dict(zip(keys, r)), ("design", "parent_design")) for r in rows]

    def has_design(self, design: dict) -> bool:
        """Whether some node already has this design (compared as stored JSON)."""
        return (
            self.db.execute("select 1 from nodes where design = ? limit 1", [json.dumps(design)]).fetchone() is not None
        )

    def has_code(self, code: str) -> bool:
        """Whether some node's stored code copy is exactly this code."""
        return self.db.execute("select 1 from code where code = ? limit 1", [code]).fetchone() is not None

    def expansion_stats(self, where: str, limit: int = 50) -> list[tuple]:
        """For the `limit` fittest nodes matching `where`: (id, fitness, finished or failed children,
        sum of the children's fitness, a failed one counting as the node's fitness minus 0.1)."""
        return self.db.execute(
            f"select n.id, n.fitness, count(c.id), sum(coalesce(c.fitness, n.fitness - 0.1)) from nodes n "
            f"left join nodes c on c.parent_id = n.id and c.status in ('done', 'failed') "
            f"where n.id in (select id from nodes where {where} order by fitness desc limit {int(limit)}) group by n.id"
        ).fetchall()

    def finished_by_time(self) -> list[tuple]:
        """(id, status, fitness, time) of every done or failed node, in the order they finished
        (the time is when it finished, else when it was created)."""
        return self.db.execute(
            "select id, status, fitness, coalesce(finished, created) as t from nodes "
            "where status in ('done', 'failed') and t is not null order by t, id"
        ).fetchall()

    def latest_done_metrics(self) -> dict | None:
        """The metrics of the newest finished node that has some."""
        row = self.db.execute(
            "select metrics from nodes where status = 'done' and metrics is not null order by id desc limit 1"
        ).fetchone()
        return json.loads(row[0]) if row else None

    def metric_values(self, keys: list[str]) -> list[tuple]:
        """(id, val_loss, metrics[key] for each key) of every finished node with a val_loss and metrics."""
        columns = ", ".join("json_extract(metrics, ?)" for _ in keys)
        return self.db.execute(
            f"select id, val_loss, {columns} from nodes where status = 'done' and val_loss is not null and metrics is not null",
            [f"$.{key}" for key in keys],
        ).fetchall()

    def leaderboard_page(
        self, sort: str, order: str, words: list[str], offset: int, limit: int
    ) -> tuple[int, list[dict]]:
        """(matching nodes, one page of them) sorted by a LEADERBOARD_COLUMNS column (`order` asc
        or desc, missing values last): each word must match the node's id (`12` or `#12`), status,
        operator, failure reason or motivation. A row: id, parent_id, status, operator, fitness,
        val_loss, reason, motivation (its first 200 characters) and the columns read from metrics."""
        if sort not in LEADERBOARD_COLUMNS or order not in ("asc", "desc"):
            raise ValueError(f"cannot sort by {sort!r} {order!r}")
        where, params = [], []
        for word in words:
            like = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append(
                "(cast(id as text) = ? or operator like ? escape '\\' or status like ? escape '\\' "
                "or reason like ? escape '\\' or motivation like ? escape '\\')"
            )
            params += [word.lstrip("#"), like, like, like, like]
        clause = " and ".join(where) or "1"
        column = LEADERBOARD_COLUMNS[sort]
        total = self.db.execute(f"select count(*) from nodes where {clause}", params).fetchone()[0]
        extra = [k for k, sql in LEADERBOARD_COLUMNS.items() if sql.startswith("json_extract")]
        rows = self.db.execute(
            f"select id, parent_id, status, operator, fitness, val_loss, reason, substr(motivation, 1, 200), "
            f"{', '.join(LEADERBOARD_COLUMNS[k] for k in extra)} from nodes where {clause} "
            f"order by {column} is null, {column} {order}, id limit ? offset ?",
            [*params, limit, offset],
        ).fetchall()
        names = ("id", "parent_id", "status", "operator", "fitness", "val_loss", "reason", "motivation", *extra)
        return total, [dict(zip(names, r)) for r in rows]

    # -- multi-fidelity promotion (archlab/search/promotion.py) ----------------------------------
    def candidates_by_search_fitness(self) -> list[int]:
        """Finished nodes other than the root, best search-tier fitness first."""
        return self.node_ids(
            "status = 'done' and id != 0 and coalesce(search_fitness, fitness) is not null",
            order="coalesce(search_fitness, fitness) desc, id",
        )

    def nodes_at_tier(self, tier: str, seeds: int | None = None) -> list[int]:
        """Nodes whose figures come from `tier` (and, when given, that many seeds), by id."""
        if seeds is None:
            return self.node_ids("tier = ?", [tier])
        return self.node_ids("tier = ? and seeds = ?", [tier, seeds])

    def evaluated_node_ids(self, kind: str, tier: str, failed: bool = False) -> list[int]:
        """Nodes with an evaluation of this kind at this tier (`failed`: a failed one), by id."""
        return [
            r[0]
            for r in self.db.execute(
                "select distinct node_id from evaluations where kind = ? and tier = ?"
                + (" and ok = 0" if failed else "")
                + " order by node_id",
                [kind, tier],
            )
        ]

    def save_code(self, node_id: int, code: str) -> None:
        self.db["code"].upsert({"node_id": node_id, "code": code}, pk="node_id")

    def code_copy(self, node_id: int) -> str | None:
        if "code" not in self.db.table_names():  # a store from an older archlab, opened read-only
            return None
        row = self.db.execute("select code from code where node_id = ?", [node_id]).fetchone()
        return row[0] if row else None

    # -- the quality-diversity archive (archlab/search/archive.py) ------------------------------
    def archive_elites(self, where: str = DONE) -> list[dict] | None:
        """The fittest node (ties: the lowest id) of every occupied archive cell among the nodes
        `where` selects, by cell: id, cell, fitness. None when the store predates the archive."""
        if not self.has_column("nodes", "cell"):
            return None
        rows = self.db.execute(
            "select id, cell, fitness from (select id, cell, fitness, row_number() over "
            f"(partition by cell order by fitness desc, id) as r from nodes where ({where}) and cell != '') "
            "where r = 1 order by cell"
        ).fetchall()
        return [dict(zip(("id", "cell", "fitness"), r)) for r in rows]

    def undescribed(self, outdated: str) -> list[dict]:
        """The finished nodes the archive has not described yet, or described in cells whose key starts
        with `outdated` (a run from an older archlab)."""
        if not self.has_column("nodes", "cell"):
            return self.nodes(DONE)
        return self.nodes(f"{DONE} and (cell is null or substr(cell, 1, ?) = ?)", [len(outdated), outdated])

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

    def evaluation_facts(self, evaluation_id: int) -> dict | None:
        """One evaluation's id, node_id, kind, tier, seed, ok, reason, detail and has_log (not its metrics or log)."""
        row = self.db.execute(
            "select id, node_id, kind, tier, seed, ok, reason, detail, log is not null and log != '' "
            "from evaluations where id = ?",
            [evaluation_id],
        ).fetchone()
        return (
            dict(zip(("id", "node_id", "kind", "tier", "seed", "ok", "reason", "detail", "has_log"), row))
            if row
            else None
        )

    def log_path(self, evaluation_id: int) -> str | None:
        """Where an evaluation's log is, relative to the run directory (None: no log, or no such evaluation)."""
        row = self.db.execute("select log from evaluations where id = ?", [evaluation_id]).fetchone()
        return row[0] if row else None

    def evaluation_outcomes(self) -> list[dict]:
        """id, node_id, log and ok of every evaluation (what `archlab doctor` checks)."""
        rows = self.db.execute("select id, node_id, log, ok from evaluations").fetchall()
        return [dict(zip(("id", "node_id", "log", "ok"), r)) for r in rows]

    def latest_curves(self, node_id: int) -> dict | None:
        """id, kind, tier and curves (JSON undecoded) of the node's latest evaluation that has curves,
        a search one first; None when none has (or the store predates curves)."""
        if not self.has_column("evaluations", "curves"):
            return None
        row = self.db.execute(
            "select id, kind, tier, curves from evaluations where node_id = ? and curves is not null "
            "order by kind = 'search' desc, id desc limit 1",
            [node_id],
        ).fetchone()
        return dict(zip(("id", "kind", "tier", "curves"), row)) if row else None

    def compute_by_time(self) -> list[tuple[float, float]]:
        """(created, wall seconds) of every search and promotion evaluation, oldest first."""
        return self.db.execute(
            "select created, coalesce(json_extract(metrics, '$.wall_s'), 0) from evaluations "
            "where (kind in ('search', 'promotion') or kind is null) and created is not null order by created, id"
        ).fetchall()

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

    def trace_page(
        self, node_id: int | None = None, role: str | None = None, offset: int = 0, limit: int = 100
    ) -> list[dict]:
        """One page of the traces (of a node, of a role), in order."""
        where, params = _trace_filter(node_id, role)
        return [
            _decode(r) for r in self.db["traces"].rows_where(where, params, order_by="id", limit=limit, offset=offset)
        ]

    def trace_count(self, node_id: int | None = None, role: str | None = None) -> int:
        where, params = _trace_filter(node_id, role)
        return self.db.execute(f"select count(*) from traces where {where}", params).fetchone()[0]

    def trace_totals(self, node_id: int | None = None, role: str | None = None) -> list[dict]:
        """Per role, in order of first appearance: calls, tokens_in, tokens_out, cost, latency_s, errors."""
        where, params = _trace_filter(node_id, role)
        rows = self.db.execute(
            "select role, count(*), sum(coalesce(tokens_in, 0)), sum(coalesce(tokens_out, 0)), sum(coalesce(cost, 0)), "
            f"sum(coalesce(latency_s, 0)), sum(error is not null) from traces where {where} group by role order by min(id)",
            params,
        ).fetchall()
        return [dict(zip(("role", "calls", "tokens_in", "tokens_out", "cost", "latency_s", "errors"), r)) for r in rows]

    def llm_spend(self) -> tuple[float, int]:
        """(cost in USD, tokens in and out) of every model call so far."""
        cost, tokens = self.db.execute(
            "select coalesce(sum(cost), 0), coalesce(sum(tokens_in), 0) + coalesce(sum(tokens_out), 0) from traces where kind = 'llm'"
        ).fetchone()
        return cost, tokens

    def spend_by_time(self) -> list[tuple]:
        """(created, cost, tokens_in, tokens_out) of every trace that cost something, oldest first."""
        return self.db.execute(
            "select created, coalesce(cost, 0), coalesce(tokens_in, 0), coalesce(tokens_out, 0) from traces "
            "where (cost is not null or tokens_in is not null) and created is not null order by created, id"
        ).fetchall()

    def answered_call(self, node_id: int, role: str, request_hash: str) -> dict | None:
        """The first successful answer to this request (same node, role and request hash):
        response, tokens_in, tokens_out, cost, latency_s, decision (JSON undecoded)."""
        row = self.db.execute(
            "select response, tokens_in, tokens_out, cost, latency_s, decision from traces "
            "where node_id = ? and role = ? and request_hash = ? and error is null order by id limit 1",
            [node_id, role, request_hash],
        ).fetchone()
        return dict(zip(("response", "tokens_in", "tokens_out", "cost", "latency_s", "decision"), row)) if row else None

    # -- model routing (archlab/agents/router.py): its statistics are read here, never kept in memory --
    def router_choice(self, node_id: int, role: str) -> str | None:
        """The model the router chose for this node's `role` calls (the first "router" trace of
        kind "choice" for them), None when it has not chosen yet."""
        row = self.db.execute(
            "select model from traces where node_id = ? and role = 'router' and kind = 'choice' "
            "and json_extract(decision, '$.role') = ? order by id limit 1",
            [node_id, role],
        ).fetchone()
        return row[0] if row else None

    def router_outcomes(self, role: str) -> list[dict]:
        """Every node the router chose a model for `role` for, by node id: node_id, model, status,
        fitness, parent_fitness, cost (of the node's `role` calls), calls (completed ones) and
        rewarded (whether its "router" trace of kind "reward" is written). A node whose row is gone
        (discarded before its first commit) is left out."""
        rows = self.db.execute(
            "select c.node_id, c.model, n.status, n.fitness, p.fitness, "
            "(select coalesce(sum(t.cost), 0) from traces t where t.node_id = c.node_id and t.role = ? "
            "and t.kind = 'llm'), "
            "(select count(*) from traces t where t.node_id = c.node_id and t.role = ? and t.kind = 'llm' "
            "and t.error is null), "
            "exists(select 1 from traces r where r.node_id = c.node_id and r.role = 'router' and r.kind = 'reward' "
            "and json_extract(r.decision, '$.role') = ?) "
            "from traces c join nodes n on n.id = c.node_id left join nodes p on p.id = n.parent_id "
            "where c.role = 'router' and c.kind = 'choice' and json_extract(c.decision, '$.role') = ? "
            "and c.id = (select min(f.id) from traces f where f.node_id = c.node_id and f.role = 'router' "
            "and f.kind = 'choice' and json_extract(f.decision, '$.role') = ?) order by c.node_id",
            [role, role, role, role, role],
        ).fetchall()
        keys = ("node_id", "model", "status", "fitness", "parent_fitness", "cost", "calls", "rewarded")
        return [dict(zip(keys, r)) | {"rewarded": bool(r[7])} for r in rows]

    def longest_answer(self, role: str) -> int:
        """The most output tokens any completed call of `role` took (0 before the first)."""
        row = self.db.execute(
            "select max(tokens_out) from traces where role = ? and kind = 'llm' and error is null", [role]
        ).fetchone()
        return row[0] or 0

    def code_edits(self) -> dict[int, dict | None]:
        """The code edit each researcher decision asked for (its decision's "edit"), by node id."""
        return {
            r[0]: json.loads(r[1]).get("edit")
            for r in self.db.execute(
                "select node_id, decision from traces where role = 'researcher' and decision like '%\"edit\": {%'"
            )
        }

    # -- islands (archlab/search/islands.py) ---------------------------------------------------------
    def island_condition(self, island: int) -> str:
        """The nodes an island may build on, as a condition on `nodes`: its own, the root (shared by
        every island: it has none) and the nodes that migrated to it or seeded it."""
        i = int(island)
        return f"(island = {i} or island is null or id in (select node_id from migrations where to_island = {i}))"

    def island_elite(self, island: int) -> dict | None:
        """The island's own fittest finished node (not one that migrated to it)."""
        rows = self.nodes(f"{DONE} and island = ?", [island], order="fitness desc, id", limit=1)
        return rows[0] if rows else None

    def add_migrations(self, rows: list[dict]) -> None:
        """Record moves between islands (one insert: all of them or none)."""
        now = time.time()
        self.db["migrations"].insert_all([{"created": now, **r} for r in rows])

    def migrations(self, kind: str | None = None) -> list[dict]:
        """Every move between islands (of one kind: "migrate" or "seed"), in order."""
        where, params = ("kind = ?", [kind]) if kind else (None, [])
        return list(self.db["migrations"].rows_where(where, params, order_by="id"))

    def migrated(self, node_id: int, to_island: int) -> bool:
        """Whether the node has already been made available to that island."""
        row = self.db.execute(
            "select 1 from migrations where node_id = ? and to_island = ? limit 1", [node_id, to_island]
        ).fetchone()
        return row is not None

    def island_counts(self) -> list[tuple]:
        """(island, nodes, done nodes, best fitness) per island that has nodes, by island."""
        return self.db.execute(
            "select island, count(*), sum(status = 'done'), max(case when status = 'done' then fitness end) "
            "from nodes where island is not null group by island order by island"
        ).fetchall()

    def finished_by(self, when: float) -> int:
        """How many nodes had finished by that time (the root included)."""
        return self.count("status != 'evaluating' and finished <= ?", [when])

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("select value from meta where key = ?", [key]).fetchone()
        return default if row is None else row[0]

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self.db.execute("delete from meta where key = ?", [key])
        else:
            self.db["meta"].upsert({"key": key, "value": value}, pk="key")

    def open_threads(self) -> list[str]:
        """The candidate threads marked open (`thread:NAME` in meta), by name."""
        return [
            r[0].removeprefix("thread:")
            for r in self.db.execute("select key from meta where key like 'thread:%' order by key")
        ]

    def event(self, kind: str, message: str, node_id: int | None = None) -> None:
        self.db["events"].insert({"ts": time.time(), "kind": kind, "node_id": node_id, "message": message})

    def events(self, node_id: int | None = None) -> list[dict]:
        """The audit trail in order: every event, or one node's (evaluation attempts, recoveries, promotions)."""
        where, params = ("node_id = ?", [node_id]) if node_id is not None else (None, [])
        return list(self.db["events"].rows_where(where, params, order_by="id"))

    # -- multi-fidelity leaderboard and compute spend ------------------------------------------------
    def leaderboard(self, limit: int = 10) -> list[dict]:
        """Finished nodes in the leaderboard's order (`_ranking`)."""
        return self.nodes(DONE, order=self._ranking(), limit=limit)

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


def checkpointed_threads(path: Path) -> set[str]:
    """The candidate threads that the driver's langgraph checkpoint database (runs/NAME/checkpoints.db)
    holds a checkpoint of. sqlite3.DatabaseError when it cannot be read."""
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("select distinct thread_id from checkpoints")}
    finally:
        db.close()


def _trace_filter(node_id: int | None, role: str | None) -> tuple[str, list]:
    where, params = [], []
    if node_id is not None:
        where.append("node_id = ?")
        params.append(node_id)
    if role:
        where.append("role = ?")
        params.append(role)
    return " and ".join(where) or "1", params


def _decode(
    row: dict, keys=("design", "metrics", "env", "decision", "references_used", "knowledge", "curves", "descriptors")
) -> dict:
    for key in keys:
        if isinstance(row.get(key), str):
            try:
                row[key] = json.loads(row[key])
            except ValueError:
                pass
    return row
