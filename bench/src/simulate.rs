//! `edgecap-bench simulate`: N simulated agents in this process, for the scale benchmarks
//! and the small-scale CI test. Each is the real agent (`edgecap_agent::Agent`): its own
//! certificate and mutual-TLS control stream, its own lookback and full-capture spool; only
//! the packet source differs (the replay source: a pcap file looped, or generated frames, at
//! a set rate). The coordinators run elsewhere, so their CPU and memory are measured alone.
//!
//! Agents are spread over `--pops` PoP names, themselves spread over `--colos`
//! (`{colo}{nnn}`), and over every `--coordinator` given (each agent picks its own order of
//! them). Several simulator processes cover disjoint agents with `--first`. Runs until
//! SIGTERM or Ctrl-C; prints `ready N` once every agent has started.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use edgecap_agent::{Agent, AgentConfig, FullCaptureConfig};
use edgecap_capture::LookbackConfig;
use edgecap_capture::source::SourceConfig;
use edgecap_capture::source::replay::ReplayConfig;

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Agents to run in this process.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Number of the first agent (agents are `sim-NNNNN`): several processes take disjoint
    /// ranges.
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Coordinator endpoints, https://host:port (repeat or comma-separate).
    #[arg(long = "coordinator", required = true, value_delimiter = ',')]
    coordinators: Vec<String>,
    /// A directory made by `edgecap pki init` (ca.pem and ca-key.pem): each agent's
    /// certificate is issued there.
    #[arg(long)]
    pki: PathBuf,
    /// How many PoP names the agents are spread over (default: one PoP per agent).
    #[arg(long)]
    pops: Option<usize>,
    /// Colo names the PoPs are spread over: PoP `k` is `{colo}{k:03}`.
    #[arg(long, value_delimiter = ',', default_value = "pop")]
    colos: Vec<String>,
    /// Packets per second each agent's source plays (0: idle interfaces).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// A pcap or pcapng file to loop (default: generated UDP frames).
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Lookback memory per agent, KiB.
    #[arg(long, default_value_t = 512)]
    lookback_kib: usize,
    /// Where the agents' full-capture spools go (one directory per agent).
    #[arg(long)]
    spool_dir: PathBuf,
    /// Every agent's clock (probes and packet stamps) is this far off, ms (a PoP with a
    /// wrong clock).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    clock_skew_ms: i64,
    /// Shards rotate at this age, seconds.
    #[arg(long, default_value_t = 2)]
    shard_seconds: u32,
}

/// The PoP of agent `i`.
fn pop_of(i: usize, pops: usize, colos: &[String]) -> String {
    let k = i % pops.max(1);
    format!("{}{k:03}", colos[k % colos.len()])
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.colos.is_empty(), "--colos: name at least one colo");
    let pops = args.pops.unwrap_or(args.first + args.agents);
    let agents = edgecap_common::tasks::Tasks::new();
    for i in args.first..args.first + args.agents {
        let agent_id = format!("sim-{i:05}");
        let pop = pop_of(i, pops, &args.colos);
        let pki = args.pki.clone();
        let (id, p) = (agent_id.clone(), pop.clone());
        let files = tokio::task::spawn_blocking(move || edgecap_tls::pki::issue_agent(&pki, &id, &p)).await??;
        let mut config = AgentConfig::new(args.coordinators.clone(), files, vec!["sim0".into()]);
        config.source = SourceConfig::Replay(ReplayConfig {
            file: args.replay.clone(),
            rate_pps: args.rate,
            clock_skew_ns: args.clock_skew_ms * 1_000_000,
            ..ReplayConfig::default()
        });
        config.clock = edgecap_agent::AgentClock { skew_ns: args.clock_skew_ms * 1_000_000 };
        config.lookback = LookbackConfig { max_bytes: args.lookback_kib << 10, ..LookbackConfig::default() };
        let mut full = FullCaptureConfig::new(args.spool_dir.join(&agent_id));
        full.rotate_seconds = args.shard_seconds;
        full.spool_max_bytes = 256 << 20;
        config.full = Some(full);
        let agent = tokio::task::spawn_blocking(move || Agent::start(config)).await??;
        agents.spawn(agent.run(agents.token()));
    }
    println!("ready {}", args.agents);
    edgecap_common::shutdown_signal().await;
    agents.shutdown(Duration::from_secs(15)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn agents_spread_over_pops_and_colos() {
        let colos = vec!["ams".to_string(), "ord".to_string()];
        assert_eq!(super::pop_of(0, 4, &colos), "ams000");
        assert_eq!(super::pop_of(1, 4, &colos), "ord001");
        assert_eq!(super::pop_of(5, 4, &colos), "ord001");
    }
}
