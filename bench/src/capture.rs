//! `edgecap-bench capture`: the standalone capture of `edgecap-agent capture`, plus the
//! agent's sampled lookback on the same interface, as `edgecap-agent run` has it: fed by the
//! capture while it runs (one kernel ring), or with `--separate-lookback-ring` by its own
//! source beside it; so the cost of both is measured together.

use std::sync::{Arc, Mutex};

use clap::Args;
use edgecap_agent::standalone::{CaptureArgs, UsageError};
use edgecap_capture::source::SourceConfig;
use edgecap_capture::{Lookback, LookbackCapture, LookbackCaptureConfig, LookbackConfig};

#[derive(Args, Debug)]
pub struct CaptureCommand {
    #[command(flatten)]
    args: CaptureArgs,
    /// Also feed the agent's sampled lookback from this interface.
    #[arg(long)]
    with_lookback: bool,
    /// The lookback's sample rate with --with-lookback.
    #[arg(long, default_value_t = 1)]
    lookback_sample_rate: u32,
    /// With --with-lookback: the lookback keeps its own kernel ring (the agent's
    /// --separate-lookback-ring), instead of being fed by the capture.
    #[arg(long)]
    separate_lookback_ring: bool,
    /// Test hook: run the lookback alone this long before the capture starts ...
    #[arg(long, default_value_t = 0, hide = true)]
    lookback_lead_ms: u64,
    /// ... and on this long after it ends (the hand-overs happen under traffic).
    #[arg(long, default_value_t = 0, hide = true)]
    lookback_linger_ms: u64,
    /// Test hook: write what the lookback holds at the end into this file (pcap, ns).
    #[arg(long, hide = true)]
    lookback_dump: Option<std::path::PathBuf>,
}

/// The lookback's packets as a classic pcap file with nanosecond timestamps.
fn dump(lookback: &Lookback, path: &std::path::Path) -> std::io::Result<()> {
    let snaplen = lookback.config().snaplen;
    let linktype = lookback.interfaces().first().map_or(1, |(_, l)| *l as u32);
    let mut out = Vec::new();
    for word in [0xa1b2_3c4du32, 0x0004_0002, 0, 0, snaplen, linktype] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    // (The version is two u16s: 2, 4.)
    out[4..8].copy_from_slice(&[2, 0, 4, 0]);
    for p in lookback.query(0, u64::MAX, usize::MAX, |_, _| true).packets {
        let (secs, nanos) = (p.ts_ns / 1_000_000_000, p.ts_ns % 1_000_000_000);
        for word in [secs as u32, nanos as u32, p.data.len() as u32, p.orig_len] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&p.data);
    }
    std::fs::write(path, out)
}

pub async fn run(command: CaptureCommand) -> anyhow::Result<i32> {
    let alongside: Option<edgecap_agent::standalone::Alongside> = if command.with_lookback {
        let config = LookbackConfig { sample_rate: command.lookback_sample_rate.max(1), ..LookbackConfig::default() };
        let lookback = Arc::new(Mutex::new(Lookback::new(config)));
        let capture_config =
            LookbackCaptureConfig { interfaces: vec![command.args.iface.clone()], ..Default::default() };
        let sources = edgecap_capture::source::factory(&SourceConfig::Libpcap);
        let feed = match LookbackCapture::start(&capture_config, sources, lookback.clone()) {
            Ok(feed) => feed,
            Err(e) => {
                eprintln!("edgecap-bench: --with-lookback: {e}");
                return Ok(64);
            }
        };
        let shared = feed.feed(&command.args.iface).filter(|_| !command.separate_lookback_ring);
        eprintln!("edgecap-bench: lookback on {}", command.args.iface);
        tokio::time::sleep(std::time::Duration::from_millis(command.lookback_lead_ms)).await;
        let linger = std::time::Duration::from_millis(command.lookback_linger_ms);
        let dump_to = command.lookback_dump.clone();
        Some(edgecap_agent::standalone::Alongside {
            feed: shared,
            stop: Box::new(move || {
                std::thread::sleep(linger);
                feed.stop();
                let l = edgecap_common::lock(&lookback);
                if let Some(path) = &dump_to
                    && let Err(e) = dump(&l, path)
                {
                    eprintln!("edgecap-bench: --lookback-dump {}: {e}", path.display());
                }
                format!(
                    "lookback: {} packets seen, {} held, {} kernel drops",
                    l.stats().packets_seen,
                    l.len(),
                    l.stats().kernel_dropped
                )
            }),
        })
    } else {
        None
    };
    match edgecap_agent::standalone::capture(command.args, alongside).await {
        Ok(code) => Ok(code),
        Err(e) => match e.downcast::<UsageError>() {
            Ok(usage) => {
                eprintln!("edgecap-bench: {}", usage.0);
                Ok(64)
            }
            Err(e) => Err(e),
        },
    }
}
