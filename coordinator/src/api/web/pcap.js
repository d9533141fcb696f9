// Reads the first packets of a classic pcap or pcapng file for the capture preview: time,
// interface (pcapng), source, destination, protocol and length. Hardened like the merge
// engine's readers: lengths are checked before use, and damage ends the read with a reason
// (the packets before it are kept). No DOM here; preview.js renders what this returns.
"use strict";

const EdgecapPcap = (() => {
  const MAX_RECORD = 1 << 18; // 256 KiB: larger than any snap length a capture uses
  const IP_PROTOCOLS = { 1: "ICMP", 2: "IGMP", 4: "IPIP", 6: "TCP", 17: "UDP", 41: "IPv6", 47: "GRE", 50: "ESP", 51: "AH", 58: "ICMPv6", 89: "OSPF", 103: "PIM", 112: "VRRP", 132: "SCTP" };
  const ETHERTYPES = { 0x0806: "ARP", 0x8035: "RARP", 0x88cc: "LLDP", 0x8847: "MPLS", 0x8848: "MPLS", 0x888e: "EAPOL", 0x88f7: "PTP" };
  const VLAN = new Set([0x8100, 0x88a8, 0x9100]);

  const hex2 = (b) => b.toString(16).padStart(2, "0");
  const mac = (d, o) => Array.from(d.subarray(o, o + 6), hex2).join(":");
  const ipv4 = (d, o) => `${d[o]}.${d[o + 1]}.${d[o + 2]}.${d[o + 3]}`;

  // RFC 5952: lower case, the longest run of two or more zero groups as "::".
  function ipv6(d, o) {
    const g = [];
    for (let i = 0; i < 8; i++) g.push((d[o + 2 * i] << 8) | d[o + 2 * i + 1]);
    let best = -1, bestLen = 1;
    for (let i = 0; i < 8;) {
      if (g[i] !== 0) { i++; continue; }
      let j = i;
      while (j < 8 && g[j] === 0) j++;
      if (j - i > bestLen) { best = i; bestLen = j - i; }
      i = j;
    }
    const part = (a) => a.map((x) => x.toString(16)).join(":");
    return best < 0 ? part(g) : `${part(g.slice(0, best))}::${part(g.slice(best + bestLen))}`;
  }

  const withPort = (addr, port, v6) => (port === undefined ? addr : v6 ? `[${addr}]:${port}` : `${addr}:${port}`);

  // Transport: protocol name and ports where it has them (TCP, UDP, SCTP).
  function transport(d, o, proto, fragment) {
    const name = IP_PROTOCOLS[proto] || `IP proto ${proto}`;
    if (!fragment && (proto === 6 || proto === 17 || proto === 132) && o + 4 <= d.length) {
      return { protocol: name, sport: (d[o] << 8) | d[o + 1], dport: (d[o + 2] << 8) | d[o + 3] };
    }
    return { protocol: name };
  }

  function decodeIPv4(d, o) {
    if (o + 20 > d.length) return { protocol: "IPv4 (truncated)" };
    const ihl = (d[o] & 0x0f) * 4;
    const fragment = (((d[o + 6] & 0x1f) << 8) | d[o + 7]) !== 0;
    const t = transport(d, o + ihl, d[o + 9], fragment);
    return { src: withPort(ipv4(d, o + 12), t.sport), dst: withPort(ipv4(d, o + 16), t.dport), protocol: t.protocol };
  }

  function decodeIPv6(d, o) {
    if (o + 40 > d.length) return { protocol: "IPv6 (truncated)" };
    let next = d[o + 6], at = o + 40, fragment = false;
    // Extension headers: hop-by-hop, routing, fragment, destination options, AH.
    for (let hops = 0; hops < 8 && at + 8 <= d.length; hops++) {
      if (next === 0 || next === 43 || next === 60) {
        const len = (d[at + 1] + 1) * 8;
        next = d[at]; at += len;
      } else if (next === 44) {
        fragment = fragment || (((d[at + 2] << 8) | d[at + 3]) & 0xfff8) !== 0;
        next = d[at]; at += 8;
      } else if (next === 51) {
        const len = (d[at + 1] + 2) * 4;
        next = d[at]; at += len;
      } else break;
    }
    const t = transport(d, at, next, fragment);
    return { src: withPort(ipv6(d, o + 8), t.sport, true), dst: withPort(ipv6(d, o + 24), t.dport, true), protocol: t.protocol };
  }

  function decodeIP(d, o) {
    if (o >= d.length) return { protocol: "(empty)" };
    const version = d[o] >> 4;
    if (version === 4) return decodeIPv4(d, o);
    if (version === 6) return decodeIPv6(d, o);
    return { protocol: `IP version ${version}?` };
  }

  function decodeEthertype(d, type, o, macs) {
    if (type === 0x0800) return decodeIPv4(d, o);
    if (type === 0x86dd) return decodeIPv6(d, o);
    const name = ETHERTYPES[type] || (type <= 1500 ? "LLC" : `ethertype 0x${type.toString(16).padStart(4, "0")}`);
    if (type === 0x0806 && o + 28 <= d.length && d[o + 5] === 4) {
      return { src: ipv4(d, o + 14), dst: ipv4(d, o + 24), protocol: "ARP" };
    }
    return macs ? { src: macs[0], dst: macs[1], protocol: name } : { protocol: name };
  }

  // One frame of a link type: { src, dst, protocol } (addresses may be absent).
  function decode(linktype, d) {
    switch (linktype) {
      case 1: { // Ethernet, with any VLAN tags
        if (d.length < 14) return { protocol: "Ethernet (truncated)" };
        const macs = [mac(d, 6), mac(d, 0)];
        let o = 12, type = (d[o] << 8) | d[o + 1];
        while (VLAN.has(type) && o + 6 <= d.length) { o += 4; type = (d[o] << 8) | d[o + 1]; }
        return decodeEthertype(d, type, o + 2, macs);
      }
      case 113: // Linux cooked v1
        if (d.length < 16) return { protocol: "SLL (truncated)" };
        return decodeEthertype(d, (d[14] << 8) | d[15], 16, null);
      case 276: // Linux cooked v2
        if (d.length < 20) return { protocol: "SLL2 (truncated)" };
        return decodeEthertype(d, (d[0] << 8) | d[1], 20, null);
      case 101: case 12: case 14: // raw IP
        return decodeIP(d, 0);
      case 228: return decodeIPv4(d, 0);
      case 229: return decodeIPv6(d, 0);
      case 0: case 108: // BSD loopback: 4-byte family, then IP
        return decodeIP(d, 4);
      default:
        return { protocol: `link type ${linktype}` };
    }
  }

  // UTC "YYYY-MM-DD HH:MM:SS.fraction" with as many digits as the file's resolution.
  function formatTime(seconds, nanos, digits) {
    const date = new Date(seconds * 1000);
    const iso = Number.isFinite(date.getTime()) ? date.toISOString().slice(0, 19).replace("T", " ") : `${seconds} s`;
    return `${iso}.${String(nanos).padStart(9, "0").slice(0, digits)}`;
  }

  class Damage extends Error {}

  function classic(view, bytes, limit, out) {
    const magicLE = view.getUint32(0, true);
    const kinds = {
      0xa1b2c3d4: [true, 1000, 6, 16], 0xd4c3b2a1: [false, 1000, 6, 16],
      0xa1b23c4d: [true, 1, 9, 16], 0x4d3cb2a1: [false, 1, 9, 16],
      0xa1b2cd34: [true, 1000, 6, 24], 0x34cdb2a1: [false, 1000, 6, 24],
    };
    const [le, nsPerUnit, digits, recordHeader] = kinds[magicLE];
    if (bytes.length < 24) { out.complete = false; return; }
    out.format = nsPerUnit === 1 ? "pcap (ns)" : "pcap";
    const linktype = view.getUint32(20, le) & 0xffff;
    out.linktypes.push(linktype);
    let at = 24;
    while (out.packets.length < limit) {
      if (at === bytes.length) { out.complete = true; return; }
      if (at + recordHeader > bytes.length) { out.complete = false; return; }
      const sec = view.getUint32(at, le), frac = view.getUint32(at + 4, le);
      const caplen = view.getUint32(at + 8, le), origlen = view.getUint32(at + 12, le);
      if (caplen > MAX_RECORD) throw new Damage(`record ${out.packets.length + 1} at byte ${at}: captured length ${caplen} is implausible`);
      if (at + recordHeader + caplen > bytes.length) { out.complete = false; return; }
      const data = bytes.subarray(at + recordHeader, at + recordHeader + caplen);
      const ns = frac * nsPerUnit;
      if (ns >= 1e9) throw new Damage(`record ${out.packets.length + 1} at byte ${at}: fraction of a second ${frac} out of range`);
      out.packets.push({ time: formatTime(sec, ns, digits), seconds: sec, nanos: ns, iface: null, length: origlen, captured: caplen, ...decode(linktype, data) });
      at += recordHeader + caplen;
    }
  }

  function pcapngTime(high, low, iface) {
    const units = (BigInt(high) << 32n) | BigInt(low);
    const per = iface.perSecond;
    const seconds = units / per;
    const nanos = ((units % per) * 1000000000n) / per;
    return { seconds: Number(seconds), nanos: Number(nanos) };
  }

  function ngOptions(view, bytes, start, end, le, iface) {
    let at = start;
    while (at + 4 <= end) {
      const code = view.getUint16(at, le), len = view.getUint16(at + 2, le);
      if (code === 0 || at + 4 + len > end) return;
      const value = bytes.subarray(at + 4, at + 4 + len);
      if (code === 2) iface.name = new TextDecoder().decode(value);
      if (code === 9 && len >= 1) {
        const r = value[0];
        const exp = r & 0x7f;
        if (exp <= 30) {
          iface.perSecond = r & 0x80 ? 1n << BigInt(exp) : 10n ** BigInt(exp);
          iface.digits = r & 0x80 ? 9 : Math.min(exp, 9);
        }
      }
      at += 4 + ((len + 3) & ~3);
    }
  }

  function pcapng(view, bytes, limit, out) {
    out.format = "pcapng";
    let at = 0, le = true, ifaces = [];
    while (out.packets.length < limit) {
      if (at === bytes.length) { out.complete = true; return; }
      if (at + 12 > bytes.length) { out.complete = false; return; }
      let type = view.getUint32(at, le);
      if (type === 0x0a0d0d0a) {
        const bom = view.getUint32(at + 8, true);
        if (bom === 0x1a2b3c4d) le = true;
        else if (bom === 0x4d3c2b1a) le = false;
        else throw new Damage(`section header at byte ${at}: byte-order magic 0x${bom.toString(16)}`);
        type = 0x0a0d0d0a;
        ifaces = [];
      }
      const total = view.getUint32(at + 4, le);
      if (total < 12 || total % 4 !== 0 || total > MAX_RECORD + 64 * 1024) throw new Damage(`block at byte ${at}: length ${total} is invalid`);
      if (at + total > bytes.length) { out.complete = false; return; }
      const body = at + 8, end = at + total - 4;
      if (type === 1) { // interface description
        if (end - body < 8) throw new Damage(`interface block at byte ${at} is too short`);
        const iface = { linktype: view.getUint16(body, le), snaplen: view.getUint32(body + 4, le), name: null, perSecond: 1000000n, digits: 6 };
        ngOptions(view, bytes, body + 8, end, le, iface);
        ifaces.push(iface);
        out.linktypes.push(iface.linktype);
        if (iface.name) out.interfaces.push(iface.name);
      } else if (type === 6 || type === 2) { // enhanced packet, obsolete packet
        if (end - body < 20) throw new Damage(`packet block at byte ${at} is too short`);
        const id = type === 6 ? view.getUint32(body, le) : view.getUint16(body, le);
        const iface = ifaces[id];
        if (!iface) throw new Damage(`packet block at byte ${at}: interface ${id} was not described`);
        const caplen = view.getUint32(body + 12, le), origlen = view.getUint32(body + 16, le);
        if (body + 20 + caplen > end) throw new Damage(`packet block at byte ${at}: captured length ${caplen} exceeds the block`);
        const { seconds, nanos } = pcapngTime(view.getUint32(body + 4, le), view.getUint32(body + 8, le), iface);
        const data = bytes.subarray(body + 20, body + 20 + caplen);
        out.packets.push({ time: formatTime(seconds, nanos, iface.digits), seconds, nanos, iface: iface.name, length: origlen, captured: caplen, ...decode(iface.linktype, data) });
      } else if (type === 3) { // simple packet: no timestamp
        const iface = ifaces[0];
        if (!iface || end - body < 4) throw new Damage(`simple packet block at byte ${at} without an interface`);
        const origlen = view.getUint32(body, le);
        const caplen = Math.min(origlen, end - body - 4, iface.snaplen || Infinity);
        const data = bytes.subarray(body + 4, body + 4 + caplen);
        out.packets.push({ time: "—", seconds: null, nanos: null, iface: iface.name, length: origlen, captured: caplen, ...decode(iface.linktype, data) });
      }
      at += total;
    }
  }

  // Parses up to `limit` packets of `bytes` (a Uint8Array, maybe only the file's beginning).
  // Returns { format, linktypes, interfaces, packets, complete, error }: `complete` is false
  // when `bytes` ended inside a record (read more and parse again), `error` is damage.
  function parse(bytes, limit) {
    const out = { format: null, linktypes: [], interfaces: [], packets: [], complete: false, error: null };
    if (bytes.length < 4) return out;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const magic = view.getUint32(0, true);
    try {
      if (magic === 0x0a0d0d0a) pcapng(view, bytes, limit, out);
      else if ([0xa1b2c3d4, 0xd4c3b2a1, 0xa1b23c4d, 0x4d3cb2a1, 0xa1b2cd34, 0x34cdb2a1].includes(magic)) classic(view, bytes, limit, out);
      else out.error = `not a pcap or pcapng file (magic 0x${magic.toString(16).padStart(8, "0")})`;
    } catch (e) {
      if (!(e instanceof Damage)) throw e;
      out.error = e.message;
    }
    if (out.packets.length >= limit) out.complete = true;
    return out;
  }

  return { parse, decode };
})();
