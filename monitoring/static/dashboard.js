// XTB hedge monitor: polls /api/overview and rebuilds the page.
// Every name and value comes from bot payloads, which anyone with the ingest token can write, so
// the DOM is built with createElement/textContent only; never innerHTML.
"use strict";

const REFRESH_MS = 1500;
const TOKEN_KEY = "telemetry-token"; // same sessionStorage key as the original card.html

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function append(parent, ...children) {
  for (const child of children) if (child) parent.appendChild(child);
  return parent;
}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { "x-auth-token": token } : {};
}

function ago(ms) {
  if (ms === null || ms === undefined || ms > 1e15) return "never";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  if (s < 48 * 3600) return Math.floor(s / 3600) + "h ago";
  return Math.floor(s / 86400) + "d ago";
}

function signed(text) {
  if (text === null || text === undefined) return "unknown";
  const str = String(text);
  return str.startsWith("-") || Number(str) === 0 ? str : "+" + str;
}

function signClass(text) {
  const n = Number(text);
  if (text === null || text === undefined || Number.isNaN(n)) return "unknown";
  return n > 0 ? "pos" : n < 0 ? "neg" : "flat";
}

function timeOf(ts) {
  return new Date(Number(ts) * 1000).toLocaleTimeString([], { hour12: false });
}

function fact(label, value, className) {
  const row = el("div", "fact");
  append(row, el("span", "label", label), el("span", "value " + (className || ""), value));
  return row;
}

function roleCard(role, view, account) {
  const card = el("div", "role");
  const head = el("div", "role-head");
  append(head, el("span", "role-tag", role));
  if (!view) {
    append(head, el("span", "dot dot-off", ""), el("span", "muted", "no heartbeat"));
    append(card, head, el("div", "role-name", account || "—"));
    card.classList.add("missing");
    return card;
  }
  const online = view.online;
  append(head, el("span", "dot " + (online ? "dot-on" : "dot-off")), el("span", online ? "ok" : "bad", online ? "online" : "offline"));
  if (view.direction) append(head, el("span", "dir dir-" + view.direction, view.direction));
  card.classList.add(online ? "is-online" : "is-offline");
  const position = el("div", "position " + signClass(view.position), signed(view.position));
  if (view.position === null && view.last_known_position !== null && view.last_known_position !== undefined) {
    position.title = "stale reading";
  }
  append(card, head, el("div", "role-name", view.name), el("div", "sub", [view.venue, view.symbol].filter(Boolean).join(" · ")), position);
  if (view.position === null && view.last_known_position !== null && view.last_known_position !== undefined) {
    const age = view.position_age_secs !== null ? ago(view.position_age_secs * 1000) : "";
    append(card, el("div", "stale", "last known " + signed(view.last_known_position) + " " + age));
  }
  append(card,
    fact("balance", view.balance === null || view.balance === undefined ? "unknown" : view.balance),
    fact("latency", view.latency_ms === null || view.latency_ms === undefined ? "—" : Math.round(view.latency_ms) + " ms"),
    fact("heartbeat", ago(view.age_ms), online ? "" : "bad"));
  if (view.stage) append(card, fact("stage", view.stage));
  if (view.stream_state) {
    const heard = view.stream_age_secs === null || view.stream_age_secs === undefined ? "" : " · " + ago(view.stream_age_secs * 1000);
    append(card, fact("stream", view.stream_state + heard, view.stream_state === "live" ? "" : "bad"));
  }
  for (const [bucket, used] of Object.entries(view.rate_budget || {})) {
    append(card, fact(bucket.replace(/^lighter:/, "").split(":")[0] + " budget", used.used + " / " + used.limit + " a minute",
                      used.used >= used.limit * 0.8 ? "bad" : ""));
  }
  return card;
}

function cycleLine(cycle, now) {
  const line = el("div", "cycle");
  if (!cycle) {
    append(line, el("span", "muted", "no active cycle"));
    return line;
  }
  append(line, el("span", "stage stage-" + String(cycle.stage), cycle.stage || "?"), el("span", "cycle-id", cycle.cycle_id));
  if (cycle.stage_started_at) append(line, el("span", "muted", "for " + ago(now - cycle.stage_started_at * 1000).replace(" ago", "")));
  return line;
}

function historyList(cycles) {
  const list = el("div", "history");
  for (const c of cycles || []) {
    const item = el("span", "hist outcome-" + String(c.outcome || "active"));
    item.textContent = (c.outcome || c.stage || "?") + (c.reason ? " (" + c.reason + ")" : "");
    item.title = String(c.cycle_id);
    list.appendChild(item);
  }
  return list;
}

// The last finished cycle's report: realised PnL per venue (trading, fees, funding), dust, worst net.
function reportLine(cycles) {
  const last = (cycles || []).find((c) => c.report && (c.report.pnl_split || c.report.worst_net.reads));
  const line = el("div", "report");
  if (!last) return line;
  const report = last.report;
  append(line, el("span", "muted", "last cycle " + last.cycle_id + ":"));
  for (const [role, part] of Object.entries(report.pnl_split || {})) {
    const text = part.error ? role + " split unknown"
      : role + " " + signed(part.net) + " (trading " + signed(part.trading) + ", fees "
        + signed(part.fees) + ", funding " + signed(part.funding) + ")";
    append(line, el("span", "report-venue " + signClass(part.net), text));
  }
  for (const [role, quantity] of Object.entries(report.dust || {})) {
    append(line, el("span", "report-dust", role + " flat, dust " + quantity));
  }
  const worst = report.worst_net;
  if (worst && worst.worst_net !== null) {
    const beyond = worst.beyond_step_secs === null ? "" : ", " + worst.beyond_step_secs + "s beyond one step";
    append(line, el("span", "report-net", "worst net " + worst.worst_net + beyond));
  }
  return line;
}

