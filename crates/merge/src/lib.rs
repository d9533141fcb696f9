//! Timestamp-ordered merge of packet captures: many per-PoP shards in, one capture out.
//!
//! * [`read`]: streaming readers for classic pcap and pcapng, hardened against malformed input.
//! * [`write`]: classic pcap and pcapng writers (pcapng with per-PoP interfaces, filters and
//!   counters).
//! * [`merge`](merge::merge): the streaming k-way merge, in memory bounded by the number of
//!   inputs, never by their size.
//! * [`behind`]: a `Write` that writes on a thread of its own, so the kernel's copy of the
//!   output runs beside the merge.
//! * [`merge_sorted`] / [`write_classic_pcap`]: the in-memory form the coordinator uses for
//!   sample captures, whose answers are already in memory.
//!
//! Synchronous, no async runtime, no I/O but the `Read`/`Write` it is given: callers run it
//! on a thread or in `spawn_blocking` ([`behind::WriteBehind`] starts one thread of its own). Ordering rule (everywhere in this crate): by
//! timestamp; ties keep input order; within an input, its own order is kept.

pub mod behind;
pub mod merge;
pub mod read;
pub mod write;

pub use behind::WriteBehind;
pub use merge::{MergeError, MergeInput, MergeOptions, MergeReport, OutputFormat, Provenance, merge};
pub use read::{CaptureReader, ReadError, Record};

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;

/// A packet as the merge sees it.
pub trait Timestamped {
    /// Nanoseconds since the Unix epoch.
    fn ts_ns(&self) -> u64;
}

/// Merges time-ordered inputs into one time-ordered vector (stable across inputs, see the
/// crate docs). Memory: the inputs are consumed; the heap holds one entry per input.
pub fn merge_sorted<T: Timestamped>(inputs: Vec<Vec<T>>) -> Vec<T> {
    let total = inputs.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(total);
    let mut iters: Vec<std::vec::IntoIter<T>> = inputs.into_iter().map(Vec::into_iter).collect();
    let mut heads: Vec<Option<T>> = iters.iter_mut().map(Iterator::next).collect();
    // (timestamp, input index): the index breaks ties so earlier inputs win.
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> =
        heads.iter().enumerate().filter_map(|(i, h)| h.as_ref().map(|p| Reverse((p.ts_ns(), i)))).collect();
    while let Some(Reverse((_, i))) = heap.pop() {
        if let Some(packet) = heads[i].take() {
            out.push(packet);
        }
        if let Some(next) = iters[i].next() {
            heap.push(Reverse((next.ts_ns(), i)));
            heads[i] = Some(next);
        }
    }
    out
}

/// Writes classic pcap (microsecond timestamps, the most widely readable form, and what
/// Cloudflare's download returns) with the given link type and snap length. Returns the
/// writer and the number of packets written.
pub fn write_classic_pcap<'a, W: Write>(
    out: W,
    linktype: u32,
    snaplen: u32,
    packets: impl IntoIterator<Item = (u64, u32, &'a [u8])>,
) -> std::io::Result<(W, u64)> {
    let mut writer = write::PcapWriter::new(out, linktype as u16, snaplen, false)?;
    let mut count = 0;
    for (ts_ns, orig_len, data) in packets {
        if data.len() > snaplen as usize {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("packet at {ts_ns} ns has {} bytes, more than the snap length {snaplen}", data.len()),
            ));
        }
        writer.packet(ts_ns, orig_len, data)?;
        count += 1;
    }
    Ok((writer.finish()?, count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug, PartialEq)]
    struct P(u64, usize, usize); // ts, input, position in input
    impl Timestamped for P {
        fn ts_ns(&self) -> u64 {
            self.0
        }
    }

    proptest! {
        #[test]
        fn merge_is_sorted_complete_and_stable(mut inputs in prop::collection::vec(prop::collection::vec(0u64..50, 0..40), 0..6)) {
            for v in &mut inputs { v.sort(); }
            let tagged: Vec<Vec<P>> = inputs.iter().enumerate()
                .map(|(i, v)| v.iter().enumerate().map(|(j, &t)| P(t, i, j)).collect()).collect();
            let merged = merge_sorted(tagged.clone());
            prop_assert_eq!(merged.len(), tagged.iter().map(Vec::len).sum::<usize>());
            for w in merged.windows(2) {
                prop_assert!(w[0].0 < w[1].0 || (w[0].0 == w[1].0 && (w[0].1, w[0].2) < (w[1].1, w[1].2)),
                    "order/tie rule broken: {:?} then {:?}", w[0], w[1]);
            }
            let mut a: Vec<_> = merged.iter().map(|p| (p.1, p.2)).collect();
            a.sort();
            let mut b: Vec<_> = tagged.iter().flatten().map(|p| (p.1, p.2)).collect();
            b.sort();
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn writes_readable_classic_pcap() {
        let data = [0u8; 60];
        let (buf, n) = write_classic_pcap(Vec::new(), 1, 160, [(1_500_000_123_456_789_000, 1514, &data[..])]).unwrap();
        assert_eq!(n, 1);
        assert_eq!(&buf[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "little-endian microsecond magic");
        // Decoded by hand, independently of our reader.
        let be = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().unwrap());
        assert_eq!(be(16), 160, "snaplen");
        assert_eq!(be(20), 1, "linktype");
        assert_eq!((be(24), be(28)), (1_500_000_123, 456_789), "timestamp in microseconds");
        assert_eq!((be(32), be(36)), (60, 1514), "incl_len, orig_len");
        assert_eq!(buf.len(), 24 + 16 + 60);
        assert!(write_classic_pcap(Vec::new(), 1, 10, [(1, 60, &data[..])]).is_err());
    }
}
