//! The sampled lookback: recent packets, 1 in `sample_rate`, truncated to `snaplen` bytes,
//! kept in timestamp order and bounded by memory (`max_bytes`) and age (`max_age_ns`).
//! Queries binary-search the time window, so nothing outside it is scanned.
//!
//! Packet bytes live in an arena of 1 MiB chunks, not in one allocation per packet: a chunk
//! is released (and kept for reuse) when its last packet is evicted. At sample rate 1 the
//! per-packet allocation and free were most of the lookback's cost.

use std::collections::VecDeque;

use crate::source::Waker;
use crate::summary::{Prefilter, Summary};

/// How the lookback samples and how much it keeps.
#[derive(Clone, Debug)]
pub struct LookbackConfig {
    /// Keep 1 packet in this many (1 keeps every packet).
    pub sample_rate: u32,
    /// Bytes kept of each packet (Cloudflare's sample captures hold 160).
    pub snaplen: u32,
    /// Memory bound for packet data plus per-packet overhead.
    pub max_bytes: usize,
    /// Age bound, nanoseconds (at most 24 h: the furthest a sample capture may look back).
    pub max_age_ns: u64,
}

impl Default for LookbackConfig {
    fn default() -> Self {
        Self { sample_rate: 1, snaplen: 160, max_bytes: 64 << 20, max_age_ns: 24 * 3600 * 1_000_000_000 }
    }
}

/// Per-packet overhead counted against `max_bytes`.
const OVERHEAD: usize = std::mem::size_of::<StoredPacket>();
/// Arena chunk size.
const CHUNK: usize = 1 << 20;

/// Decides which packets are sampled: every `rate`-th one seen, deterministically (so the
/// sampled share is exact and a test can predict it).
#[derive(Clone, Debug)]
pub struct Sampler {
    rate: u64,
    seen: u64,
}

impl Sampler {
    /// Keeps every `rate`-th packet: the `rate`-th, the `2 * rate`-th, ...; 0 is taken as 1
    /// (every packet).
    pub fn new(rate: u32) -> Self {
        Self { rate: u64::from(rate.max(1)), seen: 0 }
    }

    /// Counts one packet; true if it is to be kept.
    pub fn sample(&mut self) -> bool {
        self.seen += 1;
        self.seen.is_multiple_of(self.rate)
    }
}

/// One sampled packet as stored: its bytes are in the arena ([`Lookback::data`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredPacket {
    /// Capture timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Length on the wire, bytes; the stored bytes are at most the snap length.
    pub orig_len: u32,
    /// Index of the interface in [`Lookback::interfaces`].
    pub iface: u16,
    /// Its headers, read when it was stored (for [`Lookback::query_prefiltered`]).
    pub summary: Summary,
    /// Arena chunk id: wraps, and is only compared with the live chunks' (never 2^32 of them).
    chunk: u32,
    offset: u32,
    len: u32,
}

/// A packet handed out by a query, with its own copy of the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampledPacket {
    /// Capture timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Length on the wire, bytes (can exceed `data.len()`).
    pub orig_len: u32,
    /// Index of the interface in [`Lookback::interfaces`].
    pub iface: u16,
    /// The stored bytes: the first at most `snaplen` bytes of the packet.
    pub data: Vec<u8>,
}

struct Chunk {
    data: Vec<u8>,
    live: u32,
}

/// Chunks in order of creation; chunk ids are `first_id + index`.
#[derive(Default)]
struct Arena {
    chunks: VecDeque<Chunk>,
    first_id: u32,
    spare: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena").field("chunks", &self.chunks.len()).finish_non_exhaustive()
    }
}

