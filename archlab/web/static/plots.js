// Plain SVG charts: linear axes with "nice" ticks, step/line/scatter series, a tooltip per
// point (its <title>) and a click handler that opens the point's node.

import { h } from "./dom.js";

const W = 560, H = 300, M = { left: 64, right: 16, top: 12, bottom: 44 };

export function ticks(lo, hi, count = 5) {
  if (!isFinite(lo) || !isFinite(hi)) return [];
  if (lo === hi) { lo -= 1; hi += 1; }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((s) => s * mag).find((s) => raw <= s);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

// Ticks for a time axis in seconds: whole seconds, minutes or hours.
export function timeTicks(lo, hi, count = 5) {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  const step = steps.find((s) => (hi - lo) / s <= count) || Math.ceil((hi - lo) / count / 86400) * 86400;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(v);
  return out;
}

function extent(values, pad = 0.05) {
  let lo = Math.min(...values), hi = Math.max(...values);
  if (!values.length) return [0, 1];
  if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
  const d = (hi - lo) * pad;
  return [lo - d, hi + d];
}

function fmtTick(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return Number((v / 1e3).toPrecision(3)) + "k";
  if (a >= 100) return v.toFixed(0);
  return String(Number(v.toPrecision(3)));
}

// chart({title, xLabel, yLabel, series: [{label, colour, type: "step"|"line"|"scatter", points: [{x, y, id, tip}],
//                                          dash (an SVG dash array), attrs (extra attributes of its line)}],
//        onPoint(id), xFormat, yFormat, xTicks, yInteger (counts: whole-number ticks)}) -> <figure>
export function chart({ title, xLabel, yLabel, series, onPoint, xFormat = fmtTick, yFormat = fmtTick, xTicks = ticks, yInteger = false, note, testid }) {
  const all = series.flatMap((s) => s.points).filter((p) => p.y !== null && p.y !== undefined && isFinite(p.y));
  const fig = h("figure", { class: "chart", "data-testid": testid });
  fig.append(h("figcaption", {}, title));
  if (!all.length) {
    fig.append(h("p", { class: "muted empty" }, note || "no data yet"));
    return fig;
  }
  const [x0, x1] = extent(all.map((p) => p.x), 0.03);
  const [y0, y1] = extent(all.map((p) => p.y));
  const sx = (x) => M.left + ((x - x0) / (x1 - x0)) * (W - M.left - M.right);
  const sy = (y) => H - M.bottom - ((y - y0) / (y1 - y0)) * (H - M.top - M.bottom);
  const svg = h("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": title });
  const axes = h("g", { class: "axes" });
  for (const t of xTicks(x0, x1)) {
    axes.append(h("line", { x1: sx(t), x2: sx(t), y1: M.top, y2: H - M.bottom, class: "grid" }));
    axes.append(h("text", { x: sx(t), y: H - M.bottom + 16, "text-anchor": "middle" }, xFormat(t)));
  }
  for (const t of ticks(y0, y1).filter((v) => !yInteger || Number.isInteger(v))) {
    axes.append(h("line", { x1: M.left, x2: W - M.right, y1: sy(t), y2: sy(t), class: "grid" }));
    axes.append(h("text", { x: M.left - 6, y: sy(t) + 4, "text-anchor": "end" }, yFormat(t)));
  }
  axes.append(h("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "axis" }));
  axes.append(h("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom, class: "axis" }));
  axes.append(h("text", { x: (M.left + W - M.right) / 2, y: H - 8, "text-anchor": "middle", class: "label" }, xLabel));
  axes.append(h("text", { x: 14, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle", class: "label",
                          transform: `rotate(-90 14 ${(M.top + H - M.bottom) / 2})` }, yLabel));
  svg.append(axes);
  const legend = h("div", { class: "legend" });
  for (const s of series) {
    const pts = s.points.filter((p) => p.y !== null && p.y !== undefined && isFinite(p.y));
    if (s.type === "step" || s.type === "line") {
      let d = "";
      pts.forEach((p, i) => {
        if (i === 0) d += `M${sx(p.x)},${sy(p.y)}`;
        else if (s.type === "step") d += `H${sx(p.x)}V${sy(p.y)}`;
        else d += `L${sx(p.x)},${sy(p.y)}`;
      });
      if (s.extend && pts.length) d += `H${sx(x1)}`;
      svg.append(h("path", { d, class: "series", stroke: s.colour, fill: "none", "stroke-dasharray": s.dash, ...(s.attrs || {}) }));
    }
    if (s.type === "scatter" || s.markers) {
      const g = h("g", { class: "points" });
      for (const p of pts) {
        g.append(h("circle", { cx: sx(p.x), cy: sy(p.y), r: s.r || 3.5, fill: s.colour, class: p.id !== undefined ? "clickable" : "",
                               "data-node": p.id, onclick: p.id !== undefined && onPoint ? () => onPoint(p.id) : null },
          h("title", {}, p.tip || `node ${p.id}: ${xLabel} ${xFormat(p.x)}, ${yLabel} ${yFormat(p.y)}`)));
      }
      svg.append(g);
    }
    const swatch = h("i");
    swatch.style.background = s.colour; // CSSOM, not a style attribute: the page's CSP forbids inline styles
    legend.append(h("span", { class: "key" }, swatch, s.label));
  }
  fig.append(svg, legend);
  if (note) fig.append(h("p", { class: "muted note" }, note));
  return fig;
}
