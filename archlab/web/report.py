"""`archlab report`: a run as one self-contained file, for reading offline and sharing.

HTML (the default) is one file with inline CSS and inline SVG plots drawn here in Python:
no script, nothing fetched. Markdown is FILE.md with its plots beside it as FILE-plotN.svg.
Every figure comes from the web UI's read-only RunView (archlab/web/data.py): the same plot
data, node pages and highlighted diffs as `archlab serve`, so the report and the UI agree.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path

from archlab import text
from archlab.commands.status import metric_direction, spend
from archlab.errors import UserError
from archlab.tree.outputs import check_out
from archlab.web.data import RunView
from archlab.web.highlight import stylesheet

FORMATS = ("html", "md")
GREY, GREEN, ORANGE, BLUE, PURPLE = "#9aa5b1", "#1a9850", "#d95f02", "#2b7bb9", "#7570b3"
RED = "#d73027"


@dataclass
class Plot:
    title: str
    svg: str  # for inline use in HTML (no xmlns)

    def standalone(self) -> str:
        """The SVG as a file of its own (which needs its XML namespace)."""
        return self.svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)


def write_report(run_dir: Path, out: Path | None = None, top: int = 5, fmt: str | None = None) -> dict:
    """Write the report of `run_dir`; returns {path, format, plots (files for md), nodes (top ids)}."""
    if fmt is None:
        fmt = "md" if out is not None and out.suffix.lower() == ".md" else "html"
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose html or md")
    out = Path(out) if out is not None else Path(run_dir) / f"report.{fmt}"
    check_out(Path(run_dir), out, "--out ", (".html", ".md", ".svg"), f"report.{fmt}")
    view = RunView(run_dir)
    try:
        facts = _facts(view, max(0, top))
    finally:
        view.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    files = []
    if fmt == "html":
        out.write_text(_html(facts), encoding="utf-8")
    else:
        base = out.with_suffix("") if out.suffix.lower() == ".md" else out
        for n, plot in enumerate(facts["plots"], start=1):
            path = base.with_name(f"{base.name}-plot{n}.svg")
            path.write_text(plot.standalone(), encoding="utf-8")
            files.append(path)
        out.write_text(_markdown(facts, [p.name for p in files]), encoding="utf-8")
    return {
        "path": str(out),
        "format": fmt,
        "plots": [str(p) for p in files],
        "nodes": [n["id"] for n in facts["nodes"]],
    }


# Inside the run directory a report may only replace an earlier report: `--out RUN/archlab.db` once
# overwrote the run's database. Archlab's own folders are off limits even for new files.
# -- the facts --------------------------------------------------------------------------------------
def _facts(view: RunView, top: int) -> dict:
    info = view.run_info()
    plots = view.plots()
    nodes = []
    for node_id in view.store.leaderboard_ids(top, children_only=True):
        node = view.node(node_id)
        code = view.code(node_id)["code"] or ""
        parent_code = view.code(node["parent_id"])["code"] if node["parent"] else None
        nodes.append(node | {"unified_diff": _unified(parent_code, code)})
    llm = plots["spend"][-1] if plots["spend"] else {"cost": 0.0, "tokens": 0}
    return {
        "info": info,
        "spend": spend(view.store, view.config),
        "llm": llm,
        "nodes": nodes,
        "plots": _plots(plots),
        "archive": view.archive(),
        "generated": time.time(),
    }


def _unified(old: str | None, new: str) -> str:
    if old is None:
        return new
    return text.unified(old, new)


# -- plots: the web UI's series (static/app.js showPlots), drawn as SVG ---------------------------------
def _plots(p: dict) -> list[Plot]:
    def best(points: list[dict], title: str, x_label: str, time_axis: bool) -> Plot:
        return chart(
            title,
            x_label,
            "fitness",
            [
                {
                    "label": "every node",
                    "colour": GREY,
                    "type": "scatter",
                    "r": 2.5,
                    "points": [
                        {"x": q["x"], "y": q["fitness"], "id": q["id"]} for q in points if q["fitness"] is not None
                    ],
                },
                {
                    "label": "best so far",
                    "colour": GREEN,
                    "type": "step",
                    "extend": True,
                    "points": [{"x": q["x"], "y": q["best"], "id": q["id"]} for q in points],
                },
                {
                    "label": "improvements",
                    "colour": GREEN,
                    "type": "scatter",
                    "r": 4.5,
                    "points": [
                        {
                            "x": q["x"],
                            "y": q["best"],
                            "id": q["id"],
                            "tip": f"node {q['id']}: new best {q['best']:+.4f}",
                        }
                        for q in points
                        if q["improved"]
                    ],
                },
            ],
            time_axis=time_axis,
        )

    plots = [
        best(p["best_over_time"], "Best-so-far fitness over time", "run time", True),
        best(p["best_over_evaluations"], "Best-so-far fitness over evaluations", "evaluations", False),
    ]
    for axis in p["pareto"]:
        plots.append(
            chart(
                f"Pareto front: validation loss vs {axis['label']}",
                axis["label"],
                "val_loss (nats/byte)",
                [
                    {"label": "nodes", "colour": GREY, "type": "scatter", "r": 3, "points": axis["points"]},
                    {
                        "label": "Pareto front",
                        "colour": ORANGE,
                        "type": "line",
                        "markers": True,
                        "r": 4.5,
                        "points": axis["front"],
                    },
                    {
                        "label": "root",
                        "colour": BLUE,
                        "type": "scatter",
                        "r": 5,
                        "points": [q for q in axis["points"] if q["id"] == 0],
                    },
                ],
                note="lower-right is better" if axis["higher_is_better"] else "lower-left is better",
            )
        )
    plots.append(
        chart(
            "Nodes that beat the root vs compute spent",
            "evaluation compute (hours)",
            "nodes with fitness > 0",
            [
                {
                    "label": "beat the root",
                    "colour": PURPLE,
                    "type": "step",
                    "markers": True,
                    "r": 2.5,
                    "points": p["discovery"],
                }
            ],
            y_integer=True,
            note="the discovery-scaling curve (ASI-Arch)",
        )
    )
    series = [{"label": "evaluation compute (hours)", "colour": BLUE, "type": "line", "points": p["compute"]}]
    if p["spend"]:
        series.append(
            {
                "label": "LLM cost ($)",
                "colour": ORANGE,
                "type": "line",
                "points": [{"x": q["x"], "y": q["cost"]} for q in p["spend"]],
            }
        )
    plots.append(
        chart(
            "Spend over time",
            "run time",
            "hours / $" if p["spend"] else "compute hours",
            series,
            time_axis=True,
            note=None if p["spend"] else "no LLM spend (the offline brain makes no paid calls)",
        )
    )
    return plots


W, H = 600, 360
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 30, 70


def chart(
    title: str,
    x_label: str,
    y_label: str,
    series: list[dict],
    time_axis: bool = False,
    y_integer: bool = False,
    note: str | None = None,
) -> Plot:
    """A line/step/scatter chart as one standalone SVG: title, axes with nice ticks, legend, a tooltip per point."""
    e = text.html_text
    out = [
        f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{e(title)}" font-family="system-ui, sans-serif" font-size="11">',
        f'<rect width="{W}" height="{H}" fill="#fff"/>',
        f'<text x="{LEFT}" y="18" font-size="14" font-weight="600" fill="#1f2328">{e(title)}</text>',
    ]
    series = [s | {"points": [q for q in s["points"] if _finite(q.get("x")) and _finite(q.get("y"))]} for s in series]
    every = [q for s in series for q in s["points"]]
    if not every:
        out.append(
            f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#6b7280" font-size="13">no data yet</text></svg>'
        )
        return Plot(title, "".join(out))
    x0, x1 = _extent([q["x"] for q in every], 0.03)
    y0, y1 = _extent([q["y"] for q in every], 0.05)

    def sx(x: float) -> float:
        return round(LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT), 2)

    def sy(y: float) -> float:
        return round(H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM), 2)

    x_format = text.duration if time_axis else _tick
    for t in (_time_ticks if time_axis else _ticks)(x0, x1):
        out.append(
            f'<line x1="{sx(t)}" x2="{sx(t)}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#eef1f4"/>'
            f'<text x="{sx(t)}" y="{H - BOTTOM + 16}" text-anchor="middle" fill="#6b7280">{e(x_format(t))}</text>'
        )
    for t in _ticks(y0, y1):
        if y_integer and t != int(t):
            continue
        out.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{sy(t)}" y2="{sy(t)}" stroke="#eef1f4"/>'
            f'<text x="{LEFT - 6}" y="{sy(t) + 4}" text-anchor="end" fill="#6b7280">{e(_tick(t))}</text>'
        )
    mid = (TOP + H - BOTTOM) / 2
    out.append(
        f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{H - BOTTOM}" y2="{H - BOTTOM}" stroke="#8c959f"/>'
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#8c959f"/>'
        f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - BOTTOM + 34}" text-anchor="middle" font-size="12" fill="#1f2328">{e(x_label)}</text>'
        f'<text x="14" y="{mid}" text-anchor="middle" font-size="12" fill="#1f2328" transform="rotate(-90 14 {mid})">{e(y_label)}</text>'
    )
    legend_x = LEFT
    for s in series:
        pts = s["points"]
        if s["type"] in ("step", "line") and pts:
            d = f"M{sx(pts[0]['x'])},{sy(pts[0]['y'])}"
            for q in pts[1:]:
                d += f"H{sx(q['x'])}V{sy(q['y'])}" if s["type"] == "step" else f"L{sx(q['x'])},{sy(q['y'])}"
            if s.get("extend"):
                d += f"H{sx(x1)}"
            out.append(f'<path d="{d}" stroke="{s["colour"]}" stroke-width="2" fill="none"/>')
        if s["type"] == "scatter" or s.get("markers"):
            for q in pts:
                tip = (
                    q.get("tip")
                    or (f"node {q['id']}: " if q.get("id") is not None else "")
                    + f"{x_label} {x_format(q['x'])}, {y_label} {_tick(q['y'])}"
                )
                out.append(
                    f'<circle cx="{sx(q["x"])}" cy="{sy(q["y"])}" r="{s.get("r", 3.5)}" fill="{s["colour"]}">'
                    f"<title>{e(tip)}</title></circle>"
                )
        out.append(
            f'<circle cx="{legend_x + 5}" cy="{H - 16}" r="5" fill="{s["colour"]}"/>'
            f'<text x="{legend_x + 14}" y="{H - 12}" font-size="12" fill="#6b7280">{e(s["label"])}</text>'
        )
        legend_x += 24 + 7 * len(s["label"])
    if note:
        out.append(
            f'<text x="{W - RIGHT}" y="{H - 12}" text-anchor="end" font-size="11" font-style="italic" fill="#6b7280">{e(note)}</text>'
        )
    out.append("</svg>")
    return Plot(title, "".join(out))


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _extent(values: list[float], pad: float) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if lo == hi:
        lo, hi = lo - (abs(lo) * 0.1 or 1), hi + (abs(hi) * 0.1 or 1)
    d = (hi - lo) * pad
    return lo - d, hi + d


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round numbers (1, 2, 2.5, 5 x 10^k apart) from lo to hi, as plots.js ticks()."""
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if raw <= s * mag)
    return [float(f"{k * step:.12g}") for k in range(math.ceil(lo / step), math.floor(hi / step + 1e-9) + 1)]


