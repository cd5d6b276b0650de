// Loss curves: training and validation loss over steps, for one node (its page) or overlaid
// across nodes (the curves and compare pages). Where each number comes from is said on the
// chart: the training loss is what the training server reported (from inside the sandbox, shown
// and never scored); the validation loss is computed by the scorer (archlab/sandbox/curves.py).

import { h, num } from "./dom.js";
import { chart } from "./plots.js";

export const PALETTE = ["#2b7bb9", "#d95f02", "#1a9850", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666", "#1b9e77"];

// The series of one evaluation's curves (one entry per seed): a solid training line and a dashed
// validation line with markers, both in `colour` (or train/val colours when given two).
export function curveSeries(curves, { label = "", colours, node } = {}) {
  const [trainColour, valColour] = Array.isArray(colours) ? colours : [colours, colours];
  const out = [];
  for (const c of curves || []) {
    const seed = curves.length > 1 ? ` (seed ${c.seed})` : "";
    const who = `${label}${seed}`;
    out.push({
      label: `${who}training loss`, colour: trainColour, type: "line", markers: false,
      attrs: { "data-curve": "train", "data-node": node },
      points: (c.train || []).map(([x, y]) => ({ x, y, id: node, tip: `${who}step ${x}: training loss ${num(y, 3)}` })),
    });
    out.push({
      label: `${who}validation loss`, colour: valColour, type: "line", markers: true, r: 3, dash: "5 3",
      attrs: { "data-curve": "val", "data-node": node },
      points: (c.val || []).map(([x, y, checked]) => ({ x, y, id: node,
        tip: `${who}step ${x}: validation loss ${num(y, 4)} on ${c.val_windows} windows` +
             (checked ? " (the final weights: the scored logits)" : " (a copy of the weights during training: display-only)") })),
    });
  }
  return out;
}

// What the numbers are, said once under every curve chart.
export function curvesNote(curves) {
  const c = (curves || [])[0];
  if (!c) return "";
  const bucket = c.train_bucket ? ` (means over ${c.train_bucket} steps)` : "";
  const notes = (curves || []).map((x) => x.val_note).filter(Boolean);
  return `Training loss${bucket}: as the training server reported it, from inside the sandbox (shown, never scored). ` +
    `Validation loss: computed by the scorer on ${c.val_windows} of the held-out validation windows; the last point is the ` +
    "final weights (the scored logits), the earlier ones copies of the weights during training (display-only, not " +
    "checked for causality). The node's val_loss metric uses every window." + (notes.length ? ` ${notes.join(" ")}` : "");
}

export function curveChart({ title, series, note, testid, onPoint }) {
  return chart({ title, xLabel: "training step", yLabel: "loss (nats/byte)", series, note, testid, onPoint,
                 xFormat: (v) => String(Math.round(v)) });
}

// The node page's "Loss curves" card: one chart per kind and tier of evaluation (the seeds of a
// promotion overlaid), or nothing when no evaluation has curves (an older run, the check tier).
export function curvesSection(n) {
  const groups = new Map();
  for (const e of n.evaluations || []) {
    if (!e.curves || !e.curves.length) continue;
    const key = `${e.kind} · ${e.tier}`;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(...e.curves);
  }
  if (!groups.size) return null;
  const charts = [...groups].slice(-4).map(([key, curves]) => curveChart({
    title: `Loss over training steps (${key})`, testid: "node-curves",
    series: curveSeries(curves, { colours: [PALETTE[0], PALETTE[1]], node: n.id }), note: curvesNote(curves),
  }));
  return h("section", { class: "card" }, h("h2", {}, "Loss curves"), h("div", { class: "plots" }, charts));
}

// A failed node's link to the whole sandbox log of the evaluation that failed it.
export function failedLogLink(n) {
  const withLog = (n.evaluations || []).filter((e) => e.has_log);
  const e = [...withLog].reverse().find((x) => !x.ok) || withLog[withLog.length - 1];
  if (!e) return null;
  return h("p", { class: "log-link" },
    h("a", { href: `#/log/${e.id}`, "data-testid": "full-log-link" }, `full sandbox log of evaluation ${e.id} →`));
}
