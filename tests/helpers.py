"""Plain helpers shared by the test modules (fixtures that wrap them live in conftest.py).

Everything here drives real parts: the CLI in a child process, `archlab serve` over HTTP, the
run's SQLite file, the run's git repository and /proc.
"""

import http.client
import json
import math
import os
import queue
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

# The CLI in a child process (the one launcher of the tests): `python -c CLI_CODE ARGS...`.
CLI_CODE = "from archlab.cli import main; main()"
CLI = [sys.executable, "-c", CLI_CODE]
# One CPU thread per evaluation: the suite must stay fast on 2 cores, also when other
# processes share them (oversubscribed OpenMP threads make training 10x slower).
THREADS = "1"

# The promotion tier of the promotion and agreement tests: smoke's measurements (hardware metrics) at micro's size, so
# that it is higher than the search tier and still takes seconds.
PROMOTE = [
    "--promote",
    "0.5",
    "--promote-tier",
    "smoke",
    "--promote-seeds",
    "2",
    "--promote-set",
    "steps=20",
    "--promote-set",
    "d_model=64",
    "--promote-set",
    "seq_len=64",
    "--promote-set",
    "batch_size=8",
    "--promote-set",
    "val_windows=16",
    "--promote-set",
    "complexity_lengths=[128,512]",
]


def cli_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "ARCHLAB_DEBUG", "FORCE_COLOR")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(*args, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Run `archlab ARGS...` in a child process, capturing text output."""
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def popen_cli(*args, cwd=None, preexec_fn=None) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        bufsize=1,
        preexec_fn=preexec_fn,
    )


def wait_until(condition, timeout: float, what: str | None = None, interval: float = 0.05):
    """Poll `condition()` until it returns something truthy (returned) or `timeout` seconds pass:
    a wait for an event, never a fixed sleep. On timeout: an AssertionError naming `what`, or
    without `what` the last (falsy) value, for the caller's own assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            break
        time.sleep(interval)
    assert value or what is None, f"timed out after {timeout} s waiting for {what}"
    return value


def assert_user_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """A user mistake: the given exit code, exactly one line on stderr, no traceback anywhere."""
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert proc.returncode == code, (proc.returncode, out)
    assert "internal error" not in proc.stderr, proc.stderr
    assert proc.stderr.strip(), "no message on stderr"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr}"
    return lines[0]


