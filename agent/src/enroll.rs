//! Enrollment: the agent makes its own key, asks a coordinator to sign it with a bootstrap
//! token, and renews the certificate before it expires. The key never leaves the node.
//!
//! * [`ensure_certificate`] runs before the agent starts: a valid certificate for this
//!   agent and PoP is kept; otherwise a new key and a certificate signing request go to the
//!   coordinators in turn (TLS verifies them against the CA; the agent has no certificate to
//!   present yet) with the bootstrap token.
//! * [`renew`] runs beside the control stream: at two thirds of the certificate's life it
//!   asks again, authenticated by the current certificate (no token), and writes the new key
//!   and certificate; the TLS watcher then re-dials with them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use edgecap_proto::agent::v1 as pb;
use edgecap_tls::TlsFiles;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, EnrollConfig, own_identity};

/// A certificate this close to its expiry is renewed at start rather than used.
const MIN_REMAINING: i64 = 60;

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Whether the files hold a certificate for `enroll`'s agent and PoP valid for a while yet.
fn usable(tls: &TlsFiles, enroll: &EnrollConfig) -> bool {
    if !tls.key.exists() {
        return false;
    }
    let Ok((agent_id, pop)) = own_identity(tls) else { return false };
    let fresh = edgecap_tls::enroll::not_after(&tls.cert).is_ok_and(|t| t > now() + MIN_REMAINING);
    agent_id == enroll.agent_id && pop == enroll.pop && fresh
}

/// Errors the coordinator will give again to the same request: stop and say so.
fn permanent(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(status.code(), Unauthenticated | PermissionDenied | InvalidArgument | FailedPrecondition)
}

/// Makes sure `config.tls` holds a valid certificate for the agent and PoP of
/// `config.enroll`, enrolling with the bootstrap token if not. Coordinators that cannot be
/// reached are retried with backoff until `cancel`; a refusal (bad or expired token, a PoP
/// the token does not allow) is an error at once.
pub async fn ensure_certificate(config: &AgentConfig, cancel: &CancellationToken) -> anyhow::Result<()> {
    let Some(enroll) = &config.enroll else { return Ok(()) };
    edgecap_tls::install_default_provider();
    if usable(&config.tls, enroll) {
        return Ok(());
    }
    let token_file = enroll.bootstrap_token_file.as_ref().with_context(|| {
        format!(
            "--enroll-token-file: required to enroll (no valid certificate for agent {:?} of PoP {:?} at {})",
            enroll.agent_id,
            enroll.pop,
            config.tls.cert.display()
        )
    })?;
    let token = read_token(token_file)?;
    let tls = Arc::new(edgecap_tls::client_config_anonymous(&config.tls.ca).context("--tls-ca")?);
    let mut backoff = crate::connection::Backoff::new(config.backoff_min, config.backoff_max);
    let mut attempt = 0usize;
    loop {
        let endpoint = &config.coordinators[attempt % config.coordinators.len()];
        attempt += 1;
        match request(endpoint, tls.clone(), &config.tls, enroll, &token).await {
            Ok(serial) => {
                tracing::info!(agent_id = %enroll.agent_id, pop = %enroll.pop, %serial, %endpoint, "enrolled");
                return Ok(());
            }
            Err(Failure::Refused(status)) => {
                anyhow::bail!("enrollment refused by {endpoint}: {}", status.message())
            }
            Err(Failure::Other(error)) => {
                tracing::warn!(%endpoint, error = format!("{error:#}"), "enrollment failed; trying again")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => anyhow::bail!("stopped before enrolling"),
            _ = tokio::time::sleep(backoff.after(Duration::ZERO)) => {}
        }
    }
}

/// When the certificate at `path` is due for renewal: two thirds of the way from when it was
/// written (the file's modification time) to its expiry.
fn renewal_due(path: &Path) -> anyhow::Result<i64> {
    let not_after = edgecap_tls::enroll::not_after(path)?;
    let written = std::fs::metadata(path)?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
        .min(not_after);
    Ok(written + (not_after - written) * 2 / 3)
}

/// Renews the certificate at two thirds of its life until `cancel`. A failed renewal is
/// retried every `retry`; an expired certificate falls back to the bootstrap token, if
/// the agent still has one.
pub(crate) async fn renew(config: AgentConfig, retry: Duration, cancel: CancellationToken) {
    let Some(enroll) = config.enroll.clone() else { return };
    loop {
        let due = match renewal_due(&config.tls.cert) {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "certificate unreadable; renewing now");
                now()
            }
        };
        // Wake at least once a minute: the files may have been replaced by hand.
        let wait = Duration::from_secs(due.saturating_sub(now()).clamp(0, 60) as u64);
        if !wait.is_zero() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        match renew_once(&config, &enroll).await {
            Ok(serial) => tracing::info!(%serial, "certificate renewed"),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "certificate renewal failed; trying again");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(retry) => {}
                }
            }
        }
    }
}

