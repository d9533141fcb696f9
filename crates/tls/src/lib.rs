//! Mutual TLS between agents and coordinators.
//!
//! * [`pki`]: a small CA (`edgecap pki init`) that issues coordinator certificates (server
//!   auth, DNS/IP SANs) and agent certificates (client auth) whose URI SAN names the agent
//!   and its PoP: `spiffe://edgecap/pop/{pop}/agent/{agent_id}`.
//! * [`identity`]: reads that identity back from a peer certificate. The coordinator trusts
//!   only the certificate, never what an agent claims in its messages.
//! * [`config`]: rustls server and client configurations from PEM files, with hot reload:
//!   files are watched and a new configuration is published when they change; the previous
//!   one stays in force if the new files do not load.
//!
//! One crypto provider in the process: aws-lc-rs (see [`provider`]).

use std::sync::Arc;

pub mod config;
pub mod identity;
pub mod pki;

pub use config::{TlsFiles, client_config, server_config, watch_client_config, watch_server_config};
pub use identity::{PeerIdentity, peer_identity};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("certificate carries no edgecap identity: {0}")]
    NoIdentity(String),
    #[error("{0}")]
    Verifier(String),
}

pub type Result<T, E = TlsError> = std::result::Result<T, E>;

/// The process's one crypto provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs aws-lc-rs as the process default (for libraries that ask rustls for it).
/// Harmless if already installed.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// PoP names and agent ids: 1-63 of `[A-Za-z0-9._-]`, starting with a letter or digit.
/// They end up in certificate URIs, etcd keys, object keys and file names.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |why| Err(TlsError::InvalidName { name: name.to_string(), why });
    if name.is_empty() || name.len() > 63 {
        return bad("length must be 1..=63");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
