"""The local executor with real sandboxes: CPU slots side by side, a GPU slot as a pinned slot
process, stopping abandons what is in flight, and how a run's config picks its executor."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from archlab.config import RunConfig
from archlab.errors import UserError
from archlab.sandbox import executors
from archlab.sandbox.request import EvaluationRequest
from archlab.sandbox.runner import Interrupted
from archlab.templates import render_root

sys.path.insert(0, str(Path(__file__).parent))
import helpers  # noqa: E402

ROOT = render_root("deltanet")


def job(tmp_path: Path, key: str, tier: str = "check", source: str = ROOT) -> executors.Job:
    return executors.Job(
        key=key,
        request=EvaluationRequest(source=source, tier=tier, seed=0, param_limit=-1, log_path=tmp_path / f"{key}.log"),
    )


@pytest.mark.e2e
def test_two_cpu_slots_evaluate_side_by_side(tmp_path):
    ex = executors.LocalExecutor(slots=2, threads=1)
    try:
        futures = [ex.submit(job(tmp_path, f"job{i}")) for i in range(2)]
        results = [executors.result_of(f) for f in futures]
    finally:
        ex.shutdown()
    assert all(r.ok for r in results), [r.detail for r in results]
    info = [r.env["executor"] for r in results]
    assert {i["slot"] for i in info} == {0, 1} and all(
        i["kind"] == "local" and i["threads"] == 1 and i["gpus"] == 0 for i in info
    )
    spans = [(i["started"], i["started"] + r.metrics["wall_s"]) for i, r in zip(info, results)]
    assert max(s for s, _ in spans) < min(e for _, e in spans), f"the two evaluations did not overlap: {spans}"
    for i in range(2):
        assert "[sandbox]" in (tmp_path / f"job{i}.log").read_text()


@pytest.mark.e2e
def test_a_gpu_slot_is_a_slot_process_pinned_with_cuda_visible_devices(tmp_path):
    # The pinning machinery of a GPU slot, exercised on CPU: the slot process gets CUDA_VISIBLE_DEVICES=3.
    ex = executors.LocalExecutor(gpus=["3"], device="cpu", threads=1)
    try:
        assert ex.slots == 1 and ex.isolate
        ok = ex.evaluate(job(tmp_path, "pinned"))
        broken = ex.evaluate(job(tmp_path, "broken", source="def broken(:\n"))
    finally:
        ex.shutdown()
    assert ok.ok, ok.detail
    info = ok.env["executor"]
    assert info["cuda_visible_devices"] == "3" and info["gpu"] == "3" and info["slot"] == 0
    assert info["slot_pid"] != os.getpid()
    assert not broken.ok and broken.reason == "syntax", (broken.reason, broken.detail)


@pytest.mark.e2e
def test_more_workers_than_gpus_share_them_round_robin(tmp_path):
    # Small models leave a GPU idle, so --workers 3 on two GPUs gives three slots: 0 -> "5", 1 -> "7", 2 -> "5".
    ex = executors.LocalExecutor(slots=3, gpus=["5", "7"], device="cpu", threads=1)
    try:
        assert ex.slots == 3
        results = [executors.result_of(f) for f in [ex.submit(job(tmp_path, f"shared{i}")) for i in range(3)]]
    finally:
        ex.shutdown()
    assert all(r.ok for r in results), [r.detail for r in results]
    pins = {
        r.env["executor"]["slot"]: (r.env["executor"]["gpu"], r.env["executor"]["cuda_visible_devices"])
        for r in results
    }
    assert pins == {0: ("5", "5"), 1: ("7", "7"), 2: ("5", "5")}


@pytest.mark.e2e
def test_stop_abandons_the_evaluation_in_flight(tmp_path):
    ex = executors.LocalExecutor(
        gpus=["0"], device="cpu", threads=1
    )  # a slot process: stopping it leaves this process usable
    log = tmp_path / "long.log"
    future = ex.submit(job(tmp_path, "long", tier="micro"))
    deadline = time.monotonic() + 120
    while not helpers.sandbox_servers_writing(log) and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = helpers.sandbox_servers_writing(log)
    assert pids, "the sandbox never started"
    ex.stop()
    with pytest.raises(Interrupted):
        future.result(timeout=60)
    deadline = time.monotonic() + 15
    while any(helpers.alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(helpers.alive(p) for p in pids), "stopping must kill the sandbox"
    with pytest.raises(Interrupted):  # a stopped executor takes no more work
        ex.evaluate(job(tmp_path, "after"))
    ex.shutdown()


def test_a_run_config_picks_its_executor():
    ex = executors.make(RunConfig(workers=2, threads=1, device="cpu"))
    assert isinstance(ex, executors.LocalExecutor) and (ex.slots, ex.threads, ex.device, ex.gpus) == (2, 1, "cpu", 0)
    ex.shutdown()
    assert executors.default_threads(1) == max(1, min(4, os.cpu_count() or 1))
    gpus = executors.visible_gpus()
    if gpus:  # a GPU machine: one pinned slot per GPU
        ex = executors.make(RunConfig(workers=1, device="auto"))
        assert ex.slots == len(gpus) and ex.gpus == 1 and ex.isolate
        ex.shutdown()
    else:
        with pytest.raises(UserError, match="--device cuda"):
            executors.make(RunConfig(device="cuda"))


@pytest.mark.timeout(600)
@pytest.mark.e2e
def test_a_cpu_hours_budget_stops_the_run(cli, run_dir):
    # 0.0002 CPU-hours is 0.72 CPU-seconds: the root's evaluation alone (two model servers, checks, training) spends more.
    proc = cli("run", run_dir, "--tier", "micro", "--max-nodes", 5, "--threads", helpers.THREADS, "--cpu-hours", 0.0002)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reached --cpu-hours 0.0002" in " ".join(proc.stdout.split())
    assert [r["id"] for r in helpers.node_rows(run_dir)] == [0]
    spend = json.loads(cli("status", run_dir, "--json").stdout)["spend"]
    assert spend["max_cpu_hours"] == 0.0002 and spend["cpu_hours"] >= 0.0002 and spend["evaluations"] == 1
    assert spend["by_tier"][0]["tier"] == "micro" and spend["by_tier"][0]["kind"] == "search"
