// The web page's foundations: the session, calls to the API (the Cloudflare envelope, errors
// as ApiError), DOM and number helpers, and the API's field errors shown next to their fields.
// The page's scripts are served as one file, in this order: pcap.js, api.js, captures.js,
// preview.js, agents.js, ownership.js, app.js (see ../web.rs); they share its top-level scope.
// Plain DOM, no framework, no inline script (the page has a strict Content-Security-Policy).
"use strict";

const $ = (id) => document.getElementById(id);
const number = new Intl.NumberFormat("en");
const FIELD_ALIASES = { colo: "colo_name" };

// ---------------------------------------------------------------- session and API

const session = {
  account: sessionStorage.getItem("edgecap.account") || "",
  token: sessionStorage.getItem("edgecap.token") || "",
};
const signedIn = () => session.account !== "" && session.token !== "";
const pcaps = () => `/client/v4/accounts/${encodeURIComponent(session.account)}/pcaps`;

class ApiError extends Error {
  constructor(status, errors) {
    super(errors.map((e) => e.message).join("; "));
    this.status = status;
    this.errors = errors;
  }
}

async function send(method, path, body) {
  const headers = { Authorization: `Bearer ${session.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    return await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, [{ code: 0, message: `the coordinator could not be reached (${e.message})` }]);
  }
}

async function failure(response) {
  const v = await response.json().catch(() => null);
  const errors = v && Array.isArray(v.errors) && v.errors.length
    ? v.errors
    : [{ code: response.status, message: `HTTP ${response.status} ${response.statusText}` }];
  return new ApiError(response.status, errors);
}

// The result of a call, or an ApiError carrying the envelope's errors.
async function call(method, path, body) {
  const response = await send(method, path, body);
  if (response.status === 204) return null;
  if (!response.ok) throw await failure(response);
  const v = await response.json().catch(() => null);
  if (!v || v.success !== true) throw new ApiError(response.status, [{ code: 0, message: "the answer is not an API envelope" }]);
  return v.result;
}

// ---------------------------------------------------------------- small DOM helpers

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}
const text = (v) => (v === undefined || v === null || v === "" ? "—" : String(v));
const td = (v, cls) => el("td", { class: cls, text: text(v) });
const statusCell = (s) => el("td", {}, el("span", { class: `status status-${s}`, text: text(s) }));
const count = (n) => (typeof n === "number" ? number.format(n) : "—");
function bytes(n) {
  if (typeof n !== "number") return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n, u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return u === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}
function duration(seconds) {
  if (!Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
// Microseconds as milliseconds for people (as the CLI writes them): 12 ms, 1.5 ms, 0.045 ms.
function millis(us) {
  if (us >= 10000) return `${number.format(Math.round(us / 1000))} ms`;
  return `${(us / 1000).toFixed(us >= 1000 ? 1 : 3).replace(/\.?0+$/, "")} ms`;
}
// A PoP's or agent's clock offset (coordinator minus PoP) with its uncertainty: +12 ms ± 0.3 ms.
function clockText(v) {
  if (!v || typeof v.clock_offset_us !== "number") return "—";
  const sign = v.clock_offset_us < 0 ? "-" : "+";
  const within = typeof v.clock_uncertainty_us === "number" ? ` ± ${millis(v.clock_uncertainty_us)}` : "";
  return `${sign}${millis(Math.abs(v.clock_offset_us))}${within}`;
}
const utc = (rfc3339) => (rfc3339 ? rfc3339.replace("T", " ").replace(/\.\d+Z$|Z$/, "") : "—");

// Re-renders `container` with `render()` only when `data` changed, and gives the focus back
// to the element with the same data-key (polling must not take a keyboard user's place).
function update(container, data, render) {
  const key = JSON.stringify(data);
  if (container.dataset.rendered === key) return;
  const focused = container.contains(document.activeElement) ? document.activeElement.dataset.key : undefined;
  render();
  container.dataset.rendered = key;
  if (focused) container.querySelector(`[data-key="${CSS.escape(focused)}"]`)?.focus();
}

function say(message, isError) {
  const m = $("message");
  m.textContent = message || "";
  m.className = isError ? "error" : "";
}

// ---------------------------------------------------------------- form errors

function errorSpan(input) {
  let span = document.getElementById(`${input.id}-error`);
  if (!span) {
    span = el("div", { id: `${input.id}-error`, class: "field-error" });
    input.after(span);
    input.setAttribute("aria-describedby", [input.getAttribute("aria-describedby"), span.id].filter(Boolean).join(" "));
  }
  return span;
}

function clearErrors(form) {
  for (const e of form.querySelectorAll(".form-error")) e.textContent = "";
  for (const e of form.querySelectorAll(".field-error")) e.textContent = "";
  for (const e of form.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
}

// Each API message starts with the field it is about ("time_limit: must be ...", or an item of
// a list, "colo_names[1]: ..."): it is shown next to that field, which is marked invalid and
// focused. Others go to the top of the form.
function showErrors(form, error, byCode) {
  clearErrors(form);
  let first = null;
  for (const e of error.errors) {
    const named = /^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)(?:\[\d+\])?:\s/.exec(e.message || "");
    let field = (byCode && byCode[e.code]) || (named && named[1]);
    field = FIELD_ALIASES[field] || field;
    const input = field ? form.elements.namedItem(field) : null;
    if (input && input.id) {
      errorSpan(input).textContent = e.message;
      input.setAttribute("aria-invalid", "true");
      first = first || input;
      continue;
    }
    const group = field ? form.querySelector(`[data-group-error="${CSS.escape(field)}"]`) : null;
    const target = group || form.querySelector(".form-error");
    target.textContent = [target.textContent, e.message].filter(Boolean).join("; ");
    first = first || target.closest("fieldset")?.querySelector("input") || null;
  }
  first?.focus();
}

// The form's fields as an API body: numbers where the field takes one and the text is one
// (otherwise the text, for the API to name the field), lists from comma-separated text,
// checkboxes true when checked (absent otherwise), filter_v1.* into filter_v1.
function formBody(form) {
  const body = {};
  for (const input of form.elements) {
    if (!input.name || input.disabled) continue;
    if (input.type === "checkbox") {
      if (input.checked) body[input.name] = true;
      continue;
    }
    const raw = input.value.trim();
    if (raw === "") continue;
    const value = input.dataset.kind === "number" && /^-?\d+(\.\d+)?([eE][+-]?\d+)?$/.test(raw) ? Number(raw)
      : input.dataset.kind === "list" ? raw.split(",").map((s) => s.trim()).filter(Boolean)
      : raw;
    if (input.name.startsWith("filter_v1.")) (body.filter_v1 ||= {})[input.name.slice(10)] = value;
    else body[input.name] = value;
  }
  return body;
}

function onSubmit(form, handler) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try { await handler(); } finally { button.disabled = false; }
  });
}
