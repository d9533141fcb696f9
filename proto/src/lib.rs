//! The gRPC contract between agents and coordinators.
//!
//! Generated from `proto/edgecap/agent/v1/agent.proto` at build time (needs `protoc`, Debian's
//! `protobuf-compiler`, which `etcd-client` needs as well). Nothing but generated code lives
//! here: conversions to domain types happen at the edges, in `agent` and `coordinator`.

/// `edgecap.agent.v1`: the control stream.
pub mod agent {
    pub mod v1 {
        #![allow(clippy::all, rust_2018_idioms, missing_docs)]
        tonic::include_proto!("edgecap.agent.v1");
    }
}
