//! `edgecap-bench fanout`: how a sample capture's latency grows with the number of
//! agents it fans out to. One coordinator and N real agents in this process (each with its own
//! certificate, mutual-TLS control stream and libpcap lookback on `lo`); for each N, sample
//! captures are created through the HTTP API and timed until `success`. The window ends 1 s
//! in the past so the agents' visibility delay (150 ms) is not what is measured.

use std::time::{Duration, Instant};

use clap::Args;
use edgecap_agent::{Agent, AgentConfig};
use edgecap_coordinator::{Coordinator, CoordinatorConfig, Limits, RateLimits};
use serde_json::json;

#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// Agent counts to measure, comma-separated.
    #[arg(long, default_value = "1,4,16,64", value_delimiter = ',')]
    agents: Vec<usize>,
    /// Sample captures per agent count.
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Interface the agents capture on.
    #[arg(long, default_value = "lo")]
    iface: String,
}

const TOKEN: &str = "bench-fanout-token-0123456789";

pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("edgecap-fanout-{}", std::process::id()));
    let pki = dir.join("pki");
    edgecap_tls::pki::init_ca(&pki, "fanout")?;
    edgecap_tls::pki::issue_coordinator(&pki, "bench", &["127.0.0.1".into()])?;
    let coordinator = Coordinator::start(CoordinatorConfig {
        name: "bench".into(),
        api_listen: "127.0.0.1:0".parse()?,
        grpc_listen: "127.0.0.1:0".parse()?,
        tls: edgecap_tls::TlsFiles::in_dir(&pki, "coordinator"),
        tls_reload_interval: Duration::from_secs(60),
        state: edgecap_state::StateConfig::Memory,
        storage: edgecap_storage::StorageConfig::LocalDir { root: dir.join("objects") },
        tmp_dir: dir.join("tmp"),
        limits: Limits::default(),
        rate_limits: RateLimits::off(),
        sample_timeout: Duration::from_secs(15),
        agent_wait: Duration::ZERO,
        tokens: vec![("bench".into(), TOKEN.into())],
        s3_credentials: Default::default(),
        full: Default::default(),
        unscoped_accounts: edgecap_coordinator::UnscopedAccounts::Unrestricted,
        ..Default::default()
    })
    .await?;
    let endpoint = format!("https://127.0.0.1:{}", coordinator.grpc_addr.port());
    let client = edgecap_client::Client::new(edgecap_client::Endpoint {
        api: format!("http://{}/client/v4", coordinator.api_addr),
        account: "bench".into(),
        token: TOKEN.into(),
    })?;
    let agents = edgecap_common::tasks::Tasks::new();
    let mut running = 0usize;
    println!("agents  reps  median_ms  p90_ms  min_ms  max_ms  ratio_to_first");
    let mut first_median = None;
    for &n in &args.agents {
        while running < n {
            let files =
                edgecap_tls::pki::issue_agent(&pki, &format!("agent-{running:04}"), &format!("pop{running:04}"))?;
            let config = AgentConfig::new(vec![endpoint.clone()], files, vec![args.iface.clone()]);
            let agent = Agent::start(config)?;
            agents.spawn(agent.run(agents.token()));
            running += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while coordinator.connected_agents().len() < n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {n} agents connected",
                coordinator.connected_agents().len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut times = Vec::with_capacity(args.reps);
        for _ in 0..args.reps {
            let offset = edgecap_coordinator::rfc3339(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
            let started = Instant::now();
            let created = client
                .call(
                    "POST",
                    "",
                    Some(&json!({"system": "magic-transit", "type": "simple", "time_limit": 60,
                    "packet_limit": 100, "offset_time": offset})),
                )
                .await?;
            let id = created["id"].as_str().unwrap_or_default().to_string();
            loop {
                let v = client.call("GET", &format!("/{id}"), None).await?;
                if v["status"] != "pending" {
                    anyhow::ensure!(
                        v["pops"].as_array().map_or(0, |p| p.len()) == n,
                        "capture did not reach all {n} agents: {v}"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let p90 = times[(times.len() * 9 / 10).min(times.len() - 1)];
        let first = *first_median.get_or_insert(median);
        println!(
            "{n:6}  {:4}  {median:9.1}  {p90:6.1}  {:6.1}  {:6.1}  {:.2}",
            times.len(),
            times[0],
            times[times.len() - 1],
            median / first
        );
    }
    agents.shutdown(Duration::from_secs(10)).await;
    coordinator.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
