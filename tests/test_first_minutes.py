"""A newcomer's first minutes: LLM options checked before anything is spent, a run that fits the
machine it runs on (time limits from the root's measured cost, a forecast line), and a run that
can be watched while it goes (progress of every candidate in flight; stopped runs say so)."""

import http.server
import json
import signal
import socket
import threading
import time

import pytest

import helpers
from archlab.agents.offline import OfflineBrain
from archlab.config import RunConfig
from archlab.knowledge import KnowledgeIndex
from archlab.search.driver import Run
from archlab.tree.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def without_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_no_key_is_one_line_within_seconds_and_no_run_directory(tmp_path, monkeypatch):
    without_key(monkeypatch)
    started = time.monotonic()
    proc = helpers.cli("run", tmp_path / "run", "--llm", "openai:gpt-5", timeout=60)
    line = helpers.assert_user_error(proc, code=1)
    assert time.monotonic() - started < 30
    assert "OPENAI_API_KEY" in line and "api.openai.com" in line, line
    assert not (tmp_path / "run").exists()


def test_an_endpoint_nobody_listens_on_is_named_before_anything_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    proc = helpers.cli("run", tmp_path / "run", "--llm", "openai:m", "--base-url", url, timeout=60)
    line = helpers.assert_user_error(proc, code=1)
    assert time.monotonic() - started < 30
    assert url in line and "cannot reach" in line and "refused" in line.lower(), line
    assert "sk-test" not in proc.stdout + proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_refused_key_is_named_and_a_resume_checks_again(tmp_path, monkeypatch):
    """A server that answers 401: the key is refused (a new run is not created). A run created
    while the endpoint worked, resumed after it went away, stops before training, data intact."""

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        line = helpers.assert_user_error(
            helpers.cli("run", tmp_path / "run", "--llm", "openai:m", "--base-url", url), code=1
        )
        assert "refused the key" in line and "OPENAI_API_KEY" in line and url in line, line
        assert not (tmp_path / "run").exists()
    finally:
        server.shutdown()

    gone = f"http://127.0.0.1:{free_port()}/v1"
    run = tmp_path / "made-earlier"
    Run.create(run, RunConfig(llm="openai:m", base_url=gone))
    before = (run / "archlab.db").read_bytes()
    line = helpers.assert_user_error(helpers.cli("run", run, "--base-url", gone), code=1)
    assert gone in line, line
    assert (run / "archlab.db").read_bytes() == before and helpers.node_rows(run) == []


@pytest.mark.timeout(600)
@pytest.mark.e2e
def test_candidates_get_time_in_proportion_to_what_the_root_took(tmp_path):
    """On a machine where the root took 100 s at smoke (limit 480 s), a candidate may take 800 s;
    a --tier-set timeout_s is the user's choice and stands; the forecast says so."""

    def run_with(overrides, wall):
        path = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
        config = RunConfig(tier="smoke", max_nodes=9, tier_overrides=overrides or {})
        Run.create(path, config)
        Store(path).add_node(
            id=0,
            parent_id=None,
            status="done",
            operator="root",
            fitness=0.0,
            metrics={"wall_s": wall, "val_loss": 2.5, "mixer_params": 1000},
        )
        return Run(path, config, OfflineBrain(KnowledgeIndex.load(embeddings=False)))

    assert run_with(None, 100.0).candidate_timeout() == 800
    assert run_with(None, 20.0).candidate_timeout() == 480  # an idle machine: the tier's limit
    assert run_with({"timeout_s": 300}, 100.0).candidate_timeout() == 300
    busy = run_with(None, 300.0).forecast()
    assert "root: 300 s at the smoke tier" in busy and "8 more node(s) take about 40.0 min" in busy, busy
    assert "up to 2400 s" in busy and "slow or busy" in busy and "--tier micro" in busy, busy
    assert "slow or busy" not in run_with(None, 20.0).forecast()


