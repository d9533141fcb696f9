// Agents, grouped by PoP, with their lookback and clock offset.
"use strict";

async function refreshAgents(gen) {
  try {
    const agents = await call("GET", "/edgecap/v1/agents");
    if (gen !== generation) return;
    const now = Date.now();
    const byPop = new Map();
    for (const a of agents) {
      if (!byPop.has(a.pop)) byPop.set(a.pop, []);
      byPop.get(a.pop).push(a);
    }
    const table = $("agents-empty").closest("table");
    for (const old of table.querySelectorAll("tbody[data-pop]")) old.remove();
    $("agents-empty").hidden = agents.length > 0;
    for (const [pop, list] of [...byPop].sort(([a], [b]) => a.localeCompare(b))) {
      const depths = list.map((a) => depthOf(a, now)).filter(Number.isFinite);
      const head = `PoP ${pop}: ${list.length} agent${list.length === 1 ? "" : "s"}` +
        (depths.length ? `, lookback depth ${duration(Math.min(...depths))}` : "");
      const group = el("tbody", { "data-pop": pop },
        el("tr", {}, el("th", { scope: "rowgroup", colspan: 10, text: head })));
      for (const a of list) {
        const l = a.lookback;
        group.append(el("tr", { "data-agent": a.agent_id },
          td(a.agent_id), td((a.interfaces || []).join(", ")),
          td(l ? lookbackDepthText(a, now) : "on another replica"),
          td(l ? count(l.packets_held) : "—", "num"), td(l ? bytes(l.bytes_held) : "—", "num"),
          td(a.sample_rate ? `1 in ${a.sample_rate}` : "—", "num"),
          td(l ? count(l.kernel_dropped) : "—", "num"), td(clockText(a), "num"), td(utc(a.connected_at)), td(a.coordinator)));
      }
      table.append(group);
    }
    poll(refreshAgents, 5000);
  } catch (e) { trouble(e, "agents"); }
}

// How far back the lookback reaches: from its oldest packet (when the API gives it), else
// at most since the agent connected (its lookback started then).
function depthOf(a, now) {
  const l = a.lookback;
  if (!l) return NaN;
  if (typeof l.oldest_ns === "number" && l.oldest_ns > 0) return (now - l.oldest_ns / 1e6) / 1000;
  return NaN;
}
function lookbackDepthText(a, now) {
  const d = depthOf(a, now);
  if (Number.isFinite(d)) return duration(d);
  if (a.lookback && a.lookback.packets_held === 0) return "empty";
  const since = Date.parse(a.connected_at);
  return Number.isFinite(since) ? `at most ${duration((now - since) / 1000)}` : "—";
}
