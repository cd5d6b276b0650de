"""Rank agreement between tiers: Spearman's rho and its bootstrap interval (archlab/agreement.py)
against hand-worked values and a plain re-implementation, the figures a run's store gives it, and
a real run promoted to a second tier whose agreement `archlab status --json`, the status table,
`archlab report` and the web UI (headless Chromium) show."""

import json
import math
import random
import re
import sys
from pathlib import Path

import pytest

from archlab import agreement
from archlab.agreement import agreement as agree
from archlab.agreement import bootstrap_interval, ranks, spearman, tier_pairs
from archlab.commands.status import tier_figures
from archlab.sandbox.runner import Result
from archlab.tree.store import Store

sys.path.insert(0, str(Path(__file__).parent))
import helpers  # noqa: E402


def plain_spearman(xs, ys):
    """Textbook Spearman: Pearson's correlation of average ranks, one pair at a time."""

    def avg_ranks(v):
        return [sum(1 for w in v if w < x) + (sum(1 for w in v if w == x) + 1) / 2 for x in v]

    rx, ry = avg_ranks(xs), avg_ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else None


# -- the statistics -----------------------------------------------------------------------------------
def test_spearman_perfect_reversed_ties_and_a_textbook_example():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert spearman([1, 2, 3, 4], [0.4, 0.3, 0.2, 0.1]) == -1.0
    assert ranks([3, 1, 3]) == [2.5, 1.0, 2.5] and ranks([5, 5, 5, 1]) == [3.0, 3.0, 3.0, 1.0]
    # ties share their average rank: x ranks [1, 2.5, 2.5, 4], y ranks [1, 3, 2, 4] -> 4.5 / sqrt(4.5 * 5)
    assert math.isclose(spearman([1, 2, 2, 3], [1, 3, 2, 4]), 3 / math.sqrt(10))
    # Wikipedia's worked example (IQ against hours of TV): rho = -29/165
    iq = [106, 100, 86, 101, 99, 103, 97, 113, 112, 110]
    tv = [7, 27, 2, 50, 28, 29, 20, 12, 6, 17]
    assert math.isclose(spearman(iq, tv), -29 / 165)
    assert spearman([1, 1, 1], [1, 2, 3]) is None, "no ranking on one side: no rho"
    assert spearman([1], [2]) is None
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        spearman([1, float("nan")], [1, 2])


def test_spearman_matches_a_plain_implementation_and_scipy_on_tied_data():
    rng = random.Random(7)
    try:
        from scipy.stats import spearmanr
    except ImportError:  # not a dependency of archlab: the plain implementation is the reference then
        spearmanr = None
    for _ in range(200):
        n = rng.randint(2, 12)
        xs = [rng.randint(0, 4) for _ in range(n)]  # many ties
        ys = [rng.randint(0, 4) for _ in range(n)]
        expected = plain_spearman(xs, ys)
        got = spearman(xs, ys)
        assert (got is None) == (expected is None), (xs, ys)
        if expected is not None:
            assert math.isclose(got, expected, abs_tol=1e-12), (xs, ys)
            if spearmanr is not None:
                assert math.isclose(got, spearmanr(xs, ys).statistic, abs_tol=1e-9)


def test_bootstrap_interval_is_seeded_contains_rho_and_narrows_with_more_agreeing_nodes():
    rng = random.Random(3)

    def agreeing(n):
        xs = [rng.gauss(0, 1) for _ in range(n)]
        return xs, [x + rng.gauss(0, 0.5) for x in xs]

    xs, ys = agreeing(10)
    rho = spearman(xs, ys)
    low, high = bootstrap_interval(xs, ys, 2000, seed=1)
    assert low <= rho <= high and -1 <= low < high <= 1
    assert bootstrap_interval(xs, ys, 2000, seed=1) == (low, high), "the same seed gives the same interval"
    assert bootstrap_interval(xs, ys, 2000, seed=2) != (low, high)
    many = agreeing(200)
    wide, narrow = high - low, bootstrap_interval(*many, 2000, seed=1)
    assert narrow[1] - narrow[0] < wide / 2, (wide, narrow)
    # two pairs: half the draws repeat one pair (constant ranks, skipped), the others agree perfectly
    assert bootstrap_interval([1, 2], [5, 6], 500, seed=0) == (1.0, 1.0)
    assert bootstrap_interval([1, 1], [5, 6], 500, seed=0) is None


