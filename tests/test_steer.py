"""`archlab steer`: a user changes what a run's driver does next, from another process — pin a
branch, veto a node, leave a note for the researcher, stop after the candidates in flight."""

import getpass
import json
import os
import subprocess
import time

import pytest

import helpers
from archlab.tree.store import Store
from llm_server import API_KEY, Script, ScriptedServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]  # runs resumed (600 + 900 s bounds)


def selections(run) -> dict[int, dict]:
    """node id -> its selector decision (parent, references, and what steering did)."""
    return {
        t["node_id"]: json.loads(t["decision"]) for t in helpers.table_rows(run, "traces") if t["role"] == "selector"
    }


def subtree(rows: list[dict], top: int) -> set[int]:
    found, grew = {top}, True
    while grew:
        grew = False
        for r in rows:
            if r["parent_id"] in found and r["id"] not in found:
                found.add(r["id"])
                grew = True
    return found


def test_pin_veto_and_note_change_what_the_driver_does_next(tmp_path):
    run = tmp_path / "run"
    first = helpers.cli("run", run, "--tier", "micro", "--max-nodes", 5, "--threads", helpers.THREADS, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    done = sorted(
        (r for r in helpers.node_rows(run) if r["status"] == "done" and r["id"] != 0), key=lambda r: -r["fitness"]
    )
    assert len(done) >= 2, [(r["id"], r["status"], r["reason"]) for r in helpers.node_rows(run)]
    best, pinned = done[0]["id"], done[-1]["id"]  # veto the node the strategy likes most; pin a weaker one
    for args in (("pin", pinned), ("veto", best), ("note", "add a short causal convolution before the mixer")):
        proc = helpers.cli("steer", run, *args)
        assert proc.returncode == 0, proc.stderr
        assert "no `archlab run` is driving" in proc.stdout  # said when nobody is: it applies on resume
    before = {r["id"] for r in helpers.node_rows(run)}

    again = helpers.cli("run", run, "--max-nodes", 13, "--threads", helpers.THREADS, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    rows = helpers.node_rows(run)
    new = [r for r in rows if r["id"] not in before]
    chosen = selections(run)
    assert len(new) == 8
    parents = {r["id"]: r["parent_id"] for r in new}
    assert best not in parents.values(), parents  # vetoed: never a parent again
    from_pin = [n for n, p in parents.items() if p in subtree(rows, pinned)]
    assert len(from_pin) >= 4, (pinned, parents)  # most parents from the pinned branch (PIN_SHARE 0.8)
    assert all(chosen[n].get("pinned") == [pinned] for n in from_pin if "pinned" in chosen[n])
    assert all(chosen[n]["vetoed"] == [best] for n in parents)
    noted = [
        t for t in helpers.table_rows(run, "traces") if t["role"] == "researcher" and "notes" in (t["decision"] or "")
    ]
    assert len(noted) == 1 and json.loads(noted[0]["decision"])["notes"] == [
        "add a short causal convolution before the mixer"
    ]
    assert json.loads(noted[0]["decision"])["query"].startswith(
        "add a short causal convolution before the mixer"
    )  # what it looks up
    assert noted[0]["node_id"] == min(parents)  # the next researcher, and only it
    steers = [t for t in helpers.table_rows(run, "traces") if t["role"] == "user" and t["kind"] == "steer"]
    assert [json.loads(t["decision"])["action"] for t in steers] == ["pin", "veto", "note"]
    assert all(json.loads(t["decision"])["by"].endswith(" via cli") and t["created"] for t in steers)  # who, when

    for bad in (("pin",), ("pin", "x"), ("veto", 0), ("pin", 999), ("note",), ("stop", "now"), ("rewind", 1)):
        helpers.assert_user_error(helpers.cli("steer", run, *bad))
    assert len(helpers.node_rows(run)) == len(rows)  # refused steering changes nothing


def test_a_note_reaches_the_llm_researchers_prompt(tmp_path):
    run = tmp_path / "run"
    script = Script()
    env = dict(os.environ, OPENAI_API_KEY=API_KEY)
    with ScriptedServer(script) as server:
        args = [
            "run",
            str(run),
            "--tier",
            "micro",
            "--llm",
            "openai:scripted",
            "--base-url",
            server.url,
            "--threads",
            "1",
        ]
        first = subprocess.run(
            [*helpers.CLI, *args, "--max-nodes", "1"], env=env, capture_output=True, text=True, timeout=600
        )
        assert first.returncode == 0, first.stderr
        assert helpers.cli("steer", run, "note", "try a data-dependent forget gate").returncode == 0
        again = subprocess.run(
            [*helpers.CLI, *args, "--max-nodes", "3"], env=env, capture_output=True, text=True, timeout=600
        )
        assert again.returncode == 0, again.stderr
    prompts = [e["messages"][1]["content"] for e in script.log if e["role"] == "researcher"]
    assert len(prompts) >= 2
    assert "try a data-dependent forget gate" in prompts[0] and "Notes from the user" in prompts[0]
    assert all("try a data-dependent forget gate" not in p for p in prompts[1:])  # given once


def test_a_parent_drawn_from_the_archive_asks_the_llm_for_an_empty_cell(tmp_path):
    """`--strategy qd`: every parent comes from the archive, so every researcher prompt says which cell
    it is in and which cells next to it no design holds (real HTTP to a scripted endpoint)."""
    script = Script()
    env = dict(os.environ, OPENAI_API_KEY=API_KEY)
    with ScriptedServer(script) as server:
        args = ["run", str(tmp_path / "run"), "--tier", "micro", "--strategy", "qd", "--max-nodes", "3"]
        args += ["--llm", "openai:scripted", "--base-url", server.url, "--threads", "1"]
        done = subprocess.run([*helpers.CLI, *args], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    prompts = [e["messages"][1]["content"] for e in script.log if e["role"] == "researcher"]
    assert prompts and all("# Explore: this parent was drawn from the archive" in p for p in prompts)
    root_cell = Store(tmp_path / "run").node(0)["cell"]
    assert "mechanisms delta+gating+convolution, training tokens/s vs the root 0.84-1.19x" in prompts[0]
    assert root_cell and "No design holds these cells next to it yet:" in prompts[0]
    assert "- mechanisms hybrid+delta+gating+convolution, training tokens/s vs the root 0.84-1.19x" in prompts[0]
    assert "designs have so far:\ndelta+gating+convolution" in prompts[0]


def test_stop_finishes_the_candidate_in_flight_and_starts_no_new_one(tmp_path):
    run = tmp_path / "run"
    proc = helpers.popen_cli(
        "run", run, "--tier", "micro", "--tier-set", "steps=1500", "--max-nodes", 30, "--threads", helpers.THREADS
    )
    try:
        deadline = time.monotonic() + 300
        while True:  # a candidate (not the root) is training
            assert time.monotonic() < deadline and proc.poll() is None, "no candidate started"
            time.sleep(0.5)
            if (run / "archlab.db").exists():
                flight = json.loads(helpers.cli("status", run, "--json").stdout)["in_flight"]
                if any(n["id"] > 0 and n.get("stage") == "training" for n in flight):
                    break
        steer = helpers.cli("steer", run, "stop")
        assert steer.returncode == 0 and "stop asked" in steer.stdout, steer.stderr
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped by `archlab steer stop`" in out, out
    rows = helpers.node_rows(run)
    assert all(r["status"] in ("done", "failed") for r in rows), [
        (r["id"], r["status"]) for r in rows
    ]  # in flight: finished
    assert len(rows) < 30
    resumed = helpers.cli("run", run, "--max-nodes", len(rows) + 1, "--threads", helpers.THREADS, timeout=600)
    helpers.assert_user_error(helpers.cli("steer", run, "stop"))  # nobody drives it now: nothing to stop
    # A stop that reached a driver which then died before acting on it (Ctrl-C, a crash) is the
    # earlier driver's: the run the user starts next does not stop because of it.
    store = Store(run)
    store.add_trace(None, "user", "steer", decision={"action": "stop", "node": None, "by": "test via cli"})
    store.close()
    resumed = helpers.cli("run", run, "--max-nodes", len(rows) + 1, "--threads", helpers.THREADS, timeout=600)
    assert resumed.returncode == 0 and len(helpers.node_rows(run)) == len(rows) + 1, (
        resumed.stdout
    )  # the stop was used once
    assert "reached --max-nodes" in resumed.stdout, resumed.stdout


def test_steering_that_cannot_act_is_refused_and_records_nothing(tmp_path):
    """One clear line and nothing stored for a stop with no driver, a failed node, an overlong note;
    an accepted pin says who asked and when."""
    store = Store(tmp_path, create=True)
    store.add_node(id=0, parent_id=None, status="done", fitness=0.0)
    store.add_node(id=1, parent_id=0, status="done", fitness=0.1)
    store.add_node(id=2, parent_id=0, status="failed", reason="nan")
    store.close()
    assert "nothing to stop" in helpers.assert_user_error(helpers.cli("steer", tmp_path, "stop"))
    assert "failed (nan)" in helpers.assert_user_error(helpers.cli("steer", tmp_path, "pin", 2))
    assert "never a parent anyway" in helpers.assert_user_error(helpers.cli("steer", tmp_path, "veto", 2))
    assert "2000" in helpers.assert_user_error(helpers.cli("steer", tmp_path, "note", "x" * 2001))
    assert not helpers.table_rows(tmp_path, "traces")
    before = time.time()
    ok = helpers.cli("steer", tmp_path, "pin", 1)
    assert ok.returncode == 0 and "pinned node 1" in ok.stdout, ok.stderr
    (trace,) = helpers.table_rows(tmp_path, "traces")
    assert (trace["role"], trace["kind"], trace["node_id"]) == ("user", "steer", 1)
    assert json.loads(trace["decision"]) == {"action": "pin", "node": 1, "by": f"{getpass.getuser()} via cli"}
    assert before - 1 <= trace["created"] <= time.time()
    assert [n["status"] for n in helpers.node_rows(tmp_path)] == ["done", "done", "failed"]  # the nodes are untouched
    tree = helpers.cli("tree", tmp_path).stdout.splitlines()
    assert [line for line in tree if "[pinned]" in line] == [next(line for line in tree if "node 1 " in line)], tree
