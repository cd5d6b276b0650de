"""The Ray executor with a real local Ray instance (2 CPUs): a discovery run end to end, and a Ray
worker killed in the middle of an evaluation (the evaluation is retried and recorded once)."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import ray

from archlab.commands.doctor import check

sys.path.insert(0, str(Path(__file__).parent))
import helpers  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]  # a cluster's start, then a run (600 s bound)


def environ(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read()


def cmdline(pid: int) -> str:
    """A process's command line, or "" once it is gone (processes come and go while we look)."""
    try:
        return helpers.cmdline(pid)
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    def child(p: int) -> bool:
        with open(f"/proc/{p}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1]) == pid

    return helpers.pids_matching(child)


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def test_a_discovery_run_through_a_ray_cluster(run_dir):
    """The test starts the cluster (2 CPUs); `archlab run --executor ray --address` joins it, ships
    archlab to the workers and evaluates every candidate as a Ray task."""
    context = ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        logging_level="ERROR",
        log_to_driver=False,
    )
    try:
        proc = helpers.cli(
            "run",
            run_dir,
            "--executor",
            "ray",
            "--address",
            context.address_info["gcs_address"],
            "--workers",
            2,
            "--threads",
            helpers.THREADS,
            "--tier",
            "micro",
            "--max-nodes",
            3,
            timeout=600,
        )
        node_id = context.address_info["node_id"]
    finally:
        ray.shutdown()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    helpers.assert_finished_run(run_dir, 3)
    assert check(run_dir).ok
    evaluations = helpers.table_rows(run_dir, "evaluations")
    assert sorted(e["node_id"] for e in evaluations) == [0, 1, 2]
    for e in evaluations:
        info = json.loads(e["env"])["executor"]
        assert info["kind"] == "ray" and info["node"] == node_id and info["threads"] == 1 and info["gpus"] == 0, info
        assert info["pid"] != os.getpid()
        log = (run_dir / e["log"]).read_text()
        verdict = "[sandbox] accepted" if e["ok"] else f"[sandbox] rejected: {e['reason']}"
        assert "[server]" in log and verdict in log, (
            "the worker's log (both servers and the scorer) comes back to the run"
        )
    facts = json.loads(helpers.cli("status", run_dir, "--json").stdout)
    assert (
        facts["config"]["executor"] == "ray" and facts["spend"]["evaluations"] == 3 and facts["spend"]["cpu_hours"] > 0
    )


def test_a_killed_ray_worker_is_retried_and_recorded_once(run_dir):
    """No --address: the run starts its own Ray instance. SIGKILL the worker evaluating the root while its
    sandbox runs; Ray runs the task again on a fresh worker and the run records one evaluation."""
    mark = f"ARCHLAB_TEST_RAY={uuid.uuid4().hex}".encode()
    env = {**helpers.cli_env(), "ARCHLAB_TEST_RAY": mark.split(b"=")[1].decode()}
    proc = subprocess.Popen(
        [
            *helpers.CLI,
            "run",
            str(run_dir),
            "--executor",
            "ray",
            "--workers",
            "1",
            "--threads",
            helpers.THREADS,
            "--tier",
            "micro",
            "--max-nodes",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )

    def ours(pid: int) -> bool:
        return mark in environ(pid)

    def evaluating_root(pid: int) -> bool:
        return helpers.cmdline(pid).startswith("ray::archlab-eval node-0 search 0") and ours(pid) and helpers.alive(pid)

    try:
        worker, sandbox = None, []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            workers = helpers.pids_matching(evaluating_root)
            if workers:
                sandbox = [p for p in descendants(workers[0]) if helpers.SERVER in cmdline(p)]
                if sandbox:  # the evaluation is under way in the sandbox, not just scheduled
                    worker = workers[0]
                    break
            time.sleep(0.1)
        assert worker, "never saw the root's evaluation running in a Ray worker"
        os.kill(worker, signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:  # a failed test: stop the run like Ctrl-C, so that it shuts its Ray instance down
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, out + err
    deadline = time.monotonic() + 20
    while any(helpers.alive(p) for p in sandbox) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(helpers.alive(p) for p in sandbox), "the killed worker's sandbox must not outlive it"

    rows = helpers.node_rows(run_dir)
    assert [(r["id"], r["status"], r["attempts"]) for r in rows] == [(0, "done", 1)]
    evaluations = helpers.table_rows(run_dir, "evaluations")
    assert len(evaluations) == 1 and evaluations[0]["ok"] == 1, "the retried evaluation is recorded once"
    info = json.loads(evaluations[0]["env"])["executor"]
    assert info["kind"] == "ray" and info["pid"] != worker, "the result came from a fresh worker"
    submitted = [e for e in helpers.table_rows(run_dir, "events") if e["kind"] == "evaluate" and e["node_id"] == 0]
    assert len(submitted) == 1, "the driver submitted once; Ray did the retry"
    assert check(run_dir).ok

    deadline = time.monotonic() + 30  # the private Ray instance is gone with the run
    while helpers.pids_matching(lambda p: ours(p) and helpers.alive(p)) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = helpers.pids_matching(lambda p: ours(p) and helpers.alive(p))
    assert not left, [cmdline(p) for p in left]
