//! Generates the `edgecap.agent.v1` messages and gRPC service from
//! `proto/edgecap/agent/v1/agent.proto` with `tonic-prost-build` (needs `protoc`); runs again
//! when anything under `proto/` changes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(&["proto/edgecap/agent/v1/agent.proto"], &["proto"])?;
    Ok(())
}
