"""Crash safety of `archlab run`: SIGKILL and SIGINT in the middle of an evaluation, a kill
during the root's evaluation, and two drivers on one run directory. Every scenario resumes
with the same command and must end with the tree an uninterrupted run would have."""

import json
import re
import signal
import threading
import time
from pathlib import Path

import pytest

import helpers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # runs interrupted and resumed

NODE_LINE = re.compile(r"^\s*node\s+(\d+)\s+(done|failed)")


def run_args(run_dir: Path, max_nodes: int) -> tuple:
    return ("run", run_dir, "--tier", "micro", "--max-nodes", max_nodes, "--threads", helpers.THREADS)


class Driver:
    """`archlab run` as a child process whose output we read line by line."""

    def __init__(self, run_dir: Path, max_nodes: int, watchdog_s: float = 300, preexec_fn=None):
        self.run_dir = run_dir
        self.proc = helpers.popen_cli(*run_args(run_dir, max_nodes), preexec_fn=preexec_fn)
        self.lines: list[str] = []
        self._watchdog = threading.Timer(watchdog_s, self.proc.kill)  # never hang the suite
        self._watchdog.start()

    def wait_for_node_lines(self, n: int) -> None:
        seen = 0
        while seen < n:
            line = self.proc.stdout.readline()
            assert line, f"the run ended before {n} node lines:\n{''.join(self.lines)}{self.proc.stderr.read()}"
            self.lines.append(line)
            seen += bool(NODE_LINE.match(line))

    def wait_for_server(self, min_node: int = 0, max_node: int | None = None, timeout: float = 120) -> list[int]:
        """Until a model server is evaluating a node min_node..max_node; returns its pid(s) (and its launcher's)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            servers = helpers.sandbox_servers_of(self.run_dir, min_node, max_node)
            if servers:
                return servers
            assert self.proc.poll() is None, "the driver exited before evaluating"
            time.sleep(0.05)
        raise AssertionError("no model server started")

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            self._watchdog.cancel()
        return self.proc.returncode, "".join(self.lines) + out, err


def in_flight(run_dir: Path) -> list[dict]:
    return [r for r in helpers.node_rows(run_dir) if r["status"] == "evaluating"]


def assert_traces_written_once(run_dir: Path) -> None:
    traces = helpers.table_rows(run_dir, "traces")
    for r in helpers.node_rows(run_dir)[1:]:
        roles = [t["role"] for t in traces if t["node_id"] == r["id"]]
        assert roles.count("selector") == 1 and roles.count("researcher") == 1, (r["id"], roles)


def resume(run_dir: Path, max_nodes: int) -> str:
    proc = helpers.cli(*run_args(run_dir, max_nodes), timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Resuming" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("sig, max_nodes", [(signal.SIGKILL, 8), (signal.SIGINT, 6)], ids=["SIGKILL", "SIGINT"])
def test_interrupted_run_resumes_to_the_same_shape(run_dir, sig, max_nodes):
    # started as a script's background job is: SIGINT ignored (`archlab run ... &`); kill -INT must still stop it
    driver = Driver(run_dir, max_nodes, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    driver.wait_for_node_lines(3)
    # stop it while a child is being evaluated, one that is not the last: had the run just finished
    # its last node, the signal could land after its work was done, and it would rightly exit 0
    driver.wait_for_server(min_node=3, max_node=max_nodes - 2)
    driver.proc.send_signal(sig)
    code, out, err = driver.finish()
    if sig == signal.SIGINT:
        assert code == 130, (code, out, err)
        assert "resume" in err and "Traceback" not in out + err, err
        deadline = time.monotonic() + 5
        while helpers.sandbox_servers_of(run_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert helpers.sandbox_servers_of(run_dir) == [], "Ctrl-C must stop the evaluation it interrupted"
    else:
        assert code == -signal.SIGKILL
        time.sleep(0.5)
        helpers.kill_pids(helpers.sandbox_servers_of(run_dir))  # see test_killed_driver_leaves_no_server

    flying = in_flight(run_dir)
    assert len(flying) == 1 and flying[0]["id"] >= 3, (
        helpers.node_rows(run_dir),
        helpers.table_rows(run_dir, "events"),
    )
    interrupted = flying[0]
    assert len(helpers.open_threads(run_dir)) == 1, "the interrupted candidate's thread must stay open"

    out = resume(run_dir, max_nodes)
    rows = helpers.assert_finished_run(run_dir, max_nodes)
    again = rows[interrupted["id"]]
    # the interrupted candidate was continued, not replaced or marked lost
    assert again["reason"] != "interrupted", again
    assert (again["design"], again["commit_sha"], again["parent_id"]) == (
        interrupted["design"],
        interrupted["commit_sha"],
        interrupted["parent_id"],
    )
    assert_traces_written_once(run_dir)
    printed = [int(m[1]) for m in map(NODE_LINE.match, out.splitlines()) if m]
    assert printed == list(range(interrupted["id"], max_nodes)), printed


@pytest.fixture(scope="module")
def killed_during_root(tmp_path_factory):
    """A run whose driver was SIGKILLed while the root was being evaluated."""
    run_dir = tmp_path_factory.mktemp("rootkill") / "run"
    driver = Driver(run_dir, 1)
    driver.wait_for_server()
    # inside the evaluation (the scorer has reported a stage), not at the instant a sandbox starts
    helpers.wait_until(lambda: list((run_dir / "logs").glob("node-0-*.log.progress")), 120, "the root's progress")
    driver.wait_for_server()  # (still evaluating: the servers live from the checks to the last score)
    driver.proc.kill()
    driver.finish()
    deadline = time.monotonic() + 5
    while helpers.sandbox_servers_of(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = {}
    for pid in helpers.sandbox_servers_of(run_dir):
        try:
            orphans[pid] = helpers.cmdline(pid)
        except OSError:
            pass
    helpers.kill_pids(list(orphans))
    return {"run_dir": run_dir, "orphans": orphans, "rows": helpers.node_rows(run_dir)}


def test_kill_during_root_evaluation_then_resume(killed_during_root):
    run_dir = killed_during_root["run_dir"]
    assert [(r["id"], r["status"]) for r in killed_during_root["rows"]] == [(0, "evaluating")]
    resume(run_dir, 1)
    rows = helpers.assert_finished_run(run_dir, 1)
    assert rows[0]["commit_sha"] == killed_during_root["rows"][0]["commit_sha"]
    evals = [e for e in helpers.table_rows(run_dir, "evaluations") if e["node_id"] == 0]
    assert len(evals) == 1 and evals[0]["ok"] == 1


def test_killed_driver_leaves_no_server(killed_during_root):
    """A SIGKILLed driver cannot clean up, so its model servers must not outlive it: they were
    started in sessions of their own and would otherwise wait on their pipes or keep training
    (up to their CPU-time limit: hours at verify), writing into the log that the resumed run
    re-opens for the same node."""
    assert killed_during_root["orphans"] == {}


def test_second_driver_on_the_same_run_is_refused(run_dir):
    """Two drivers on one run directory would both continue the same open candidate (and
    evaluate it twice); the second must stop with one line instead."""
    first = Driver(run_dir, 1)
    try:
        first.wait_for_server()
        second = helpers.cli(*run_args(run_dir, 1), timeout=120)
    finally:
        code, out, err = first.finish(timeout=180)
    assert code == 0, out + err
    helpers.assert_user_error(second)
    evals = [e for e in helpers.table_rows(run_dir, "evaluations") if e["node_id"] == 0]
    assert len(evals) == 1, "the root was evaluated by both drivers"
    helpers.assert_finished_run(run_dir, 1)
    assert json.loads(helpers.cli("status", run_dir, "--json").stdout)["nodes"] == 1
