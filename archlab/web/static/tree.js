// The search tree as an interactive SVG genealogy: root on the left, one column per depth.
// Zoom with the wheel (or the buttons), pan by dragging, click a node to open it, click its
// triangle to collapse or expand its subtree. Big runs arrive summarised: a "+N more" row
// stands for children the server left out and loads them page by page when clicked.

import { h, num, signed } from "./dom.js";

const DX = 240; // pixels per depth
const DY = 26; // pixels per row
const R = 7; // node radius
const STATUS_COLOURS = { done: "#1a9850", failed: "#d73027", evaluating: "#2b7bb9" };

function mix(a, b, t) {
  const pa = [1, 3, 5].map((i) => parseInt(a.slice(i, i + 2), 16));
  const pb = [1, 3, 5].map((i) => parseInt(b.slice(i, i + 2), 16));
  return "#" + pa.map((v, i) => Math.round(v + (pb[i] - v) * Math.max(0, Math.min(1, t))).toString(16).padStart(2, "0")).join("");
}

// Green above the root, red below, grey near 0, on one scale for both sides (a tiny loss stays
// grey); the tree's nodes and the archive's cells share it.
export function fitnessColour(f, lo, hi) {
  const span = Math.max(hi, -lo);
  if (!span) return "#b8c2cc";
  return mix("#b8c2cc", f >= 0 ? "#1a9850" : "#d73027", Math.abs(f) / span);
}

export class TreeView {
  constructor(container, { onOpen, loadChildren }) {
    this.container = container;
    this.onOpen = onOpen;
    this.loadChildren = loadChildren;
    this.nodes = new Map();
    this.collapsed = new Set();
    this.pages = new Map(); // parent id -> children fetched with "+N more"
    this.seen = null; // ids of the previous render, to mark new nodes
    this.colour = "fitness";
    this.best = null;
    this.t = { x: 40, y: 40, k: 1 };
    this.fitted = false;
    this.svg = h("svg", { class: "tree-svg", "data-testid": "tree" });
    this.viewport = h("g", { class: "viewport" });
    this.svg.append(this.viewport);
    container.append(this.svg);
    this._interactions();
  }

  // -- data ----------------------------------------------------------------------------------
  setData(data) {
    const fresh = new Map();
    for (const n of data.nodes) fresh.set(n.id, n);
    for (const [parent, rows] of this.pages) for (const n of rows) if (!fresh.has(n.id)) fresh.set(n.id, n);
    this.nodes = fresh;
    this.best = data.best;
    this.total = data.total;
    this.render();
  }

  addChildren(parent, rows) {
    const page = this.pages.get(parent) || [];
    const have = new Set(page.map((n) => n.id));
    for (const n of rows) if (!have.has(n.id)) page.push(n);
    this.pages.set(parent, page);
    for (const n of rows) if (!this.nodes.has(n.id)) this.nodes.set(n.id, n);
    this.render();
  }

  // -- layout: leaves take consecutive rows, a parent sits between its first and last child ----
  layout() {
    const kids = new Map();
    const roots = [];
    for (const n of this.nodes.values()) {
      if (n.parent_id === null || !this.nodes.has(n.parent_id)) roots.push(n);
      else (kids.get(n.parent_id) || kids.set(n.parent_id, []).get(n.parent_id)).push(n);
    }
    for (const list of kids.values()) list.sort((a, b) => a.id - b.id);
    roots.sort((a, b) => a.id - b.id);
    const pos = new Map();
    const stubs = [];
    let row = 0;
    const place = (n, depth) => {
      const children = this.collapsed.has(n.id) ? [] : kids.get(n.id) || [];
      let y;
      if (children.length) {
        const ys = children.map((c) => place(c, depth + 1));
        y = (ys[0] + ys[ys.length - 1]) / 2;
      }
      const hidden = n.children - (kids.get(n.id) || []).length;
      if (hidden > 0 && !this.collapsed.has(n.id)) stubs.push({ parent: n, depth: depth + 1, row: row++, count: hidden });
      if (y === undefined) y = stubs.length && stubs[stubs.length - 1].parent === n && !children.length ? stubs[stubs.length - 1].row : row++;
      pos.set(n.id, { x: depth, y, node: n, kids: (kids.get(n.id) || []).length });
      return y;
    };
    for (const r of roots) place(r, 0);
    return { pos, stubs, rows: row };
  }

