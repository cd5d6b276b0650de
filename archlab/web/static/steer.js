// Steering from the page (`archlab serve --allow-steer`): the server printed a URL with ?token=...;
// with it the node page shows pin / veto buttons, a note box and stop. Without it, nothing: the UI
// is read-only, and the server has no route that writes.
import { h } from "./dom.js";

const TOKEN = new URLSearchParams(location.search).get("token");

async function send(order, status) {
  status.textContent = "sending ...";
  const response = await fetch("/api/steer", {
    method: "POST", headers: { "Content-Type": "application/json", "X-Archlab-Token": TOKEN }, body: JSON.stringify(order),
  });
  const body = await response.json().catch(() => ({}));
  status.textContent = response.ok ? "recorded: the driver acts on it before its next candidate" : `refused: ${body.error || response.status}`;
}

// Badges for what steering did to the node (shown to everyone), and, with the token, the controls.
export function steerPanel(n) {
  const badges = (n.steering || []).map((s) => h("span", { class: `badge steer-${s}`, "data-testid": `steer-${s}` }, s));
  if (!TOKEN) return badges.length ? h("p", { class: "steering" }, badges) : null;
  const status = h("span", { class: "muted", "data-testid": "steer-status" });
  const note = h("input", { type: "text", placeholder: "a hypothesis for the next researcher", "data-testid": "steer-note-text" });
  const button = (label, order, testid) => h("button", { type: "button", "data-testid": testid, onclick: () => send(order(), status) }, label);
  return h("div", { class: "steering" }, badges,
    button("pin this branch", () => ({ action: "pin", node: n.id }), "steer-pin"),
    n.id !== 0 ? button("veto this node", () => ({ action: "veto", node: n.id }), "steer-veto") : null,
    note, button("send note", () => ({ action: "note", text: note.value }), "steer-note"),
    button("stop after the candidates in flight", () => ({ action: "stop" }), "steer-stop"), status);
}