def _time_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    steps = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
    step = next((s for s in steps if (hi - lo) / s <= count), math.ceil((hi - lo) / count / 86400) * 86400)
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def _tick(v: float) -> str:
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.1f}M"
    if a >= 1e3:
        return f"{float(f'{v / 1e3:.3g}'):g}k"
    if a >= 100:
        return f"{v:.0f}"
    return f"{float(f'{v:.3g}'):g}"


# -- text pieces shared by both formats -------------------------------------------------------------
def _num(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return text.markdown(v)  # escaped for HTML and Markdown alike: a stored metric may be any text
    if isinstance(v, int) or abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4f}"


def _change(metric: str, value, ref) -> tuple[str, str]:
    """(text, 'good'|'bad'|'') of value against ref, as a relative change."""
    if not all(isinstance(v, (int, float)) for v in (value, ref)) or ref == 0 or value == ref:
        return ("" if value != ref or value is None else "=", "")
    pct = (value - ref) / abs(ref) * 100
    direction = metric_direction(metric)
    better = (pct < 0) if direction == "lower" else (pct > 0) if direction == "higher" else None
    return f"{pct:+.{1 if abs(pct) >= 0.1 else 2}f}%", "" if better is None else "good" if better else "bad"


def _summary_rows(facts: dict) -> list[tuple[str, str]]:
    info, sp, llm, cfg = facts["info"], facts["spend"], facts["llm"], facts["info"]["config"]
    failed = f"{info['failed']}" + (
        " (" + ", ".join(f"{k}: {v}" for k, v in info["failure_reasons"].items()) + ")"
        if info["failure_reasons"]
        else ""
    )
    best = info["best"]
    rows = [
        ("nodes", f"{info['nodes']} ({info['done']} done, {info['evaluating']} evaluating)"),
        ("failed", failed),
        ("beat the root", str(info["beat_root"])),
        (
            "best node",
            f"node {best['id']} ({best['operator']}): fitness {best['fitness']:+.4f}, val_loss {_num(best['val_loss'])}"
            if best
            else "none yet",
        ),
        (
            "compute",
            f"{sp['evaluations']} evaluations, {sp['cpu_hours']:.3f} CPU-h"
            + (f", {sp['gpu_hours']:.3f} GPU-h" if sp["gpu_hours"] else ""),
        ),
        (
            "LLM spend",
            f"${llm['cost']:.4f}, {llm['tokens']:,.0f} tokens"
            if llm["tokens"] or llm["cost"]
            else "none (offline brain)",
        ),
        (
            "run time",
            text.duration(info["elapsed_s"])
            + " of running, the root included"  # (a resumed run was stopped in between)
            + (f"; between {_when(info['started'])} and {_when(info['last_activity'])}" if info["started"] else ""),
        ),
        (
            "setup",
            f"root {cfg.get('root')}, {cfg.get('tier')} tier, {cfg.get('strategy')} selection, llm {cfg.get('llm')}, seed {cfg.get('seed')}",
        ),
    ]
    for a in info.get("tier_agreement") or []:  # does the cheaper tier rank like the dearer one (archlab/agreement.py)
        rows.append(
            (
                f"{a['cheap']} vs {a['dear']} ranking",
                f"{a['sentence']} (Spearman's rho of fitness over the nodes "
                "evaluated at both tiers, 95% bootstrap interval over nodes)",
            )
        )
    if info["forked_from"]:
        rows.append(("forked from", str(info["forked_from"])))
    return rows


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else ""