async fn renew_once(config: &AgentConfig, enroll: &EnrollConfig) -> anyhow::Result<String> {
    let expired = edgecap_tls::enroll::not_after(&config.tls.cert).map_or(true, |t| t <= now());
    let (tls, token) = match (&enroll.bootstrap_token_file, expired) {
        (Some(file), true) => (edgecap_tls::client_config_anonymous(&config.tls.ca)?, read_token(file)?),
        (None, true) => anyhow::bail!("the certificate expired and there is no --enroll-token-file to enroll again"),
        (_, false) => (edgecap_tls::client_config(&config.tls)?, String::new()),
    };
    let tls = Arc::new(tls);
    let mut last = None;
    for endpoint in &config.coordinators {
        match request(endpoint, tls.clone(), &config.tls, enroll, &token).await {
            Ok(serial) => return Ok(serial),
            Err(Failure::Refused(status)) => last = Some(anyhow::anyhow!("{endpoint}: {}", status.message())),
            Err(Failure::Other(error)) => last = Some(error.context(endpoint.clone())),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no coordinator endpoint")))
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--enroll-token-file {}", path.display()))?;
    let token = text.trim();
    anyhow::ensure!(
        !token.is_empty() && token.len() <= 256 && token.bytes().all(|b| b.is_ascii_graphic()),
        "--enroll-token-file {}: not a bootstrap token (one line, as `edgecap admin bootstrap-token create` prints it)",
        path.display()
    );
    Ok(token.to_string())
}

enum Failure {
    /// The coordinator said no.
    Refused(tonic::Status),
    /// It could not be asked, or its answer could not be used.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

/// One enrollment request: a new key and CSR, signed by `endpoint`, both files replaced.
async fn request(
    endpoint: &str,
    tls: Arc<rustls::ClientConfig>,
    files: &TlsFiles,
    enroll: &EnrollConfig,
    token: &str,
) -> Result<String, Failure> {
    let (key, csr) = edgecap_tls::enroll::key_and_csr(&enroll.agent_id, &enroll.pop).map_err(anyhow::Error::from)?;
    let channel = crate::connection::connect(endpoint, tls).await?;
    let mut client = pb::agent_control_client::AgentControlClient::new(channel);
    let request = pb::EnrollRequest {
        bootstrap_token: token.to_string(),
        agent_id: enroll.agent_id.clone(),
        pop: enroll.pop.clone(),
        csr_pem: csr,
    };
    let answer = match tokio::time::timeout(Duration::from_secs(30), client.enroll(request)).await {
        Err(_) => return Err(Failure::Other(anyhow::anyhow!("no answer within 30 s"))),
        Ok(Err(status)) if permanent(&status) => return Err(Failure::Refused(status)),
        Ok(Err(status)) => return Err(Failure::Other(anyhow::anyhow!("{}", status.message()))),
        Ok(Ok(answer)) => answer.into_inner(),
    };
    let (files, serial) = (files.clone(), answer.serial.clone());
    tokio::task::spawn_blocking(move || write_pair(&files, &key, &answer.certificate_pem))
        .await
        .map_err(|e| anyhow::anyhow!("write the certificate: {e}"))??;
    Ok(serial)
}

/// Replaces the key (mode 0600) and then the certificate, each by rename.
fn write_pair(files: &TlsFiles, key: &str, cert: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    for (path, text, mode) in [(&files.key, key, 0o600), (&files.cert, cert, 0o644)] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("write {}", tmp.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    }
    Ok(())
}
