// archlab review UI: a hash router over the read-only JSON API. Every page re-renders when the
// run changes (the server's version number, polled every two seconds).
//   #/            the search tree         #/node/N   one node: diff, metrics, analysis, traces
//   #/plots       run plots               #/traces   every trace of the run, page by page

import { api, changeClass, duration, h, metricDirections, num, signed, statusBadge, when } from "./dom.js";
import { chart, timeTicks } from "./plots.js";
import { TreeView } from "./tree.js";
import { curvesSection, failedLogLink } from "./curves.js";
import { route } from "./pages.js";
import { steerPanel } from "./steer.js";

const POLL_MS = 2000;
const TREE_LIMIT = 600;
const view = document.getElementById("view");
let page = null; // the page on screen: {name, refresh()}
let treePage = null; // kept across navigation so zoom and collapsed branches survive
let version = null;

// -- routing --------------------------------------------------------------------------------
function parseHash() {
  const [path, query] = (location.hash.replace(/^#/, "") || "/").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "node" && /^\d+$/.test(parts[1] || "")) return { name: "node", id: Number(parts[1]), params };
  if (parts[0] === "plots") return { name: "plots", params };
  if (parts[0] === "traces") return { name: "traces", params };
  return route(parts, params) || { name: "tree", params };
}

async function show() {
  const r = parseHash();
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === r.name));
  try {
    if (r.name === "tree") page = await showTree(r.params);
    else if (r.name === "node") page = await showNode(r.id);
    else if (r.name === "plots") page = await showPlots();
    else if (r.show) page = await r.show(view);
    else page = await showTraces(r.params);
  } catch (e) {
    view.replaceChildren(h("div", { class: "error" }, `Cannot show this page: ${e.message}`));
    page = null;
  }
}

// -- live updates ---------------------------------------------------------------------------
async function poll() {
  const dot = document.getElementById("live");
  try {
    const live = await api("/api/live");
    dot.className = live.evaluating && live.running ? "live busy" : "live ok";
    dot.title = !live.evaluating ? `up to date (${live.nodes} nodes)`
      : live.running ? `running: ${live.evaluating} node(s) evaluating`
      : `stopped: ${live.evaluating} node(s) interrupted (archlab run resumes them)`;
    if (live.version !== version) {
      const first = version === null;
      version = live.version;
      await header();
      if (!first && page && page.refresh) await page.refresh();
    }
    if (page && page.progress) page.progress(live.in_flight || [], live.running);
  } catch (e) {
    dot.className = "live down";
    dot.title = `server unreachable: ${e.message}`;
  }
  setTimeout(poll, POLL_MS);
}

async function header() {
  const run = await api("/api/run");
  document.getElementById("run-name").textContent = run.name;
  document.title = `archlab · ${run.name}`;
  const stats = document.getElementById("run-stats");
  const parts = [
    h("span", {}, `${run.nodes} nodes`),
    h("span", { class: "ok" }, `${run.done} done`),
    h("span", { class: "bad" }, `${run.failed} failed`),
  ];
  if (run.evaluating) parts.push(run.running ? h("span", { class: "busy" }, `${run.evaluating} evaluating`)
    : h("span", { class: "muted", title: "the run is stopped: `archlab run` resumes them" }, `${run.evaluating} interrupted`));
  if (run.best) parts.push(h("a", { href: `#/node/${run.best.id}` }, `best #${run.best.id} ${signed(run.best.fitness)}`));
  parts.push(h("span", {}, `${run.beat_root} beat the root`));
  for (const a of run.tier_agreement || []) parts.push(agreementTag(a));
  parts.push(h("span", { class: "muted" }, `${run.config.tier} tier · ${run.config.strategy} · ${run.config.llm}`));
  if (run.forked_from) parts.push(h("span", { class: "muted", title: run.forked_from.run }, `forked from ${run.forked_from.name} #${run.forked_from.node}`));
  stats.replaceChildren(...parts);
}

// Rank agreement between two tiers (archlab/agreement.py): compact in the header, the sentence on hover.
function agreementTag(a) {
  const figures = a.low !== null ? `ρ ${a.rho.toFixed(2)} [${a.low.toFixed(2)}, ${a.high.toFixed(2)}] · ${a.n} nodes` : `${a.verdict} (${a.n})`;
  return h("span", { class: `agreement ${a.verdict.replace(/ /g, "-")}`, title: a.sentence, "data-testid": "tier-agreement" },
    `${a.cheap}→${a.dear} ${figures}`);
}

