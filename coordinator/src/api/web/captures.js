// Captures: the list, the two create forms (the full one with its dry run), and one
// capture's view (summary, per-PoP table, a full capture's progress while it runs, Stop).
"use strict";

const FINAL = new Set(["success", "failed"]);
const FULL_STEPS = ["pending", "running", "conversion_pending", "conversion_running", "success"];

// ---------------------------------------------------------------- captures list and create

// The colos of a full capture: `colo_names` (extension) when it names several.
const colosOf = (c) => (Array.isArray(c.colo_names) && c.colo_names.length > 1 ? c.colo_names.join(", ") : c.colo_name);

function popsSummary(c) {
  return (c.pops || []).map((p) => `${p.pop}: ${p.status}`).join(", ");
}

async function refreshCaptures(gen) {
  try {
    const list = await call("GET", pcaps());
    if (gen !== generation) return;
    const body = $("captures-list");
    update(body, list, () => {
      body.replaceChildren(...list.map((c) => el("tr", { "data-id": c.id },
        el("td", {}, el("a", { href: `#/captures/${c.id}`, "data-key": c.id, class: "mono", text: c.id })),
        td(c.type === "simple" ? "sample" : "full"), statusCell(c.status), td(utc(c.submitted)),
        td(count(c.packets_captured), "num"), td(popsSummary(c)),
        td(c.type === "full" ? `${colosOf(c)} → ${c.destination_conf}` : `last ${c.time_limit} s before ${utc(c.offset_time)}`))));
      if (!list.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No capture yet." })));
    });
    poll(refreshCaptures, 5000);
  } catch (e) { trouble(e, "captures"); }
}

for (const form of [$("sample-form"), $("full-form")]) {
  onSubmit(form, async () => {
    clearErrors(form);
    const body = { system: "magic-transit", type: form.dataset.captureType, ...formBody(form) };
    try {
      const c = await call("POST", pcaps(), body);
      if (form.id === "full-form") $("dry-run").hidden = true;
      say(`Capture ${c.id} created (${c.status}).`);
      go(`#/captures/${c.id}`);
    } catch (e) {
      if (e.status === 401) trouble(e, "create"); else showErrors(form, e);
    }
  });
}

// ---------------------------------------------------------------- dry run

// The full capture form's body with "dry_run": true: every check of a real request, then what
// the capture would match at each PoP and when it would end; nothing starts.
$("dry-run-full").addEventListener("click", async () => {
  const form = $("full-form"), button = $("dry-run-full");
  clearErrors(form);
  button.disabled = true;
  try {
    const d = await call("POST", pcaps(), { system: "magic-transit", type: "full", ...formBody(form), dry_run: true });
    renderDryRun(d);
    say(`Dry run: ${(d.pops || []).length} PoP${(d.pops || []).length === 1 ? "" : "s"} would take part; nothing was started.`);
    $("dry-run-heading").focus();
  } catch (e) {
    $("dry-run").hidden = true;
    if (e.status === 401) trouble(e, "dry run"); else showErrors(form, e);
  } finally {
    button.disabled = false;
  }
});
// A result no longer says what the form would do once the form changes.
$("full-form").addEventListener("input", () => { $("dry-run-stale").hidden = $("dry-run").hidden; });

const rate = new Intl.NumberFormat("en", { maximumFractionDigits: 1 });
const seconds = (s) => (typeof s === "number" ? `${rate.format(s)} s` : null);

function renderDryRun(d) {
  const offline = (d.offline || []).map((o) => `${o.pop} (agent ${o.agent_id}${o.last_connected ? `, last connected ${utc(o.last_connected)} UTC` : ""})`);
  const full = d.type === "full";
  const rows = [
    full ? ["colos", (d.colo_names || []).join(", ")] : null,
    ["offline PoPs", offline.length ? offline.join(", ") : "none"],
    ["total matching", `${rate.format(d.matching_pps || 0)} packets/s, ${bytes(Math.round(d.matching_bps || 0))}/s`],
    full ? ["would end by", d.ends_by === "time_limit" ? `time_limit, after ${seconds(d.estimated_seconds) || "—"}`
      : `${d.ends_by}, after ~${seconds(d.estimated_seconds) || "—"}`] : null,
    full && seconds(d.estimated_seconds_to_packet_limit) ? ["packet_limit reached after", `~${seconds(d.estimated_seconds_to_packet_limit)}`] : null,
    full && seconds(d.estimated_seconds_to_byte_limit) ? ["byte_limit reached after", `~${seconds(d.estimated_seconds_to_byte_limit)}`] : null,
    full ? null : ["packets in the window", `~${count(d.estimated_packets)}`],
    ["applied filter", d.effective_filter || "everything"],
  ].filter(Boolean);
  $("dry-run-summary").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: text(v) })]));
  const pops = d.pops || [];
  $("dry-run-pops").replaceChildren(...pops.map((p) => el("tr", { "data-pop": p.pop },
    td(p.pop), td(p.agent_id), td(rate.format(p.matching_pps || 0), "num"),
    td(`${bytes(Math.round(p.matching_bps || 0))}/s`, "num"), td(p.error))));
  if (!pops.length) $("dry-run-pops").append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No connected agent would take part." })));
  $("dry-run-stale").hidden = true;
  $("dry-run").hidden = false;
}

