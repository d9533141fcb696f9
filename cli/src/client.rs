//! A small client for the edgecap (Cloudflare-compatible) API.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// API base URL, e.g. http://127.0.0.1:9440/client/v4
    #[arg(long, env = "EDGECAP_API", default_value = "http://127.0.0.1:9440/client/v4")]
    pub api: String,
    #[arg(long, env = "EDGECAP_ACCOUNT")]
    pub account: String,
    #[arg(long, env = "EDGECAP_TOKEN", hide_env_values = true)]
    pub token: String,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// simple (sample from the lookback) or full.
    #[arg(long = "type", default_value = "simple")]
    pub capture_type: String,
    #[arg(long, default_value_t = 60)]
    pub time_limit: u64,
    #[arg(long, default_value_t = 1000)]
    pub packet_limit: u64,
    #[arg(long)]
    pub byte_limit: Option<u64>,
    /// End of the sample window (RFC 3339); default now.
    #[arg(long)]
    pub offset_time: Option<String>,
    #[arg(long)]
    pub colo_name: Option<String>,
    #[arg(long)]
    pub destination_conf: Option<String>,
    /// Full captures (extension): merged file as `pcap` (default) or `pcapng` with per-PoP provenance.
    #[arg(long)]
    pub output_format: Option<String>,
    #[arg(long)]
    pub source_address: Option<String>,
    #[arg(long)]
    pub destination_address: Option<String>,
    #[arg(long)]
    pub source_port: Option<u64>,
    #[arg(long)]
    pub destination_port: Option<u64>,
    #[arg(long)]
    pub protocol: Option<u64>,
    /// Wait for the capture to finish before printing it.
    #[arg(long)]
    pub wait: bool,
}

pub struct Client {
    args: ApiArgs,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

pub fn print(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

impl Client {
    pub fn new(args: ApiArgs) -> anyhow::Result<Self> {
        anyhow::ensure!(args.api.starts_with("http://"), "--api: only http:// is supported by this client");
        Ok(Self { args, http: HyperClient::builder(TokioExecutor::new()).build_http() })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/accounts/{}/pcaps{path}", self.args.api.trim_end_matches('/'), self.args.account)
    }

    async fn send(&self, method: &str, url: &str, body: Option<Value>) -> anyhow::Result<(u16, Bytes)> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header("authorization", format!("Bearer {}", self.args.token))
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let response = self.http.request(request).await.with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// Calls the API; returns `result`, or fails with the API's error message.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, bytes) = self.send(method, &self.url(path), body).await?;
        if status == 204 {
            return Ok(Value::Null);
        }
        let v: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)))?;
        if !(200..300).contains(&status) || v["success"] != json!(true) {
            let errors: Vec<String> = v["errors"]
                .as_array()
                .map(|a| a.iter().map(|e| format!("[{}] {}", e["code"], e["message"].as_str().unwrap_or(""))).collect())
                .unwrap_or_default();
            anyhow::bail!("HTTP {status}: {}", errors.join("; "));
        }
        Ok(v["result"].clone())
    }

    pub async fn create(&self, a: &CreateArgs) -> anyhow::Result<Value> {
        let mut filter = serde_json::Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                filter.insert(k.into(), v);
            }
        };
        put("source_address", a.source_address.clone().map(Value::from));
        put("destination_address", a.destination_address.clone().map(Value::from));
        put("source_port", a.source_port.map(Value::from));
        put("destination_port", a.destination_port.map(Value::from));
        put("protocol", a.protocol.map(Value::from));
        let mut body = json!({
            "system": "magic-transit", "type": a.capture_type, "time_limit": a.time_limit,
            "packet_limit": a.packet_limit, "filter_v1": filter,
        });
        for (k, v) in [
            ("offset_time", a.offset_time.clone().map(Value::from)),
            ("colo_name", a.colo_name.clone().map(Value::from)),
            ("destination_conf", a.destination_conf.clone().map(Value::from)),
            ("byte_limit", a.byte_limit.map(Value::from)),
            ("output_format", a.output_format.clone().map(Value::from)),
        ] {
            if let Some(v) = v {
                body[k] = v;
            }
        }
        let created = self.call("POST", "", Some(body)).await?;
        if !a.wait {
            return Ok(created);
        }
        let id = created["id"].as_str().context("no id in the answer")?.to_string();
        self.wait(&id, u64::from(u32::MAX)).await
    }

    pub async fn wait(&self, id: &str, timeout_secs: u64) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs.min(86_400));
        loop {
            let v = self.call("GET", &format!("/{id}"), None).await?;
            if matches!(v["status"].as_str(), Some("success" | "failed" | "complete")) {
                return Ok(v);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "capture {id} still {} after {timeout_secs} s",
                v["status"]
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn download(&self, id: &str, out: &Path) -> anyhow::Result<usize> {
        let (status, bytes) = self.send("GET", &self.url(&format!("/{id}/download")), None).await?;
        if status != 200 {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            anyhow::bail!("HTTP {status}: {}", v["errors"][0]["message"].as_str().unwrap_or("download failed"));
        }
        std::fs::write(out, &bytes).with_context(|| format!("write {}", out.display()))?;
        Ok(bytes.len())
    }

    pub async fn agents(&self) -> anyhow::Result<Value> {
        let base = self.args.api.trim_end_matches('/').trim_end_matches("/client/v4");
        let (status, bytes) = self.send("GET", &format!("{base}/edgecap/v1/agents"), None).await?;
        let v: Value = serde_json::from_slice(&bytes).with_context(|| format!("HTTP {status}"))?;
        anyhow::ensure!(status == 200, "HTTP {status}: {}", v["errors"][0]["message"]);
        Ok(v["result"].clone())
    }
}
