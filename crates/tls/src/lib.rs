//! Mutual TLS between agents and coordinators.
//!
//! * [`pki`]: a small CA (`edgecap pki init`) that issues coordinator certificates (server
//!   auth, DNS/IP SANs) and agent certificates (client auth) whose URI SAN names the agent
//!   and its PoP: `spiffe://edgecap/pop/{pop}/agent/{agent_id}`.
//! * [`identity`]: reads that identity back from a peer certificate. The coordinator trusts
//!   only the certificate, never what an agent claims in its messages.
//! * [`enroll`]: agents' certificate signing requests, signed by a coordinator that holds the
//!   CA key, for agents that enroll instead of being issued a certificate by hand.
//! * [`config`]: rustls server and client configurations from PEM files, with hot reload:
//!   files are watched and a new configuration is published when they change; the previous
//!   one stays in force if the new files do not load.
//!
//! One crypto provider in the process: aws-lc-rs (see [`provider`]).

use std::sync::Arc;

pub mod config;
pub mod enroll;
pub mod identity;
pub mod pki;

pub use config::{
    TlsFiles, client_config, client_config_anonymous, https_server_config, server_config, server_config_enrolling,
    watch_client_config, watch_https_server_config, watch_server_config, watch_server_config_enrolling,
};
pub use identity::{PeerIdentity, peer_identity};

/// Why certificates, keys or TLS configurations could not be made or loaded. Every
/// variant is a problem with files or input that retrying alone will not fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A [`pki`] file could not be read or written (missing CA, permissions, full disk);
    /// also [`pki::init_ca`] finding a CA already there (kind `AlreadyExists`).
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A PEM file did not load: missing or unreadable, not PEM, no certificate or key in
    /// it, or a certificate or key that cannot be used. On hot reload the previous
    /// configuration stays in force until the file is fixed.
    #[error("{path}: {message}")]
    Pem {
        /// The file concerned.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the configuration, e.g. a private key it cannot use with the
    /// certificate.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// rcgen could not generate a key or build and sign a certificate ([`pki`]).
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A PoP name, agent id or coordinator name fails [`validate_name`], or a coordinator
    /// host is not a DNS name or IP address, or no host was given (`name` is then empty).
    #[error("invalid name {name:?}: {why}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// A peer certificate cannot be parsed or has no `spiffe://edgecap/` URI SAN naming a
    /// valid identity ([`peer_identity`]); the message says which. The peer is not trusted.
    #[error("certificate carries no edgecap identity: {0}")]
    NoIdentity(String),
    /// The client-certificate verifier could not be built from the CA file (for example,
    /// no usable trust anchor in it).
    #[error("{0}")]
    Verifier(String),
}

/// This crate's result; the error is [`TlsError`] unless said otherwise.
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
