//! Batches of packets between a live capture's two threads, each packet already framed as
//! the record its sink writes ([`Framing`]).
//!
//! The capture thread copies a packet out of the source once, straight into its file record
//! (a pcap record header or a pcapng Enhanced Packet Block around the bytes). A run of
//! packets that the writer thread lets through (limits, rotation) is then one contiguous
//! slice, written with one call ([`Records::bytes`]), not copied again packet by packet into
//! the sink's buffer. Sinks that want the packets one by one ([`Framing::Bare`]) still get
//! them ([`Records::iter`]).

use std::ops::Range;

/// How a packet's bytes are framed in a [`Batch`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Framing {
    /// The bytes alone.
    #[default]
    Bare,
    /// A classic pcap record with a nanosecond timestamp, in the host's byte order (what a
    /// [`crate::shard::ShardFormat::Pcap`] shard holds after its file header).
    Pcap,
    /// A pcapng Enhanced Packet Block for interface 0, timestamp in nanoseconds, no options,
    /// in the host's byte order (what a [`crate::shard::ShardFormat::Pcapng`] shard holds).
    Pcapng,
}

impl Framing {
    /// Bytes of a record before the packet's data.
    fn header_len(self) -> usize {
        match self {
            Framing::Bare => 0,
            Framing::Pcap => 16,
            Framing::Pcapng => 28,
        }
    }

    /// Bytes of a record after `len` bytes of data: pcapng pads the data to 4 bytes and
    /// repeats the block's length.
    fn trailer_len(self, len: usize) -> usize {
        match self {
            Framing::Pcapng => len.next_multiple_of(4) - len + 4,
            _ => 0,
        }
    }

    /// Appends one packet's record to `out`; returns where its data starts. The length on
    /// the wire is at least the captured length.
    fn push(self, out: &mut Vec<u8>, ts_ns: u64, orig_len: u32, data: &[u8]) -> usize {
        let caplen = data.len() as u32;
        let orig_len = orig_len.max(caplen);
        match self {
            Framing::Bare => {}
            Framing::Pcap => {
                // Seconds past 2106 do not fit a pcap record; they wrap, as in other writers.
                out.extend_from_slice(&((ts_ns / 1_000_000_000) as u32).to_ne_bytes());
                out.extend_from_slice(&((ts_ns % 1_000_000_000) as u32).to_ne_bytes());
                out.extend_from_slice(&caplen.to_ne_bytes());
                out.extend_from_slice(&orig_len.to_ne_bytes());
            }
            Framing::Pcapng => {
                let block_len = (self.header_len() + data.len() + self.trailer_len(data.len())) as u32;
                out.extend_from_slice(&6u32.to_ne_bytes());
                out.extend_from_slice(&block_len.to_ne_bytes());
                out.extend_from_slice(&0u32.to_ne_bytes());
                out.extend_from_slice(&((ts_ns >> 32) as u32).to_ne_bytes());
                out.extend_from_slice(&(ts_ns as u32).to_ne_bytes());
                out.extend_from_slice(&caplen.to_ne_bytes());
                out.extend_from_slice(&orig_len.to_ne_bytes());
            }
        }
        let start = out.len();
        out.extend_from_slice(data);
        if self == Framing::Pcapng {
            let pad = self.trailer_len(data.len()) - 4;
            out.extend_from_slice(&[0u8; 3][..pad]);
            let block_len = (self.header_len() + data.len() + pad + 4) as u32;
            out.extend_from_slice(&block_len.to_ne_bytes());
        }
        start
    }
}

/// One packet in a [`Batch`].
#[derive(Clone, Copy, Debug)]
struct Slot {
    ts_ns: u64,
    orig_len: u32,
    /// Where its data starts in the batch's buffer.
    start: usize,
    len: usize,
}

/// Packets copied out of a source into one buffer (one allocation per batch, reused), each
/// framed as its sink wants.
#[derive(Debug)]
pub struct Batch {
    framing: Framing,
    data: Vec<u8>,
    packets: Vec<Slot>,
}

impl Batch {
    /// An empty batch with room for about `packets` packets.
    pub fn with_capacity(framing: Framing, packets: usize) -> Self {
        // Room for small packets up front, at most 64 KiB (an allocation under glibc's mmap
        // threshold, so a quiet capture's batches cost no mmap); a busy capture's batches
        // grow once and are recycled with their capacity.
        let data = Vec::with_capacity((packets * 256).min(64 << 10));
        Self { framing, data, packets: Vec::with_capacity(packets) }
    }

    /// Copies in one packet.
    pub fn push(&mut self, ts_ns: u64, orig_len: u32, data: &[u8]) {
        let start = self.framing.push(&mut self.data, ts_ns, orig_len, data);
        self.packets.push(Slot { ts_ns, orig_len, start, len: data.len() });
    }

    /// Packets in the batch.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether it holds no packet.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Empties it, keeping its memory.
    pub fn clear(&mut self) {
        self.data.clear();
        self.packets.clear();
    }

    /// Captured bytes of packet `i`.
    pub fn caplen(&self, i: usize) -> usize {
        self.packets[i].len
    }

