// Small DOM and formatting helpers shared by the views. Text always goes in as text nodes;
// the only HTML inserted is the server's Pygments output (passed as the `html` attribute).

export function h(tag, attrs = {}, ...children) {
  const svg = ["svg", "g", "path", "circle", "text", "tspan", "line", "rect", "title", "polyline", "defs", "linearGradient", "stop"].includes(tag);
  const e = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.setAttribute("class", v);
    else if (k === "html") e.innerHTML = v;
    else if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

export async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

// Which way each metric improves: the server's one table (METRIC_DIRECTIONS in
// archlab/commands/status.py, served as /api/run's metric_directions), fetched once.
let directions = null;
export function metricDirections() {
  directions = directions || api("/api/run").then((run) => run.metric_directions, (e) => { directions = null; throw e; });
  return directions;
}

// "better", "worse" or "" for a change d of the metric `key`, by that table: the first of "lower"
// and "higher" with a fragment in the metric's lower-cased name says which way is better.
export function changeClass(table, key, d) {
  const name = key.toLowerCase();
  const way = ["lower", "higher"].find((w) => table[w].some((fragment) => name.includes(fragment)));
  if (!way || d === 0) return "";
  return (way === "lower") === (d < 0) ? "better" : "worse";
}

export function num(v, digits = 4) {
  if (v === null || v === undefined || v === "") return "";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v) && Math.abs(v) >= 1000) return v.toLocaleString("en-US");
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en-US");
  return v.toFixed(digits);
}

export function signed(v, digits = 4) {
  if (v === null || v === undefined) return "";
  return (v > 0 ? "+" : v < 0 ? "−" : "±") + Math.abs(v).toFixed(digits);
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 90) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(2)} h`;
}

export function when(ts) {
  if (!ts) return "";
  return new Date(ts * 1000).toLocaleString();
}

export function statusBadge(status, reason) {
  return h("span", { class: `badge status-${status}` }, status + (reason ? `: ${reason}` : ""));
}
