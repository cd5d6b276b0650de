"""Loss curves (issue 21): stored with every evaluation of a real micro run, a failed one's as far
as training got; and in the web UI (headless Chromium against `archlab serve`): the node page's
curve, an overlay of the nodes ticked in the leaderboard, the comparison of two, the leaderboard
sorted by a clicked column and filtered by typed text, and a failed node's link to its whole log."""

import json
import math
import re
import sqlite3
from pathlib import Path

import pytest

import helpers
from archlab.sandbox.curves import VAL_WINDOWS, val_steps
from archlab.sandbox.tiers import TIERS
from archlab.tree.store import Store
from archlab.web.data import RunView
from helpers import CHROMIUM, CHROMIUM_ARGS, Server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # the module's fixtures: runs

MICRO = TIERS["micro"]

# A root that trains normally for ten steps, then diverges (its eleventh training batch gives NaN).
DIVERGING = helpers.mixer(
    """
    y = self.proj(x)
    if self.training and x.shape[0] == 8:  # a training batch of the micro tier (the checks use 2 or 3 rows)
        CALLS[0] += 1
        if CALLS[0] > 2 * 10:  # two blocks a step
            return y * float("nan")
    return y
    """,
    top="CALLS = [0]\n",
)


@pytest.fixture(scope="module")
def trained(review_run, tmp_path_factory) -> Path:
    """A copy of the session's 3-node micro run (the web test writes nothing to it)."""
    run = tmp_path_factory.mktemp("curves") / "run"
    helpers.copy_run(review_run, run)
    return run


@pytest.fixture(scope="module")
def diverged(tmp_path_factory) -> Path:
    """A run whose root failed in training (nan): a failed node with a log and half a curve."""
    folder = tmp_path_factory.mktemp("diverged")
    (folder / "root.py").write_text(DIVERGING)
    run = folder / "run"
    proc = helpers.cli(
        "run",
        run,
        "--root",
        folder / "root.py",
        "--tier",
        "micro",
        "--max-nodes",
        1,
        "--threads",
        helpers.THREADS,
        timeout=300,
    )
    assert proc.returncode != 0 and "rejected (nan)" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return run


def _evaluations(run: Path) -> list[dict]:
    rows = helpers.table_rows(run, "evaluations")
    for r in rows:
        r["metrics"], r["curves"] = json.loads(r["metrics"]), json.loads(r["curves"]) if r["curves"] else None
    return rows


def test_every_evaluation_of_a_micro_run_stores_its_loss_curves(trained):
    evaluations = [e for e in _evaluations(trained) if e["ok"]]
    assert len(evaluations) >= 2
    for e in evaluations:
        [curve] = e["curves"]
        assert curve["seed"] == e["seed"] and curve["steps"] == MICRO.steps
        # The training loss of every step, the last one the train_loss metric.
        assert [x for x, _ in curve["train"]] == list(range(1, MICRO.steps + 1))
        assert all(math.isfinite(y) and 0 < y < 10 for _, y in curve["train"])
        assert curve["train"][-1][1] == pytest.approx(e["metrics"]["train_loss"], abs=1e-5)
        # Validation points at evenly spaced steps, the earlier display-only, the last the scored logits:
        # at micro VAL_WINDOWS covers every validation window, so the last point is val_loss itself.
        steps = val_steps(MICRO.steps, MICRO.val_points)
        assert [x for x, _, _ in curve["val"]] == [*steps, MICRO.steps] and len(steps) == MICRO.val_points
        assert [checked for _, _, checked in curve["val"]] == [False] * len(steps) + [True]
        assert curve["val_windows"] == min(VAL_WINDOWS, MICRO.val_windows)
        assert curve["val"][-1][1] == pytest.approx(e["metrics"]["val_loss"], abs=1e-5)
        assert curve["val"][0][1] > curve["val"][-1][1], "the model learns: validation loss falls"
        assert 0 <= curve["val_cost_s"] < e["metrics"]["wall_s"]