impl Arena {
    fn push(&mut self, bytes: &[u8]) -> (u32, u32) {
        let room = self.chunks.back().is_some_and(|c| c.data.len() + bytes.len() <= c.data.capacity());
        if !room {
            let mut data = self.spare.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK.max(bytes.len())));
            data.clear();
            if data.capacity() < bytes.len() {
                data.reserve(bytes.len());
            }
            self.chunks.push_back(Chunk { data, live: 0 });
        }
        let id = self.first_id.wrapping_add(self.chunks.len() as u32 - 1);
        let chunk = self.chunks.back_mut().expect("a chunk was just ensured");
        let offset = chunk.data.len() as u32;
        chunk.data.extend_from_slice(bytes);
        chunk.live += 1;
        (id, offset)
    }

    fn get(&self, p: &StoredPacket) -> &[u8] {
        let chunk = &self.chunks[p.chunk.wrapping_sub(self.first_id) as usize];
        &chunk.data[p.offset as usize..(p.offset + p.len) as usize]
    }

    fn release(&mut self, p: &StoredPacket) {
        if let Some(chunk) = self.chunks.get_mut(p.chunk.wrapping_sub(self.first_id) as usize) {
            chunk.live -= 1;
        }
        // Free leading chunks that hold no live packet (never the one being filled).
        while self.chunks.len() > 1 && self.chunks.front().is_some_and(|c| c.live == 0) {
            let chunk = self.chunks.pop_front().expect("checked");
            self.first_id = self.first_id.wrapping_add(1);
            if self.spare.len() < 2 {
                self.spare.push(chunk.data);
            }
        }
    }
}

/// Counters, for heartbeats and answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LookbackStats {
    /// Packets the capture threads read from their sources, sampled or not (counted when a
    /// batch is inserted).
    pub packets_seen: u64,
    /// Packets inserted (the sampled ones), including those evicted since.
    pub packets_sampled: u64,
    /// Packets dropped from the store for age or for memory.
    pub packets_evicted: u64,
    /// Packets the kernel dropped before the capture threads could read them, summed over
    /// interfaces (read from the sources about once a second).
    pub kernel_dropped: u64,
}

/// The store: sampled packets in timestamp order, their bytes in an arena, within the bounds
/// of its [`LookbackConfig`]. Not synchronized itself: capture threads and queries share it
/// behind a `Mutex`.
#[derive(Debug)]
pub struct Lookback {
    config: LookbackConfig,
    packets: VecDeque<StoredPacket>,
    arena: Arena,
    bytes: usize,
    interfaces: Vec<(String, i32)>,
    stats: LookbackStats,
    /// The same counters per interface (indexed like `interfaces`).
    per_interface: Vec<LookbackStats>,
    /// Per interface: every packet on the wire before this time (ns) is in, or was not
    /// sampled ([`Lookback::mark_settled`]).
    settled: Vec<u64>,
    /// The wakers of the sources that feed it now, by registration id
    /// ([`Lookback::wake_sources`]).
    wakers: Vec<(u64, Waker)>,
    next_waker: u64,
}

/// The answer to a window query.
#[derive(Debug, Default)]
pub struct QueryResult {
    /// Newest `limit` matching packets, oldest first.
    pub packets: Vec<SampledPacket>,
    /// All matching packets in the window, before the limit.
    pub matched: u64,
}

impl Lookback {
    /// An empty lookback with no interface; a `sample_rate` of 0 is stored as 1.
    pub fn new(config: LookbackConfig) -> Self {
        let sample_rate = config.sample_rate.max(1);
        Self {
            config: LookbackConfig { sample_rate, ..config },
            packets: VecDeque::new(),
            arena: Arena::default(),
            bytes: 0,
            interfaces: Vec::new(),
            stats: LookbackStats::default(),
            per_interface: Vec::new(),
            settled: Vec::new(),
            wakers: Vec::new(),
            next_waker: 0,
        }
    }

    /// Registers the waker of a source that feeds the lookback; returns the id that
    /// [`Lookback::remove_waker`] takes when that source goes.
    pub fn add_waker(&mut self, waker: Waker) -> u64 {
        let id = self.next_waker;
        self.next_waker += 1;
        self.wakers.push((id, waker));
        id
    }

    /// Forgets a waker registered with [`Lookback::add_waker`].
    pub fn remove_waker(&mut self, id: u64) {
        self.wakers.retain(|(i, _)| *i != id);
    }

    /// Wakes every source that feeds the lookback, so that each looks whether it has run dry
    /// and says so ([`Lookback::mark_settled`]) within its read timeout instead of its idle
    /// wait (see [`crate::source::OpenOptions::idle_ms`]). For a query whose window ends
    /// after [`Lookback::settled_ns`].
    pub fn wake_sources(&self) {
        for (_, waker) in &self.wakers {
            waker.wake();
        }
    }