// Validated buckets are offered in the full capture form.
async function refreshDestinations() {
  try {
    const list = await call("GET", `${pcaps()}/ownership`);
    const ok = [...new Set(list.filter((o) => o.status === "success").map((o) => o.destination_conf))];
    $("validated-destinations").replaceChildren(...ok.map((d) => el("option", { value: d })));
    const input = $("full-destination_conf");
    if (!input.value && ok.length === 1) input.value = ok[0];
  } catch { /* the ownership view says why */ }
}

// ---------------------------------------------------------------- one capture

let shown = null; // the capture in the detail view

function openCapture(id, gen) {
  if (!shown || shown.id !== id) {
    shown = { id };
    forgetPreview();
    $("capture-id").textContent = id;
    for (const x of ["capture-status", "capture-error"]) $(x).textContent = "";
    for (const x of ["capture-summary", "pops-list", "preview-list"]) { $(x).replaceChildren(); delete $(x).dataset.rendered; }
    $("progress").hidden = true;
    $("sample-file").hidden = true;
  }
  refreshCapture(id, gen);
}

async function refreshCapture(id, gen) {
  let c;
  try {
    c = await call("GET", `${pcaps()}/${id}`);
  } catch (e) {
    if (gen !== generation) return;
    if (e.status === 401) { trouble(e, "capture"); return; }
    $("capture-error").textContent = e.message;
    if (e.status !== 404) poll((g) => refreshCapture(id, g), 3000);
    return;
  }
  if (gen !== generation) return;
  $("capture-error").textContent = "";
  shown.capture = c;
  renderCapture(c);
  if (c.type === "simple" && c.status === "success") loadPreview(c);
  if (!FINAL.has(c.status)) poll((g) => refreshCapture(id, g), 1000);
}

function filterText(c) {
  const parts = Object.entries(c.filter_v1 || {}).filter(([, v]) => v !== null && v !== undefined).map(([k, v]) => `${k}=${v}`);
  if (c.filter_bpf) parts.push(`filter_bpf "${c.filter_bpf}"`);
  return parts.length ? parts.join(", ") : "everything";
}

function mergedFile(c) {
  if (!c.object_key || !c.destination_conf) return null;
  const [where, query] = c.destination_conf.split("?");
  return `${where.replace(/\/+$/, "")}/${c.object_key}${query ? ` (${query})` : ""}`;
}

