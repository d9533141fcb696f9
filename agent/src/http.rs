//! Sends presigned requests (shard uploads) over HTTP or HTTPS. The agent has no bucket
//! credentials: the URL carries a short-lived signature for exactly one object or part.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use edgecap_proto::agent::v1 as pb;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// An HTTP(S) client for presigned requests (system roots for HTTPS).
pub struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
}

impl HttpClient {
    /// A client trusting the system's root certificates.
    pub fn new() -> anyhow::Result<Self> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .context("load the system's root certificates")?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self { client: Client::builder(TokioExecutor::new()).build(connector) })
    }

    /// Sends `body` as the presigned request says; returns the ETag the store answered with.
    /// Fails on anything but 2xx, with the store's status and the start of its answer (the
    /// URL is not repeated: its query string is a bearer credential). The whole exchange
    /// (connect, body, answer) has [`REQUEST_TIMEOUT`]; an error answer is read up to
    /// [`ERROR_BODY_MAX`] bytes: a bucket endpoint cannot hold an agent up or fill its memory.
    pub async fn send(&self, request: &pb::PresignedRequest, body: Bytes) -> anyhow::Result<String> {
        let host = url_host(&request.url);
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(request, body))
            .await
            .with_context(|| format!("upload to {host}: not done within {} s", REQUEST_TIMEOUT.as_secs()))?
    }

    async fn exchange(&self, request: &pb::PresignedRequest, body: Bytes) -> anyhow::Result<String> {
        let mut builder = hyper::Request::builder().method(request.method.as_str()).uri(request.url.as_str());
        for h in &request.headers {
            builder = builder.header(h.name.as_str(), h.value.as_str());
        }
        let length = body.len();
        let req = builder
            .header(hyper::header::CONTENT_LENGTH, length)
            .body(Full::new(body))
            .context("build the upload request")?;
        let host = req.uri().host().unwrap_or("").to_string();
        let response = self.client.request(req).await.with_context(|| format!("upload to {host}"))?;
        let status = response.status();
        let etag = response.headers().get(hyper::header::ETAG).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if !status.is_success() {
            let limited = http_body_util::Limited::new(response.into_body(), ERROR_BODY_MAX);
            let body = limited.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            anyhow::bail!("upload to {host}: HTTP {status}: {text}");
        }
        Ok(etag)
    }
}

/// Longest a presigned request may take, from connect to the end of the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Most bytes of an error answer that are read.
pub const ERROR_BODY_MAX: usize = 16 << 10;

fn url_host(url: &str) -> String {
    url.parse::<hyper::Uri>().ok().and_then(|u| u.host().map(str::to_string)).unwrap_or_default()
}