    /// The configuration in force (`sample_rate` at least 1).
    pub fn config(&self) -> &LookbackConfig {
        &self.config
    }

    /// Registers an interface (name, libpcap link type); returns its index.
    pub fn add_interface(&mut self, name: &str, linktype: i32) -> u16 {
        self.interfaces.push((name.to_string(), linktype));
        self.per_interface.push(LookbackStats::default());
        self.settled.push(0);
        (self.interfaces.len() - 1) as u16
    }

    /// Records that every packet on `iface` before `ts_ns` has been inserted (its feeder
    /// found its source empty and flushed). Never moves back.
    pub fn mark_settled(&mut self, iface: u16, ts_ns: u64) {
        if let Some(s) = self.settled.get_mut(usize::from(iface)) {
            *s = (*s).max(ts_ns);
        }
    }

    /// The time before which every interface's packets are all in: a query whose window ends
    /// before it can be answered now. `None` without interfaces.
    pub fn settled_ns(&self) -> Option<u64> {
        self.settled.iter().copied().min()
    }

    /// Registered interfaces, (name, libpcap link type), in the order registered:
    /// [`StoredPacket::iface`] indexes this.
    pub fn interfaces(&self) -> &[(String, i32)] {
        &self.interfaces
    }

    /// Counters so far.
    pub fn stats(&self) -> &LookbackStats {
        &self.stats
    }

    /// Counters, for the capture threads to add what only they see (`packets_seen`,
    /// `kernel_dropped`). Prefer [`Lookback::count_seen`] and [`Lookback::count_kernel_dropped`],
    /// which keep the per-interface counters too.
    pub fn stats_mut(&mut self) -> &mut LookbackStats {
        &mut self.stats
    }

    /// Counters per registered interface, with its name (for metrics).
    pub fn interface_stats(&self) -> impl Iterator<Item = (&str, &LookbackStats)> {
        self.interfaces.iter().map(|(name, _)| name.as_str()).zip(&self.per_interface)
    }

    /// Adds packets a capture thread read from interface `iface`.
    pub fn count_seen(&mut self, iface: u16, packets: u64) {
        self.stats.packets_seen += packets;
        if let Some(s) = self.per_interface.get_mut(usize::from(iface)) {
            s.packets_seen += packets;
        }
    }

    /// Adds packets the kernel dropped on interface `iface`.
    pub fn count_kernel_dropped(&mut self, iface: u16, packets: u64) {
        self.stats.kernel_dropped += packets;
        if let Some(s) = self.per_interface.get_mut(usize::from(iface)) {
            s.kernel_dropped += packets;
        }
    }

    /// Packets stored now.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether no packet is stored.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// What counts against `max_bytes` now: stored packet bytes plus a fixed overhead per
    /// packet, bytes. Arena space still held by evicted packets (a chunk is released only
    /// with its last packet) is not counted.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Timestamp of the oldest stored packet, nanoseconds since the Unix epoch; `None` when
    /// empty.
    pub fn oldest_ns(&self) -> Option<u64> {
        self.packets.front().map(|p| p.ts_ns)
    }

    /// Stores a sampled packet (truncated to the snap length), then enforces the bounds.
    pub fn insert(&mut self, ts_ns: u64, orig_len: u32, iface: u16, data: &[u8]) {
        let keep = data.len().min(self.config.snaplen as usize);
        let (chunk, offset) = self.arena.push(&data[..keep]);
        let linktype = self.interfaces.get(usize::from(iface)).map_or(-1, |(_, l)| *l);
        let summary = Summary::read(linktype, &data[..keep]);
        let packet = StoredPacket { ts_ns, orig_len, iface, summary, chunk, offset, len: keep as u32 };
        self.bytes += keep + OVERHEAD;
        self.stats.packets_sampled += 1;
        if let Some(s) = self.per_interface.get_mut(usize::from(iface)) {
            s.packets_sampled += 1;
        }
        // Packets from several interfaces can arrive slightly out of order: insert in place
        // so the deque stays sorted (stable: after equal timestamps).
        match self.packets.back() {
            Some(last) if last.ts_ns > ts_ns => {
                let at = self.packets.partition_point(|p| p.ts_ns <= ts_ns);
                self.packets.insert(at, packet);
            }
            _ => self.packets.push_back(packet),
        }
        self.evict(ts_ns);
    }

