//! `edgecap capture create|list|get|wait|download|stream|stop`: captures through the API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::Api;
use crate::failure::CaptureFailed;
use crate::{views, wait};

#[derive(Subcommand, Debug)]
pub enum CaptureCommand {
    /// Request a capture (sample by default). Prints the capture, or with --dry-run what it
    /// would do.
    #[command(after_help = "Examples:
  # ICMP seen in the last 60 s at every PoP, up to 100 packets; wait for the file
  edgecap capture create --time-limit 60 --packet-limit 100 --protocol 1 --wait
  # DNS answers from one resolver, over a window that ended at a given time
  edgecap capture create --source-address 192.0.2.53 --source-port 53 --protocol 17 \\
      --offset-time 2025-01-02T03:04:05Z
  # 5 minutes of new traffic at every agent of colo ams, into a validated bucket
  edgecap capture create --type full --colo-name ams --time-limit 300 --byte-limit 100000000 \\
      --destination-conf 's3://my-bucket/pcaps?region=eu-west-1' --filter-bpf 'tcp port 443' --wait
  # What a full capture of colos ams and ord would match and when it would end; nothing starts
  edgecap capture create --type full --colo-names ams,ord --time-limit 300 --packet-limit 10000 \\
      --destination-conf 's3://my-bucket/pcaps?region=eu-west-1' --protocol 17 --clock-correction --dry-run")]
    Create(Box<CreateArgs>),
    /// List captures, newest first.
    #[command(after_help = "Examples:
  edgecap capture list
  edgecap capture list --output json | jq -r '.[] | select(.status == \"failed\") | .id'")]
    List,
    /// Show one capture: its fields and one line per PoP.
    #[command(after_help = "Examples:
  edgecap capture get 0123456789abcdef0123456789abcdef
  edgecap capture get 0123456789abcdef0123456789abcdef --output json | jq .pops")]
    Get {
        /// The capture's id (32 hex digits).
        id: String,
    },
    /// Wait until a capture is final, then show it (exit code 4 if it failed).
    #[command(after_help = "Examples:
  edgecap capture wait 0123456789abcdef0123456789abcdef
  edgecap capture wait 0123456789abcdef0123456789abcdef --timeout 600 || echo \"exit $?\"")]
    Wait {
        /// The capture's id (32 hex digits).
        id: String,
        /// Give up after this many seconds (exit code 5).
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Download a sample capture's PCAP (with a progress bar on a terminal).
    #[command(after_help = "Examples:
  edgecap capture download 0123456789abcdef0123456789abcdef -o sample.pcap
  edgecap capture download 0123456789abcdef0123456789abcdef -o /dev/stdout | tshark -r -")]
    Download {
        /// The capture's id (32 hex digits).
        id: String,
        /// The file to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Watch a running full capture live (extension): pcapng from every PoP, in time order,
    /// until the capture ends. A slow reader loses packets (counted in the stream's interface
    /// statistics), never the capture's file.
    #[command(after_help = "Examples:
  edgecap capture stream 0123456789abcdef0123456789abcdef | wireshark -k -i -
  edgecap capture stream 0123456789abcdef0123456789abcdef | tshark -l -r -
  edgecap capture stream 0123456789abcdef0123456789abcdef -o live.pcapng")]
    Stream {
        /// The capture's id (32 hex digits).
        id: String,
        /// Where to write the stream (default: standard output).
        #[arg(short, long, default_value = "/dev/stdout")]
        output: PathBuf,
    },
    /// Stop a full capture (its PoPs stop, deliver what they captured, and it is merged).
    #[command(after_help = "Examples:
  edgecap capture stop 0123456789abcdef0123456789abcdef && edgecap capture wait 0123456789abcdef0123456789abcdef")]
    Stop {
        /// The capture's id (32 hex digits).
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// simple (a sample from the lookback) or full (new traffic, into a bucket).
    #[arg(long = "type", default_value = "simple", value_parser = ["simple", "full"])]
    pub capture_type: String,
    /// Seconds: the sample's window, or how long a full capture runs (1-300).
    #[arg(long, default_value_t = 60)]
    pub time_limit: u64,
    /// Most packets (sample: 1-10000, the newest kept).
    #[arg(long, default_value_t = 1000)]
    pub packet_limit: u64,
    /// Full captures: most bytes per PoP.
    #[arg(long)]
    pub byte_limit: Option<u64>,
    /// End of the sample window (RFC 3339); default now.
    #[arg(long)]
    pub offset_time: Option<String>,
    /// Full captures: the colo (every PoP whose name starts with it).
    #[arg(long)]
    pub colo_name: Option<String>,
    /// Full captures (extension): several colos (names or prefixes) captured together into one
    /// merged file with per-PoP provenance; comma-separated or repeated. With --colo-name, both
    /// count.
    #[arg(long, value_name = "COLO,...", value_delimiter = ',')]
    pub colo_names: Vec<String>,
    /// Full captures: the validated bucket, s3://bucket[/prefix][?region=R][&endpoint=URL].
    #[arg(long)]
    pub destination_conf: Option<String>,
    /// Full captures (extension): merged file as `pcap` (default) or `pcapng` with per-PoP provenance.
    #[arg(long, value_parser = ["pcap", "pcapng"])]
    pub output_format: Option<String>,
    /// An IPv4 or IPv6 address, or a CIDR prefix.
    #[arg(long)]
    pub source_address: Option<String>,
    /// An IPv4 or IPv6 address, or a CIDR prefix.
    #[arg(long)]
    pub destination_address: Option<String>,
    /// A port, 0-65535 (TCP, UDP and SCTP).
    #[arg(long)]
    pub source_port: Option<u64>,
    /// A port, 0-65535 (TCP, UDP and SCTP).
    #[arg(long)]
    pub destination_port: Option<u64>,
    /// IP protocol number (1 ICMP, 6 TCP, 17 UDP, 58 ICMPv6).
    #[arg(long)]
    pub protocol: Option<u64>,
    /// A pcap-filter expression (extension), ANDed with the other filters; numbers only
    /// (`port 53`, not `port domain`).
    #[arg(long)]
    pub filter_bpf: Option<String>,
    /// Extension: shift each PoP's timestamps onto the coordinator's clock by the offset its
    /// agent measured (good to the uncertainty shown per PoP).
    #[arg(long)]
    pub clock_correction: bool,
    /// Extension: start nothing; run every check of the request and print what the capture
    /// would do: each PoP's matching packets and bytes per second over the last 10 s, the
    /// offline PoPs, the totals and, for a full capture, which limit would end it and when.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
    /// Wait for the capture to finish before printing it (progress on a terminal; exit code 4
    /// if it failed).
    #[arg(long)]
    pub wait: bool,
}

/// The request body from the flags.
pub fn body(a: &CreateArgs) -> Value {
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
        ("filter_bpf", a.filter_bpf.clone().map(Value::from)),
    ] {
        if let Some(v) = v {
            body[k] = v;
        }
    }
    if !a.colo_names.is_empty() {
        body["colo_names"] = json!(a.colo_names);
    }
    for (k, on) in [("clock_correction", a.clock_correction), ("dry_run", a.dry_run)] {
        if on {
            body[k] = true.into();
        }
    }
    body
}

/// Prints a capture that was waited for; a failed one is an error (exit code 4) unless the
/// output is the implicit JSON of scripts written before exit codes existed.
fn finished(api: &Api, capture: &Value) -> anyhow::Result<()> {
    api.out.show(capture, views::capture);
    if capture["status"] == "failed" && !api.out.legacy() {
        return Err(CaptureFailed {
            id: capture["id"].as_str().unwrap_or_default().to_string(),
            message: capture["error_message"].as_str().unwrap_or("no reason given").to_string(),
        }
        .into());
    }
    Ok(())
}

pub async fn run(api: Api, command: CaptureCommand) -> anyhow::Result<()> {
    match command {
        CaptureCommand::Create(args) => {
            let created = api.call("POST", "", Some(&body(&args))).await?;
            if args.dry_run {
                api.out.show(&created, views::dry_run);
                return Ok(());
            }
            if !args.wait {
                api.out.show(&created, views::capture);
                return Ok(());
            }
            let id = created["id"].as_str().context("no id in the API's answer")?.to_string();
            finished(&api, &wait::wait(&api, &id, Duration::from_secs(86_400)).await?)
        }
        CaptureCommand::List => {
            api.out.show(&api.call("GET", "", None).await?, views::captures);
            Ok(())
        }
        CaptureCommand::Get { id } => {
            api.out.show(&api.call("GET", &format!("/{id}"), None).await?, views::capture);
            Ok(())
        }
        CaptureCommand::Wait { id, timeout } => {
            finished(&api, &wait::wait(&api, &id, Duration::from_secs(timeout.min(86_400))).await?)
        }
        CaptureCommand::Download { id, output } => {
            let n = wait::download(&api, &id, &output).await?;
            eprintln!("{n} bytes written to {}", output.display());
            Ok(())
        }
        CaptureCommand::Stream { id, output } => {
            let n = wait::stream(&api, &id, &output).await?;
            eprintln!("the capture ended; {n} bytes of live stream written");
            Ok(())
        }
        CaptureCommand::Stop { id } => {
            api.call("PUT", &format!("/{id}/stop"), None).await?;
            eprintln!("stop requested");
            Ok(())
        }
    }
}
