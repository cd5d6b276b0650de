"""`archlab serve`: the review UI in headless Chromium (Playwright driving Debian's chromium)
against a real `archlab serve` child process on a copy of a real micro-tier run, plus the
read-only and path-confinement guarantees over raw HTTP, and a busy port.

Screenshots go to $ARCHLAB_SCREENSHOTS when set, else into pytest's tmp dir (printed)."""

import getpass
import hashlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

import helpers
from archlab.search import archive
from helpers import CHROMIUM, CHROMIUM_ARGS, Server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(review_run, tmp_path_factory):
    """A copy of the session's small trained run (the browser test grows it) and a server on it."""
    run = tmp_path_factory.mktemp("web") / "run"
    helpers.copy_run(review_run, run)
    server = Server(run)
    yield run, server
    server.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("ARCHLAB_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


def test_browser_tree_node_live_update_and_plots(served, shots):
    from playwright.sync_api import expect, sync_playwright

    run, server = served
    nodes = helpers.node_rows(run)
    child = next(n for n in nodes if n["id"] != 0 and n["status"] == "done")
    child_traces = [t for t in helpers.table_rows(run, "traces") if t["node_id"] == child["id"]]
    assert child_traces, "the run should have traces for its nodes"
    problems, foreign = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("request", lambda r: None if urlparse(r.url).hostname == server.host else foreign.append(r.url))

        # The tree renders every node of the run.
        page.goto(server.url)
        page.wait_for_selector('g.node[data-node="0"]', timeout=30_000)
        expect(page.locator("g.node")).to_have_count(len(nodes))
        expect(page.locator("#run-stats")).to_contain_text(f"{len(nodes)} nodes")
        page.screenshot(path=str(shots / "1-tree.png"))

        # Fold and unfold the root: its descendants leave and come back.
        page.locator('[data-toggle="0"]').click()
        expect(page.locator("g.node")).to_have_count(1)
        page.locator('[data-toggle="0"]').click()
        expect(page.locator("g.node")).to_have_count(len(nodes))

        # A summarised tree (as big runs are served): "+N more" loads the children left out.
        page.goto(server.url + "#/?limit=2")
        expect(page.locator("g.node")).to_have_count(2)
        stub = page.locator("g.stub[data-more]").first  # on the shown node whose child was left out
        expect(stub).to_contain_text("more children")
        shown = {int(n) for n in page.locator("g.node").evaluate_all("els => els.map(e => e.dataset.node)")}
        parent = int(stub.get_attribute("data-more"))
        page.screenshot(path=str(shots / "1b-tree-summarised.png"))
        stub.click()
        expect(page.locator("g.node")).to_have_count(len(shown | {n["id"] for n in nodes if n["parent_id"] == parent}))
        page.goto(server.url + "#/")
        expect(page.locator("g.node")).to_have_count(len(nodes))

        # Clicking a node opens it: motivation, highlighted diff against the parent, metrics, traces.
        page.locator(f'g.node[data-node="{child["id"]}"] circle').click()
        node_page = page.locator(f'[data-testid="node-page"][data-node="{child["id"]}"]')
        expect(node_page).to_be_visible(timeout=15_000)
        expect(node_page.locator(".motivation")).to_have_text(child["motivation"])
        diff = page.locator('[data-testid="diff"]')
        assert diff.locator("tr.add, tr.del").count() > 0, "the diff against the parent shows changed lines"
        assert diff.locator("span.k").count() > 0, "the code is syntax highlighted (keywords)"
        expect(page.locator("table.metrics")).to_contain_text("val_loss")
        expect(page.locator('[data-testid="node-traces"] article.trace')).to_have_count(len(child_traces))
        expect(page.locator('[data-testid="node-traces"]')).to_contain_text("researcher")
        page.screenshot(path=str(shots / "2-node.png"), full_page=True)

        # A node added to the run while the tree is open appears without a reload.
        page.locator('nav a[data-nav="tree"]').click()
        expect(page.locator("g.node")).to_have_count(len(nodes))
        grow = helpers.popen_cli("run", run, "--max-nodes", len(nodes) + 1, "--threads", helpers.THREADS)
        try:
            new = page.locator(f'g.node[data-node="{len(nodes)}"]')
            new.wait_for(timeout=240_000)
            assert grow.wait(timeout=300) == 0, grow.stderr.read()
        finally:
            if grow.poll() is None:
                grow.kill()
                grow.wait()
        expect(page.locator("g.node")).to_have_count(len(nodes) + 1)
        final = helpers.node_rows(run)[-1]
        expect(page.locator(f'g.node[data-node="{final["id"]}"].st-{final["status"]}')).to_have_count(1, timeout=15_000)
        page.screenshot(path=str(shots / "3-tree-after-new-node.png"))

        # Run plots: best-so-far over time and evaluations, Pareto front, discovery curve, spend.
        page.locator('nav a[data-nav="plots"]').click()
        for testid in ("plot-best-time", "plot-best-evals", "plot-pareto-tokens_per_s", "plot-discovery", "plot-spend"):
            expect(page.locator(f'[data-testid="{testid}"]')).to_be_visible(timeout=15_000)
        done = [n for n in helpers.node_rows(run) if n["status"] == "done"]
        assert page.locator('[data-testid="plot-best-time"] circle').count() >= len(done)
        page.screenshot(path=str(shots / "4-plots.png"), full_page=True)

        # The trace viewer lists the run's traces in order.
        page.locator('nav a[data-nav="traces"]').click()
        expect(page.locator("article.trace").first).to_be_visible(timeout=15_000)
        first_id = int(page.locator("article.trace").first.get_attribute("data-trace"))
        assert first_id == min(t["id"] for t in helpers.table_rows(run, "traces"))
        page.screenshot(path=str(shots / "5-traces.png"))
        browser.close()
    assert not problems, problems
    assert not foreign, f"the page fetched from other hosts: {foreign}"


def test_browser_archive_grid_links_to_its_elites(served, shots):
    """The quality-diversity grid: one cell per elite of the run's archive along two descriptors, each
    linked to its node's page; another pair of axes from the selector; an axis the tier lacks is a 400."""
    from playwright.sync_api import expect, sync_playwright

    run, server = served
    grid = server.get_json("/api/archive")
    assert (grid["x"], grid["y"]) == ("mechanisms", "share") and grid["reachable"] == 1600  # micro: no state, recall
    stored = {n["cell"] for n in helpers.node_rows(run) if n["status"] == "done"}
    assert grid["occupied"] == len(stored) >= 1 and grid["coverage"] == len(stored) / 1600
    held = {int(key.split(";")[0].split("=")[1]) for key in stored}  # the mechanisms' bins: the sets held
    assert grid["x_labels"] == [archive.MECHANISM_LABELS[i] for i in sorted(held)]
    assert server.request("GET", "/api/archive?y=recall")[0] == 400
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.goto(server.url + "#/archive")
        cells = page.locator('[data-testid="archive-cell"]')
        expect(cells).to_have_count(len(grid["cells"]), timeout=30_000)
        expect(page.locator('[data-testid="archive-summary"]')).to_contain_text(f"{grid['occupied']} of 1600 cells")
        page.screenshot(path=str(shots / "6-archive.png"))
        page.locator('[data-testid="archive-y"]').select_option("speed")
        expect(page).to_have_url(server.url + "#/archive?x=mechanisms&y=speed")
        speed = server.get_json("/api/archive?y=speed")
        expect(cells).to_have_count(len(speed["cells"]))
        elite = speed["cells"][0]["id"]
        page.locator(f'[data-testid="archive-cell"][data-node="{elite}"]').click()
        expect(page.locator(f'[data-testid="node-page"][data-node="{elite}"]')).to_be_visible(timeout=15_000)
        browser.close()
    assert not problems, problems


def _root_stored(run: Path) -> bool:
    """The root is in the tree. (The database file exists a moment before its tables do.)"""
    try:
        return (run / "archlab.db").exists() and bool(helpers.node_rows(run))
    except sqlite3.OperationalError:
        return False


def test_browser_watches_a_node_train_without_a_reload(tmp_path):
    """The page of a node being evaluated shows the sandbox's progress (stage, step, training loss)
    and it advances while the page stays loaded; once the run stops, the node reads interrupted."""
    from playwright.sync_api import expect, sync_playwright

    run = tmp_path / "run"
    grow = helpers.popen_cli(
        "run", run, "--tier", "micro", "--tier-set", "steps=20000", "--max-nodes", 1, "--threads", helpers.THREADS
    )
    server = None
    try:
        deadline = time.monotonic() + 120
        while not _root_stored(run):
            assert time.monotonic() < deadline and grow.poll() is None, "the run did not start"
            time.sleep(0.2)
        server = Server(run)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(server.url + "#/node/0")
            text = page.locator('[data-testid="progress-text"]')
            expect(text).to_contain_text("training · step", timeout=120_000)
            page.evaluate("window.notReloaded = true")
            first = text.inner_text()
            expect(text).not_to_have_text(first, timeout=30_000)
            second = text.inner_text()
            assert page.evaluate("window.notReloaded === true")
            step = lambda words: int(words.split("step ")[1].split("/")[0])  # noqa: E731
            assert step(second) > step(first) and "loss " in second and "of up to 150 s" in second, (first, second)
            expect(page.locator("#live")).to_have_attribute("title", "running: 1 node(s) evaluating")
            grow.send_signal(signal.SIGINT)
            grow.wait(timeout=60)
            expect(page.locator("#progress")).to_contain_text("interrupted", timeout=15_000)
            expect(page.locator("#run-stats")).to_contain_text("1 interrupted")
            browser.close()
    finally:
        if grow.poll() is None:
            grow.kill()
            grow.wait()
        if server:
            server.stop()


def _post(server, path: str, body: bytes, token: str | None) -> int:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request(
            "POST", path, body, {"Content-Type": "application/json", **({"X-Archlab-Token": token} if token else {})}
        )
        return conn.getresponse().status
    finally:
        conn.close()


def test_steering_from_the_page_needs_the_flag_and_its_token(served, review_run, tmp_path_factory):
    """Read-only by default (POST /api/steer does not exist); with --allow-steer, on 127.0.0.1 only,
    a steering request needs the token in the printed URL; the page's pin button records a pin,
    and the node shows it."""
    from playwright.sync_api import expect, sync_playwright

    _, readonly = served
    assert _post(readonly, "/api/steer", b'{"action": "stop"}', None) == 404  # no such route
    run = tmp_path_factory.mktemp("steer") / "run"
    helpers.copy_run(review_run, run)
    helpers.assert_user_error(helpers.cli("serve", run, "--allow-steer", "--host", "0.0.0.0"))
    server = Server(run, "--allow-steer")
    try:
        token = server.url.split("?token=", 1)[1]
        assert len(token) >= 24
        order = b'{"action": "stop"}'
        assert _post(server, "/api/steer", order, None) == 403
        assert _post(server, "/api/steer", order, token[:-1] + ("A" if token[-1] != "A" else "B")) == 403
        assert _post(server, "/api/steer", b'{"action": "pin", "node": "1; drop"}', token) == 400
        assert _post(server, "/api/steer", b'{"action": "pin", "node": 99999}', token) == 400
        assert not [t for t in helpers.table_rows(run, "traces") if t["role"] == "user"]  # nothing refused was recorded
        child = next(n for n in helpers.node_rows(run) if n["id"] != 0 and n["status"] == "done")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(server.url.split("?")[0] + f"?token=wrong-{token}#/node/{child['id']}")  # a wrong token: refused
            page.locator('[data-testid="steer-pin"]').click()
            expect(page.locator('[data-testid="steer-status"]')).to_contain_text("refused", timeout=15_000)
            assert not [t for t in helpers.table_rows(run, "traces") if t["role"] == "user"]
            page.goto(server.url + f"#/node/{child['id']}")
            page.locator('[data-testid="steer-stop"]').click()  # no `archlab run` drives this run: nothing to stop
            expect(page.locator('[data-testid="steer-status"]')).to_contain_text("nothing to stop", timeout=15_000)
            page.locator('[data-testid="steer-note-text"]').fill("try a data-dependent forget gate")
            page.locator('[data-testid="steer-note"]').click()
            expect(page.locator('[data-testid="steer-status"]')).to_contain_text("recorded", timeout=15_000)
            page.locator('[data-testid="steer-pin"]').click()
            expect(page.locator('[data-testid="steer-status"]')).to_contain_text("recorded", timeout=15_000)
            expect(page.locator('[data-testid="steer-pinned"]')).to_be_visible(timeout=15_000)
            page.goto(server.url.split("?")[0] + f"#/node/{child['id']}")  # without the token: badges, no controls
            expect(page.locator('[data-testid="steer-pinned"]')).to_be_visible(timeout=15_000)
            assert page.locator('[data-testid="steer-pin"]').count() == 0
            page.goto(server.url.split("?")[0] + "#/")  # the tree marks the pinned node too
            expect(page.locator(f'g.node[data-node="{child["id"]}"] [data-testid="tree-steer-pinned"]')).to_be_visible(
                timeout=15_000
            )
            assert page.locator('[data-testid="tree-steer-pinned"]').count() == 1
            page.goto(server.url.split("?")[0] + "#/traces?role=user")  # the note, with who sent it, in the traces
            expect(page.locator("article.trace", has_text="try a data-dependent forget gate")).to_contain_text(
                "via web", timeout=15_000
            )
            browser.close()
        steers = [t for t in helpers.table_rows(run, "traces") if t["role"] == "user"]
        by = f"{getpass.getuser()} via web"
        assert [json.loads(t["decision"]) for t in steers] == [
            {"action": "note", "node": None, "by": by},
            {"action": "pin", "node": child["id"], "by": by},
        ]
        assert steers[0]["response"] == "try a data-dependent forget gate"
    finally:
        server.stop()


TRAVERSALS = [
    "/static/../archlab.toml",
    "/static/..%2f..%2farchlab.toml",
    "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/....//....//etc/passwd",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/../../../../etc/passwd",
    "/archlab.toml",
    "/archlab.db",
    "/logs/node-0-0.log",
    "/api/node/..%2f..%2farchlab.toml",
    "/api/node/0%2f..%2f..%2farchlab.toml",
    "/api/evaluation/..%2f..%2fetc%2fpasswd/log",
    "/api/evaluation/1/log/../../../archlab.toml",
    "/api/knowledge/..%2f..%2f..%2fetc%2fpasswd",
    "/api/node/-1",
    "/api/node/99999999",
]


def test_path_traversal_and_writes_are_refused(served):
    run, server = served
    secrets = [b"root:x:0", b"SQLite format", (run / "archlab.toml").read_bytes()[:40]]
    for path in TRAVERSALS:
        status, body = server.request("GET", path)
        assert status in (400, 404), (path, status, body[:200])
        assert not any(s in body for s in secrets), (path, body[:200])

    # Log files are found through their evaluation row and must resolve inside the run:
    # a row pointing outside, or a log that is a symlink to outside, gives 404, never the file.
    (run / "logs" / "evil.log").symlink_to("/etc/passwd")
    conn = sqlite3.connect(run / "archlab.db", timeout=30)
    with conn:
        ids = []
        for log in ("../../../../../../etc/passwd", "/etc/passwd", "logs/evil.log", "logs/../../archlab.toml"):
            ids.append(
                conn.execute(
                    "insert into evaluations (node_id, tier, seed, ok, metrics, env, log, kind) "
                    "values (0, 'micro', 0, 1, '{}', '{}', ?, 'search')",
                    [log],
                ).lastrowid
            )
    conn.close()
    for evaluation in ids:
        status, body = server.request("GET", f"/api/evaluation/{evaluation}/log")
        assert status == 404, (evaluation, status, body[:200])
        assert not any(s in body for s in secrets)
    # A real log is served (so the 404s above are the guard, not a broken route).
    real = next(
        e
        for e in helpers.table_rows(run, "evaluations")
        if e["log"] and (run / e["log"]).is_file() and not (run / e["log"]).is_symlink()
    )
    status, body = server.request("GET", f"/api/evaluation/{real['id']}/log")
    assert status == 200 and body == (run / real["log"]).read_bytes()[-len(body) :]

    # Nothing in the API writes: other methods are refused and the database stays byte-identical.
    before = _fingerprint(run)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/api/node/0", "/api/tree", "/api/run", "/static/app.js"):
            status, _ = server.request(method, path)
            assert status == 405, (method, path, status)
    for path in (
        "/",
        "/api/run",
        "/api/live",
        "/api/tree",
        "/api/node/0",
        "/api/node/1/traces",
        "/api/plots",
        "/api/traces?limit=5",
        "/api/children/0",
        "/api/node/0/code",
    ):
        status, _ = server.request("GET", path)
        assert status == 200, path
    assert _fingerprint(run) == before

    # Another host name (DNS rebinding) is refused.
    status, _ = server.request("GET", "/api/run", {"Host": f"evil.example:{server.port}"})
    assert status == 400
    # The page forbids inline and foreign scripts.
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request("GET", "/")
    csp = conn.getresponse().getheader("Content-Security-Policy")
    conn.close()
    assert "script-src 'self'" in csp and "default-src 'self'" in csp


def _fingerprint(run: Path) -> tuple:
    files = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if not p.name.startswith("archlab.db-"))
    return files, hashlib.sha256((run / "archlab.db").read_bytes()).hexdigest(), helpers.db_snapshot(run)[1]


def test_busy_port_is_one_clear_error(served):
    run, server = served
    proc = helpers.cli("serve", run, "--port", server.port, timeout=60)
    line = helpers.assert_user_error(proc)
    assert f"port {server.port}" in line and "in use" in line
    # Also when something else holds the port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = helpers.assert_user_error(helpers.cli("serve", run, "--port", port, timeout=60))
        assert f"port {port}" in line
    line = helpers.assert_user_error(helpers.cli("serve", run.parent / "no-such-run", "--port", 0, timeout=60))
    assert "no such run" in line