def _figure_line(node: dict) -> str:
    line = f"fitness {node['fitness']:+.4f}" + (
        f" ± {node['fitness_std']:.4f}" if node.get("fitness_std") is not None else ""
    )
    line += f", val_loss {_num(node['val_loss'])}"
    if node.get("tier"):
        line += f" [{node['tier']}" + (f" x{node['seeds']}" if (node.get("seeds") or 1) > 1 else "") + "]"
    return line


def _parent_line(node: dict) -> str:
    parent = node["parent"]
    return (
        f"from node {parent['id']} ({parent['operator']}) by {node['operator']}" if parent else f"by {node['operator']}"
    )


# -- HTML -------------------------------------------------------------------------------------------
CSS = """
body { font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #f6f8fa; margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 16px 22px 40px; }
table.archive { border-collapse: separate; border-spacing: 3px; } table.archive td { width: 60px; height: 40px; text-align: center; font-size: 12px; border-radius: 4px; }
table.archive td.empty { background: #eef1f4; } table.archive th { font-size: 11px; color: #57606a; font-weight: normal; }
h1 { font-size: 24px; margin: 8px 0 2px; } h2 { font-size: 19px; margin: 28px 0 10px; border-bottom: 1px solid #d8dee4; }
h3 { font-size: 16px; margin: 16px 0 6px; }
.muted { color: #6b7280; } a { color: #0969da; text-decoration: none; }
table.facts, table.metrics { border-collapse: collapse; background: #fff; }
table.facts td, table.metrics td, table.metrics th { border: 1px solid #d8dee4; padding: 3px 10px; text-align: left; }
table.metrics td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.metrics th { background: #f0f3f6; } .good { color: #1a7f37; } .bad { color: #cf222e; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 14px; }
.plots figure { margin: 0; background: #fff; border: 1px solid #d8dee4; border-radius: 8px; padding: 6px; }
.plots svg { width: 100%; height: auto; display: block; }
section.node { background: #fff; border: 1px solid #d8dee4; border-radius: 8px; padding: 4px 16px 14px; margin: 14px 0; }
.text { white-space: pre-wrap; margin: 0; }
.diff-wrap { overflow-x: auto; border: 1px solid #d8dee4; border-radius: 6px; }
table.diff, table.code { border-collapse: collapse; width: 100%; font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
table.diff td, table.code td { padding: 0 8px; vertical-align: top; white-space: pre; }
td.ln { color: #8c959f; text-align: right; width: 1%; border-right: 1px solid #eef1f4; }
tr.add { background: #e6ffec; } tr.add td.ln { background: #ccffd8; }
tr.del { background: #ffebe9; } tr.del td.ln { background: #ffd7d5; }
tr.hunk td { background: #ddf4ff; color: #57606a; }
.sign { display: inline-block; width: 1.2em; color: #8c959f; }
.diff-stat .add { color: #1a7f37; font-weight: 600; } .diff-stat .del { color: #cf222e; font-weight: 600; }
"""