def test_verdicts_and_tier_pairs():
    assert agree([1, 2, 3, 4], [1, 2, 3, 4])["verdict"] == "too few nodes" and agreement.MIN_NODES == 5
    a = agree([1, 2, 3, 4], [1, 2, 3, 4])
    assert (a["n"], a["rho"], a["low"]) == (4, 1.0, None)
    assert "4 evaluated at both, 5 needed" in agreement.sentence(a, "micro", "smoke")
    good = agree(range(9), [0, 2, 1, 3, 5, 4, 6, 8, 7])
    assert good["verdict"] == "agree" and good["low"] > 0 and good["n"] == 9
    assert agreement.sentence(good, "search", "verify") == (
        f"the search tier ranks nodes like the verify tier: rho {good['rho']:.2f} [{good['low']:.2f}, {good['high']:.2f}] over 9 nodes"
    )
    assert agree(range(9), [8, 6, 7, 5, 3, 4, 2, 0, 1])["verdict"] == "disagree"
    assert agree(range(6), [2, 0, 5, 1, 4, 3])["verdict"] == "unclear"
    assert agree(range(6), [1] * 6)["verdict"] == "no ranking"

    figures = {
        "micro": {0: 0.0, 1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.5, 9: 1.0},
        "smoke": {0: 0.0, 1: 0.2, 2: 0.1, 3: 0.3, 4: 0.5, 5: 0.4},
        "verify": {0: 0.0, 5: 0.3},
        "explore": {7: 1.0},
    }
    pairs = tier_pairs(figures, ["micro", "smoke", "explore", "verify"])
    assert [(p["cheap"], p["dear"], p["n"]) for p in pairs] == [
        ("micro", "smoke", 6),
        ("micro", "verify", 2),
        ("smoke", "verify", 2),
    ]
    assert math.isclose(pairs[0]["rho"], plain_spearman([0, 0.1, 0.2, 0.3, 0.4, 0.5], [0, 0.2, 0.1, 0.3, 0.5, 0.4]))


# -- a run's figures --------------------------------------------------------------------------------
def _metrics(val_loss, tokens_per_s=1000.0):
    return {"val_loss": val_loss, "tokens_per_s": tokens_per_s, "mixer_params": 1000, "wall_s": 1.0}


def test_figures_from_the_store_rank_fitness_per_tier_like_promotion(tmp_path):
    from archlab.sandbox.averaging import average
    from archlab.search.fitness import fitness

    store = Store(tmp_path, create=True)
    for node_id in range(5):
        store.add_node(id=node_id, parent_id=None if node_id == 0 else 0, status="done")
    ok = lambda loss, tps=1000.0: Result(ok=True, metrics=_metrics(loss, tps))  # noqa: E731
    for node_id, loss in enumerate([4.0, 3.9, 4.1, 3.8, 3.95]):
        store.add_evaluation(node_id, "micro", 0, ok(loss), None, kind="search")
    # the root and nodes 1-3 again at smoke, as a replay does (two seeds); node 4 only at micro
    for node_id, losses in {0: (3.5, 3.7), 1: (3.45, 3.5), 2: (3.3, 3.4), 3: (3.6, 3.6)}.items():
        for seed, loss in enumerate(losses):
            store.add_evaluation(
                node_id, "smoke", seed, ok(loss, 800.0 if node_id == 2 else 1000.0), None, kind="replay"
            )
    store.add_evaluation(3, "smoke", 0, ok(3.2), None, kind="replay")  # a later row of the same seed replaces the first
    store.add_evaluation(1, "smoke", 2, Result(ok=False, reason="timeout"), None, kind="replay")  # failures never count
    store.add_evaluation(4, "micro", 1, ok(3.0), None, kind="replay")  # a second micro seed: still one tier

    rows = store.multi_tier_evaluations()
    assert {r["node_id"] for r in rows} == {0, 1, 2, 3}
    figures = tier_figures(rows, speed_weight=0.05)
    root_smoke = average([_metrics(3.5), _metrics(3.7)])
    assert figures["micro"] == {0: 0.0, 1: pytest.approx(0.1), 2: pytest.approx(-0.1), 3: pytest.approx(0.2)}
    assert figures["smoke"][0] == 0.0
    assert figures["smoke"][2] == pytest.approx(
        fitness(average([_metrics(3.3, 800.0), _metrics(3.4, 800.0)]), root_smoke, 0.05)
    )
    assert figures["smoke"][3] == pytest.approx(fitness(average([_metrics(3.2), _metrics(3.6)]), root_smoke, 0.05))
    assert figures["smoke"][1] == pytest.approx(0.125)

    # no root at a tier: nothing to measure fitness against there
    (tmp_path / "lone").mkdir()
    lone = Store(tmp_path / "lone", create=True)
    for node_id in (1, 2):
        lone.add_evaluation(node_id, "micro", 0, ok(4.0 - node_id / 10), None)
        lone.add_evaluation(node_id, "smoke", 0, ok(3.0 - node_id / 10), None, kind="replay")
    assert set(tier_figures(lone.multi_tier_evaluations(), 0.05)) == set()


