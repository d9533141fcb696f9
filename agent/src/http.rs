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

pub struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
}

impl HttpClient {
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
    /// URL is not repeated: its query string is a bearer credential).
    pub async fn send(&self, request: &pb::PresignedRequest, body: Bytes) -> anyhow::Result<String> {
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
        let response = tokio::time::timeout(Duration::from_secs(300), self.client.request(req))
            .await
            .with_context(|| format!("upload to {host}: no answer within 300 s"))?
            .with_context(|| format!("upload to {host}"))?;
        let status = response.status();
        let etag = response.headers().get(hyper::header::ETAG).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if !status.is_success() {
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            anyhow::bail!("upload to {host}: HTTP {status}: {text}");
        }
        Ok(etag)
    }
}