    /// Packets `range`, in order.
    pub fn records(&self, range: Range<usize>) -> Records<'_> {
        assert!(range.start <= range.end && range.end <= self.packets.len(), "{range:?} of {}", self.packets.len());
        Records { batch: self, range }
    }
}

/// A run of consecutive packets of a [`Batch`].
#[derive(Clone, Debug)]
pub struct Records<'a> {
    batch: &'a Batch,
    range: Range<usize>,
}

impl<'a> Records<'a> {
    /// How the packets are framed.
    pub fn framing(&self) -> Framing {
        self.batch.framing
    }

    /// Packets in the run.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether the run is empty.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    fn slot(&self, i: usize) -> &'a Slot {
        &self.batch.packets[self.range.start + i]
    }

    /// The `i`-th packet of the run: (timestamp ns, length on the wire, captured bytes).
    pub fn get(&self, i: usize) -> (u64, u32, &'a [u8]) {
        let s = self.slot(i);
        (s.ts_ns, s.orig_len, &self.batch.data[s.start..s.start + s.len])
    }

    /// The packets one by one.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32, &'a [u8])> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Packets `range` of this run.
    pub fn slice(&self, range: Range<usize>) -> Records<'a> {
        assert!(range.start <= range.end && range.end <= self.len(), "{range:?} of {}", self.len());
        Records { batch: self.batch, range: self.range.start + range.start..self.range.start + range.end }
    }

    /// The run's records back to back, as they go into a file of its framing.
    pub fn bytes(&self) -> &'a [u8] {
        if self.is_empty() {
            return &[];
        }
        let framing = self.framing();
        let (first, last) = (self.slot(0), self.slot(self.len() - 1));
        &self.batch.data[first.start - framing.header_len()..last.start + last.len + framing.trailer_len(last.len)]
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;

    use super::*;

    /// Packets of every length modulo 4, a zero-length one, one whose wire length is shorter
    /// than its captured length, and a timestamp past 2^32 ns.
    fn packets() -> Vec<(u64, u32, Vec<u8>)> {
        let mut v: Vec<(u64, u32, Vec<u8>)> =
            (0..9u8).map(|n| (1_700_000_000_123_456_789 + u64::from(n), 1500, vec![n; usize::from(n)])).collect();
        v.push((5_000_000_001, 2, vec![0xab; 7]));
        v
    }

    #[test]
    fn records_are_the_bytes_pcap_file_writes() {
        let packets = packets();
        for framing in [Framing::Pcap, Framing::Pcapng] {
            let want = match framing {
                Framing::Pcap => {
                    let header = PcapHeader {
                        ts_resolution: pcap_file::TsResolution::NanoSecond,
                        snaplen: 65535,
                        endianness: pcap_file::Endianness::native(),
                        ..Default::default()
                    };
                    let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
                    for (ts, orig, data) in &packets {
                        let orig = (*orig).max(data.len() as u32);
                        w.write_packet(&PcapPacket::new(Duration::from_nanos(*ts), orig, data)).unwrap();
                    }
                    w.into_writer().split_off(24)
                }
                _ => {
                    let mut w = PcapNgWriter::new(Vec::new()).unwrap();
                    w.write_pcapng_block(pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock {
                        linktype: pcap_file::DataLink::ETHERNET,
                        snaplen: 65535,
                        options: vec![],
                    })
                    .unwrap();
                    let start = w.get_ref().len();
                    for (ts, orig, data) in &packets {
                        w.write_pcapng_block(EnhancedPacketBlock {
                            interface_id: 0,
                            timestamp: Duration::from_nanos(*ts),
                            original_len: (*orig).max(data.len() as u32),
                            data: Cow::Borrowed(data),
                            options: vec![],
                        })
                        .unwrap();
                    }
                    w.into_inner().split_off(start)
                }
            };
            let mut batch = Batch::with_capacity(framing, 4);
            for (ts, orig, data) in &packets {
                batch.push(*ts, *orig, data);
            }
            let all = batch.records(0..batch.len());
            assert_eq!(all.bytes(), &want[..], "{framing:?}");
            // Any run is the matching stretch of the same bytes, and each packet reads back.
            let (head, tail) = (all.slice(0..4), all.slice(4..all.len()));
            assert_eq!([head.bytes(), tail.bytes()].concat(), want, "{framing:?}");
            assert!(all.slice(3..3).bytes().is_empty());
            for (i, (ts, orig, data)) in all.iter().enumerate() {
                assert_eq!((ts, orig, data), (packets[i].0, packets[i].1, &packets[i].2[..]));
            }
        }
    }

    #[test]
    fn bare_records_are_the_data_alone() {
        let mut batch = Batch::with_capacity(Framing::Bare, 1);
        batch.push(1, 10, b"abc");
        batch.push(2, 10, b"de");
        assert_eq!(batch.records(0..2).bytes(), b"abcde");
        assert_eq!((batch.len(), batch.caplen(1)), (2, 2));
        batch.clear();
        assert!(batch.is_empty());
    }
}
