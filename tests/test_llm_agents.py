"""The LLM pipeline over real HTTP against a scripted OpenAI-compatible server."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from archlab.search.fitness import fitness

sys.path.insert(0, str(Path(__file__).parent))
import helpers  # noqa: E402
from llm_server import API_KEY, EDITS, NO_CODE, ROOT, SHAPE_BUG_CUT, SYNTAX_ERROR, Script, ScriptedServer  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # LLM runs (600 s bound each)

GATED = ROOT.replace(EDITS[0][0], EDITS[0][1])  # a real change of the root: a sigmoid output gate
# The gate plus a bug the sandbox rejects; the scripted engineer's repair removes the bug and keeps the gate.
SHAPE_BUG = (
    "Use a sigmoid output gate, and drop the last position of the output to save work.\n\n```python\n"
    + GATED.replace("        return self.o_proj(o)\n", SHAPE_BUG_CUT)
    + "```\n"
)


def archlab(*args, env_extra=None, timeout=600):
    env = dict(os.environ, OPENAI_API_KEY=API_KEY, **(env_extra or {}))
    return subprocess.run([*helpers.CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def llm_args(server, run_dir, nodes):
    return [
        "run",
        str(run_dir),
        "--tier",
        "micro",
        "--max-nodes",
        str(nodes),
        "--llm",
        "openai:scripted",
        "--base-url",
        server.url,
        "--llm-timeout",
        "2",
        "--llm-patience",
        "60",
    ]


def rows(run_dir, sql, params=()):
    with sqlite3.connect(run_dir / "archlab.db") as db:
        return db.execute(sql, params).fetchall()


def test_pipeline_survives_faults_repairs_and_traces_every_call(tmp_path):
    run_dir = tmp_path / "run"
    script = Script(
        faults=[{"status": 429}, {"status": 500}, {"drop": True}, {"delay": 4}],  # the delay outlasts --llm-timeout 2
        researcher=[NO_CODE, SYNTAX_ERROR, SHAPE_BUG],
    )
    with ScriptedServer(script) as server:
        done = archlab(*llm_args(server, run_dir, 4))
    assert done.returncode == 0, done.stderr
    assert "reached --max-nodes 4" in done.stdout

    # The run completed with 4 nodes and each fault was retried.
    assert rows(run_dir, "select count(*) from nodes")[0][0] == 4
    statuses = [e["status"] for e in script.log]
    assert statuses[:3] == [429, 500, "dropped"]
    assert all(e["auth_ok"] for e in script.log)

    # Node 1: the researcher's prose-only and broken answers were fed back, then the
    # shape bug was caught by the sandbox and repaired by the engineer.
    format_errors = rows(
        run_dir,
        "select decision from traces where node_id = 1 and role = 'researcher' and decision like '%format_error%'",
    )
    assert len(format_errors) == 2 and "no_code" in format_errors[0][0] and "syntax" in format_errors[1][0]
    evals = rows(run_dir, "select ok, reason from evaluations where node_id = 1 order by id")
    assert evals[0] == (0, "shape") and evals[-1][0] == 1
    assert (
        rows(
            run_dir,
            "select count(*) from traces where node_id = 1 and role = 'engineer' and kind = 'llm' and error is null",
        )[0][0]
        == 1
    )

    # Every completed call is one trace row with tokens and latency; failed tries are rows with the error.
    completed = [e for e in script.log if e["completed"]]
    ok_traces = rows(
        run_dir,
        "select tokens_in, tokens_out, latency_s, model, prompt, response from traces where kind = 'llm' and error is null",
    )
    # The slow answer completed on the server after the client gave up: it is an error row, not a result.
    assert len(ok_traces) == len(completed) - 1
    assert all(t[0] > 0 and t[1] > 0 and t[2] > 0 and t[3] == "scripted" and t[4] and t[5] for t in ok_traces)
    errors = [r[0] for r in rows(run_dir, "select error from traces where kind = 'llm' and error is not null")]
    assert len(errors) == 4 and any("Timeout" in e for e in errors) and any("RateLimit" in e for e in errors)

    # The key never reaches the store, the config copy or the logs.
    for path in [run_dir / "archlab.db", run_dir / "archlab.toml", *(run_dir / "logs").iterdir()]:
        assert API_KEY.encode() not in path.read_bytes(), path
    wal = run_dir / "archlab.db-wal"
    assert not wal.exists() or API_KEY.encode() not in wal.read_bytes()


def test_cost_cap_stops_the_run_cleanly_and_resume_continues(tmp_path):
    run_dir = tmp_path / "run"
    with ScriptedServer(Script()) as server:
        first = archlab(*llm_args(server, run_dir, 1))  # root only: creates the run
        assert first.returncode == 0, first.stderr
        config = tomllib.loads((run_dir / "archlab.toml").read_text())
        config["prices"] = {"scripted": [100.0, 100.0]}  # USD per 1M tokens: ~0.1 USD a call here
        (run_dir / "archlab.toml").write_text(tomli_w.dumps(config))
        capped = archlab(*llm_args(server, run_dir, 20), "--max-cost", "0.3")
        assert capped.returncode == 0, capped.stderr
        assert "max-cost" in capped.stdout
        spent = rows(run_dir, "select sum(cost), max(cost) from traces where kind = 'llm'")[0]
        assert 0.3 <= spent[0] < 0.3 + spent[1] + 1e-9  # stopped at the first call past the cap
        nodes_at_cap = rows(run_dir, "select count(*) from nodes where status != 'evaluating'")[0][0]
        assert nodes_at_cap < 20
        more = archlab(*llm_args(server, run_dir, nodes_at_cap + 1), "--max-cost", "100")
        assert more.returncode == 0, more.stderr
        assert rows(run_dir, "select count(*) from nodes where status = 'evaluating'")[0][0] == 0
        assert rows(run_dir, "select count(*) from nodes")[0][0] == nodes_at_cap + 1


def test_killed_during_an_llm_call_repeats_no_completed_call(tmp_path):
    run_dir = tmp_path / "run"
    script = Script(researcher=[NO_CODE], delay_on=("researcher", 2, 60))  # the re-ask after NO_CODE hangs
    with ScriptedServer(script) as server:
        env = dict(os.environ, OPENAI_API_KEY=API_KEY)
        proc = subprocess.Popen(
            [*helpers.CLI, *llm_args(server, run_dir, 3)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while not [e for e in script.log if e["role"] == "researcher"][1:] and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        completed_before = {e["hash"] for e in script.log if e["completed"]}
        assert completed_before, "the first researcher call should have completed before the kill"
        script.delay_on = None
        n_before = len(script.log)
        done = archlab(*llm_args(server, run_dir, 3))
        assert done.returncode == 0, done.stderr
        after = script.log[n_before:]
    repeated = [e for e in after if e["hash"] in completed_before]
    assert repeated == [], f"{len(repeated)} completed calls were asked again"
    assert rows(run_dir, "select count(*) from nodes")[0][0] == 3
    assert rows(run_dir, "select count(*) from nodes where status = 'evaluating'")[0][0] == 0


def test_endpoint_down_for_a_while_then_back_and_the_judge_scores(tmp_path):
    """The endpoint refuses connections for several seconds; the run waits with backoff, then
    goes on by itself. The optional judge's score enters the fitness and its calls are traces."""
    import socket

    run_dir = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OPENAI_API_KEY=API_KEY)
    url = f"http://127.0.0.1:{port}/v1"
    with ScriptedServer(
        Script(), port=port
    ):  # up for the check made before the run starts (tests/test_first_minutes.py) ...
        proc = subprocess.Popen(
            [
                *helpers.CLI,
                "run",
                str(run_dir),
                "--tier",
                "micro",
                "--max-nodes",
                "2",
                "--llm",
                "openai:scripted",
                "--base-url",
                url,
                "--llm-patience",
                "120",
                "--judge-weight",
                "0.1",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while not (run_dir / "archlab.toml").exists():
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.05)

    # ... and down while the root trains and for a while after: until several tries were refused
    def refused_tries() -> int:
        assert proc.poll() is None, proc.communicate()[1]
        return (
            rows_if_any(run_dir, "select count(*) from traces where kind = 'llm' and error like '%Connection%'")
            or [(0,)]
        )[0][0]

    helpers.wait_until(lambda: refused_tries() >= 2, 300, "two refused tries", interval=0.2)
    with ScriptedServer(Script(), port=port):
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "retrying" in err
    refused = rows(run_dir, "select count(*) from traces where kind = 'llm' and error like '%Connection%'")[0][0]
    assert refused >= 2
    judged = rows(run_dir, "select count(*) from traces where role = 'judge' and kind = 'llm' and error is null")[0][0]
    assert judged == 1
    metrics, fit = rows(run_dir, "select metrics, fitness from nodes where id = 1")[0]
    m = json.loads(metrics)
    base = fitness(
        {k: v for k, v in m.items() if not k.startswith("judge_")},
        json.loads(rows(run_dir, "select metrics from nodes where id = 0")[0][0]),
    )
    assert (m["judge_novelty"], m["judge_complexity"]) == (7.0, 2.0)
    assert abs(fit - (base + 0.1 * 0.5)) < 1e-6


def rows_if_any(run_dir, sql):
    try:
        return rows(run_dir, sql)
    except sqlite3.Error:
        return []


def test_a_researcher_that_never_gives_code_becomes_a_failed_node(tmp_path):
    run_dir = tmp_path / "run"
    with ScriptedServer(Script(researcher=[NO_CODE] * 3)) as server:  # the first answer and both re-asks
        done = archlab(*llm_args(server, run_dir, 2))
    assert done.returncode == 0, done.stderr
    status, reason, analysis, sha = rows(
        run_dir, "select status, reason, analysis, commit_sha from nodes where id = 1"
    )[0]
    assert (status, reason) == ("failed", "malformed") and analysis and sha
    assert rows(run_dir, "select count(*) from evaluations where node_id = 1")[0][0] == 0  # nothing reached the sandbox


def test_the_cost_cap_holds_when_the_endpoint_reports_no_usage(tmp_path):
    """llama.cpp and some proxies send no `usage`: the tokens are estimated, so --max-cost still stops the run."""
    run_dir = tmp_path / "run"
    with ScriptedServer(Script(usage="none")) as server:
        first = archlab(*llm_args(server, run_dir, 1))
        assert first.returncode == 0, first.stderr
        config = tomllib.loads((run_dir / "archlab.toml").read_text())
        config["prices"] = {"scripted": [100.0, 100.0]}
        (run_dir / "archlab.toml").write_text(tomli_w.dumps(config))
        capped = archlab(*llm_args(server, run_dir, 4), "--max-cost", "0.3")
    assert capped.returncode == 0, capped.stderr
    assert "max-cost" in capped.stdout
    assert rows(run_dir, "select count(*) from nodes where status != 'evaluating'")[0][0] < 4
    spent, estimated = rows(
        run_dir, "select sum(cost), sum(decision like '%\"usage\": \"estimated\"%') from traces where kind = 'llm'"
    )[0]
    assert spent >= 0.3 and estimated >= 1


def test_unreadable_answers_fail_the_candidate_and_the_run_goes_on(tmp_path):
    """A proxy's HTML page instead of a completion, for longer than --llm-patience: the candidate
    fails as data (with error traces) and the run reaches its node budget."""
    run_dir = tmp_path / "run"
    html = {"raw": b"<html><body>502 Bad Gateway</body></html>", "content_type": "text/html"}
    with ScriptedServer(Script(faults=[html] * 3)) as server:
        done = archlab(*llm_args(server, run_dir, 2)[:-1], "1")  # --llm-patience 1
    assert done.returncode == 0, done.stderr
    assert "reached --max-nodes 2" in done.stdout
    status, reason, detail = rows(run_dir, "select status, reason, detail from nodes where id = 1")[0]
    assert (status, reason) == ("failed", "malformed") and "unreadable answers" in detail
    assert (
        rows(
            run_dir,
            "select count(*) from traces where kind = 'llm' and error like 'Malformed: the answer is not JSON%'",
        )[0][0]
        >= 2
    )


def test_answers_too_deep_or_too_large_fail_as_data_and_a_resume_goes_on(tmp_path):
    """A body 100,000 arrays deep, a 5 MiB body, then a file whose one expression is 3,000 terms long,
    every time it is asked. The first and last raised RecursionError: the run stopped (exit 3) and,
    since answers are kept for replay, so did every resume; the large one was stored whole (a 200 MiB
    answer took 1 GB of memory and 200 MB of database). Now each fails the candidate and the run goes on."""
    run_dir = tmp_path / "run"
    deep = (
        "Scale the output by a long constant.\n\n```python\n" + ROOT + "\nSCALE = " + "+".join(["1"] * 3000) + "\n```\n"
    )
    nested = {"raw": b"[" * 100_000 + b"]" * 100_000, "content_type": "application/json"}
    large = {"raw": b'{"x": "' + b"a" * (5 << 20) + b'"}', "content_type": "application/json"}
    with ScriptedServer(Script(researcher=[deep] * 3, faults=[nested, large])) as server:
        first = archlab(*llm_args(server, run_dir, 2))
        again = archlab(*llm_args(server, run_dir, 3))
    assert first.returncode == 0 and again.returncode == 0, (first.stderr, again.stderr)
    status, reason, detail = rows(run_dir, "select status, reason, detail from nodes where id = 1")[0]
    assert (status, reason) == ("failed", "malformed") and "parse" in detail, detail
    assert rows(run_dir, "select count(*) from traces where error like '%not JSON%'")[0][0] >= 1
    assert rows(run_dir, "select count(*) from traces where error like '%larger than 4 MiB%'")[0][0] >= 1
    assert rows(run_dir, "select count(*) from nodes where status != 'evaluating'")[0][0] == 3
    assert (run_dir / "archlab.db").stat().st_size < 4 << 20


def test_the_same_file_with_other_words_is_not_trained_twice(tmp_path):
    """The novelty gate compares motivation and diff within a bounded window: a long enough motivation
    hid a byte-identical file, trained again as the next node (red team, 2026-12-05)."""
    run_dir = tmp_path / "run"
    answers = [f"{words}\n\n```python\n{GATED}```\n" for words in ("Use a sigmoid gate.", "Bound the gate. " * 3000)]
    with ScriptedServer(Script(researcher=[answers[0]] + [answers[1]] * 3)) as server:
        done = archlab(*llm_args(server, run_dir, 3))
    assert done.returncode == 0, done.stderr
    assert rows(run_dir, "select status from nodes where id = 1")[0][0] == "done"
    status, reason, detail = rows(run_dir, "select status, reason, detail from nodes where id = 2")[0]
    assert (status, reason) == ("failed", "malformed") and "not_novel" in detail, detail


def test_a_refused_request_fails_its_candidate_and_the_run_goes_on(tmp_path):
    """A 400 for one request (the context is too long) is that candidate's failure, not the endpoint's."""
    run_dir = tmp_path / "run"
    too_long = {"status": 400, "message": "This model's maximum context length is 4096 tokens."}
    with ScriptedServer(Script(faults=[too_long])) as server:
        done = archlab(*llm_args(server, run_dir, 3))
    assert done.returncode == 0, done.stderr
    assert "reached --max-nodes 3" in done.stdout
    status, reason, detail = rows(run_dir, "select status, reason, detail from nodes where id = 1")[0]
    assert (status, reason) == ("failed", "malformed") and "maximum context length" in detail
    assert rows(run_dir, "select status from nodes where id = 2")[0][0] == "done"
    assert (
        rows(run_dir, "select count(*) from traces where kind = 'llm' and error like 'BadRequestError 400%'")[0][0] == 1
    )


def test_a_rejected_key_stops_with_an_error_and_the_echoed_key_is_stored_nowhere(tmp_path):
    run_dir = tmp_path / "run"
    faults = [
        {"status": 500, "message": f"upstream failed for key {API_KEY}"},
        {"status": 401, "message": f"Invalid API key: Bearer {API_KEY}"},
    ]
    with ScriptedServer(Script(faults=faults)) as server:
        done = archlab(*llm_args(server, run_dir, 3))
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        "error: the LLM endpoint refused the request (AuthenticationError 401: Invalid API key: Bearer [redacted]); "
        "check OPENAI_API_KEY" in " ".join(done.stderr.split())
    )
    assert "retrying" in done.stderr and "Traceback" not in done.stderr
    assert API_KEY not in done.stdout + done.stderr
    for name in ("archlab.db", "archlab.db-wal", "checkpoints.db", "checkpoints.db-wal"):
        path = run_dir / name
        assert not path.exists() or API_KEY.encode() not in path.read_bytes(), name
    assert rows(run_dir, "select count(*) from traces where error like '%[redacted]%'")[0][0] == 2


