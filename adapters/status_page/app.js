// The status page: reads the admin API every 2 s and draws each site. No framework, no build step.
// Every value from the API goes into the page as text (textContent), never as markup.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "balancer.admin_token";
const PHASES = ["L1", "L2", "L3"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
  }
  return node;
}

function amps(value) {
  return typeof value === "number" ? value.toFixed(1) : "-";
}

function reasonText(reason) {
  if (!reason || !reason.code) return "-";
  const where = [reason.node, reason.phase].filter((x) => x).join(" ");
  return where ? `${reason.code} (${where})` : reason.code;
}

function lastPushText(push) {
  if (!push) return "-";
  const at = push.at ? new Date(push.at).toLocaleTimeString() : "";
  return `${amps(push.limit_a)} A ${push.result || ""} ${at}`.trim();
}

function phaseTable(site) {
  const cap = site.capacity_a || [];
  const alloc = site.allocated_a || [];
  const meas = site.measured_a || [];
  // The site meter (net import at the connection, non-EV load) and V2X discharge, when present.
  const meter = site.meter_a || [];
  const nonEv = site.non_ev_load_a || [];
  const discharge = site.discharge_a || [];
  const rows = PHASES.map((phase, k) => {
    const scale = Math.max(cap[k] || 0, alloc[k] || 0, meas[k] || 0, 1);
    const bar = el("div", { class: "bar" },
      el("span", { class: "alloc", style: `width:${(100 * (alloc[k] || 0)) / scale}%` }),
      el("span", { class: "meas", style: `width:${(100 * (meas[k] || 0)) / scale}%` }));
    return el("tr", { "data-phase": phase },
      el("td", {}, phase),
      el("td", { class: "num capacity" }, amps(cap[k])),
      el("td", { class: "num allocated" }, amps(alloc[k])),
      el("td", { class: "num measured" }, amps(meas[k])),
      el("td", { class: "num meter" }, site.meter_a ? amps(meter[k]) : "-"),
      el("td", { class: "num non-ev" }, site.non_ev_load_a ? amps(nonEv[k]) : "-"),
      el("td", { class: "num discharge" }, discharge[k] ? amps(discharge[k]) : "-"),
      el("td", {}, bar));
  });
  return el("table", { class: "phases" },
    el("thead", {}, el("tr", {}, el("th", {}, "phase"), el("th", { class: "num" }, "capacity A"),
      el("th", { class: "num" }, "allocated A"), el("th", { class: "num" }, "measured A"),
      el("th", { class: "num", title: "site meter: net import at the connection" }, "net import A"),
      el("th", { class: "num" }, "non-EV load A"),
      el("th", { class: "num", title: "V2X cars told to discharge" }, "discharge A"),
      el("th", {}, "allocated (light) / measured (dark)"))),
    el("tbody", {}, ...rows));
}

function chargerTable(site) {
  const head = ["charger", "connected", "protocol", "state", "limit A", "reason", "measured A (L1/L2/L3)",
    "obeys", "last push"];
  const rows = (site.chargers || []).map((c) => {
    const reason = c.limit_reason;
    return el("tr", { "data-charger": c.id },
      el("td", { "data-col": "id" }, c.id),
      el("td", { "data-col": "connected", class: c.connected ? "ok" : "bad" }, c.connected ? "yes" : "no"),
      el("td", { "data-col": "protocol" }, c.protocol || "-"),
      el("td", { "data-col": "state" }, c.state || "-"),
      el("td", { "data-col": "limit", class: "num" }, amps(c.limit_a)),
      el("td", { "data-col": "reason", title: (reason && reason.detail) || "" }, reasonText(reason)),
      el("td", { "data-col": "measured", class: "num" }, (c.measured_a || []).map(amps).join(" / ") || "-"),
      el("td", { "data-col": "obeys", class: c.obeys === false ? "bad" : "" }, c.obeys === false ? "no" : "yes"),
      el("td", { "data-col": "push" }, lastPushText(c.last_push)));
  });
  return el("table", { class: "chargers" },
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows));
}

function siteSection(site) {
  const source = site.capacity_source || "-";
  const summary = el("p", {},
    "capacity in force ", el("strong", { class: "capacity-w" }, `${((site.capacity_w || 0) / 1000).toFixed(1)} kW`),
    ", source ", el("strong", { class: `capacity-source source-${source}` }, source),
    ", grid operator ", el("span", { class: site.grid_operator_online ? "ok" : "bad" },
      site.grid_operator_online ? "online" : "silent"),
    `, allocation ${site.allocation_status || "-"}, plan ${site.plan_status || "-"}`,
    site.meter_fresh === null || site.meter_fresh === undefined ? "" :
      el("span", { class: site.meter_fresh ? "meter-state ok" : "meter-state bad" },
        site.meter_fresh ? ", site meter fresh" : ", site meter STALE (fallback base load assumed)"));
  return el("section", { class: "site", "data-site": site.id },
    el("h2", {}, site.id), summary, phaseTable(site), chargerTable(site));
}

function showError(text) {
  const box = document.getElementById("error");
  box.textContent = text || "";
  box.hidden = !text;
}

async function refresh() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  let response;
  try {
    response = await fetch("/api/v1/sites", { headers, cache: "no-store" });
  } catch (err) {
    showError(`service unreachable: ${err}`);
    return;
  }
  if (response.status === 401 || response.status === 403) {
    document.getElementById("login").hidden = false;
    let body = {};
    try { body = await response.json(); } catch (err) { /* not JSON */ }
    showError(token ? body.message || body.error || "wrong admin token" : "");
    return;
  }
  if (!response.ok) {
    showError(`GET /api/v1/sites answered ${response.status}`);
    return;
  }
  const sites = await response.json();
  document.getElementById("login").hidden = true;
  showError("");
  document.getElementById("sites").replaceChildren(...sites.filter((s) => s).map(siteSection));
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  refresh();
});

refresh();
setInterval(refresh, REFRESH_MS);
