//! `edgecap-bench capture`: the standalone capture of `edgecap-agent capture`, plus the
//! agent's sampled lookback fed from the same interface by its own source (as `edgecap-agent
//! run` does), so the cost of both is measured together.

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
}

pub async fn run(command: CaptureCommand) -> anyhow::Result<i32> {
    let alongside: Option<edgecap_agent::standalone::Alongside> = if command.with_lookback {
        let config = LookbackConfig { sample_rate: command.lookback_sample_rate.max(1), ..LookbackConfig::default() };
        let lookback = Arc::new(Mutex::new(Lookback::new(config)));
        let capture_config =
            LookbackCaptureConfig { interfaces: vec![command.args.iface.clone()], ..Default::default() };
        let sources = edgecap_capture::source::factory(&SourceConfig::Libpcap);
        let feed = match LookbackCapture::start(&capture_config, sources.as_ref(), lookback.clone()) {
            Ok(feed) => feed,
            Err(e) => {
                eprintln!("edgecap-bench: --with-lookback: {e}");
                return Ok(64);
            }
        };
        Some(Box::new(move || {
            feed.stop();
            let l = edgecap_common::lock(&lookback);
            format!(
                "lookback: {} packets seen, {} held, {} kernel drops",
                l.stats().packets_seen,
                l.len(),
                l.stats().kernel_dropped
            )
        }))
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