def status(run):
    proc = helpers.cli("status", run, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.timeout(600)
@pytest.mark.e2e
def test_a_candidate_in_flight_can_be_watched_and_a_stopped_run_says_so(tmp_path):
    """`status` (and the run's own display) show the sandbox's progress: the stage, a step that
    advances, the training loss and the time limit. Stopped mid-evaluation, the run says the node
    was interrupted, and the run time counts the root."""
    run = tmp_path / "run"
    proc = helpers.popen_cli(
        "run", run, "--tier", "micro", "--tier-set", "steps=20000", "--max-nodes", 1, "--threads", helpers.THREADS
    )
    try:
        seen = []
        deadline = time.monotonic() + 240
        while len({n["step"] for n in seen}) < 3:
            assert time.monotonic() < deadline, seen
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.5)
            if not (run / "archlab.db").exists():
                continue
            facts = status(run)
            flight = [n for n in facts["in_flight"] if n.get("stage") == "training" and "step" in n]
            if flight:
                assert facts["driver_pid"] == proc.pid
                seen.append(flight[0])
        first, last = seen[0], seen[-1]
        assert first["id"] == 0 and first["steps"] == 20000 and last["step"] > first["step"], seen
        assert isinstance(last["loss"], float) and 0 < last["loss"] < 10 and last["limit_s"] == 150, last
        assert last["elapsed_s"] > first["elapsed_s"] >= 0
        text = helpers.cli("status", run).stdout
        assert (
            "running (archlab run, pid" in text and "node 0" in text and "step " in text and "of up to 150 s" in text
        ), text
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"archlab run {run} --tier micro --tier-set steps=20000 --max-nodes 1" in err, (
        err
    )  # the same command resumes
    facts = status(run)
    assert facts["driver_pid"] is None and facts["in_flight"] == [] and facts["evaluating"] == 1
    assert facts["elapsed_s"] >= last["elapsed_s"], facts["elapsed_s"]  # the root's time counts
    text = helpers.cli("status", run).stdout
    assert "stopped" in text and "interrupted" in text, text
    assert "node 0  interrupted" in helpers.cli("tree", run).stdout


def test_usage_lines_name_the_arguments():
    proc = helpers.cli("show")
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr  # (typer marks required arguments with braces: {RUN_DIR})
    assert "RUN_DIR} {NODE}" in out and "run_dir" not in out, out


@pytest.mark.timeout(600)
@pytest.mark.e2e
def test_the_best_nodes_keep_their_weights_so_export_needs_no_training(tmp_path):
    """A run keeps the trained weights of the root and its --keep-weights best nodes (the others are
    pruned as it goes): exporting a kept node is instant; a pruned one is trained again, saying so;
    a node that cannot be trained is one line and exit 1."""
    run = tmp_path / "run"
    done = helpers.cli(
        "run", run, "--tier", "micro", "--max-nodes", 7, "--keep-weights", 2, "--threads", helpers.THREADS, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    nodes = [n for n in helpers.node_rows(run) if n["status"] == "done"]
    best = sorted((n for n in nodes if n["id"] != 0), key=lambda n: -n["fitness"])
    assert len(best) >= 4, [(n["id"], n["status"], n["reason"]) for n in helpers.node_rows(run)]
    kept = {int(f.name.split("-")[1]) for f in (run / "weights").glob("node-*.safetensors")}
    assert kept == {0, *(n["id"] for n in best[:2])}, (kept, [(n["id"], n["fitness"]) for n in best])

    started = time.monotonic()
    proc = helpers.cli("export", run, best[0]["id"], tmp_path / "out", "--json")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["trained_now"] is False and (tmp_path / "out" / "model.safetensors").is_file()
    assert time.monotonic() - started < 60

    pruned = best[2]["id"]
    proc = helpers.cli("export", run, pruned, tmp_path / "out2", "--threads", helpers.THREADS)
    assert proc.returncode == 0, proc.stderr
    assert "training it" in proc.stdout and "its search evaluation took" in proc.stdout, proc.stdout

    config = (run / "archlab.toml").read_text()
    corpus = tmp_path / "gone.txt"
    (run / "archlab.toml").write_text(config.replace('tier = "micro"', f'tier = "micro"\ndata = "{corpus}"', 1))
    line = helpers.assert_user_error(helpers.cli("export", run, best[3]["id"], tmp_path / "out3"), code=1)
    assert f"training node {best[3]['id']} failed (data" in line and "the whole log:" in line, line