def _html(facts: dict) -> str:
    e = text.html_text
    name = facts["info"]["name"]
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>archlab report: {e(name)}</title>"
        f"<style>{CSS}\n{stylesheet()}</style></head><body><main>",
        f"<h1>archlab report: {e(name)}</h1>",
        f"<p class='muted'>{e(facts['info']['path'])} · generated {e(_when(facts['generated']))}</p>",
        "<h2 id='summary'>Summary</h2><table class='facts'>",
        *(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in _summary_rows(facts)),
        "</table><h2 id='plots'>Plots</h2><div class='plots'>",
        *(f"<figure>{p.svg}</figure>" for p in facts["plots"]),
        "</div><h2 id='archive'>Quality-diversity archive</h2>",
        f"<p class='muted'>{e(_archive_line(facts['archive']))}</p>",
        _archive_html(facts["archive"], {n["id"] for n in facts["nodes"]}),
        f"<h2 id='top'>{_top_heading(facts['nodes'])}</h2>",
    ]
    if not facts["nodes"]:
        parts.append("<p class='muted'>No node other than the root has finished yet.</p>")
    else:
        parts.append(
            "<p>" + " · ".join(f"<a href='#node-{n['id']}'>node {n['id']}</a>" for n in facts["nodes"]) + "</p>"
        )
    for rank, n in enumerate(facts["nodes"], start=1):
        parts += [
            f"<section class='node' id='node-{n['id']}'><h3>#{rank} node {n['id']}: {e(_figure_line(n))}</h3>",
            f"<p class='muted'>{e(_parent_line(n))}</p>",
            f"<h4>Motivation</h4><p class='text'>{e(n['motivation'] or '')}</p>",
            "<h4>Metrics</h4><table class='metrics'><tr><th>metric</th><th>node</th><th>parent</th><th>vs parent</th>"
            "<th>root</th><th>vs root</th></tr>",
        ]
        for m in n["metrics_table"]:
            cells = [f"<td>{e(m['metric'])}</td><td class='num'>{_num(m['node'])}</td>"]
            for ref in ("parent", "root"):
                change, mood = _change(m["metric"], m["node"], m[ref])
                cells.append(f"<td class='num'>{_num(m[ref])}</td><td class='num {mood}'>{e(change)}</td>")
            parts.append(f"<tr>{''.join(cells)}</tr>")
        parts += [
            "</table>",
            f"<h4>Diff against node {n['parent_id']}</h4><div class='diff-wrap'>{n['diff_html']}</div>",
            f"<h4>Analysis</h4><p class='text'>{e(n['analysis'] or 'no analysis')}</p>",
        ]
        if n["knowledge"]:
            parts.append(
                "<p class='muted'>knowledge used: " + e("; ".join(k["title"] for k in n["knowledge"])) + "</p>"
            )
        parts.append("</section>")
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def _archive_line(g: dict) -> str:
    return (
        f"{g['occupied']} of {g['reachable']} cells occupied (coverage {g['coverage']:.1%}), QD-score "
        f"{g['qd_score']:.2f} (each elite's fitness above {g['floor']}). Across: {g['titles'][g['x']]}; up: "
        f"{g['titles'][g['y']]}; each square is the best elite of the cells with those two values."
    )