function agreementNote(pairs) {
  return h("section", { class: "agreement-note", "data-testid": "tier-agreement-note" },
    h("h3", {}, "Does the cheaper tier rank nodes like the dearer one?"),
    ...pairs.map((a) => h("p", { class: `agreement ${a.verdict.replace(/ /g, "-")}` }, a.sentence)),
    h("p", { class: "muted" }, "Spearman's rho between the fitness of the nodes evaluated at both tiers (promotions, replays), "
      + "with a 95% bootstrap interval over nodes: near 1, the cheaper tier picks what the dearer one would; "
      + "an interval that includes 0 says it cannot be trusted yet."));
}

// -- the tree -------------------------------------------------------------------------------
async function showTree(params) {
  if (!treePage) treePage = makeTreePage();
  treePage.limit = Number(params.get("limit")) || TREE_LIMIT; // #/?limit=N: at most N nodes before "+N more"
  view.replaceChildren(treePage.element);
  await treePage.refresh();
  const focus = params.get("focus");
  if (focus !== null) treePage.tree.focus(Number(focus));
  return treePage;
}

function makeTreePage() {
  const info = h("span", { class: "muted", "data-testid": "tree-info" });
  const colour = h("select", { "aria-label": "colour by", onchange: () => { tree.colour = colour.value; tree.render(); legend(); } },
    h("option", { value: "fitness" }, "colour: fitness"), h("option", { value: "status" }, "colour: status"));
  const goto = h("input", { type: "number", min: 0, placeholder: "node #", class: "goto",
                            onkeydown: (e) => { if (e.key === "Enter" && goto.value !== "") location.hash = `#/node/${goto.value}`; } });
  const key = h("span", { class: "tree-legend" });
  const legend = () => key.replaceChildren(...(tree.colour === "fitness"
    ? [h("i", { class: "sw grad" }), h("span", {}, "worse than root · root · better"), h("i", { class: "sw hollow-red" }), h("span", {}, "failed"), h("i", { class: "sw hollow-blue" }), h("span", {}, "evaluating")]
    : [h("i", { class: "sw done" }), h("span", {}, "done"), h("i", { class: "sw failed" }), h("span", {}, "failed"), h("i", { class: "sw evaluating" }), h("span", {}, "evaluating")]));
  const toolbar = h("div", { class: "toolbar" },
    colour,
    h("button", { onclick: () => tree.zoom(1.25), title: "zoom in" }, "+"),
    h("button", { onclick: () => tree.zoom(0.8), title: "zoom out" }, "−"),
    h("button", { onclick: () => tree.fit() }, "fit"),
    h("button", { onclick: () => tree.expandAll() }, "expand all"),
    h("button", { onclick: () => tree.collapseFailed() }, "fold failed"),
    goto, key, info);
  const wrap = h("div", { class: "tree-wrap" });
  const element = h("section", { class: "tree-page" }, toolbar, wrap);
  const tree = new TreeView(wrap, {
    onOpen: (id) => { location.hash = `#/node/${id}`; },
    loadChildren: (id, offset, limit) => api(`/api/children/${id}?offset=${offset}&limit=${limit}`),
  });
  legend();
  return {
    name: "tree", element, tree,
    async refresh() {
      const data = await api(`/api/tree?limit=${this.limit || TREE_LIMIT}`);
      tree.setData(data);
      info.textContent = data.shown < data.total
        ? `showing ${data.shown} of ${data.total} nodes (best, newest and their ancestors; "+N more" loads the rest)`
        : `${data.total} nodes · wheel to zoom, drag to pan, ▾ to fold`;
    },
  };
}

// -- one node -------------------------------------------------------------------------------
function delta(directions, key, value, base) {
  if (typeof value !== "number" || typeof base !== "number") return h("td");
  const d = value - base;
  const rel = base !== 0 ? ` (${d >= 0 ? "+" : "−"}${Math.abs((100 * d) / base).toFixed(1)}%)` : "";
  const cls = changeClass(directions, key, d);
  return h("td", { class: `num delta ${cls}` }, signed(d, Number.isInteger(value) && Number.isInteger(base) || Math.abs(d) >= 100 ? 0 : 4) + rel);
}

