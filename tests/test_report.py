"""`archlab report`: one self-contained HTML file (or Markdown + SVG files) for a real micro-tier run."""

import html
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

import helpers
from archlab.search import archive

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # the module's fixture: a run (600 s bound)

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished 4-node micro-tier run with at least one trained child. Only reports are written into it."""
    run = tmp_path_factory.mktemp("report") / "run"
    proc = helpers.cli("run", run, "--tier", "micro", "--max-nodes", 4, "--threads", helpers.THREADS, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any(n["parent_id"] is not None and n["status"] == "done" for n in helpers.node_rows(run))
    return run


class Page(HTMLParser):
    """Checks that every element is closed in order, and collects tags and attribute values."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack, self.tags, self.attrs, self.problems = [], [], [], []
        self.feed(text)
        self.close()
        self.problems += [f"<{t}> never closed" for t in self.stack]

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [v or "" for _, v in attrs]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [v or "" for _, v in attrs]

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _report(*args) -> str:
    proc = helpers.cli("report", *args, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _self_contained(text: str) -> Page:
    page = Page(text)
    assert not page.problems, page.problems[:5]
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(page.tags)
    assert not [v for v in page.attrs if "http://" in v or "https://" in v or v.startswith("//")]
    assert "url(" not in text and "@import" not in text
    return page


def test_html_report_has_summary_plots_and_the_top_nodes(run):
    out = _report(run)
    path = run / "report.html"
    assert str(path) in out.replace("\n", "")
    text = path.read_text(encoding="utf-8")
    page = _self_contained(text)
    assert page.tags.count("svg") >= 5  # best over time, over evaluations, Pareto, discovery, spend
    for title in (
        "Best-so-far fitness over time",
        "Best-so-far fitness over evaluations",
        "Pareto front",
        "Nodes that beat the root vs compute spent",
        "Spend over time",
    ):
        assert title in text
    nodes = helpers.node_rows(run)
    done = sorted(
        (n for n in nodes if n["parent_id"] is not None and n["status"] == "done"),
        key=lambda n: (-n["fitness"], n["id"]),
    )
    assert f"<td>nodes</td><td>{len(nodes)} (" in text
    assert f"<td>beat the root</td><td>{sum(n['status'] == 'done' and n['fitness'] > 0 for n in nodes)}</td>" in text
    # The top nodes, best first, each with its motivation, metrics, highlighted diff and analysis.
    positions = [text.index(f"id='node-{n['id']}'") for n in done]
    assert positions == sorted(positions)
    for n in done:
        section = text[text.index(f"id='node-{n['id']}'") :]
        section = section[: section.index("</section>")]
        assert html.escape(n["motivation"]) in section and html.escape(n["analysis"]) in section
        assert "<td>val_loss</td>" in section and "vs root" in section
        assert "class='diff hl'" in section or "identical to the parent" in section
        assert '<span class="k">' in section or '<span class="kn">' in section  # Pygments colours

    # --top limits the nodes shown in full.
    _report(run, "--top", 1, "--out", run / "top1.html")
    one = (run / "top1.html").read_text(encoding="utf-8")
    assert one.count("<section class='node'") == 1 and f"id='node-{done[0]['id']}'" in one


def test_markdown_report_writes_svg_files_beside_it(run, tmp_path):
    out = tmp_path / "sub" / "r.md"
    _report(run, "--format", "md", "--out", out)
    text = out.read_text(encoding="utf-8")
    plots = sorted(tmp_path.glob("sub/r-plot*.svg"))
    assert len(plots) >= 5
    for plot in plots:
        assert f"]({plot.name})" in text
        assert ET.parse(plot).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    assert "```diff" in text and "## Top" in text and "| val_loss |" in text
    best = max(
        (n for n in helpers.node_rows(run) if n["parent_id"] is not None and n["status"] == "done"),
        key=lambda n: n["fitness"],
    )
    assert f"### #1 node {best['id']}:" in text and best["analysis"] in text


def test_report_shows_the_quality_diversity_archive(run, tmp_path):
    """The archive's grid (mechanisms x mixer share at micro): every elite in its cell with its
    fitness, linked to its section when it is one of the report's nodes; the same in Markdown."""
    done = [n for n in helpers.node_rows(run) if n["status"] == "done"]
    cells = {n["cell"] for n in done}
    assert "" not in cells  # every finished node was placed when it was recorded
    elites = {}
    for n in sorted(done, key=lambda n: (-n["fitness"], n["id"])):
        at = (int(n["cell"].split(";")[0].split("=")[1]), int(n["cell"].split(";")[2].split("=")[1]))
        elites.setdefault(at, n)  # the grid shows the best elite of the cells with the same mechanisms and share
    _report(run, "--out", tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    grid = text[text.index("<h2 id='archive'>") : text.index("<h2 id='top'>")]
    assert f"{len(cells)} of 1600 cells occupied" in grid
    assert grid.count("<td style='background:") == len(elites)
    top = {n["id"] for n in done if n["parent_id"] is not None}
    for n in elites.values():
        assert f"#{n['id']}<br>{n['fitness']:+.3f}" in grid
        assert (f"<a href='#node-{n['id']}'>" in grid) == (n["id"] in top)
    _report(run, "--format", "md", "--out", tmp_path / "r.md")
    md = (tmp_path / "r.md").read_text(encoding="utf-8")
    section = md[md.index("## Quality-diversity archive") : md.index("## Top")]
    held = sorted({x for x, _ in elites})  # along the mechanisms only the sets some node has
    assert "| | " + " | ".join(archive.MECHANISM_LABELS[i] for i in held) + " |" in section
    for n in elites.values():
        assert f"#{n['id']} {n['fitness']:+.3f}" in section


def test_report_of_a_run_without_finished_children(micro_run, tmp_path):
    """The shared run whose children all fail (parameter budget): summary and plots, no top nodes."""
    out = tmp_path / "r.html"
    _report(micro_run, "--out", out)
    text = out.read_text(encoding="utf-8")
    page = _self_contained(text)
    assert page.tags.count("svg") >= 5
    assert "No node other than the root has finished yet." in text
    assert "<td>failed</td><td>4 (params: 4)</td>" in text
    assert not (micro_run / "report.html").exists()


def test_bad_arguments_are_one_line_errors(run, tmp_path):
    assert "no such run directory" in helpers.assert_user_error(helpers.cli("report", tmp_path / "missing"))
    assert "not an archlab run" in helpers.assert_user_error(helpers.cli("report", tmp_path))
    assert "--format" in helpers.assert_user_error(
        helpers.cli("report", run, "--format", "pdf", "--out", tmp_path / "r.pdf")
    )
    assert not (tmp_path / "r.pdf").exists()
