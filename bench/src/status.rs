//! `edgecap-bench status`: the coordinator's per-PoP status writes against a real etcd,
//! through the same code path a replica runs for every agent report (read the PoP's key, fold
//! the report in, compare-and-swap). For `bench/etcd.sh`, which runs it beside etcd's own put
//! load and compares the rates.
//!
//! `--captures C --pops P`: C x P simulated PoPs, each reporting changed counters as fast as
//! its writes complete (`--interval-ms 0`) or once per interval (the agents' real cadence is
//! 1000 ms). Prints the writes per second reached, in total and per PoP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use edgecap_coordinator::bench::ReportPath;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// etcd endpoints, http://HOST:PORT[,...]
    #[arg(long)]
    endpoints: String,
    /// Key prefix to write under.
    #[arg(long)]
    prefix: String,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 4)]
    captures: usize,
    #[arg(long, default_value_t = 8)]
    pops: usize,
    /// Pause between one PoP's reports (0: as fast as writes complete).
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let endpoints: Vec<String> =
        args.endpoints.split(',').map(|e| e.trim_start_matches("http://").to_string()).collect();
    let prefix = format!("/{}", args.prefix.trim_matches('/'));
    let path = Arc::new(
        ReportPath::open(&edgecap_state::StateConfig::Etcd { endpoints, prefix, auth: Default::default() }).await?,
    );
    let writes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for c in 0..args.captures {
        let capture = format!("{:032x}", c + 1);
        for p in 0..args.pops {
            let agent = format!("agent-{p:04}");
            path.seed(&capture, &agent, &format!("pop{p:04}")).await?;
            let (path, writes, capture) = (path.clone(), writes.clone(), capture.clone());
            let interval = Duration::from_millis(args.interval_ms);
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    path.report(&capture, &agent, n).await;
                    writes.fetch_add(1, Ordering::Relaxed);
                    if !interval.is_zero() {
                        tokio::time::sleep(interval).await;
                    }
                }
            }));
        }
    }
    let started = Instant::now();
    for t in tasks {
        t.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let total = writes.load(Ordering::Relaxed) as f64;
    let pops = (args.captures * args.pops) as f64;
    println!(
        "edgecap-bench status: {} captures x {} PoPs: {:.0} status writes/s in all, {:.1} per PoP ({:.0} writes in {:.1} s)",
        args.captures,
        args.pops,
        total / secs,
        total / secs / pops,
        total,
        secs
    );
    Ok(())
}
