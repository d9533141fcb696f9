//! Timestamp-ordered merge of per-PoP packet streams into one classic PCAP.
//!
//! This is the first piece of the merge engine: a k-way merge over already time-ordered
//! inputs and a classic-pcap writer. It is synchronous and does no I/O besides its
//! `Write` argument, so the coordinator runs it in `spawn_blocking`.
//!
//! Ordering rule: packets are ordered by timestamp; ties keep input order (a packet of input
//! `i` comes before a packet of input `j > i` with the same timestamp), and within one input
//! the input's own order is kept. Inputs are expected to be time-ordered; an input that is
//! not is still merged without loss, its out-of-order packets emitted when reached.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write;
use std::time::Duration;

use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

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

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("write pcap: {0}")]
    Write(#[from] pcap_file::PcapError),
    #[error("packet at {ts_ns} ns has {len} bytes, more than the snap length {snaplen}")]
    TooLong { ts_ns: u64, len: usize, snaplen: u32 },
    #[error("timestamp {0} ns is beyond what classic pcap can hold (year 2106)")]
    Timestamp(u64),
}

/// Writes classic pcap (microsecond timestamps, magic `a1b2c3d4`, the most widely readable
/// form, and what Cloudflare's download returns) with the given link type and snap length.
pub fn write_classic_pcap<'a, W: Write>(
    out: W,
    linktype: u32,
    snaplen: u32,
    packets: impl IntoIterator<Item = (u64, u32, &'a [u8])>,
) -> Result<(W, u64), MergeError> {
    let header = PcapHeader {
        version_major: 2,
        version_minor: 4,
        ts_correction: 0,
        ts_accuracy: 0,
        snaplen,
        datalink: DataLink::from(linktype),
        ts_resolution: pcap_file::TsResolution::MicroSecond,
        endianness: pcap_file::Endianness::Big,
    };
    let mut writer = PcapWriter::with_header(out, header)?;
    let mut count = 0;
    for (ts_ns, orig_len, data) in packets {
        if data.len() > snaplen as usize {
            return Err(MergeError::TooLong { ts_ns, len: data.len(), snaplen });
        }
        if ts_ns / 1_000_000_000 > u64::from(u32::MAX) {
            return Err(MergeError::Timestamp(ts_ns));
        }
        let orig_len = orig_len.max(data.len() as u32);
        writer.write_packet(&PcapPacket::new(Duration::from_nanos(ts_ns), orig_len, data))?;
        count += 1;
    }
    Ok((writer.into_writer(), count))
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
        assert_eq!(&buf[..4], &[0xa1, 0xb2, 0xc3, 0xd4]);
        // Decoded by hand: pcap-file 2.0's reader refuses orig_len > snaplen, which is
        // exactly what a truncated sample is (tshark reads these files in the e2e tests).
        let be = |at: usize| u32::from_be_bytes(buf[at..at + 4].try_into().unwrap());
        assert_eq!(be(16), 160, "snaplen");
        assert_eq!(be(20), 1, "linktype");
        assert_eq!((be(24), be(28)), (1_500_000_123, 456_789), "timestamp in microseconds");
        assert_eq!((be(32), be(36)), (60, 1514), "incl_len, orig_len");
        assert_eq!(buf.len(), 24 + 16 + 60);
        assert!(write_classic_pcap(Vec::new(), 1, 10, [(1, 60, &data[..])]).is_err());
    }
}