# -- a real run at two tiers --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def promoted_run(tmp_path_factory) -> Path:
    """6 micro-tier nodes, every one promoted to a smoke tier of micro's size (one seed each)."""
    run = tmp_path_factory.mktemp("agreement") / "run"
    assert helpers.PROMOTE[:6] == ["--promote", "0.5", "--promote-tier", "smoke", "--promote-seeds", "2"]
    promote = ["--promote", "1.0", "--promote-tier", "smoke", "--promote-seeds", "1", *helpers.PROMOTE[6:]]
    proc = helpers.cli(
        "run",
        run,
        "--tier",
        "micro",
        "--max-nodes",
        6,
        "--workers",
        2,
        "--threads",
        helpers.THREADS,
        *promote,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run


def _expected(run: Path) -> tuple[int, float]:
    """n and rho straight from the nodes table: the search figure (search_fitness) against the
    promoted one (fitness at the smoke tier), for the nodes promoted without a failure."""
    nodes = [n for n in helpers.node_rows(run) if n["status"] == "done" and n["tier"] == "smoke"]
    return len(nodes), plain_spearman([n["search_fitness"] for n in nodes], [n["fitness"] for n in nodes])


@pytest.mark.timeout(600)
@pytest.mark.e2e
def test_status_report_and_table_show_the_agreement_of_a_promoted_run(promoted_run, tmp_path):
    n, rho = _expected(promoted_run)
    assert n >= agreement.MIN_NODES, helpers.node_rows(promoted_run)
    proc = helpers.cli("status", promoted_run, "--json")
    assert proc.returncode == 0, proc.stderr
    pairs = json.loads(proc.stdout)["tier_agreement"]
    assert len(pairs) == 1
    a = pairs[0]
    assert (a["cheap"], a["dear"], a["n"], a["metric"]) == ("micro", "smoke", n, "fitness")
    assert math.isclose(a["rho"], rho, abs_tol=1e-9), (a, rho)
    assert a["low"] <= a["rho"] <= a["high"] and a["verdict"] in ("agree", "unclear", "disagree")
    assert a["sentence"].endswith(f"rho {a['rho']:.2f} [{a['low']:.2f}, {a['high']:.2f}] over {n} nodes")

    table = helpers.cli("status", promoted_run)
    assert table.returncode == 0, table.stderr
    flat = " ".join(re.sub(r"[│┃|]", " ", table.stdout).split())
    assert f"micro vs smoke {a['sentence']}" in flat, table.stdout

    out = tmp_path / "report.md"
    for path in (tmp_path / "report.html", out):
        proc = helpers.cli("report", promoted_run, "--out", path)
        assert proc.returncode == 0, proc.stderr
    assert a["sentence"] in (tmp_path / "report.html").read_text() and a["sentence"] in out.read_text()
    assert "micro vs smoke ranking" in out.read_text()


def test_a_run_at_one_tier_has_no_agreement(micro_run):
    proc = helpers.cli("status", micro_run, "--json")
    assert json.loads(proc.stdout)["tier_agreement"] == []
    assert " vs " not in helpers.cli("status", micro_run).stdout


@pytest.mark.timeout(600)
@pytest.mark.browser
def test_web_ui_shows_the_agreement_in_the_header_and_on_the_plots_page(promoted_run, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from helpers import CHROMIUM, CHROMIUM_ARGS, Server

    run = tmp_path / "run"
    helpers.copy_run(promoted_run, run)
    server = Server(run)
    problems = []
    try:
        a = server.get_json("/api/run")["tier_agreement"][0]
        n, rho = _expected(run)
        assert a["n"] == n and math.isclose(a["rho"], rho, abs_tol=1e-9)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.goto(server.url)
            tag = page.locator('#run-stats [data-testid="tier-agreement"]')
            expect(tag).to_have_text(
                f"micro→smoke ρ {a['rho']:.2f} [{a['low']:.2f}, {a['high']:.2f}] · {n} nodes", timeout=30_000
            )
            assert tag.get_attribute("title") == a["sentence"]
            page.locator('nav a[data-nav="plots"]').click()
            note = page.locator('[data-testid="tier-agreement-note"]')
            expect(note).to_contain_text(a["sentence"], timeout=15_000)
            expect(note).to_contain_text("95% bootstrap interval over nodes")
            browser.close()
    finally:
        server.stop()
    assert not problems, problems
