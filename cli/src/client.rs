//! The API flags shared by the commands that call it, and the create request built from the
//! flags. The client itself is `edgecap-client`.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use edgecap_client::{Client, Endpoint};
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
    /// A CA certificate (PEM) to trust for an https:// API, besides the system's.
    #[arg(long, env = "EDGECAP_CA")]
    pub ca: Option<std::path::PathBuf>,
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

pub fn print(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A client for the API the flags name.
pub fn client(args: ApiArgs) -> anyhow::Result<Client> {
    Ok(Client::with_ca(Endpoint { api: args.api, account: args.account, token: args.token }, args.ca.as_deref())?)
}

/// `capture create`: the request body from the flags; waits for the end with `--wait`.
pub async fn create(client: &Client, a: &CreateArgs) -> anyhow::Result<Value> {
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
    let created = client.call("POST", "", Some(&body)).await?;
    if !a.wait {
        return Ok(created);
    }
    let id = created["id"].as_str().context("no id in the answer")?.to_string();
    Ok(client.wait(&id, Duration::from_secs(86_400), |_| {}).await?)
}