function groupCard(group, now) {
  const card = el("article", "group");
  const head = el("div", "group-head");
  append(head, el("h2", "", "Group " + group.name),
    el("span", "pill " + (group.all_online ? "pill-ok" : "pill-bad"), group.all_online ? "all online" : "some offline"));
  const delta = el("div", "delta");
  const state = group.net_delta === null ? "unknown" : group.net_delta_breach ? "breach" : "ok";
  delta.classList.add("delta-" + state);
  append(delta, el("div", "delta-label", "net delta bp + l1 + l2"),
    el("div", "delta-value", group.net_delta === null ? "unknown" : signed(group.net_delta)),
    el("div", "delta-tol", (state === "breach" ? "BEYOND tolerance ±" : "tolerance ±") + group.tolerance));
  const roles = el("div", "roles");
  for (const role of ["BP", "L1", "L2"]) {
    roles.appendChild(roleCard(role, group.roles[role], (group.accounts || {})[role]));
  }
  append(card, head, delta, cycleLine(group.cycle, now), roles, historyList(group.recent_cycles),
    reportLine(group.recent_cycles));
  if (state === "breach") card.classList.add("group-breach");
  return card;
}

function otherCard(view) {
  const card = el("div", "other " + (view.online ? "is-online" : "is-offline"));
  const head = el("div", "role-head");
  append(head, el("span", "dot " + (view.online ? "dot-on" : "dot-off")), el("span", "role-name", view.name));
  append(card, head, el("div", "sub", [view.role, view.group, view.host].filter(Boolean).join(" · ")));
  if (view.position !== null && view.position !== undefined) append(card, fact("position", signed(view.position), signClass(view.position)));
  if (view.balance !== null && view.balance !== undefined) append(card, fact("balance", view.balance));
  if (view.active_cycles !== null && view.active_cycles !== undefined) append(card, fact("active cycles", view.active_cycles));
  append(card, fact("heartbeat", ago(view.age_ms), view.online ? "" : "bad"));
  return card;
}

function alertItem(alert) {
  const item = el("li", "alert kind-" + String(alert.kind));
  append(item, el("span", "alert-time", timeOf(alert.ts)), el("span", "alert-kind", String(alert.kind).replace(/_/g, " ")),
    el("span", "alert-text", alert.text), el("span", alert.delivered ? "sent" : "queued", alert.delivered ? "sent" : "queued"));
  return item;
}

function render(doc) {
  const now = doc.now;
  document.getElementById("groups").replaceChildren(...doc.groups.map((g) => groupCard(g, now)));
  const others = doc.others.map(otherCard);
  document.getElementById("others").replaceChildren(...(others.length ? others : [el("p", "muted", "none")]));
  const alerts = doc.alerts.map(alertItem);
  document.getElementById("alerts").replaceChildren(...(alerts.length ? alerts : [el("li", "muted", "no alerts")]));
  const waiting = doc.relay.pending + doc.relay.undelivered;
  const relay = document.getElementById("relay");
  relay.textContent = waiting ? waiting + " alert(s) awaiting Telegram" : "alerts delivered";
  relay.className = "pill " + (waiting ? "pill-warn" : "pill-ok");
  document.getElementById("empty").hidden = doc.groups.length + doc.others.length > 0;
  document.getElementById("updated").textContent = "updated " + new Date(now).toLocaleTimeString([], { hour12: false });
}

function setConnection(ok, text) {
  const conn = document.getElementById("conn");
  conn.textContent = text;
  conn.className = "pill " + (ok ? "pill-ok" : "pill-bad");
}

async function refresh() {
  try {
    const reply = await fetch("/api/overview", { headers: authHeaders(), cache: "no-store" });
    if (reply.status === 401) return setConnection(false, "token required");
    if (!reply.ok) return setConnection(false, "fetch failed (" + reply.status + ")");
    render(await reply.json());
    setConnection(true, "live");
  } catch (err) {
    setConnection(false, "fetch failed");
  }
}

async function pruneOffline() {
  const reply = await fetch("/admin/prune", { method: "POST", headers: authHeaders() });
  const body = await reply.json().catch(() => ({}));
  if (reply.ok) window.alert("Removed " + body.removed + " bot(s), " + body.total + " remain.");
  else window.alert("Prune failed: " + (body.status || reply.status));
  refresh();
}

function setToken() {
  const token = window.prompt("Dashboard token (kept for this tab only):", "");
  if (token === null) return;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  refresh();
}

document.getElementById("btn-refresh").addEventListener("click", refresh);
document.getElementById("btn-prune").addEventListener("click", pruneOffline);
document.getElementById("btn-token").addEventListener("click", setToken);
refresh();
setInterval(refresh, REFRESH_MS);