    /// Drops what is too old relative to `now_ns`, then what exceeds the memory bound.
    pub fn evict(&mut self, now_ns: u64) {
        let horizon = now_ns.saturating_sub(self.config.max_age_ns);
        while let Some(front) = self.packets.front() {
            if front.ts_ns >= horizon && self.bytes <= self.config.max_bytes {
                break;
            }
            self.bytes -= front.len as usize + OVERHEAD;
            let gone = self.packets.pop_front().expect("checked");
            self.arena.release(&gone);
            self.stats.packets_evicted += 1;
            if let Some(s) = self.per_interface.get_mut(usize::from(gone.iface)) {
                s.packets_evicted += 1;
            }
        }
    }

    /// A stored packet's bytes.
    pub fn data(&self, packet: &StoredPacket) -> &[u8] {
        self.arena.get(packet)
    }

    /// Matching packets with `from_ns <= ts <= to_ns`: the newest `limit` of them, oldest
    /// first, plus how many matched in all. `matches(packet, bytes)` decides a packet.
    pub fn query(
        &self,
        from_ns: u64,
        to_ns: u64,
        limit: usize,
        matches: impl FnMut(&StoredPacket, &[u8]) -> bool,
    ) -> QueryResult {
        self.query_prefiltered(from_ns, to_ns, limit, &Prefilter::default(), matches)
    }