function renderCapture(c) {
  const status = $("capture-status");
  status.textContent = c.status;
  status.className = `status status-${c.status}`;
  const rows = [
    ["type", c.type === "simple" ? "sample (simple)" : "full"],
    ["status", c.status],
    ["submitted (UTC)", utc(c.submitted)],
    c.type === "simple"
      ? ["window", `${c.time_limit} s before ${c.offset_time ? utc(c.offset_time) : "submission"}`]
      : ["time_limit", `${c.time_limit} s`],
    ["packet_limit", c.packet_limit === undefined ? null : count(c.packet_limit)],
    c.type === "full" ? ["byte_limit", c.byte_limit === null || c.byte_limit === undefined ? null : count(c.byte_limit)] : null,
    c.type === "full" ? (Array.isArray(c.colo_names) && c.colo_names.length > 1 ? ["colo_names", colosOf(c)] : ["colo_name", c.colo_name]) : null,
    c.type === "full" ? ["destination_conf", c.destination_conf] : null,
    c.type === "full" ? ["output_format", c.output_format] : null,
    c.clock_correction ? ["clock correction", "yes: each PoP's timestamps shifted by its clock offset"] : null,
    ["filter", filterText(c)],
    typeof c.effective_filter === "string" ? ["applied filter", c.effective_filter || "everything"] : null,
    ["packets captured", count(c.packets_captured)],
    c.stop_requested ? ["stop requested (UTC)", utc(c.stop_requested)] : null,
    mergedFile(c) ? ["merged file", mergedFile(c)] : null,
    c.error_message ? ["error", c.error_message] : null,
  ].filter((r) => r && r[1] !== null && r[1] !== undefined);
  const summary = $("capture-summary");
  update(summary, rows, () => summary.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: text(v) })])));

  const sample = c.type === "simple";
  const pops = $("pops-list");
  update(pops, c.pops, () => {
    pops.replaceChildren(...(c.pops || []).map((p) => el("tr", { "data-pop": p.pop },
      td(p.pop), td(p.agent_id), statusCell(p.status),
      td(count(p.packets), "num"),
      td(sample ? "—" : bytes(p.bytes), "num"),
      el("td", { class: "num", title: "kernel / agent", text: sample ? count(p.kernel_dropped) : `${count(p.kernel_dropped)} / ${count(p.agent_dropped)}` }),
      td(clockText(p), "num"), td(p.stop_reason), td(p.error))));
    if (!(c.pops || []).length) pops.append(el("tr", {}, el("td", { colspan: 9, class: "muted", text: "No PoP has answered yet." })));
  });

  renderProgress(c);
  $("sample-file").hidden = !(sample && c.status === "success");
}

function meter(name, value, max, label) {
  const bar = $(`progress-${name}`);
  bar.hidden = !(max > 0); // without a limit there is nothing to fill: the count says it
  if (max > 0) { bar.max = max; bar.value = Math.min(value, max); }
  $(`progress-${name}-text`).textContent = label;
}

// A full capture's progress while it runs: its step, time, packets and bytes against the
// limits, and how many PoPs are done.
function renderProgress(c) {
  const running = c.type === "full" && !FINAL.has(c.status);
  $("progress").hidden = !running;
  $("stop-capture").hidden = !(running && (c.status === "pending" || c.status === "running") && !c.stop_requested);
  if (!running) return;
  const at = FULL_STEPS.indexOf(c.status);
  const steps = $("progress-steps");
  update(steps, c.status, () => steps.replaceChildren(...FULL_STEPS.map((s, i) =>
    el("li", { class: i < at ? "done" : "", "aria-current": i === at ? "step" : null, text: s.replace("_", " ") }))));
  const elapsed = (Date.now() - Date.parse(c.submitted)) / 1000;
  meter("time", elapsed, c.time_limit, `${duration(Math.min(elapsed, c.time_limit))} of ${c.time_limit} s`);
  const pops = c.pops || [];
  const packets = pops.reduce((n, p) => n + (p.packets || 0), 0);
  const sent = pops.reduce((n, p) => n + (p.bytes || 0), 0);
  meter("packets", packets, c.packet_limit ? c.packet_limit * Math.max(pops.length, 1) : 0,
    c.packet_limit ? `${count(packets)} (limit ${count(c.packet_limit)} per PoP)` : `${count(packets)} (no limit)`);
  meter("bytes", sent, c.byte_limit ? c.byte_limit * Math.max(pops.length, 1) : 0,
    c.byte_limit ? `${bytes(sent)} (limit ${bytes(c.byte_limit)} per PoP)` : `${bytes(sent)} (no limit)`);
  const done = pops.filter((p) => ["done", "failed", "skipped"].includes(p.status)).length;
  meter("pops", done, pops.length, `${done} of ${pops.length}`);
}

$("stop-capture").addEventListener("click", async () => {
  const id = shown && shown.id;
  if (!id) return;
  try {
    await call("PUT", `${pcaps()}/${id}/stop`);
    say(`Stop requested for capture ${id}.`);
    $("stop-capture").hidden = true;
    $("capture-heading").focus();
  } catch (e) { trouble(e, "stop"); }
});
