//! A client for the edgecap API (Cloudflare's `/client/v4/accounts/{account}/pcaps`, plus
//! edgecap's extensions), as the CLI and the benchmarks use it. HTTP/1.1 or HTTPS (the
//! system's roots, plus a CA file if given) with a Bearer token; answers are the `result` of
//! Cloudflare's envelope, errors carry the API's status, code and message. Every request has
//! a timeout.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

/// Where the API is and who is calling. Its `Debug` does not show the token.
#[derive(Clone)]
pub struct Endpoint {
    /// Base URL, e.g. `http://127.0.0.1:9440/client/v4`.
    pub api: String,
    /// The account whose captures are called (`/accounts/{account}/pcaps`).
    pub account: String,
    /// The API token, sent as `Authorization: Bearer`. `Debug` shows it: do not log an
    /// `Endpoint`.
    pub token: String,
}

/// Why a call did not give a result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error (4xx/5xx and Cloudflare's envelope).
    #[error("HTTP {status}: {message}")]
    Api {
        /// The HTTP status; a 2xx too when the envelope said `success: false`.
        status: u16,
        /// The first error's code; `None` if the body is not the API's JSON or has none.
        code: Option<u64>,
        /// Every error as `[code] message`, joined with `; `; the raw body if it is not JSON.
        message: String,
    },
    /// The API could not be reached or answered something that is not the API's.
    #[error("{0}")]
    Transport(String),
    /// Writing a downloaded file failed ([`Client::download`]).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The API's error code, if it answered with one.
    pub fn code(&self) -> Option<u64> {
        match self {
            ClientError::Api { code, .. } => *code,
            _ => None,
        }
    }
}

/// This crate's result; the error is [`ClientError`] unless said otherwise.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("api", &self.api).field("account", &self.account).finish_non_exhaustive()
    }
}

/// Longest a request (including reading its answer) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A client of one [`Endpoint`], keeping connections alive between calls; use it inside a
/// Tokio runtime. Nothing is retried; each request has [`REQUEST_TIMEOUT`] ([`Client::wait`]
/// checks its own `timeout` between polls).
pub struct Client {
    endpoint: Endpoint,
    http: HyperClient<Connector, Full<Bytes>>,
}

/// An error and its causes, `: `-separated (hyper's own says only "client error (Connect)";
/// its causes say "Connection refused").
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// An error answer's status, first code and messages.
fn api_error(status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let errors = v["errors"].as_array().cloned().unwrap_or_default();
            // "[code] message" for each error, as the CLI has always printed them.
            let message = errors
                .iter()
                .map(|e| format!("[{}] {}", e["code"], e["message"].as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join("; ");
            let code = errors.first().and_then(|e| e["code"].as_u64());
            ClientError::Api { status, code, message }
        }
        Err(_) => ClientError::Api { status, code: None, message: String::from_utf8_lossy(body).into_owned() },
    }
}

/// What an answer ([`Client::send`]) means: the envelope's `result` (`Null` for 204), or the
/// API's error ([`ClientError::Api`]; [`ClientError::Transport`] for a 2xx that is not the
/// API's JSON). For callers that keep the body, e.g. to show the error envelope as it came.
pub fn answer(status: u16, bytes: &[u8]) -> Result<Value> {
    if status == 204 {
        return Ok(Value::Null);
    }
    if !(200..300).contains(&status) {
        return Err(api_error(status, bytes));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|_| {
        ClientError::Transport(format!("HTTP {status}: not an API answer: {}", String::from_utf8_lossy(bytes)))
    })?;
    if v["success"] != Value::Bool(true) {
        return Err(api_error(status, bytes));
    }
    Ok(v["result"].clone())
}

/// What [`Client::download_to`] did.
#[derive(Debug)]
pub enum Download {
    /// The file was written: this many bytes.
    Written(u64),
    /// The API answered with an error instead (nothing was written): its status and body
    /// (Cloudflare's envelope; [`answer`] reads it).
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer's body.
        body: Bytes,
    },
}

impl Client {
    /// A client for `endpoint`, trusting the system's root certificates for HTTPS; sends
    /// nothing yet. Only `http://` and `https://` API URLs are supported (anything else is
    /// [`ClientError::Transport`]).
    pub fn new(endpoint: Endpoint) -> Result<Self> {
        Self::with_ca(endpoint, None)
    }