def test_a_failed_evaluation_keeps_its_curve_up_to_the_divergence(diverged):
    [e] = _evaluations(diverged)
    assert not e["ok"] and e["reason"] == "nan"
    step = int(re.search(r"at step (\d+)", e["detail"]).group(1))
    [curve] = e["curves"]
    assert [x for x, _ in curve["train"]] == list(range(1, step + 1)), "every step before the NaN, none after"
    assert curve["val"] == [], "no validation: the evaluation never reached scoring"


def test_older_stores_read_without_curves_and_gain_the_column(trained, tmp_path):
    old = tmp_path / "old"
    helpers.copy_run(trained, old)
    conn = sqlite3.connect(old / "archlab.db")
    conn.execute("alter table evaluations drop column curves")
    conn.commit()
    conn.close()
    view = RunView(old)  # read-only, as `archlab serve` opens another archlab's run
    assert all(e["curves"] is None for e in view.node(0)["evaluations"])
    assert view.curves([0])["nodes"][0]["main"] is None
    view.close()
    Store(old, create=True).close()  # a newer archlab resuming the run adds what it needs
    assert "curves" in [r[1] for r in sqlite3.connect(old / "archlab.db").execute("pragma table_info(evaluations)")]


def test_the_new_api_routes_refuse_bad_requests(trained):
    server = Server(trained)
    try:
        for path, status in (
            ("/api/leaderboard?sort=motivation", 400),
            ("/api/leaderboard?order=sideways", 400),
            ("/api/leaderboard?limit=x", 400),
            ("/api/curves?nodes=0,x", 400),
            ("/api/compare/0/999", 404),
            ("/api/evaluation/999", 404),
            ("/api/evaluation/999/log?full=1", 404),
        ):
            got, body = server.request("GET", path)
            assert got == status, (path, got, body[:200])
        board = server.get_json("/api/leaderboard?sort=val_loss&order=asc")
        losses = [r["val_loss"] for r in board["rows"]]
        assert losses == sorted(losses) and board["total"] == len(helpers.node_rows(trained))
    finally:
        server.stop()


