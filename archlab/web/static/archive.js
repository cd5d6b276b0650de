// #/archive?x=A&y=B: the quality-diversity archive (archlab/search/archive.py) along two of its
// descriptors. A cell is coloured by the fitness of the best elite among the archive cells it
// gathers (the tree's colour scale) and links to that node.

import { api, h, signed } from "./dom.js";
import { fitnessColour } from "./tree.js";

export async function showArchive(view, params) {
  const query = new URLSearchParams();
  for (const k of ["x", "y"]) if (params.get(k)) query.set(k, params.get(k));
  const g = await api(`/api/archive?${query}`);
  const pick = (axis, other) => h("select", {
    "aria-label": `${axis} axis`, "data-testid": `archive-${axis}`,
    onchange: (e) => {
      const next = { x: g.x, y: g.y, [axis]: e.target.value };
      if (next.x === next.y) next[other] = g[axis]; // the same descriptor twice: swap them
      location.hash = `#/archive?x=${next.x}&y=${next.y}`;
    },
  }, ...g.axes.map((a) => h("option", { value: a, selected: a === g[axis] }, g.titles[a])));
  const at = new Map(g.cells.map((c) => [`${c.x},${c.y}`, c]));
  const fits = g.cells.map((c) => c.fitness);
  const lo = Math.min(0, ...fits), hi = Math.max(0, ...fits);
  const rows = [...g.y_labels.keys()].reverse().map((j) => h("tr", {},
    h("th", { class: "axis" }, g.y_labels[j]),
    ...g.x_labels.map((_, i) => {
      const c = at.get(`${i},${j}`);
      if (!c) return h("td", { class: "empty" });
      const td = h("td", { class: "elite", title: `node ${c.id}: fitness ${signed(c.fitness)}` },
        h("a", { href: `#/node/${c.id}`, "data-testid": "archive-cell", "data-node": c.id }, `#${c.id}`, h("br"), signed(c.fitness, 3)));
      td.style.background = fitnessColour(c.fitness, lo, hi); // CSSOM, which the page's CSP allows
      return td;
    })));
  view.replaceChildren(h("div", { class: "archive-page" },
    h("h1", {}, "Quality-diversity archive"),
    h("p", { class: "muted", "data-testid": "archive-summary" },
      `${g.occupied} of ${g.reachable} cells occupied (coverage ${(100 * g.coverage).toFixed(1)}%), `
      + `QD-score ${g.qd_score.toFixed(2)} (each elite's fitness above ${g.floor}). Each square shows the best elite `
      + "of the cells with those two values; click it to open the node."),
    h("div", { class: "toolbar" }, "across: ", pick("x", "y"), " up: ", pick("y", "x")),
    h("table", { class: "archive", "data-testid": "archive-grid" },
      h("tbody", {}, ...rows,
        h("tr", {}, h("th", {}), ...g.x_labels.map((l) => h("th", { class: "axis" }, l))))),
    h("p", { class: "muted" }, `across: ${g.titles[g.x]}; up: ${g.titles[g.y]}`)));
  return { name: "archive", refresh: () => showArchive(view, params) };
}