def test_a_cut_off_answer_is_said_so_and_sent_back_trimmed(tmp_path):
    """The first answer rambles to the token limit (60 kB, finish_reason "length"): the re-ask says
    it was cut off and sends back a bounded excerpt of it. The second answer comes from a reasoning
    model, only in reasoning_content: it is read as the answer."""
    run_dir = tmp_path / "run"
    rambling = "Idea: " + "very long reasoning " * 3000 + "\n```python\n" + ROOT[:500]
    script = Script(faults=[{"form": "length"}, {"form": "reasoning"}], researcher=[rambling])
    with ScriptedServer(script) as server:
        done = archlab(*llm_args(server, run_dir, 2))
    assert done.returncode == 0, done.stderr
    said = rows(
        run_dir,
        "select response from traces where node_id = 1 and role = 'researcher' and decision like '%format_error%'",
    )
    assert len(said) == 1 and said[0][0].startswith("Your answer was cut off by the token limit")
    reask = [e for e in script.log if e["role"] == "researcher"][1]["messages"]
    assert len(reask) == 4 and reask[3]["content"] == said[0][0]
    assert len(reask[2]["content"]) < 16_100 and "characters cut" in reask[2]["content"]
    assert rows(run_dir, "select count(*) from evaluations where node_id = 1")[0][0] >= 1


