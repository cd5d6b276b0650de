"""Read-only views of a run for the web UI: what its pages show, read through the Store's named
queries (archlab/tree), and nothing that writes.

The database is opened with SQLite's `mode=ro` and `query_only`, git objects are only read,
and no request names a file: logs are found through their evaluation row and must resolve
inside the run directory. The tree is summarised for big runs (at most `limit` nodes per
answer, the rest counted per parent and fetched page by page), so the UI stays responsive
with 100k nodes.
"""

import json
import math
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

from markdown_it import MarkdownIt

from archlab.commands.status import (
    FIDELITY_KEYS,
    METRIC_DIRECTIONS,
    NODE_KEYS,
    in_flight,
    metric_direction,
    metric_keys,
    node_counts,
    results,
    summary,
    tier_agreement,
)
from archlab.config import RunConfig
from archlab.errors import UserError
from archlab.sandbox.tiers import resolve
from archlab.search import archive, steering
from archlab.search.fitness import pareto_front
from archlab.search.lock import driver_pid
from archlab.tree.lineage import Lineage
from archlab.tree.readonly import ReadOnlyStore
from archlab.tree.store import LEADERBOARD_COLUMNS, Store
from archlab.web.highlight import code_html, diff_html

TREE_FIELDS = ("id", "parent_id", "status", "fitness", "val_loss", "operator", "reason")
MAX_LIMIT = 5000
MAX_POINTS = 2500  # per plotted series; more is decimated (the shape and every improvement are kept)
LOG_BYTES = 256 * 1024  # the tail of an evaluation log that the UI shows
FULL_LOG_BYTES = 16 * 2**20  # a whole log (runner caps logs at 8 MiB; this bounds one that grew otherwise)
MAX_OVERLAY = 20  # nodes whose curves one overlay draws
# Knowledge entries are Markdown: shown rendered, with any raw HTML in them escaped (html=False) and
# markdown-it's link check (no javascript: URLs); the page's CSP stops scripts besides.
_MARKDOWN = MarkdownIt("commonmark", {"html": False})