  colourOf(n) {
    if (this.colour === "status") return STATUS_COLOURS[n.status] || "#999";
    if (n.status !== "done" || n.fitness === null) return "#ffffff";
    return fitnessColour(n.fitness, this.lo, this.hi);
  }

  // -- drawing ------------------------------------------------------------------------------
  render() {
    const { pos, stubs } = this.layout();
    const done = [...this.nodes.values()].filter((n) => n.status === "done" && n.fitness !== null);
    this.hi = Math.max(0, ...done.map((n) => n.fitness));
    this.lo = Math.min(0, ...done.map((n) => n.fitness));
    const onBestPath = new Set();
    for (let id = this.best; id !== null && id !== undefined && this.nodes.has(id); id = this.nodes.get(id).parent_id) onBestPath.add(id);

    const edges = h("g", { class: "edges" });
    const nodes = h("g", { class: "nodes" });
    const isNew = (id) => this.seen && !this.seen.has(id);
    const labels = new Map();
    for (const p of pos.values()) {
      const g = this._node(p, onBestPath, isNew(p.node.id));
      labels.set(p.node.id, g.querySelector("text:not(.toggle)"));
      nodes.append(g);
    }
    this.viewport.replaceChildren(edges, nodes);
    // Edges leave a parent after its label (measured once it is in the document), so no line
    // runs through the text; a detached or unmeasurable label falls back to the circle.
    const end = new Map();
    for (const [id, text] of labels) {
      let width = 0;
      try { width = text.getBBox().width; } catch (e) { width = 0; }
      end.set(id, width ? Math.min(Number(text.getAttribute("x")) + width + 6, DX - 40) : R);
    }
    for (const p of pos.values()) {
      const n = p.node;
      const parent = pos.get(n.parent_id);
      if (parent) edges.append(this._edge(parent, p, onBestPath.has(n.id), false, end.get(n.parent_id)));
    }
    for (const s of stubs) {
      const parent = pos.get(s.parent.id);
      edges.append(this._edge(parent, { x: s.depth, y: s.row }, false, true, end.get(s.parent.id)));
      nodes.append(h("g", { class: "stub", transform: `translate(${s.depth * DX},${s.row * DY})`, "data-more": s.parent.id,
                             onclick: (e) => { e.stopPropagation(); this._more(s.parent); } },
        h("rect", { x: -R, y: -9, width: 130, height: 18, rx: 9 }),
        h("text", { x: 4, y: 4 }, `+${s.count} more children`)));
    }
    this.seen = new Set(this.nodes.keys());
    this._apply();
    if (!this.fitted && pos.size) {
      this.fit();
      this.fitted = true;
    }
  }

