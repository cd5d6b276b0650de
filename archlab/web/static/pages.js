// Pages beside the tree, node, plots and traces pages (app.js routes to them through route()):
//   #/leaderboard?sort=K&order=asc|desc&q=TEXT   every node, sortable by a column, filtered by words
//   #/curves?nodes=1,2,3                          loss curves of several nodes overlaid
//   #/compare/A/B                                 two nodes side by side: metrics, curves, code diff
//   #/log/E                                       the whole sandbox log of evaluation E
//   #/archive?x=A&y=B                             the quality-diversity archive along two descriptors (archive.js)

import { api, changeClass, duration, h, metricDirections, num, signed, statusBadge } from "./dom.js";
import { PALETTE, curveChart, curveSeries, curvesNote } from "./curves.js";
import { showArchive } from "./archive.js";

const selected = new Set(); // nodes ticked in the leaderboard, kept while the page is left and reopened

export function route(parts, params) {
  const id = (s) => /^\d+$/.test(s || "");
  if (parts[0] === "leaderboard") return { name: "leaderboard", show: (view) => showLeaderboard(view, params) };
  if (parts[0] === "curves") return { name: "curves", show: (view) => showCurves(view, params) };
  if (parts[0] === "compare" && id(parts[1]) && id(parts[2])) {
    return { name: "compare", show: (view) => showCompare(view, Number(parts[1]), Number(parts[2])) };
  }
  if (parts[0] === "archive") return { name: "archive", show: (view) => showArchive(view, params) };
  if (parts[0] === "log" && id(parts[1])) return { name: "log", show: (view) => showLog(view, Number(parts[1])) };
  return null;
}

const open = (id) => { location.hash = `#/node/${id}`; };

// -- the leaderboard --------------------------------------------------------------------------
const COLUMNS = [
  ["id", "#"], ["parent_id", "parent"], ["status", "status"], ["operator", "operator"], ["fitness", "fitness"],
  ["val_loss", "val_loss"], ["train_loss", "train_loss"], ["tokens_per_s", "tokens/s"], ["mixer_params", "mixer params"],
  ["wall_s", "wall"], ["reason", "failure"],
];
const ASCENDING_FIRST = new Set(["id", "parent_id", "val_loss", "train_loss", "wall_s", "mixer_params", "status", "operator", "reason"]);