class RunView:
    """Everything the web UI shows about one run directory."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir).resolve()
        if not self.dir.is_dir():
            raise UserError(f"{run_dir}: no such run directory")
        self.config = RunConfig.load(self.dir)
        self.store = ReadOnlyStore(self.dir)
        self.lineage = Lineage(self.dir / "repo")
        self._data_version = None
        self._version = 0
        self._cache: dict = {}
        self._parent: dict[int, int | None] = {}
        self._children: dict[int, list[int]] = {}
        self._code: dict[str, str] = {}
        self._entries = None
        self._writer: Store | None = None

    def close(self) -> None:
        self.lineage.repo.close()
        self.store.close()
        if self._writer is not None:
            self._writer.close()

    def writer(self) -> Store:
        """The run's writable store, for steering only (`archlab serve --allow-steer`), opened on first use."""
        if self._writer is None:
            self._writer = Store(self.dir)
        return self._writer

    # -- change detection ---------------------------------------------------------------------
    def version(self) -> int:
        """A number that grows whenever the run's database changed (another process committed), or
        its driver started or stopped (what is `evaluating` reads as interrupted once it stops)."""
        current = (self.store.data_version(), driver_pid(self.dir))
        if current != self._data_version:
            self._data_version = current
            self._version += 1
            self._cache.clear()
        return self._version

    def _cached(self, key, compute):
        self.version()
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def live(self) -> dict:
        nodes, evaluating = self.store.live_counts()
        running = driver_pid(self.dir) is not None
        return {
            "version": self.version(),
            "nodes": nodes,
            "evaluating": evaluating,
            "running": running,
            "in_flight": in_flight(self.store) if running and evaluating else [],
        }

    # -- the run ------------------------------------------------------------------------------------
    def run_info(self) -> dict:
        def compute():
            facts = self._status()
            forked = self.store.get_meta("forked_from")
            return {
                **facts,
                "name": self.dir.name,
                "path": str(self.dir),
                "forked_from": json.loads(forked) if forked else None,
                "started": self.store.first_created(),
                "last_activity": self.store.last_activity(),
                "metric_directions": METRIC_DIRECTIONS,  # which way each metric improves (commands/status.py)
                "version": self._version,
            }

        return self._cached("run", compute)

    def _status(self) -> dict:
        """The facts of `archlab status` (commands/status.py) that the header shows."""
        counts = node_counts(self.store)
        del counts["imported"]
        return {
            **counts,
            "running": driver_pid(self.dir) is not None,
            **results(self.store),
            "config": {**self.config.model_dump(), "base_url": _origin(self.config.base_url)},
            "tier_agreement": tier_agreement(self.store, self.config),
        }

    def _best(self) -> int | None:
        """The run's best node: highest fitness, a promoted (higher-fidelity) figure first when the run promotes."""
        best = self.store.leaderboard_ids(1)
        return best[0] if best else None

    # -- the tree -----------------------------------------------------------------------------------
    def _refresh_parents(self) -> None:
        if self.store.count() == len(self._parent):
            return
        self._parent = self.store.parents()
        self._children = {}
        for node_id, parent in self._parent.items():
            if parent is not None:
                self._children.setdefault(parent, []).append(node_id)

    def _rows(self, ids) -> list[dict]:
        return self.store.node_columns(ids, TREE_FIELDS)

    def _sizes(self) -> dict[int, int]:
        """Descendants of every node, itself included (children always have larger ids)."""

        def compute():
            sizes = dict.fromkeys(self._parent, 1)
            for node_id in sorted(self._parent, reverse=True):
                parent = self._parent[node_id]
                if parent in sizes:
                    sizes[parent] += sizes[node_id]
            return sizes

        return self._cached("sizes", compute)

    def _annotate(self, rows: list[dict], shown: set[int]) -> list[dict]:
        sizes = self._sizes()
        steered = steering.read(self.store)
        for r in rows:
            kids = self._children.get(r["id"], [])
            r["children"] = len(kids)
            r["hidden"] = sum(1 for k in kids if k not in shown)
            r["size"] = sizes.get(r["id"], 1)
            r["steering"] = _steering_of(steered, r["id"])
        return rows

    def tree(self, limit: int = 400, focus: int | None = None) -> dict:
        """The whole tree when it has at most `limit` nodes; else a summary of at most `limit`
        nodes (plus the focus node's branch): the roots, the best and the newest nodes with
        their ancestors, then breadth-first from the root; every node says how many of its
        children were left out (`hidden`) and how big its subtree is (`size`)."""
        limit = max(1, min(int(limit), MAX_LIMIT))
        return self._cached(("tree", limit, focus), lambda: self._tree(limit, focus))

    def _tree(self, limit: int, focus: int | None) -> dict:
        self._refresh_parents()
        total = len(self._parent)
        if total <= limit:
            chosen = set(self._parent)
        else:
            chosen: set[int] = set()

            def branch(node_id, force=False):
                """Add a node with its missing ancestors, when they fit (or force)."""
                missing = []
                while node_id is not None and node_id not in chosen and node_id in self._parent:
                    missing.append(node_id)
                    node_id = self._parent[node_id]
                if force or len(chosen) + len(missing) <= limit:
                    chosen.update(missing)

            roots = [i for i, p in self._parent.items() if p is None]
            for r in roots:
                chosen.add(r)
            if focus is not None and focus in self._parent:
                branch(focus, force=True)
                for kid in self._children.get(focus, [])[:50]:
                    chosen.add(kid)
            quarter = max(1, limit // 4)
            for node_id in self.store.fittest_ids(quarter) + self.store.newest_ids(quarter):
                if len(chosen) >= limit:
                    break
                branch(node_id)
            queue = deque(roots)
            while queue and len(chosen) < limit:
                for kid in self._children.get(queue.popleft(), []):
                    if len(chosen) >= limit:
                        break
                    chosen.add(kid)
                    queue.append(kid)
        rows = self._annotate(self._rows(chosen), chosen)
        return {
            "total": total,
            "shown": len(rows),
            "limit": limit,
            "nodes": rows,
            "best": self._best(),
            "version": self._version,
        }

    def children(self, node_id: int, offset: int = 0, limit: int = 200) -> dict:
        self.version()
        self._refresh_parents()
        if node_id not in self._parent:
            raise UserError(f"no node {node_id} in this run")
        kids = self._children.get(node_id, [])
        page = kids[max(0, offset) : max(0, offset) + max(1, min(limit, MAX_LIMIT))]
        rows = self._annotate(self._rows(page), set(page))
        return {"node": node_id, "total": len(kids), "offset": offset, "nodes": rows}

    # -- one node -----------------------------------------------------------------------------------
    def _source(self, sha: str | None) -> str | None:
        if not sha:
            return None
        if sha not in self._code:
            try:
                self._code[sha] = self.lineage.code(sha)
            except Exception:  # a commit that is not (yet) in the repository
                return None
        return self._code[sha]

    def node(self, node_id: int) -> dict:
        return self._cached(("node", node_id), lambda: self._node(node_id))

    def _node(self, node_id: int) -> dict:
        node = self.store.node(node_id)
        parent = (
            self.store.node(node["parent_id"])
            if node["parent_id"] is not None and self.store.has_node(node["parent_id"])
            else None
        )
        root = self.store.node(0) if self.store.has_node(0) else None
        table = [
            {"metric": k, "node": _metric(node, k), "parent": _metric(parent, k), "root": _metric(root, k)}
            for k in metric_keys(node, parent, root)
        ]
        code = self._source(node["commit_sha"])
        parent_code = self._source(parent["commit_sha"]) if parent else None
        if code is None:
            diff = "<p class='muted'>no code committed yet</p>"
        elif parent_code is None:
            diff = code_html(code)
        else:
            diff = diff_html(parent_code, code)
        evaluations = [
            {
                k: e.get(k)
                for k in ("id", "kind", "tier", "seed", "ok", "reason", "detail", "metrics", "env", "created", "curves")
            }
            | {"has_log": bool(e.get("log"))}
            for e in self.store.evaluations(node_id)
        ]
        neighbours = self.store.neighbour_ids(node_id)
        steered = steering.read(self.store)
        return {
            **{k: node.get(k) for k in (*NODE_KEYS, "created", "finished", "attempts")},
            # present when the run promotes nodes to a higher tier (mean over seeds there)
            **{k: node.get(k) for k in (*FIDELITY_KEYS, "fidelity")},
            "island": node.get("island") if self.config.islands > 1 else None,  # with --islands only
            "parent": summary(parent) | {"design": parent.get("design")} if parent else None,
            "root": summary(root),
            "metrics_table": table,
            "knowledge": [self._knowledge_ref(k) for k in node.get("knowledge") or []],
            "references": node.get("references_used") or [],
            "children": self.store.child_summaries(node_id, limit=200),
            "diff_html": diff,
            "has_parent_code": parent_code is not None,
            "evaluations": evaluations,
            "prev": neighbours[0],
            "next": neighbours[1],
            "steering": _steering_of(steered, node_id),
            "version": self._version,
        }

    def code(self, node_id: int) -> dict:
        node = self.store.node(node_id)
        code = self._source(node["commit_sha"])
        return {"id": node_id, "commit_sha": node["commit_sha"], "code": code, "html": code_html(code) if code else ""}

    # -- knowledge ----------------------------------------------------------------------------------
    def _knowledge_entries(self) -> dict:
        if self._entries is None:
            from archlab.knowledge import KnowledgeError, load_entries

            try:
                entries = load_entries([Path(k) for k in self.config.knowledge])
            except KnowledgeError:
                entries = load_entries()
            self._entries = {e.id: e for e in entries}
        return self._entries

    def _knowledge_ref(self, ref: str) -> dict:
        if isinstance(ref, str) and ref.startswith("node-") and ref[5:].isdigit():
            node_id = int(ref[5:])
            return {
                "id": ref,
                "kind": "experience",
                "node": node_id,
                "title": f"experience of node {node_id}",
                "text": self.store.analysis(node_id),
            }
        entry = self._knowledge_entries().get(ref)
        if entry is None:
            return {"id": str(ref), "kind": "unknown", "title": str(ref), "text": None}
        return {
            "id": entry.id,
            "kind": "entry",
            "title": entry.title,
            "source": entry.source,
            "text": entry.markdown(),
            "html": _MARKDOWN.render(entry.markdown()),
        }

    # -- traces -------------------------------------------------------------------------------------
    def traces(self, node_id: int | None = None, role: str | None = None, offset: int = 0, limit: int = 100) -> dict:
        if node_id is not None:
            self.store.node(node_id)
        limit = max(1, min(int(limit), 1000))
        return {
            "total": self.store.trace_count(node_id, role),
            "offset": offset,
            "limit": limit,
            "traces": self.store.trace_page(node_id, role, offset=max(0, int(offset)), limit=limit),
            "by_role": self.store.trace_totals(node_id, role),
        }

    # -- logs ---------------------------------------------------------------------------------------
    def evaluation(self, evaluation_id: int) -> dict:
        """One evaluation's facts (not its log), for the log page's heading."""
        facts = self.store.evaluation_facts(evaluation_id)
        if facts is None:
            raise LookupError(f"no evaluation {evaluation_id} in this run")
        return facts

    def evaluation_log(self, evaluation_id: int, full: bool = False) -> str:
        """The tail of an evaluation's log (`full`: all of it, up to FULL_LOG_BYTES); only files
        that resolve inside the run directory. LookupError (with what to tell the user) when there
        is none to show."""
        log = self.store.log_path(evaluation_id)
        if not log:
            raise LookupError("no log for this evaluation")
        path = (self.dir / log).resolve()
        if not path.is_relative_to(self.dir):
            raise LookupError("no log for this evaluation")
        if not path.is_file():
            raise LookupError(
                f"the log file {log} is missing (deleted?); the evaluation's metrics and error "
                f"excerpt are kept in the database"
            )
        keep = FULL_LOG_BYTES if full else LOG_BYTES
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - keep))
            text = f.read().decode("utf-8", "replace")
        return (f"[... {size - keep} earlier bytes not shown]\n" if size > keep else "") + text

    # -- curves, comparison, leaderboard --------------------------------------------------------------
    def _main_curves(self, node_id: int) -> dict | None:
        """The loss curves of a node's own evaluation at the run's tier (its latest search evaluation
        that has curves; else its latest one that has), with where they come from."""
        row = self.store.latest_curves(node_id)  # None also for a store from an older archlab
        if not row:
            return None
        try:
            curves = json.loads(row["curves"])
        except ValueError:
            return None
        return {
            "evaluation": row["id"],
            "kind": row["kind"],
            "tier": row["tier"],
            "curves": curves if isinstance(curves, list) else [],
        }

    def curves(self, node_ids: list[int]) -> dict:
        """The curves of up to MAX_OVERLAY nodes, one entry per node (in the order asked)."""
        nodes = []
        for node_id in list(dict.fromkeys(node_ids))[:MAX_OVERLAY]:
            node = self.store.node(node_id)
            nodes.append({**summary(node), "main": self._main_curves(node_id)})
        return {"nodes": nodes, "max": MAX_OVERLAY, "version": self.version()}

    def compare(self, a: int, b: int) -> dict:
        """Two nodes side by side: their summaries, every metric of either, b's code as a diff
        against a's, and their curves."""
        na, nb = self.store.node(a), self.store.node(b)
        code_a, code_b = self._source(na["commit_sha"]), self._source(nb["commit_sha"])
        if code_a is None or code_b is None:
            diff = "<p class='muted'>no code committed yet for one of the two nodes</p>"
        else:
            diff = diff_html(code_a, code_b, against=f"node {a}")
        side = lambda n: {**summary(n), "design": n.get("design"), "main": self._main_curves(n["id"])}  # noqa: E731
        return {
            "a": side(na),
            "b": side(nb),
            "diff_html": diff,
            "version": self.version(),
            "metrics_table": [{"metric": k, "a": _metric(na, k), "b": _metric(nb, k)} for k in metric_keys(na, nb)],
        }

    def leaderboard(
        self, sort: str = "fitness", order: str = "desc", query: str = "", offset: int = 0, limit: int = 200
    ) -> dict:
        """Every node, sorted by one column (missing values last) and filtered by words: each word
        must match the node's id (`12` or `#12`), status, operator, failure reason or motivation."""
        if sort not in LEADERBOARD_COLUMNS:
            raise ValueError(f"cannot sort by {sort!r}; choose one of {', '.join(LEADERBOARD_COLUMNS)}")
        if order not in ("asc", "desc"):
            raise ValueError("order must be asc or desc")
        limit, offset = max(1, min(int(limit), MAX_LIMIT)), max(0, int(offset))
        total, rows = self.store.leaderboard_page(sort, order, query.split()[:8], offset, limit)
        return {
            "total": total,
            "offset": offset,
            "limit": limit,
            "sort": sort,
            "order": order,
            "query": query,
            "columns": list(LEADERBOARD_COLUMNS),
            "rows": rows,
            "version": self.version(),
        }

    # -- plots --------------------------------------------------------------------------------------
    def archive(self, x: str | None = None, y: str | None = None) -> dict:
        """The quality-diversity grid along two descriptors (search/archive.py); ValueError for an axis
        the run's tier does not measure."""
        tier = resolve(self.config.tier, self.config.tier_overrides)
        found = self._cached("archive", lambda: archive.load(self.store, tier))
        return archive.grid(found, x, y)

    def plots(self) -> dict:
        return self._cached("plots", self._plots)

    def _plots(self) -> dict:
        start = self.store.first_created() or time.time()
        nodes = self.store.finished_by_time()
        evals = self.store.compute_by_time()
        # Evaluations and compute spent by the time each node finished (merge of two sorted lists).
        best, beat, j, count, compute = -math.inf, 0, 0, 0, 0.0
        over_time, over_evals, discovery = [], [], []
        for node_id, status, fit, t in nodes:
            while j < len(evals) and evals[j][0] <= t + 1e-6:
                count += 1
                compute += evals[j][1] or 0.0
                j += 1
            improved = fit is not None and fit > best
            if improved:
                best = fit
            if fit is not None and fit > 0:
                beat += 1
            if best > -math.inf:
                point = {"id": node_id, "fitness": fit, "best": best, "improved": improved}
                over_time.append(point | {"x": t - start})
                over_evals.append(point | {"x": count})
            discovery.append({"id": node_id, "x": compute / 3600, "y": beat})
        spend = []
        cost = tokens = 0.0
        for t, c, tin, tout in self.store.spend_by_time():
            cost += c
            tokens += tin + tout
            spend.append({"x": t - start, "cost": cost, "tokens": tokens})
        compute_curve, total = [], 0.0
        for t, wall in evals:
            total += wall or 0.0
            compute_curve.append({"x": t - start, "y": total / 3600})
        return {
            "start": start,
            "best_over_time": _decimate(over_time),
            "best_over_evaluations": _decimate(over_evals),
            "discovery": _decimate(discovery, key=None),
            "spend": _decimate(spend, key=None),
            "compute": _decimate(compute_curve, key=None),
            "pareto": self._pareto(),
            "version": self._version,
        }

    def _pareto(self) -> list[dict]:
        """Quality (val_loss, lower is better) against each cost the metrics have."""
        keys = list(self.store.latest_done_metrics() or {})
        axes = [("tokens_per_s", "training throughput (tokens/s)")]
        for word, label in (("latency", "inference latency"), ("mem", "peak memory"), ("state", "state per token")):
            key = next((k for k in keys if word in k.lower()), None)
            if key:
                axes.append((key, f"{label} ({key})"))
        rows = self.store.metric_values([key for key, _ in axes])
        out = []
        for n, (key, label) in enumerate(axes, start=2):
            higher = metric_direction(key) == "higher"  # the front of a cost to keep low, or of a rate to keep high
            values = [(r[0], r[1], r[n]) for r in rows if isinstance(r[n], (int, float))]
            front = set(pareto_front([(i, loss, -v if higher else v) for i, loss, v in values]))
            pts = [{"id": i, "x": v, "y": loss, "front": i in front} for i, loss, v in values]
            if len(pts) > MAX_POINTS:
                step = math.ceil(len(pts) / MAX_POINTS)
                pts = [p for m, p in enumerate(pts) if p["front"] or m % step == 0 or p["id"] == 0]
            out.append(
                {
                    "key": key,
                    "label": label,
                    "higher_is_better": higher,
                    "points": pts,
                    "front": sorted((p for p in pts if p["front"]), key=lambda p: p["x"]),
                }
            )
        return out


def _metric(node: dict | None, key: str):
    return ((node or {}).get("metrics") or {}).get(key)


def _decimate(points: list[dict], key: str | None = "improved") -> list[dict]:
    """At most about MAX_POINTS points: an even sample, the first and the last, and every point
    where `key` is true (the improvements of a best-so-far curve)."""
    if len(points) <= MAX_POINTS:
        return points
    step = math.ceil(len(points) / MAX_POINTS)
    return [p for n, p in enumerate(points) if n % step == 0 or n == len(points) - 1 or (key and p.get(key))]


def _origin(url: str | None) -> str | None:
    """An endpoint's scheme and host only: its path or query may carry a token."""
    if not url:
        return url
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")


def _steering_of(steered: steering.Steering, node_id: int) -> list[str]:
    """The badges `archlab steer` earned a node: "pinned", "vetoed" (both, when asked both)."""
    return [
        badge for badge, held in (("pinned", node_id in steered.pinned), ("vetoed", node_id in steered.vetoed)) if held
    ]