    /// [`Self::query`], passing over the packets whose [`Summary`] `prefilter` rules out
    /// without reading their bytes or calling `matches` (which must refuse them too).
    pub fn query_prefiltered(
        &self,
        from_ns: u64,
        to_ns: u64,
        limit: usize,
        prefilter: &Prefilter,
        mut matches: impl FnMut(&StoredPacket, &[u8]) -> bool,
    ) -> QueryResult {
        let start = self.packets.partition_point(|p| p.ts_ns < from_ns);
        let end = self.packets.partition_point(|p| p.ts_ns <= to_ns);
        let mut result = QueryResult::default();
        for packet in self.packets.range(start..end).rev() {
            if !prefilter.may_match(&packet.summary) {
                continue;
            }
            let data = self.arena.get(packet);
            if matches(packet, data) {
                result.matched += 1;
                if result.packets.len() < limit {
                    result.packets.push(SampledPacket {
                        ts_ns: packet.ts_ns,
                        orig_len: packet.orig_len,
                        iface: packet.iface,
                        data: data.to_vec(),
                    });
                }
            }
        }
        result.packets.reverse();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(rate: u32, max_bytes: usize) -> Lookback {
        Lookback::new(LookbackConfig { sample_rate: rate, snaplen: 4, max_bytes, max_age_ns: 1_000 })
    }

    #[test]
    fn settled_is_the_least_settled_interface_and_never_moves_back() {
        let mut l = lb(1, 1 << 20);
        assert_eq!(l.settled_ns(), None, "no interface: nothing to say");
        let (a, b) = (l.add_interface("a", 1), l.add_interface("b", 1));
        assert_eq!(l.settled_ns(), Some(0));
        l.mark_settled(a, 500);
        assert_eq!(l.settled_ns(), Some(0), "b has said nothing yet");
        l.mark_settled(b, 300);
        assert_eq!(l.settled_ns(), Some(300));
        l.mark_settled(b, 200);
        assert_eq!(l.settled_ns(), Some(300), "never back");
        l.mark_settled(b, 900);
        assert_eq!(l.settled_ns(), Some(500));
    }

    #[test]
    fn a_stored_packet_with_its_header_summary_still_takes_32_bytes() {
        assert_eq!(OVERHEAD, 32);
    }

    #[test]
    fn a_prefiltered_query_passes_over_what_the_summary_rules_out() {
        let mut l = Lookback::new(LookbackConfig::default());
        let iface = l.add_interface("eth0", 1);
        for t in 0..100u64 {
            let mut f = vec![0u8; 42];
            f[12] = 0x08;
            f[14] = 0x45;
            f[23] = 17;
            f[36..38].copy_from_slice(&(if t % 10 == 0 { 53u16 } else { 443 }).to_be_bytes());
            l.insert(t, 42, iface, &f);
        }
        let prefilter = Prefilter::new(&crate::FilterV1 { destination_port: Some(53), ..Default::default() });
        let mut judged = 0;
        let r = l.query_prefiltered(0, 99, 100, &prefilter, |_, _| {
            judged += 1;
            true
        });
        assert_eq!((r.matched, judged), (10, 10), "only the 10 packets to port 53 reach the matcher");
    }

    #[test]
    fn samples_one_in_n() {
        let mut s = Sampler::new(3);
        let kept: Vec<usize> = (1..=30).filter(|_| s.sample()).collect();
        assert_eq!(kept, [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]);
        let mut all = Sampler::new(0);
        assert!((0..5).all(|_| all.sample()), "rate 0 is treated as 1");
    }

    #[test]
    fn window_query_newest_first_limit_and_truncation() {
        let mut l = lb(1, 1 << 20);
        for t in 0..100u64 {
            l.insert(t, 60, 0, &[t as u8, 1, 2, 3, 4, 5]);
        }
        let r = l.query(10, 19, 3, |_, d| d[0] % 2 == 0);
        assert_eq!(r.matched, 5);
        let ts: Vec<u64> = r.packets.iter().map(|p| p.ts_ns).collect();
        assert_eq!(ts, [14, 16, 18]);
        assert!(r.packets.iter().all(|p| p.data.len() == 4 && p.orig_len == 60));
        assert_eq!(l.query(200, 300, 10, |_, _| true).matched, 0);
    }

    #[test]
    fn out_of_order_inserts_stay_sorted() {
        let mut l = lb(1, 1 << 20);
        for t in [5u64, 9, 7, 7, 1, 9] {
            l.insert(t, 1, 0, &[t as u8]);
        }
        let ts: Vec<u64> = l.query(0, 100, 100, |_, _| true).packets.iter().map(|p| p.ts_ns).collect();
        assert_eq!(ts, [1, 5, 7, 7, 9, 9]);
    }

    #[test]
    fn bounded_by_age_and_memory() {
        let mut l = lb(1, 1 << 20);
        for t in 0..3000u64 {
            l.insert(t, 1, 0, &[0; 8]);
        }
        assert_eq!(l.oldest_ns(), Some(1999), "packets at most 1000 ns older than the newest are kept");
        let mut l = lb(1, 10 * (4 + OVERHEAD));
        for t in 0..100u64 {
            l.insert(t, 1, 0, &[0; 8]);
        }
        assert_eq!(l.len(), 10);
        assert!(l.bytes() <= 10 * (4 + OVERHEAD));
        assert_eq!(l.stats().packets_evicted, 90);
    }

    #[test]
    fn arena_chunks_are_released_and_bytes_stay_right() {
        // 2 KiB packets, 1 MiB chunks: about 512 per chunk; keep at most 1000 packets.
        let mut l = Lookback::new(LookbackConfig {
            sample_rate: 1,
            snaplen: 2048,
            max_bytes: 1000 * (2048 + OVERHEAD),
            max_age_ns: u64::MAX,
        });
        for t in 0..20_000u64 {
            let mut p = vec![0u8; 2048];
            p[..8].copy_from_slice(&t.to_le_bytes());
            l.insert(t, 2048, 0, &p);
        }
        assert_eq!(l.len(), 1000);
        assert!(l.arena.chunks.len() <= 4, "evicted chunks are released: {}", l.arena.chunks.len());
        let r = l.query(0, u64::MAX, 1000, |_, _| true);
        for p in &r.packets {
            assert_eq!(u64::from_le_bytes(p.data[..8].try_into().unwrap()), p.ts_ns, "bytes belong to their packet");
        }
        // Out of order (several interfaces) still returns the right bytes.
        l.insert(19_500, 8, 1, &19_500u64.to_le_bytes());
        let r = l.query(19_500, 19_500, 10, |p, _| p.iface == 1);
        assert_eq!(r.packets[0].data, 19_500u64.to_le_bytes());
    }
}