function section(title, ...body) {
  return h("section", { class: "card" }, h("h2", {}, title), ...body);
}

function pre(text, cls = "") {
  return h("pre", { class: `text ${cls}` }, text);
}

export function traceCard(t) {
  const meta = [
    h("span", { class: `role role-${t.role}` }, t.role),
    t.node_id !== null ? h("a", { href: `#/node/${t.node_id}` }, `node ${t.node_id}`) : null,
    t.role === "engineer" && t.attempt ? h("span", { class: "retry" }, `repair ${t.attempt}`) : h("span", { class: "muted" }, `attempt ${(t.attempt || 0) + 1}`),
    h("span", { class: "muted" }, t.kind),
    t.model ? h("span", {}, t.model) : null,
    t.tokens_in !== null || t.tokens_out !== null ? h("span", {}, `${t.tokens_in || 0} → ${t.tokens_out || 0} tokens`) : null,
    t.cost !== null ? h("span", {}, `$${Number(t.cost).toFixed(4)}`) : null,
    t.latency_s !== null ? h("span", {}, duration(t.latency_s)) : null,
    h("span", { class: "muted" }, when(t.created)),
  ];
  const body = [];
  if (t.error) body.push(h("div", { class: "error" }, t.error));
  if (t.response) body.push(h("div", { class: "label" }, "response"), pre(t.response, "response"));
  if (t.decision && Object.keys(t.decision).length) {
    const line = JSON.stringify(t.decision);
    body.push(line.length <= 160
      ? h("div", { class: "decision" }, h("span", { class: "label" }, "decision "), h("code", {}, line))
      : h("details", { open: !t.response }, h("summary", {}, "decision"), pre(JSON.stringify(t.decision, null, 2), "json")));
  }
  if (t.prompt) body.push(h("details", {}, h("summary", {}, `prompt (${t.prompt.length.toLocaleString()} chars)`), pre(t.prompt, "prompt")));
  return h("article", { class: "trace", "data-trace": t.id }, h("header", {}, h("b", {}, `#${t.id}`), ...meta), ...body);
}

async function showNode(id) {
  const state = { key: null };
  async function load() {
    const [n, tr, directions] = await Promise.all([api(`/api/node/${id}`), api(`/api/node/${id}/traces?limit=1000`), metricDirections()]);
    const key = JSON.stringify([n.status, n.fitness, n.evaluations.length, n.children.length, tr.total, n.commit_sha, n.analysis]);
    if (key === state.key) return;
    state.key = key;
    const y = window.scrollY;
    view.replaceChildren(renderNode(n, tr, directions));
    window.scrollTo(0, y);
  }
  await load();
  // An evaluating node's stage, step and training loss, from the sandbox's progress, at every poll.
  function progress(inFlight, running) {
    const box = document.getElementById("progress");
    if (!box) return;
    const p = inFlight.find((x) => x.id === id);
    if (!running) { box.textContent = "interrupted: the run is stopped (`archlab run` resumes it)"; return; }
    if (!p) return;
    const words = [p.stage];
    if (p.steps) words.push(`step ${p.step + 1}/${p.steps}`);
    if (p.loss !== null && p.loss !== undefined) words.push(`loss ${p.loss.toFixed(3)}`);
    if (p.elapsed_s !== undefined) words.push(`${Math.round(p.elapsed_s)} s of up to ${Math.round(p.limit_s)} s`);
    box.replaceChildren(h("span", { "data-testid": "progress-text" }, words.join(" · ")),
      p.steps ? h("progress", { value: p.step + 1, max: p.steps }) : null);
  }
  return { name: "node", refresh: load, progress };
}

