//! Entry points for `edgecap-bench` (not a stable API): the exact code a replica runs for an
//! agent's progress report, driven without agents, so the benchmark measures the state-store
//! writes alone.

use std::sync::Arc;

use edgecap_proto::agent::v1 as pb;

use crate::agents::Registry;
use crate::full::FullCaptures;
use crate::model::{PopResult, PopStatus};
use crate::store::Repo;

/// The progress-report path of one replica.
pub struct ReportPath {
    repo: Repo,
    full: Arc<FullCaptures>,
}

impl ReportPath {
    pub async fn open(state: &edgecap_state::StateConfig) -> anyhow::Result<Self> {
        let repo = Repo::new(edgecap_state::open(state).await?);
        let full = Arc::new(FullCaptures::new(
            repo.clone(),
            Arc::new(Registry::default()),
            "bench".into(),
            Default::default(),
            Default::default(),
            std::env::temp_dir(),
            Default::default(),
        ));
        Ok(Self { repo, full })
    }

    /// Makes `agent` (in `pop`) a running PoP of `capture`.
    pub async fn seed(&self, capture: &str, agent: &str, pop: &str) -> anyhow::Result<()> {
        self.repo.cas_pop(capture, agent, None, &PopResult::new(pop, agent, PopStatus::Running)).await?;
        Ok(())
    }

    /// One report from `agent`: `n` packets written so far.
    pub async fn report(&self, capture: &str, agent: &str, n: u64) {
        let mut report = pb::CaptureReport {
            capture_id: capture.to_string(),
            counters: Some(pb::CaptureCounters {
                received: n,
                matched: n,
                written: n,
                bytes_written: n * 100,
                ..Default::default()
            }),
            ..Default::default()
        };
        report.capture_state = pb::CaptureState::Running as i32;
        self.full.report(agent, report).await;
    }
}