# -- the web UI ---------------------------------------------------------------------------------
CHROMIUM = os.environ.get("ARCHLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class Server:
    """`archlab serve RUN --port 0` in a child process; .url once it listens."""

    def __init__(self, run: Path, *args):
        self.proc = popen_cli("serve", run, "--port", 0, *args)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + 60
        self.url = None
        while self.url is None:
            assert time.monotonic() < deadline, "archlab serve did not report its URL within 60 s"
            assert self.proc.poll() is None, f"archlab serve exited: {self.proc.stderr.read()}"
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if "http://" in line:
                self.url = line[line.index("http://") :].split()[0]
        parsed = urlparse(self.url)
        self.host, self.port = parsed.hostname, parsed.port

    def request(self, method: str, path: str, headers: dict | None = None) -> tuple[int, bytes]:
        """A raw request: the path goes on the wire exactly as given (no client-side normalising)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=bool(headers and "Host" in headers), skip_accept_encoding=True)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            conn.endheaders()
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def get_json(self, path: str):
        status, body = self.request("GET", path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the store ---------------------------------------------------------------------------------
def connect(run_dir: Path) -> sqlite3.Connection:
    """A plain reader, like `archlab status` (a read-only connection would leave -wal/-shm behind)."""
    conn = sqlite3.connect(Path(run_dir) / "archlab.db")
    conn.row_factory = sqlite3.Row
    return conn


def node_rows(run_dir: Path) -> list[dict]:
    conn = connect(run_dir)
    try:
        rows = [dict(r) for r in conn.execute("select * from nodes order by id")]
    finally:
        conn.close()
    for r in rows:
        for key in ("design", "metrics"):
            if r.get(key):
                r[key] = json.loads(r[key])
    return rows


def table_rows(run_dir: Path, table: str) -> list[dict]:
    conn = connect(run_dir)
    try:
        return [dict(r) for r in conn.execute(f"select * from {table} order by rowid")]
    finally:
        conn.close()


def meta(run_dir: Path) -> dict:
    conn = connect(run_dir)
    try:
        return dict(conn.execute("select key, value from meta").fetchall())
    finally:
        conn.close()


def open_threads(run_dir: Path) -> list[str]:
    """Candidates that were started and not yet closed (their langgraph threads)."""
    return sorted(k for k in meta(run_dir) if k.startswith("thread:") or k == "open_thread")


def db_snapshot(run_dir: Path) -> tuple:
    """Bytes of the database file(s) and every row of every table, read from a copy so that
    taking the snapshot changes nothing."""
    files = {p.name: p.read_bytes() for p in sorted(Path(run_dir).glob("archlab.db*"))}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        conn = sqlite3.connect(Path(tmp) / "archlab.db")
        try:
            tables = [r[0] for r in conn.execute("select name from sqlite_master where type = 'table' order by name")]
            rows = {t: [tuple(r) for r in conn.execute(f"select * from {t} order by rowid")] for t in tables}
        finally:
            conn.close()
    return files, rows


# -- git ----------------------------------------------------------------------------------------
def git(run_dir: Path, *args) -> str:
    return subprocess.run(
        ["git", "-C", str(Path(run_dir) / "repo"), *args], capture_output=True, text=True, check=True
    ).stdout


def commits(run_dir: Path) -> dict[str, list[str]]:
    """Every commit reachable from any ref: sha -> parent shas."""
    out = {}
    for line in git(run_dir, "log", "--all", "--format=%H %P").splitlines():
        sha, *parents = line.split()
        out[sha] = parents
    return out


def code_at(run_dir: Path, sha: str) -> str:
    return git(run_dir, "show", f"{sha}:candidate.py")


def assert_lineage(run_dir: Path) -> list[dict]:
    """One commit per node, tagged node-N, whose parent commit is its parent node's commit."""
    rows = node_rows(run_dir)
    graph = commits(run_dir)
    by_id = {r["id"]: r for r in rows}
    assert all(r["commit_sha"] and re.fullmatch(r"[0-9a-f]{40}", r["commit_sha"]) for r in rows), rows
    assert len(graph) == len(rows), (len(graph), [r["id"] for r in rows])
    assert set(graph) == {r["commit_sha"] for r in rows}
    tags = set(git(run_dir, "tag", "--list").split())
    assert tags == {f"node-{r['id']}" for r in rows}
    for r in rows:
        assert git(run_dir, "rev-parse", f"node-{r['id']}^{{commit}}").strip() == r["commit_sha"]
        if r["parent_id"] is None:
            assert r["id"] == 0
            assert graph[r["commit_sha"]] == []
        else:
            assert graph[r["commit_sha"]] == [by_id[r["parent_id"]]["commit_sha"]], r["id"]
    return rows


def assert_finished_run(run_dir: Path, n_nodes: int) -> list[dict]:
    """A run that stopped normally at n_nodes: contiguous ids, nothing in flight, sound lineage."""
    rows = assert_lineage(run_dir)
    assert [r["id"] for r in rows] == list(range(n_nodes))
    assert not [r["id"] for r in rows if r["status"] not in ("done", "failed")]
    assert rows[0]["status"] == "done" and rows[0]["parent_id"] is None
    assert all(r["parent_id"] is not None and r["parent_id"] < r["id"] for r in rows[1:])
    assert all(by["status"] == "done" for by in (rows[r["parent_id"]] for r in rows[1:])), (
        "a parent must be a done node"
    )
    root_loss = rows[0]["val_loss"]
    assert rows[0]["fitness"] == 0.0
    for r in rows:
        if r["status"] == "failed":
            assert r["reason"] and r["fitness"] is None, r
        else:
            m = r["metrics"]
            assert r["val_loss"] == m["val_loss"] > 0 and m["tokens_per_s"] > 0 and m["params"] > 0, r
            assert abs(m["val_bpb"] * math.log(2) - m["val_loss"]) < 1e-9
            # fitness is the quality gain over the root minus penalties that only subtract
            assert math.isfinite(r["fitness"]) and r["fitness"] <= root_loss - r["val_loss"] + 1e-9, r
    # the offline brain never proposes a design (or, for a code edit, a file) that is already in the tree
    for parent in {r["parent_id"] for r in rows[1:]}:
        made = [
            json.dumps(r["design"], sort_keys=True) if r["design"] else code_at(run_dir, r["commit_sha"])
            for r in rows
            if r["parent_id"] == parent and r["status"] == "done"
        ]
        assert len(made) == len(set(made)), f"duplicate candidates among the children of node {parent}"
    assert open_threads(run_dir) == []
    return rows


# -- processes ----------------------------------------------------------------------------------
def pids_matching(predicate) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if predicate(int(entry)):
                out.append(int(entry))
        except OSError:
            pass
    return out


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode("utf-8", "replace")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


SERVER = "-m archlab.sandbox.server"  # in the command line of a model server and of its launcher (bwrap, unshare)


def log_of(pid: int) -> str:
    """The evaluation a sandbox process belongs to: its command line names the log (`--for=LOG`)."""
    found = re.search(r"--for=(\S+)", cmdline(pid))
    return found[1] if found else ""


def sandbox_servers_writing(log: Path) -> list[int]:
    """Live model servers (and their launchers) writing into `log`."""
    log = str(Path(log).resolve())
    return pids_matching(lambda pid: SERVER in cmdline(pid) and log_of(pid) == log and alive(pid))


def sandbox_servers_of(run_dir: Path, min_node: int = 0, max_node: int | None = None) -> list[int]:
    """Live model servers (and their launchers) evaluating a node min_node..max_node of this run
    (their stderr is the node's log, logs/node-N-ATTEMPT.log)."""
    logs = str(Path(run_dir).resolve() / "logs")

    def evaluates_our_node(pid: int) -> bool:
        if SERVER not in cmdline(pid):
            return False
        m = re.fullmatch(re.escape(logs) + r"/node-(\d+)-\d+\.log", log_of(pid))
        return bool(m) and min_node <= int(m[1]) <= (max_node if max_node is not None else int(m[1])) and alive(pid)

    return pids_matching(evaluates_our_node)


def kill_pids(pids) -> None:
    """End processes this test caused, one by one, by id."""
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


# -- candidate files for the sandbox's tests ---------------------------------------------------------
CANDIDATE_HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"


def mixer(forward: str = "return self.proj(x)\n", init: str = "", top: str = "", methods: str = "") -> str:
    """A candidate file: the imports, `top`, then a Mixer with proj = Linear(d, d) plus `init`, the
    given forward body and extra `methods` (each dedented, so they may be written indented)."""
    body = textwrap.indent(textwrap.dedent(init), " " * 8)
    fwd = textwrap.indent(textwrap.dedent(forward), " " * 8)
    more = textwrap.indent(textwrap.dedent(methods), " " * 4)
    return (
        CANDIDATE_HEADER
        + textwrap.dedent(top)
        + f"""

class Mixer(nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
{body}
    def forward(self, x):
{fwd}
{more}"""
    )


def copy_run(src: Path, dst: Path, *ignore: str) -> Path:
    """A private copy of a shared, finished run (and not the `ignore` patterns). Not SQLite's -wal and
    -shm files: a finished run's are empty, and a reader elsewhere that closes its connection deletes
    them, which failed a copy that had listed them (CI, 2026-12-03)."""
    return Path(shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.db-wal", "*.db-shm", *ignore)))