def test_browser_curves_overlay_compare_leaderboard_and_failed_log(trained, diverged, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    nodes = helpers.node_rows(trained)
    ids = [n["id"] for n in nodes]
    problems = []
    server, failed_server = Server(trained), Server(diverged)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

            # The node page plots its curves: a training line and the validation points.
            page.goto(f"{server.url}#/node/{ids[1]}")
            chart = page.locator('[data-testid="node-curves"]')
            expect(chart.locator('path[data-curve="train"]')).to_have_count(1, timeout=15_000)
            expect(chart.locator('path[data-curve="val"]')).to_have_count(1)
            expect(chart.locator("circle")).to_have_count(MICRO.val_points + 1)
            expect(chart).to_contain_text("never scored")
            page.screenshot(path=str(tmp_path / "node-curves.png"), full_page=True)

            # The leaderboard sorts by a clicked column (again: the other way) ...
            page.goto(f"{server.url}#/leaderboard")
            rows = page.locator('[data-testid="leaderboard"] tbody tr')
            expect(rows).to_have_count(len(nodes), timeout=15_000)
            by_loss = [n["id"] for n in sorted(nodes, key=lambda n: (n["val_loss"], n["id"]))]
            shown = lambda: [int(r.get_attribute("data-node")) for r in rows.all()]  # noqa: E731
            page.locator('th[data-sort="val_loss"]').click()
            expect(page.locator('th[data-sort="val_loss"]')).to_have_attribute("aria-sort", "ascending")
            expect(rows.first).to_have_attribute("data-node", str(by_loss[0]))
            assert shown() == by_loss
            page.locator('th[data-sort="val_loss"]').click()
            expect(page.locator('th[data-sort="val_loss"]')).to_have_attribute("aria-sort", "descending")
            expect(rows.first).to_have_attribute("data-node", str(by_loss[-1]))
            assert shown() == by_loss[::-1]
            # ... and filters by typed text (the words of a child's operator).
            child = next(n for n in nodes if n["parent_id"] is not None)
            word = child["operator"]
            matching = [
                n["id"]
                for n in nodes
                if any(word.lower() in (n[k] or "").lower() for k in ("operator", "status", "reason", "motivation"))
            ]
            assert 0 < len(matching) < len(nodes)
            page.locator('[data-testid="leaderboard-filter"]').fill(word)
            expect(rows).to_have_count(len(matching))
            assert sorted(shown()) == sorted(matching)
            expect(page.locator('[data-testid="leaderboard-count"]')).to_contain_text(f"{len(matching)} node")
            page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
            page.locator('[data-testid="leaderboard-filter"]').fill("")
            expect(rows).to_have_count(len(nodes))

            # Tick every node: the overlay draws one training line per node, in the order ticked.
            for node_id in ids:
                page.locator(f'tr[data-node="{node_id}"] input[type="checkbox"]').check()
            page.locator('[data-testid="overlay-selected"]').click()
            overlay = page.locator('[data-testid="overlay"]')
            expect(overlay.locator('path[data-curve="train"]')).to_have_count(len(ids), timeout=15_000)
            lines = overlay.locator('path[data-curve="train"]')
            assert [int(lines.nth(i).get_attribute("data-node")) for i in range(len(ids))] == ids
            assert len({lines.nth(i).get_attribute("stroke") for i in range(len(ids))}) == len(ids), "a colour per node"
            page.screenshot(path=str(tmp_path / "overlay.png"), full_page=True)

            # Two ticked: compare them, code diff and metrics side by side.
            page.goto(f"{server.url}#/leaderboard")
            for node_id in ids[2:]:
                page.locator(f'tr[data-node="{node_id}"] input[type="checkbox"]').uncheck()
            page.locator('[data-testid="compare-selected"]').click()
            compare = page.locator('[data-testid="compare"]')
            expect(compare).to_be_visible(timeout=15_000)
            a, b = (next(n for n in nodes if n["id"] == i) for i in ids[:2])
            expect(page.locator('[data-testid="compare-a"]')).to_contain_text(f"Node {a['id']}")
            expect(page.locator('[data-testid="compare-b"]')).to_contain_text(f"Node {b['id']}")
            assert page.locator('[data-testid="compare-diff"]').locator("tr.add, tr.del").count() > 0
            loss_row = page.locator(
                '[data-testid="compare-metrics"] tr', has=page.locator("th", has_text="val_loss")
            ).first
            expect(loss_row).to_contain_text(f"{a['val_loss']:.4f}")
            expect(loss_row).to_contain_text(f"{b['val_loss']:.4f}")
            expect(page.locator('[data-testid="compare-curves"] path[data-curve="train"]')).to_have_count(2)
            page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)

            # A failed node links to its whole sandbox log; following the link shows it.
            [e] = _evaluations(diverged)
            page.goto(f"{failed_server.url}#/node/0")
            expect(page.locator('[data-testid="node-curves"] path[data-curve="train"]')).to_have_count(
                1, timeout=15_000
            )
            page.locator('[data-testid="full-log-link"]').click()
            log = page.locator('[data-testid="full-log"]')
            expect(log).to_contain_text("[sandbox] rejected: nan", timeout=15_000)
            assert log.inner_text().strip() == (diverged / e["log"]).read_text().strip()
            assert page.url.endswith(f"#/log/{e['id']}")
            page.screenshot(path=str(tmp_path / "log.png"), full_page=True)
            browser.close()
    finally:
        server.stop()
        failed_server.stop()
    assert not problems, problems


def test_a_fork_keeps_the_curves_of_the_node_it_starts_from(trained, tmp_path):
    child = next(n for n in helpers.node_rows(trained) if n["parent_id"] is not None and n["status"] == "done")
    proc = helpers.cli("fork", trained, child["id"], tmp_path / "fork", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    source = [e["curves"] for e in _evaluations(trained) if e["node_id"] == child["id"]]
    copied = [e["curves"] for e in _evaluations(tmp_path / "fork") if e["node_id"] == 0]
    assert source and copied == source