async function showLeaderboard(view, params) {
  const state = { sort: params.get("sort") || "fitness", order: params.get("order") || "desc", q: params.get("q") || "", limit: 200 };
  const filter = h("input", { type: "search", placeholder: "filter: words in operator, status, failure, motivation, or #id",
                              class: "filter", "data-testid": "leaderboard-filter", value: state.q });
  const count = h("span", { class: "muted", "data-testid": "leaderboard-count" });
  const actions = h("span", { class: "actions" });
  const table = h("table", { class: "leaderboard", "data-testid": "leaderboard" });
  const more = h("div", { class: "toolbar" });
  let timer = null;
  filter.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.q = filter.value; state.limit = 200; load(); }, 200);
  });
  view.replaceChildren(h("div", { class: "leaderboard-page" }, h("h1", {}, "Leaderboard"),
    h("p", { class: "muted" }, "Every node of the run. Click a column to sort by it (again to reverse); tick nodes to overlay their loss curves or compare two."),
    h("div", { class: "toolbar" }, filter, count, actions), table, more));

  function sortBy(key) {
    state.order = state.sort === key ? (state.order === "asc" ? "desc" : "asc") : ASCENDING_FIRST.has(key) ? "asc" : "desc";
    state.sort = key;
    load();
  }

  function renderActions() {
    const ids = [...selected];
    actions.replaceChildren(
      h("a", { class: `button${ids.length ? "" : " disabled"}`, "data-testid": "overlay-selected",
               href: ids.length ? `#/curves?nodes=${ids.join(",")}` : null }, `overlay curves (${ids.length})`),
      h("a", { class: `button${ids.length === 2 ? "" : " disabled"}`, "data-testid": "compare-selected",
               href: ids.length === 2 ? `#/compare/${ids[0]}/${ids[1]}` : null, title: "tick exactly two nodes" }, "compare two"),
      ids.length ? h("button", { onclick: () => { selected.clear(); load(); } }, "clear") : "");
  }

  function row(r) {
    const tick = h("input", { type: "checkbox", "aria-label": `select node ${r.id}`, checked: selected.has(r.id),
                              onchange: () => { if (tick.checked) selected.add(r.id); else selected.delete(r.id); renderActions(); } });
    return h("tr", { class: `st-${r.status}`, "data-node": r.id },
      h("td", {}, tick),
      h("td", {}, h("a", { href: `#/node/${r.id}` }, `#${r.id}`)),
      h("td", {}, r.parent_id !== null ? h("a", { href: `#/node/${r.parent_id}` }, `#${r.parent_id}`) : h("span", { class: "muted" }, "root")),
      h("td", {}, statusBadge(r.status)), h("td", {}, r.operator || ""),
      h("td", { class: "num" }, r.fitness !== null ? signed(r.fitness) : ""), h("td", { class: "num" }, num(r.val_loss)),
      h("td", { class: "num" }, num(r.train_loss)), h("td", { class: "num" }, num(r.tokens_per_s, 0)),
      h("td", { class: "num" }, num(r.mixer_params, 0)), h("td", { class: "num" }, duration(r.wall_s)),
      h("td", { class: "muted", title: r.motivation || "" }, r.reason || ""));
  }

  async function load() {
    const q = new URLSearchParams({ sort: state.sort, order: state.order, q: state.q, limit: state.limit });
    const data = await api(`/api/leaderboard?${q}`);
    // The address says how the table is sorted and filtered (without a hashchange, which would rebuild the page).
    const hash = new URLSearchParams({ sort: state.sort, order: state.order, ...(state.q ? { q: state.q } : {}) });
    history.replaceState(null, "", `#/leaderboard?${hash}`);
    const arrow = (key) => (key === data.sort ? (data.order === "asc" ? " ▲" : " ▼") : "");
    table.replaceChildren(
      h("thead", {}, h("tr", {}, h("th", {}),
        COLUMNS.map(([key, label]) => h("th", { class: `sortable${key === data.sort ? " sorted" : ""}`, "data-sort": key,
                                                 "aria-sort": key === data.sort ? (data.order === "asc" ? "ascending" : "descending") : null,
                                                 onclick: () => sortBy(key) }, label + arrow(key))))),
      h("tbody", {}, data.rows.map(row)));
    count.textContent = `${data.rows.length < data.total ? `${data.rows.length} of ` : ""}${data.total} node${data.total === 1 ? "" : "s"}` +
      (data.query ? ` matching “${data.query}”` : "");
    more.replaceChildren(data.rows.length < data.total
      ? h("button", { onclick: () => { state.limit += 200; load(); } }, `show ${Math.min(200, data.total - data.rows.length)} more`) : "");
    renderActions();
  }
  await load();
  return { name: "leaderboard", refresh: load };
}

// -- curves of several nodes ------------------------------------------------------------------
async function showCurves(view, params) {
  let ids = (params.get("nodes") || "").split(",").filter((s) => /^\d+$/.test(s)).map(Number);
  if (!ids.length) { // nothing chosen: the root and the best few
    const best = await api("/api/leaderboard?sort=fitness&order=desc&limit=5&q=done");
    ids = [...new Set([0, ...best.rows.map((r) => r.id)])];
  }
  async function load() {
    const data = await api(`/api/curves?nodes=${ids.join(",")}`);
    const series = [], chips = [];
    data.nodes.forEach((n, i) => {
      const colour = PALETTE[i % PALETTE.length];
      const swatch = h("i", { class: "sw" });
      swatch.style.background = colour; // CSSOM: the page's CSP forbids style attributes
      const rest = ids.filter((x) => x !== n.id);
      chips.push(h("span", { class: "chip", "data-node": n.id }, swatch, h("a", { href: `#/node/${n.id}` }, `#${n.id}`),
        ` ${n.operator || (n.parent_id === null ? "root" : "")} ${n.fitness !== null ? signed(n.fitness) : n.status}`,
        n.main ? "" : h("span", { class: "muted" }, " (no curves)"),
        h("a", { href: `#/curves?nodes=${rest.join(",")}`, class: "remove", title: "remove from the overlay" }, "×")));
      if (n.main) series.push(...curveSeries(n.main.curves, { label: `#${n.id} `, colours: colour, node: n.id }));
    });
    const add = h("input", { type: "number", min: 0, placeholder: "add node #", class: "goto",
      onkeydown: (e) => { if (e.key === "Enter" && add.value !== "") location.hash = `#/curves?nodes=${[...ids, Number(add.value)].join(",")}`; } });
    const first = data.nodes.find((n) => n.main);
    view.replaceChildren(h("div", { class: "curves-page" }, h("h1", {}, "Loss curves"),
      h("p", { class: "muted" }, `Training (solid) and validation (dashed) loss over steps, one colour per node (at most ${data.max}); each node's own search evaluation.`),
      h("div", { class: "toolbar" }, chips, add),
      h("div", { class: "plots wide" }, curveChart({ title: `Loss over training steps: ${data.nodes.length} node(s)`, series,
        testid: "overlay", onPoint: open, note: first ? curvesNote(first.main.curves) : "none of these nodes has curves" }))));
  }
  await load();
  return { name: "curves", refresh: load };
}

