//! rustls configurations from PEM files, and their hot reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use crate::{Result, TlsError, provider};

/// The three files of one identity: the CA that both sides trust, and this side's
/// certificate chain and private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate(s) of the CA that peers' certificates must chain to.
    pub ca: PathBuf,
    /// PEM certificate chain this side presents, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf certificate in `cert`.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Paths in a `edgecap pki` directory for a file stem (`coordinator`, `agent-{id}`).
    pub fn in_dir(dir: &Path, stem: &str) -> Self {
        Self { ca: dir.join("ca.pem"), cert: dir.join(format!("{stem}.pem")), key: dir.join(format!("{stem}-key.pem")) }
    }

    fn mtimes(&self) -> [Option<SystemTime>; 3] {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        [m(&self.ca), m(&self.cert), m(&self.key)]
    }
}

fn pem_err(path: &Path) -> impl FnOnce(rustls_pki_types::pem::Error) -> TlsError + '_ {
    move |e| TlsError::Pem { path: path.display().to_string(), message: e.to_string() }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(pem_err(path))?
        .collect::<std::result::Result<_, _>>()
        .map_err(pem_err(path))?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.display().to_string(), message: "no certificate found".into() });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(pem_err(path))
}

fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem { path: path.display().to_string(), message: e.to_string() })?;
    }
    Ok(roots)
}

/// Server side: presents `cert`, requires a client certificate chaining to `ca`.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig> {
    control_server_config(files, false)
}

/// The control listener's configuration; `anonymous` lets clients without a certificate in.
fn control_server_config(files: &TlsFiles, anonymous: bool) -> Result<ServerConfig> {
    let provider = provider();
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(&files.ca)?), provider.clone());
    let builder = if anonymous { builder.allow_unauthenticated() } else { builder };
    let verifier = builder.build().map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// An HTTPS server (the REST API): presents `cert`, asks for no client certificate
/// (callers authenticate with tokens), HTTP/1.1. `ca` is not used.
pub fn https_server_config(files: &TlsFiles) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Server side for a control listener that also takes enrollments: a client certificate
/// chaining to `ca` is verified when presented, and a client without one may connect (it can
/// then only enroll; everything else requires the certificate's identity).
pub fn server_config_enrolling(files: &TlsFiles) -> Result<ServerConfig> {
    control_server_config(files, true)
}

/// Client side without a certificate of its own (an agent about to enroll): trusts only
/// `ca`.
pub fn client_config_anonymous(ca: &Path) -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(load_roots(ca)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Client side: trusts only `ca`, presents `cert`.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(load_roots(&files.ca)?)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn watch_config<T: Send + Sync + 'static>(
    files: TlsFiles,
    interval: Duration,
    build: fn(&TlsFiles) -> Result<T>,
) -> Result<watch::Receiver<Arc<T>>> {
    let mut seen = files.mtimes();
    let (tx, rx) = watch::channel(Arc::new(build(&files)?));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            let now = files.mtimes();
            if now == seen {
                continue;
            }
            seen = now;
            match build(&files) {
                Ok(config) => {
                    tracing::info!(cert = %files.cert.display(), "tls files changed; new configuration in force");
                    let _ = tx.send(Arc::new(config));
                }
                Err(error) => {
                    tracing::error!(%error, "tls files changed but do not load; keeping the previous configuration");
                }
            }
        }
    });
    Ok(rx)
}

/// A server configuration that follows its files (checked every `interval`).
pub fn watch_server_config(files: TlsFiles, interval: Duration) -> Result<watch::Receiver<Arc<ServerConfig>>> {
    watch_config(files, interval, server_config)
}

/// An enrolling control server configuration ([`server_config_enrolling`]) that follows
/// its files.
pub fn watch_server_config_enrolling(
    files: TlsFiles,
    interval: Duration,
) -> Result<watch::Receiver<Arc<ServerConfig>>> {
    watch_config(files, interval, server_config_enrolling)
}

/// An HTTPS server configuration ([`https_server_config`]) that follows its files.
pub fn watch_https_server_config(
    cert: &Path,
    key: &Path,
    interval: Duration,
) -> Result<watch::Receiver<Arc<ServerConfig>>> {
    let files = TlsFiles { ca: cert.to_path_buf(), cert: cert.to_path_buf(), key: key.to_path_buf() };
    watch_config(files, interval, https_server_config)
}

/// A client configuration that follows its files (checked every `interval`).
pub fn watch_client_config(files: TlsFiles, interval: Duration) -> Result<watch::Receiver<Arc<ClientConfig>>> {
    watch_config(files, interval, client_config)
}