def _archive_rows(g: dict) -> list[tuple[str, list[dict | None]]]:
    """The grid top row first: (y label, the elite or None per x bin)."""
    at = {(c["x"], c["y"]): c for c in g["cells"]}
    return [
        (g["y_labels"][j], [at.get((i, j)) for i in range(len(g["x_labels"]))])
        for j in reversed(range(len(g["y_labels"])))
    ]


def _archive_html(g: dict, in_report: set[int]) -> str:
    """The grid as a table, each elite coloured like the web UI's tree (green above the root, red
    below) and linked to its section when it is one of the report's nodes."""
    e = text.html_text
    span = max([abs(c["fitness"]) for c in g["cells"]] + [0.0])
    rows = []
    for label, cells in _archive_rows(g):
        tds = []
        for c in cells:
            if c is None:
                tds.append("<td class='empty'></td>")
                continue
            colour = _mix(GREY, GREEN if c["fitness"] >= 0 else RED, abs(c["fitness"]) / span if span else 0.0)
            name = f"#{c['id']}<br>{c['fitness']:+.3f}"
            link = f"<a href='#node-{c['id']}'>{name}</a>" if c["id"] in in_report else name
            tds.append(f"<td style='background:{colour}' title='node {c['id']}'>{link}</td>")
        rows.append(f"<tr><th>{e(label)}</th>{''.join(tds)}</tr>")
    rows.append("<tr><th></th>" + "".join(f"<th>{e(label)}</th>" for label in g["x_labels"]) + "</tr>")
    return f"<table class='archive'>{''.join(rows)}</table>"