// -- two nodes side by side -------------------------------------------------------------------
function deltaCell(directions, key, a, b) {
  if (typeof a !== "number" || typeof b !== "number") return h("td");
  const d = b - a;
  return h("td", { class: `num delta ${changeClass(directions, key, d)}` },
    signed(d, Math.abs(d) >= 100 ? 0 : 4) + (a !== 0 ? ` (${d >= 0 ? "+" : "−"}${Math.abs((100 * d) / a).toFixed(1)}%)` : ""));
}

function sideCard(n, label) {
  return h("div", { class: "card side", "data-testid": `compare-${label}` },
    h("h2", {}, h("a", { href: `#/node/${n.id}` }, `Node ${n.id}`), " ", statusBadge(n.status, n.reason)),
    h("p", {}, n.operator ? h("span", { class: "badge op" }, n.operator) : null,
      n.fitness !== null ? ` fitness ${signed(n.fitness)}` : "", n.val_loss !== null ? ` · val_loss ${num(n.val_loss)}` : "",
      n.parent_id !== null ? [" · parent ", h("a", { href: `#/node/${n.parent_id}` }, `#${n.parent_id}`)] : " · the root"),
    h("p", { class: "motivation" }, n.motivation || h("span", { class: "muted" }, "no motivation recorded")));
}

async function showCompare(view, a, b) {
  async function load() {
    const [c, directions] = await Promise.all([api(`/api/compare/${a}/${b}`), metricDirections()]);
    const rows = c.metrics_table.map((m) => h("tr", {}, h("th", {}, m.metric),
      h("td", { class: "num" }, num(m.a)), h("td", { class: "num" }, num(m.b)), deltaCell(directions, m.metric, m.a, m.b)));
    const series = [c.a, c.b].flatMap((n, i) => (n.main ? curveSeries(n.main.curves, { label: `#${n.id} `, colours: PALETTE[i], node: n.id }) : []));
    const withCurves = [c.a, c.b].find((n) => n.main);
    view.replaceChildren(h("div", { class: "compare-page", "data-testid": "compare" },
      h("div", { class: "toolbar" }, h("h1", {}, `Node ${a} vs node ${b}`),
        h("a", { href: `#/compare/${b}/${a}`, class: "button" }, "swap")),
      h("div", { class: "sides" }, sideCard(c.a, "a"), sideCard(c.b, "b")),
      h("section", { class: "card" }, h("h2", {}, "Metrics"),
        h("table", { class: "metrics", "data-testid": "compare-metrics" },
          h("thead", {}, h("tr", {}, h("th", {}, "metric"), h("th", {}, `node ${a}`), h("th", {}, `node ${b}`), h("th", {}, `Δ (${b} − ${a})`))),
          h("tbody", {}, rows))),
      h("section", { class: "card" }, h("h2", {}, "Loss curves"), h("div", { class: "plots" },
        curveChart({ title: `Loss over training steps: #${a} and #${b}`, series, testid: "compare-curves", onPoint: open,
                     note: withCurves ? curvesNote(withCurves.main.curves) : "neither node has curves" }))),
      h("section", { class: "card" }, h("h2", {}, `Code: node ${b} against node ${a}`),
        h("div", { class: "code-box", "data-testid": "compare-diff", html: c.diff_html }))));
  }
  await load();
  return { name: "compare", refresh: load };
}

// -- a whole sandbox log ----------------------------------------------------------------------
async function showLog(view, id) {
  const e = await api(`/api/evaluation/${id}`);
  const raw = `/api/evaluation/${id}/log?full=1`;
  const response = await fetch(raw);
  const text = response.ok ? await response.text() : `(${(await response.json().catch(() => ({}))).error || "log not available"})`;
  view.replaceChildren(h("div", { class: "log-page" },
    h("div", { class: "toolbar" }, h("h1", {}, `Sandbox log of evaluation ${e.id}`),
      h("a", { href: `#/node/${e.node_id}` }, `← node ${e.node_id}`), h("a", { href: raw, class: "button" }, "plain text")),
    h("p", { class: e.ok ? "muted" : "error" }, `${e.kind} · ${e.tier} tier · seed ${e.seed} · ` +
      (e.ok ? "accepted" : `rejected: ${e.reason}${e.detail ? ": " + e.detail : ""}`)),
    h("pre", { class: "text log full", "data-testid": "full-log" }, text)));
  return { name: "log" };
}
