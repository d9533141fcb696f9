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

/// Packets per [`SampleChunk`]: 1000 x 160 B stays well under gRPC's 4 MiB message default
/// and etcd's value limit (relayed answers).
pub const CHUNK_PACKETS: usize = 1000;

impl SampleChunk {
    /// A complete answer as chunks of at most [`CHUNK_PACKETS`]; the last one is `done` and
    /// carries the totals.
    pub fn split(
        request_id: &str,
        mut packets: Vec<Packet>,
        matched: u64,
        lookback: LookbackStats,
    ) -> Vec<SampleChunk> {
        let mut chunks = Vec::new();
        while packets.len() > CHUNK_PACKETS {
            let rest = packets.split_off(CHUNK_PACKETS);
            chunks.push(SampleChunk { request_id: request_id.to_string(), packets, ..Default::default() });
            packets = rest;
        }
        chunks.push(SampleChunk {
            request_id: request_id.to_string(),
            packets,
            done: true,
            matched,
            lookback: Some(lookback),
            error: String::new(),
        });
        chunks
    }

    /// A failed answer: one `done` chunk with the reason.
    pub fn failure(request_id: &str, error: String) -> SampleChunk {
        SampleChunk { request_id: request_id.to_string(), done: true, error, ..Default::default() }
    }
}
