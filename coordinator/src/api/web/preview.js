// A sample capture's file: the preview of its first packets (read by pcap.js from the
// beginning of /download, without fetching the rest) and the download of the whole file.
"use strict";

const PREVIEW_PACKETS = 100;
const PREVIEW_MAX_BYTES = 16 << 20;

let preview = null; // { id, ... } for the capture whose file was read

function forgetPreview() { preview = null; }

// Reads the file's beginning (enough for PREVIEW_PACKETS) and stops reading.
async function readPrefix(response) {
  const reader = response.body.getReader();
  let buf = new Uint8Array(0), parsed = EdgecapPcap.parse(buf, PREVIEW_PACKETS), parsedAt = -1;
  for (;;) {
    const { done, value } = await reader.read();
    if (value) {
      const next = new Uint8Array(buf.length + value.length);
      next.set(buf);
      next.set(value, buf.length);
      buf = next;
    }
    if (done || buf.length - parsedAt >= 65536 || buf.length >= PREVIEW_MAX_BYTES) {
      parsed = EdgecapPcap.parse(buf, PREVIEW_PACKETS);
      parsedAt = buf.length;
    }
    if (done || parsed.error || parsed.packets.length >= PREVIEW_PACKETS || buf.length >= PREVIEW_MAX_BYTES) {
      if (!done) await reader.cancel().catch(() => {});
      return { parsed, read: buf.length, whole: done };
    }
  }
}

async function loadPreview(c) {
  if (preview && preview.id === c.id) return;
  preview = { id: c.id };
  const note = $("preview-note");
  note.textContent = "Reading the file…";
  $("download").textContent = `Download pcap_${c.id}.pcap`;
  try {
    const response = await send("GET", `${pcaps()}/${c.id}/download`);
    if (!response.ok) throw await failure(response);
    const { parsed, whole } = await readPrefix(response);
    if (!preview || preview.id !== c.id) return;
    renderPreview(c, parsed, whole);
  } catch (e) {
    if (preview && preview.id === c.id) preview = null;
    note.textContent = `The file could not be read: ${e.message}`;
  }
}

// Which PoP a packet came from: a pcapng interface is named pop/agent/iface; a classic
// pcap has no provenance, so only a capture with a single PoP that gave packets can say.
function popOf(packet, c) {
  if (packet.iface && packet.iface.includes("/")) return packet.iface.split("/")[0];
  const giving = (c.pops || []).filter((p) => p.packets > 0);
  return giving.length === 1 ? giving[0].pop : "—";
}

function renderPreview(c, parsed, whole) {
  const rows = parsed.packets.map((p, i) => el("tr", {},
    td(i + 1, "num"), el("td", { class: "mono", text: p.time }), td(popOf(p, c)),
    el("td", { class: "mono", text: text(p.src) }), el("td", { class: "mono", text: text(p.dst) }),
    td(p.protocol), el("td", { class: "num", title: `${p.captured} bytes kept`, text: count(p.length) })));
  $("preview-list").replaceChildren(...rows);
  const total = c.packets_captured;
  const parts = [`${parsed.format || "unknown format"}`,
    parsed.packets.length < (total || 0) ? `first ${count(parsed.packets.length)} of ${count(total)} packets` : `${count(parsed.packets.length)} packets`];
  if (parsed.error) parts.push(`the file is damaged: ${parsed.error}`);
  else if (whole && !parsed.complete) parts.push("the file ends inside a packet");
  if (parsed.packets.length && !parsed.packets[0].iface && (c.pops || []).filter((p) => p.packets > 0).length > 1) {
    parts.push("a classic pcap does not say which PoP each packet came from");
  }
  $("preview-note").textContent = parts.join("; ");
}

$("download").addEventListener("click", async () => {
  const id = shown && shown.id;
  if (!id) return;
  const button = $("download");
  button.disabled = true;
  try {
    const response = await send("GET", `${pcaps()}/${id}/download`);
    if (!response.ok) throw await failure(response);
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: `pcap_${id}.pcap`, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    say(`Downloaded pcap_${id}.pcap (${bytes(blob.size)}).`);
  } catch (e) {
    trouble(e, "download");
  } finally {
    button.disabled = false;
    button.focus();
  }
});