function renderNode(n, tr, directions) {
  const head = h("div", { class: "node-head" },
    h("h1", {}, `Node ${n.id}`),
    statusBadge(n.status, n.reason),
    n.operator ? h("span", { class: "badge op" }, n.operator) : null,
    n.island !== null && n.island !== undefined ? h("span", { class: "badge op", "data-testid": "island" }, `island ${n.island}`) : null,
    n.fitness !== null ? h("span", { class: `fitness ${n.fitness >= 0 ? "good" : "bad"}` }, `fitness ${signed(n.fitness)}` +
      (n.fitness_std !== null && n.fitness_std !== undefined ? ` ± ${n.fitness_std.toFixed(4)}` : "") +
      (n.seeds > 1 ? ` (${n.tier}, ${n.seeds} seeds; search ${signed(n.search_fitness)})` : "")) : null,
    h("span", { class: "nav-links" },
      n.prev !== null ? h("a", { href: `#/node/${n.prev}` }, `← #${n.prev}`) : null,
      n.parent ? h("a", { href: `#/node/${n.parent.id}` }, `parent #${n.parent.id}`) : h("span", { class: "muted" }, "root"),
      n.parent ? h("a", { href: `#/compare/${n.parent.id}/${n.id}` }, "compare") : null,
      h("a", { href: `#/?focus=${n.id}` }, "in tree"),
      n.next !== null ? h("a", { href: `#/node/${n.next}` }, `#${n.next} →`) : null));
  const out = h("div", { class: "node-page", "data-testid": "node-page", "data-node": n.id }, head, steerPanel(n));
  out.append(h("p", { class: "motivation" }, n.motivation || h("span", { class: "muted" }, "no motivation recorded")));
  if (n.status === "failed" && n.detail) out.append(h("div", { class: "error" }, `${n.reason}: ${n.detail}`));
  if (n.status === "failed") out.append(failedLogLink(n) || "");
  if (n.status === "evaluating") out.append(section("Progress", h("div", { id: "progress", class: "progress" }, "waiting for the sandbox ...")));
  if (n.children.length) {
    out.append(h("p", { class: "children" }, "children: ",
      n.children.map((c) => h("a", { href: `#/node/${c.id}`, class: `chip st-${c.status}` },
        `#${c.id} ${c.operator || ""} ${c.fitness !== null ? signed(c.fitness) : c.status}`))));
  }

  // Metrics beside the parent and the root.
  const rows = n.metrics_table.map((m) => h("tr", {},
    h("th", {}, m.metric), h("td", { class: "num" }, num(m.node)),
    h("td", { class: "num" }, num(m.parent)), delta(directions, m.metric, m.node, m.parent),
    h("td", { class: "num" }, num(m.root)), delta(directions, m.metric, m.node, m.root)));
  out.append(section("Metrics",
    rows.length ? h("table", { class: "metrics" },
      h("thead", {}, h("tr", {}, h("th", {}, "metric"), h("th", {}, `node ${n.id}`),
        h("th", {}, n.parent ? `parent #${n.parent.id}` : "parent"), h("th", {}, "Δ parent"),
        h("th", {}, "root #0"), h("th", {}, "Δ root"))),
      h("tbody", {}, rows)) : h("p", { class: "muted" }, "no metrics (not evaluated yet, or it failed before training)")));

  out.append(curvesSection(n) || "");
  out.append(section("Analysis", n.analysis ? h("p", { class: "analysis" }, n.analysis) : h("p", { class: "muted" }, "no analysis yet")));

  if (n.knowledge.length) {
    out.append(section("Knowledge used", h("ul", { class: "knowledge" }, n.knowledge.map((k) => h("li", {},
      k.kind === "experience"
        ? [h("a", { href: `#/node/${k.node}` }, k.title), k.text ? h("span", { class: "muted" }, ` — ${k.text}`) : null]
        : h("details", {}, h("summary", {}, h("b", {}, k.title), h("span", { class: "muted" }, ` [${k.id}]${k.source ? " · " + k.source : ""}`)),
            k.html ? h("div", { class: "entry", html: k.html }) : h("p", { class: "muted" }, "this entry is not in the knowledge base any more")))))));
  }

  if (n.design) {
    const before = (n.parent && n.parent.design) || {};
    out.append(section("Design", h("table", { class: "design" }, h("tbody", {},
      Object.entries(n.design).map(([k, v]) => h("tr", { class: k in before && before[k] !== v ? "changed" : "" },
        h("th", {}, k), h("td", {}, JSON.stringify(v)),
        h("td", { class: "muted" }, k in before && before[k] !== v ? `was ${JSON.stringify(before[k])}` : "")))))));
  }

  const code = h("div", { class: "code-box", "data-testid": "diff", html: n.diff_html });
  let full = false;
  const toggle = h("button", { onclick: async () => {
    full = !full;
    toggle.textContent = full ? "show diff" : "show full code";
    code.innerHTML = full ? (await api(`/api/node/${n.id}/code`)).html : n.diff_html;
  } }, "show full code");
  out.append(section(n.parent ? `Code: diff against parent #${n.parent.id}` : "Code (the root)",
    n.has_parent_code ? h("div", { class: "toolbar small" }, toggle, h("span", { class: "muted mono" }, n.commit_sha || "")) : null, code));

  if (n.evaluations.length) {
    out.append(section("Evaluations", h("table", { class: "evals" },
      h("thead", {}, h("tr", {}, ["#", "kind", "tier", "seed", "result", "val_loss", "tokens/s", "wall", "environment", "log"].map((c) => h("th", {}, c)))),
      h("tbody", {}, n.evaluations.map((e) => {
        const logCell = h("td");
        if (e.has_log) {
          const box = h("pre", { class: "text log", hidden: true });
          logCell.append(h("button", { class: "small", onclick: async () => {
            if (box.hidden && !box.textContent) {
              const r = await fetch(`/api/evaluation/${e.id}/log`);
              box.textContent = r.ok ? await r.text() : `(${(await r.json().catch(() => ({}))).error || "log not available"})`;
            }
            box.hidden = !box.hidden;
          } }, "log"));
          logCell.append(box);
        }
        return h("tr", { class: e.ok ? "" : "failed" },
          h("td", {}, e.id), h("td", {}, e.kind), h("td", {}, e.tier), h("td", {}, e.seed),
          h("td", {}, e.ok ? "ok" : `${e.reason}${e.detail ? ": " + e.detail.slice(0, 160) : ""}`),
          h("td", { class: "num" }, num(e.metrics.val_loss)), h("td", { class: "num" }, num(e.metrics.tokens_per_s, 0)),
          h("td", { class: "num" }, duration(e.metrics.wall_s)),
          h("td", { class: "muted" }, Object.entries(e.env || {}).filter(([k, v]) => k !== "weights" && v !== null)
            .map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ")),
          logCell);
      })))));
  }

  out.append(section(`Traces (${tr.total})`,
    tr.by_role.length ? h("p", { class: "muted" }, tr.by_role.map((r) => `${r.role}: ${r.calls}`).join(" · ")) : null,
    h("div", { class: "traces", "data-testid": "node-traces" },
      tr.traces.length ? tr.traces.map(traceCard) : h("p", { class: "muted" }, "no traces for this node"))));
  return out;
}

// -- plots ----------------------------------------------------------------------------------
async function showPlots() {
  async function load() {
    const p = await api("/api/plots");
    const open = (id) => { location.hash = `#/node/${id}`; };
    const best = (points, xLabel, xFormat, testid, title) => chart({
      title, xLabel, yLabel: "fitness", xFormat, xTicks: xFormat === duration ? timeTicks : undefined, onPoint: open, testid,
      series: [
        { label: "every node", colour: "#9aa5b1", type: "scatter", r: 2.5,
          points: points.filter((q) => q.fitness !== null).map((q) => ({ x: q.x, y: q.fitness, id: q.id })) },
        { label: "best so far", colour: "#1a9850", type: "step", markers: false, extend: true,
          points: points.map((q) => ({ x: q.x, y: q.best, id: q.id })) },
        { label: "improvements", colour: "#1a9850", type: "scatter", r: 4.5,
          points: points.filter((q) => q.improved).map((q) => ({ x: q.x, y: q.best, id: q.id, tip: `node ${q.id}: new best ${signed(q.best)}` })) },
      ],
    });
    const figures = [
      best(p.best_over_time, "run time", duration, "plot-best-time", "Best-so-far fitness over time"),
      best(p.best_over_evaluations, "evaluations", undefined, "plot-best-evals", "Best-so-far fitness over evaluations"),
    ];
    for (const axis of p.pareto) {
      figures.push(chart({
        title: `Pareto front: validation loss vs ${axis.label}`, xLabel: axis.label, yLabel: "val_loss (nats/byte)",
        onPoint: open, testid: `plot-pareto-${axis.key}`,
        note: axis.higher_is_better ? "lower-right is better: fast and good" : "lower-left is better: cheap and good",
        series: [
          { label: "nodes", colour: "#9aa5b1", type: "scatter", r: 3, points: axis.points },
          { label: "Pareto front", colour: "#d95f02", type: "line", markers: true, r: 4.5, points: axis.front },
          { label: "root", colour: "#2b7bb9", type: "scatter", r: 5, points: axis.points.filter((q) => q.id === 0) },
        ],
      }));
    }
    figures.push(chart({
      title: "Nodes that beat the root vs compute spent", xLabel: "evaluation compute (hours)", yLabel: "nodes with fitness > 0",
      onPoint: open, testid: "plot-discovery", note: "the discovery-scaling curve (ASI-Arch)", yInteger: true,
      series: [{ label: "beat the root", colour: "#7570b3", type: "step", markers: true, r: 2.5, points: p.discovery }],
    }));
    const spendSeries = [{ label: "evaluation compute (hours)", colour: "#2b7bb9", type: "line", points: p.compute }];
    if (p.spend.length) spendSeries.push({ label: "LLM cost ($)", colour: "#d95f02", type: "line", points: p.spend.map((q) => ({ x: q.x, y: q.cost })) });
    figures.push(chart({
      title: "Spend over time", xLabel: "run time", yLabel: p.spend.length ? "hours / $" : "compute hours", xFormat: duration, xTicks: timeTicks,
      testid: "plot-spend", series: spendSeries,
      note: p.spend.length ? `${p.spend[p.spend.length - 1].tokens.toLocaleString()} LLM tokens so far` : "no LLM spend: the offline brain makes no paid calls",
    }));
    const run = await api("/api/run");
    const note = run.tier_agreement && run.tier_agreement.length ? [agreementNote(run.tier_agreement)] : [];
    view.replaceChildren(...note, h("div", { class: "plots", "data-testid": "plots" }, figures));
  }
  await load();
  return { name: "plots", refresh: load };
}

// -- all traces -------------------------------------------------------------------------------
async function showTraces(params) {
  const role = params.get("role") || "";
  const offset = Number(params.get("offset") || 0);
  const limit = 50;
  async function load() {
    const tr = await api(`/api/traces?offset=${offset}&limit=${limit}${role ? "&role=" + encodeURIComponent(role) : ""}`);
    const all = await api("/api/traces?limit=1");
    const link = (o, r = role) => `#/traces?offset=${Math.max(0, o)}${r ? "&role=" + encodeURIComponent(r) : ""}`;
    const summary = h("table", { class: "metrics" },
      h("thead", {}, h("tr", {}, ["role", "calls", "tokens in", "tokens out", "cost", "latency", "errors"].map((c) => h("th", {}, c)))),
      h("tbody", {}, all.by_role.map((r) => h("tr", { class: r.role === role ? "changed" : "" },
        h("th", {}, h("a", { href: link(0, r.role === role ? "" : r.role) }, r.role)), h("td", { class: "num" }, r.calls),
        h("td", { class: "num" }, num(r.tokens_in, 0)), h("td", { class: "num" }, num(r.tokens_out, 0)),
        h("td", { class: "num" }, `$${Number(r.cost).toFixed(4)}`), h("td", { class: "num" }, duration(r.latency_s)),
        h("td", { class: "num" }, r.errors)))));
    const pager = h("div", { class: "toolbar" },
      offset > 0 ? h("a", { href: link(offset - limit), class: "button" }, "← previous") : null,
      h("span", { class: "muted" }, `${tr.total ? offset + 1 : 0}–${Math.min(offset + limit, tr.total)} of ${tr.total}${role ? " " + role + " traces" : " traces"}`),
      offset + limit < tr.total ? h("a", { href: link(offset + limit), class: "button" }, "next →") : null);
    view.replaceChildren(h("div", { class: "traces-page" }, h("h1", {}, "Traces"),
      h("p", { class: "muted" }, "Every decision and model call of the run in order: prompt, response, tokens, cost, latency and retries."),
      summary, pager, h("div", { class: "traces" }, tr.traces.map(traceCard)), pager.cloneNode(true)));
  }
  await load();
  return { name: "traces", refresh: load };
}

window.addEventListener("hashchange", show);
show();
poll();
