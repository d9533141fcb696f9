//! The gRPC contract between agents and coordinators.
//!
//! Generated from `proto/edgecap/agent/v1/agent.proto` at build time (needs `protoc`, Debian's
//! `protobuf-compiler`, which `etcd-client` needs as well). Generated code, plus the one piece
//! of wire logic both sides share (how a sample answer is cut into chunks and put back
//! together); conversions to domain types happen at the edges, in `agent` and `coordinator`.

/// `edgecap.agent.*`: the agent <-> coordinator packages, one module per version (a breaking
/// change is a new package).
pub mod agent {
    /// `edgecap.agent.v1`: the control stream (`AgentControl.Control`, one bidirectional
    /// stream per agent), generated from `agent.proto`.
    pub mod v1 {
        #![allow(clippy::all, rust_2018_idioms, missing_docs)]
        tonic::include_proto!("edgecap.agent.v1");
    }
}

use agent::v1::{LookbackStats, Packet, SampleChunk};

/// The largest message either end of the control stream sends or accepts (set on the
/// agent's client and the coordinator's server alike). Everything that can grow is cut
/// under it: sample answers into chunks of [`CHUNK_BYTES`].
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Most packet bytes in one [`SampleChunk`]: under [`MAX_MESSAGE_BYTES`] with room for the
/// framing, and under etcd's 1.5 MiB request limit, since a chunk relayed between
/// coordinators is stored as one value.
pub const CHUNK_BYTES: usize = 1 << 20;

/// What one packet adds to an encoded chunk besides its data (timestamps, lengths, the
/// interface name, field tags), counted generously.
fn overhead(p: &Packet) -> usize {
    32 + p.interface.len()
}

impl SampleChunk {
    /// A complete answer as chunks of at most [`CHUNK_BYTES`] (a single packet larger than
    /// that travels alone; packets are at most 64 KiB); the last one is `done` and carries
    /// the totals.
    pub fn split(request_id: &str, packets: Vec<Packet>, matched: u64, lookback: LookbackStats) -> Vec<SampleChunk> {
        let mut chunks = Vec::new();
        let mut current: Vec<Packet> = Vec::new();
        let mut bytes = 0usize;
        for packet in packets {
            let size = packet.data.len() + overhead(&packet);
            if !current.is_empty() && bytes + size > CHUNK_BYTES {
                let full = std::mem::take(&mut current);
                chunks.push(SampleChunk { request_id: request_id.to_string(), packets: full, ..Default::default() });
                bytes = 0;
            }
            bytes += size;
            current.push(packet);
        }
        let packets = current;
        chunks.push(SampleChunk {
            request_id: request_id.to_string(),
            packets,
            done: true,
            matched,
            lookback: Some(lookback),
            error: String::new(),
            excluded: 0,
            clock: None,
        });
        chunks
    }

    /// A failed answer: one `done` chunk with the reason.
    pub fn failure(request_id: &str, error: String) -> SampleChunk {
        SampleChunk { request_id: request_id.to_string(), done: true, error, ..Default::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn packet(len: usize) -> Packet {
        Packet { ts_ns: 1, orig_len: len as u32, data: vec![7; len], interface: "eth0".into(), linktype: 1 }
    }

    #[test]
    fn answers_are_cut_by_bytes_and_every_chunk_fits_the_limits() {
        // 20 000 packets of 1500 bytes: 30 MB, far over one message.
        let packets: Vec<Packet> = (0..20_000).map(|_| packet(1500)).collect();
        let chunks = SampleChunk::split("r", packets, 20_000, LookbackStats::default());
        assert!(chunks.len() >= 28, "{}", chunks.len());
        assert_eq!(chunks.iter().map(|c| c.packets.len()).sum::<usize>(), 20_000);
        assert!(chunks.iter().all(|c| c.encoded_len() <= CHUNK_BYTES + 4096));
        assert!(chunks.iter().all(|c| c.encoded_len() < 1_500_000 && c.encoded_len() < MAX_MESSAGE_BYTES));
        assert!(chunks.last().unwrap().done && chunks.iter().filter(|c| c.done).count() == 1);
        // Small packets: many per chunk, nothing empty.
        let small = SampleChunk::split("r", (0..5000).map(|_| packet(60)).collect(), 5000, LookbackStats::default());
        assert_eq!(small.len(), 1);
        assert_eq!(SampleChunk::split("r", Vec::new(), 0, LookbackStats::default()).len(), 1);
    }
}