    /// A client that also trusts the CA certificates in `ca` (PEM), for an API whose
    /// certificate comes from a private CA.
    pub fn with_ca(endpoint: Endpoint, ca: Option<&Path>) -> Result<Self> {
        if !(endpoint.api.starts_with("http://") || endpoint.api.starts_with("https://")) {
            return Err(ClientError::Transport(format!(
                "--api: {:?} must be an http:// or https:// URL",
                endpoint.api
            )));
        }
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = ca {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| ClientError::Transport(format!("--ca {}: {e}", path.display())))?;
            for cert in certs {
                roots.add(cert).map_err(|e| ClientError::Transport(format!("--ca {}: {e}", path.display())))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Transport(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        Ok(Self { endpoint, http: HyperClient::builder(TokioExecutor::new()).build(connector) })
    }

    /// The endpoint this client calls.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The URL of a path under this account's `/pcaps`.
    pub fn pcaps_url(&self, path: &str) -> String {
        format!("{}/accounts/{}/pcaps{path}", self.endpoint.api.trim_end_matches('/'), self.endpoint.account)
    }

    /// The URL of an edgecap extension outside `/client/v4` (e.g. `/edgecap/v1/agents`).
    pub fn extension_url(&self, path: &str) -> String {
        let base = self.endpoint.api.trim_end_matches('/').trim_end_matches("/client/v4");
        format!("{base}{path}")
    }

    /// Sends a request; returns the status and body, whatever the status.
    pub async fn send(&self, method: &str, url: &str, body: Option<&Value>) -> Result<(u16, Bytes)> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header("authorization", format!("Bearer {}", self.endpoint.token))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| ClientError::Transport(format!("{method} {url}: {e}")))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| ClientError::Transport(format!("{method} {url}: {}", causes(&e))))?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Transport(format!("{method} {url}: {}", causes(&e))))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| {
            ClientError::Transport(format!("{method} {url}: no answer within {} s", REQUEST_TIMEOUT.as_secs()))
        })?
    }

    /// Calls `url`; returns the envelope's `result` (`Null` for 204), or the API's error.
    pub async fn call_url(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value> {
        let (status, bytes) = self.send(method, url, body).await?;
        answer(status, &bytes)
    }

    /// Calls a path under this account's `/pcaps`.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.call_url(method, &self.pcaps_url(path), body).await
    }

    /// Polls a capture until it is final (`success`, `failed` or `complete`) or `timeout`
    /// passes (then [`ClientError::Transport`]); calls `progress` with each state seen.
    pub async fn wait(&self, id: &str, timeout: Duration, mut progress: impl FnMut(&Value)) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.call("GET", &format!("/{id}"), None).await?;
            progress(&v);
            if matches!(v["status"].as_str(), Some("success" | "failed" | "complete")) {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Transport(format!(
                    "capture {id} still {} after {} s",
                    v["status"],
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Downloads a sample capture's file into `out`; returns its size.
    pub async fn download(&self, id: &str, out: &Path) -> Result<usize> {
        match self.download_to(id, out, |_, _| {}).await? {
            Download::Written(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            Download::Refused { status, body } => Err(api_error(status, &body)),
        }
    }

    /// Downloads a sample capture's file into `out` as it arrives, calling `progress` with the
    /// bytes written so far and the total when the answer says it (`Content-Length`). The file
    /// is created only once the API has answered 200; if the transfer breaks, what was written
    /// of a regular file is removed. The answer must start within [`REQUEST_TIMEOUT`], and
    /// no gap between two pieces may be longer.
    pub async fn download_to(&self, id: &str, out: &Path, progress: impl FnMut(u64, Option<u64>)) -> Result<Download> {
        self.fetch_to(&format!("/{id}/download"), out, false, progress).await
    }

    /// Writes the live stream of a running full capture (`GET .../pcaps/{id}/stream`, pcapng)
    /// into `out` as it arrives, flushing each piece (so a pipe's reader sees packets at
    /// once), until the capture ends. Pieces may be far apart while a capture sees no
    /// traffic: only the answer's start is bounded by [`REQUEST_TIMEOUT`].
    pub async fn stream_to(&self, id: &str, out: &Path, progress: impl FnMut(u64, Option<u64>)) -> Result<Download> {
        self.fetch_to(&format!("/{id}/stream"), out, true, progress).await
    }

    async fn fetch_to(
        &self,
        path: &str,
        out: &Path,
        live: bool,
        mut progress: impl FnMut(u64, Option<u64>),
    ) -> Result<Download> {
        use tokio::io::AsyncWriteExt as _;
        let url = self.pcaps_url(path);
        let request = hyper::Request::builder()
            .method("GET")
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.endpoint.token))
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Transport(format!("GET {url}: {e}")))?;
        let late = || ClientError::Transport(format!("GET {url}: no answer within {} s", REQUEST_TIMEOUT.as_secs()));
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| late())?
            .map_err(|e| ClientError::Transport(format!("GET {url}: {}", causes(&e))))?;
        let status = response.status().as_u16();
        let total = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut body = response.into_body();
        if status != 200 {
            let bytes = tokio::time::timeout(REQUEST_TIMEOUT, body.collect())
                .await
                .map_err(|_| late())?
                .map_err(|e| ClientError::Transport(format!("GET {url}: {}", causes(&e))))?
                .to_bytes();
            return Ok(Download::Refused { status, body: bytes });
        }
        let mut file = tokio::fs::File::create(out).await?;
        let copied = async {
            let mut written = 0u64;
            progress(0, total);
            let idle = if live { Duration::MAX } else { REQUEST_TIMEOUT };
            while let Some(frame) = tokio::time::timeout(idle, body.frame()).await.map_err(|_| late())? {
                let frame = frame.map_err(|e| ClientError::Transport(format!("GET {url}: {}", causes(&e))))?;
                if let Some(data) = frame.data_ref() {
                    file.write_all(data).await?;
                    if live {
                        file.flush().await?;
                    }
                    written += data.len() as u64;
                    progress(written, total);
                }
            }
            file.flush().await?;
            if let Some(total) = total.filter(|t| *t != written) {
                return Err(ClientError::Transport(format!(
                    "GET {url}: the answer ended after {written} of {total} bytes"
                )));
            }
            Ok(written)
        };
        match copied.await {
            Ok(n) => Ok(Download::Written(n)),
            Err(e) => {
                drop(file);
                // A live stream's file keeps what was recorded before the break.
                if !live && tokio::fs::metadata(out).await.is_ok_and(|m| m.is_file()) {
                    let _ = tokio::fs::remove_file(out).await;
                }
                Err(e)
            }
        }
    }

    /// The connected agents (operator extension).
    pub async fn agents(&self) -> Result<Value> {
        self.call_url("GET", &self.extension_url("/edgecap/v1/agents"), None).await
    }
}
