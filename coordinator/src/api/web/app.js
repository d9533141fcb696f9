// The edgecap web page: plain DOM, no framework, no inline script (the page is served with a
// strict Content-Security-Policy). Everything goes through the Cloudflare-compatible API.
"use strict";

const $ = (id) => document.getElementById(id);
const api = () => `/client/v4/accounts/${encodeURIComponent($("account").value.trim())}/pcaps`;
const headers = () => ({ "Authorization": `Bearer ${$("token").value.trim()}`, "Content-Type": "application/json" });

function say(text, isError) {
  const m = $("message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

async function call(method, path, body) {
  const response = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  if (response.status === 204) return null;
  const v = await response.json().catch(() => null);
  if (!response.ok || !v || v.success !== true) {
    const errors = v && v.errors ? v.errors.map((e) => `[${e.code}] ${e.message}`).join("; ") : `HTTP ${response.status}`;
    throw new Error(errors);
  }
  return v.result;
}

function fields(form) {
  const out = {};
  for (const input of document.querySelectorAll(`#${form} input, #${form} select`)) {
    const v = input.value.trim();
    if (v === "") continue;
    out[input.name] = input.type === "number" ? Number(v) : v;
  }
  return out;
}

function filterOf(values) {
  const filter = {};
  for (const k of ["source_address", "destination_address", "source_port", "destination_port", "protocol"]) {
    if (k in values) { filter[k] = values[k]; delete values[k]; }
  }
  return filter;
}

async function download(id) {
  try {
    const response = await fetch(`${api()}/${id}/download`, { headers: headers() });
    if (!response.ok) {
      const v = await response.json().catch(() => null);
      throw new Error(v && v.errors ? v.errors[0].message : `HTTP ${response.status}`);
    }
    const url = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = `pcap_${id}.pcap`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) { say(`download: ${e.message}`, true); }
}

async function refresh() {
  try {
    const captures = await call("GET", api());
    const body = $("captures");
    body.replaceChildren();
    for (const c of captures) {
      const row = document.createElement("tr");
      cell(row, c.id).className = "muted";
      cell(row, c.type);
      cell(row, c.status, `status-${c.status}`);
      cell(row, c.submitted);
      cell(row, c.packets_captured);
      const pops = (c.pops || []).map((p) => `${p.pop}: ${p.status}${p.error ? ` (${p.error})` : ""}`).join("; ");
      cell(row, pops + (c.error_message ? ` — ${c.error_message}` : ""));
      const actions = cell(row, "");
      if (c.type === "simple" && c.status === "success") {
        const b = document.createElement("button");
        b.textContent = "Download";
        b.addEventListener("click", () => download(c.id));
        actions.appendChild(b);
      }
      if (c.type === "full" && (c.status === "pending" || c.status === "running")) {
        const b = document.createElement("button");
        b.textContent = "Stop";
        b.addEventListener("click", async () => {
          try { await call("PUT", `${api()}/${c.id}/stop`); say(`stop requested for ${c.id}`); refresh(); }
          catch (e) { say(`stop: ${e.message}`, true); }
        });
        actions.appendChild(b);
      }
      if (c.type === "full" && c.object_key) cell(row, `${c.destination_conf.split("?")[0]}/${c.object_key}`).className = "muted";
      body.appendChild(row);
    }
    const agents = await fetch("/edgecap/v1/agents", { headers: headers() }).then((r) => r.json());
    const list = $("agents");
    list.replaceChildren();
    for (const a of agents.result || []) {
      const row = document.createElement("tr");
      cell(row, a.pop); cell(row, a.agent_id); cell(row, a.coordinator);
      cell(row, (a.interfaces || []).join(", ")); cell(row, a.connected_at);
      list.appendChild(row);
    }
    say(`${captures.length} captures`);
  } catch (e) { say(e.message, true); }
}

async function create(kind) {
  const values = fields(`${kind}-form`);
  const body = { system: "magic-transit", type: kind === "sample" ? "simple" : "full", filter_v1: filterOf(values), ...values };
  try {
    const c = await call("POST", api(), body);
    say(`capture ${c.id} is ${c.status}`);
    refresh();
  } catch (e) { say(`create: ${e.message}`, true); }
}

$("save").addEventListener("click", () => {
  sessionStorage.setItem("edgecap.account", $("account").value.trim());
  sessionStorage.setItem("edgecap.token", $("token").value.trim());
  refresh();
});
$("refresh").addEventListener("click", refresh);
$("create-sample").addEventListener("click", () => create("sample"));
$("create-full").addEventListener("click", () => create("full"));
$("account").value = sessionStorage.getItem("edgecap.account") || "";
$("token").value = sessionStorage.getItem("edgecap.token") || "";
if ($("account").value && $("token").value) refresh();
setInterval(() => { if ($("account").value && $("token").value) refresh(); }, 5000);