def test_an_engineer_handing_back_the_parent_is_not_a_repair(tmp_path):
    run_dir = tmp_path / "run"
    parent_again = f"Restored the working file.\n\n```python\n{ROOT}```\n"
    with ScriptedServer(Script(researcher=[SHAPE_BUG], engineer=[parent_again] * 6)) as server:
        done = archlab(*llm_args(server, run_dir, 2))
    assert done.returncode == 0, done.stderr
    assert rows(run_dir, "select status, reason from nodes where id = 1")[0] == ("failed", "shape")
    refused = rows(run_dir, "select decision from traces where role = 'engineer' and decision like '%no_change%'")
    assert len(refused) == 3
    attempts = [
        r[0] for r in rows(run_dir, "select attempt from traces where role = 'engineer' and kind = 'llm' order by id")
    ]
    assert attempts == [0, 1, 2]  # each format retry its own number


def test_code_edits_share_an_llm_run(tmp_path):
    """--code-edits 1: every proposal comes from the offline brain's code operators (no researcher or
    engineer request reaches the endpoint); the analyst still writes through the LLM."""
    run_dir = tmp_path / "run"
    script = Script()
    with ScriptedServer(script) as server:
        done = archlab(*llm_args(server, run_dir, 3), "--code-edits", "1")
    assert done.returncode == 0, done.stderr
    operators = [r[0] for r in rows(run_dir, "select operator from nodes where id > 0 order by id")]
    assert len(operators) == 2 and all(op.startswith("code:") for op in operators), operators
    roles = {e["role"] for e in script.log}
    assert "analyst" in roles and not roles & {"researcher", "engineer"}, roles
    edits = rows(run_dir, "select decision from traces where role = 'researcher' and node_id > 0")
    assert len(edits) == 2 and all(json.loads(d)["edit"] for (d,) in edits)