  _edge(a, b, best, stub = false, start = R) {
    const x1 = a.x * DX + start, y1 = a.y * DY, x2 = b.x * DX - R, y2 = b.y * DY;
    const mx = (x1 + x2) / 2;
    return h("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, class: `edge${best ? " best" : ""}${stub ? " stub-edge" : ""}` });
  }

  _node(p, onBestPath, isNew) {
    const n = p.node;
    const collapsed = this.collapsed.has(n.id);
    const label = [h("tspan", { class: "nid" }, `#${n.id}`)];
    if (n.status === "done" && n.fitness !== null) label.push(h("tspan", { class: n.fitness >= 0 ? "fit good" : "fit bad", dx: 6 }, signed(n.fitness)));
    else label.push(h("tspan", { class: `fit st-${n.status}`, dx: 6 }, n.status === "failed" ? `failed: ${n.reason || "?"}` : n.status));
    if (n.operator) label.push(h("tspan", { class: "op", dx: 6 }, n.operator));
    if (collapsed && n.size > 1) label.push(h("tspan", { class: "folded", dx: 6 }, `(+${n.size - 1} hidden)`));
    for (const s of n.steering || []) label.push(h("tspan", { class: `steer-${s}`, dx: 6, "data-testid": `tree-steer-${s}` }, s));  // archlab steer
    const title = `node ${n.id} · ${n.status}${n.reason ? " (" + n.reason + ")" : ""}` +
      (n.fitness !== null ? ` · fitness ${signed(n.fitness)}` : "") + (n.val_loss !== null ? ` · val_loss ${num(n.val_loss)}` : "") +
      ` · ${n.operator || ""} · ${n.children} child${n.children === 1 ? "" : "ren"}, ${n.size - 1} descendants`;
    const g = h("g", {
      class: `node st-${n.status}${this.best === n.id ? " best" : ""}${onBestPath.has(n.id) ? " on-best" : ""}${isNew ? " fresh" : ""}`,
      transform: `translate(${p.x * DX},${p.y * DY})`, "data-node": n.id, tabindex: 0, role: "link",
      onclick: (e) => { e.stopPropagation(); this.onOpen(n.id); },
      onkeydown: (e) => { if (e.key === "Enter") this.onOpen(n.id); },
    },
      h("title", {}, title),
      h("circle", { r: R, fill: this.colourOf(n), stroke: this.colour === "fitness" && n.status !== "done" ? STATUS_COLOURS[n.status] || "#999" : "#333" }),
      h("text", { x: p.kids || n.children ? 24 : 12, y: 4 }, label));
    if (p.kids || (n.children && collapsed)) {
      g.append(h("text", { class: "toggle", x: 10, y: 5, "data-toggle": n.id,
                           onclick: (e) => { e.stopPropagation(); this.toggle(n.id); } }, collapsed ? "▸" : "▾"));
    }
    return g;
  }

  toggle(id) {
    if (this.collapsed.has(id)) this.collapsed.delete(id);
    else this.collapsed.add(id);
    this.render();
  }

  expandAll() {
    this.collapsed.clear();
    this.render();
  }

  collapseFailed() {
    for (const n of this.nodes.values()) if (n.status === "failed" && n.children) this.collapsed.add(n.id);
    this.render();
  }

  async _more(parent) {
    const have = [...this.nodes.values()].filter((n) => n.parent_id === parent.id).length;
    const page = await this.loadChildren(parent.id, 0, have + 100);
    this.addChildren(parent.id, page.nodes);
  }

  // -- zoom and pan ---------------------------------------------------------------------------
  _apply() {
    this.viewport.setAttribute("transform", `translate(${this.t.x},${this.t.y}) scale(${this.t.k})`);
  }

  zoom(factor, cx, cy) {
    const rect = this.svg.getBoundingClientRect();
    cx = cx ?? rect.width / 2;
    cy = cy ?? rect.height / 2;
    const k = Math.max(0.05, Math.min(4, this.t.k * factor));
    this.t.x = cx - ((cx - this.t.x) * k) / this.t.k;
    this.t.y = cy - ((cy - this.t.y) * k) / this.t.k;
    this.t.k = k;
    this._apply();
  }

  fit() {
    const box = this.viewport.getBBox();
    const rect = this.svg.getBoundingClientRect();
    if (!box.width || !rect.width) return;
    const k = Math.min(1.4, (rect.width - 40) / box.width, (rect.height - 40) / box.height);
    this.t = { k, x: 20 - box.x * k, y: 20 - box.y * k + Math.max(0, (rect.height - 40 - box.height * k) / 2) };
    this._apply();
  }

  focus(id) {
    const g = this.viewport.querySelector(`[data-node="${id}"]`);
    if (!g) return false;
    const rect = this.svg.getBoundingClientRect();
    const m = /translate\(([-\d.]+),([-\d.]+)\)/.exec(g.getAttribute("transform"));
    this.t.x = rect.width / 3 - Number(m[1]) * this.t.k;
    this.t.y = rect.height / 2 - Number(m[2]) * this.t.k;
    this._apply();
    g.classList.add("focused");
    return true;
  }

  _interactions() {
    this.svg.addEventListener("wheel", (e) => {
      e.preventDefault();
      const rect = this.svg.getBoundingClientRect();
      this.zoom(Math.exp(-e.deltaY * 0.0015), e.clientX - rect.left, e.clientY - rect.top);
    }, { passive: false });
    let drag = null;
    this.svg.addEventListener("pointerdown", (e) => {
      if (e.target.closest(".node, .stub")) return;
      drag = { x: e.clientX, y: e.clientY, tx: this.t.x, ty: this.t.y };
      this.svg.setPointerCapture(e.pointerId);
      this.svg.classList.add("dragging");
    });
    this.svg.addEventListener("pointermove", (e) => {
      if (!drag) return;
      this.t.x = drag.tx + e.clientX - drag.x;
      this.t.y = drag.ty + e.clientY - drag.y;
      this._apply();
    });
    const end = () => { drag = null; this.svg.classList.remove("dragging"); };
    this.svg.addEventListener("pointerup", end);
    this.svg.addEventListener("pointercancel", end);
  }
}