def _mix(a: str, b: str, t: float) -> str:
    t = max(0.0, min(1.0, t))
    pa, pb = (tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in (a, b))
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(pa, pb))


# -- Markdown ---------------------------------------------------------------------------------------
def _cell(value) -> str:
    return text.markdown(value).replace("|", "\\|").replace("\n", " ")


def _top_heading(nodes: list) -> str:
    return f"Top {len(nodes)} node{'s' if len(nodes) > 1 else ''}" if nodes else "Top nodes"


def _markdown(facts: dict, plot_files: list[str]) -> str:
    lines = [
        f"# archlab report: {facts['info']['name']}",
        "",
        f"{facts['info']['path']} · generated {_when(facts['generated'])}",
        "",
        "## Summary",
        "",
        "| | |",
        "|---|---|",
        *(f"| {_cell(k)} | {_cell(v)} |" for k, v in _summary_rows(facts)),
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{_cell(p.title)}]({f})" + "\n" for p, f in zip(facts["plots"], plot_files)]
    g = facts["archive"]
    lines += ["## Quality-diversity archive", "", _archive_line(g), ""]
    lines += ["| | " + " | ".join(_cell(x) for x in g["x_labels"]) + " |", "|---" * (len(g["x_labels"]) + 1) + "|"]
    for label, cells in _archive_rows(g):
        shown = (f"#{c['id']} {c['fitness']:+.3f}" if c else "" for c in cells)
        lines.append(f"| {_cell(label)} | " + " | ".join(shown) + " |")
    lines.append("")
    lines += [f"## {_top_heading(facts['nodes'])}", ""]
    if not facts["nodes"]:
        lines += ["No node other than the root has finished yet.", ""]
    for rank, n in enumerate(facts["nodes"], start=1):
        lines += [
            f"### #{rank} node {n['id']}: {_figure_line(n)}",
            "",
            f"*{_parent_line(n)}*",
            "",
            "**Motivation.** " + text.markdown(n["motivation"] or ""),
            "",
            "| metric | node | parent | vs parent | root | vs root |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for m in n["metrics_table"]:
            lines.append(
                f"| {m['metric']} | {_num(m['node'])} | {_num(m['parent'])} | {_change(m['metric'], m['node'], m['parent'])[0]} "
                f"| {_num(m['root'])} | {_change(m['metric'], m['node'], m['root'])[0]} |"
            )
        lines += [
            "",
            f"**Diff against node {n['parent_id']}:**",
            "",
            text.code_block(n["unified_diff"], "diff"),
            "",
            "**Analysis.** " + text.markdown(n["analysis"] or "no analysis"),
            "",
        ]
        if n["knowledge"]:
            lines += ["Knowledge used: " + text.markdown("; ".join(k["title"] for k in n["knowledge"])), ""]
    return "\n".join(lines)
