//! Entry points for `edgecap-bench` (not a stable API): the exact code a replica runs for an
//! agent's progress report, driven without agents, so the benchmark measures the state-store
//! writes alone; and the leader's merge of a full capture's shards, on objects already in a
//! bucket.

use std::sync::Arc;

use edgecap_proto::agent::v1 as pb;

use crate::agents::Registry;
use crate::full::FullCaptures;
use crate::model::{CaptureRecord, CaptureRequest, CaptureType, PopResult, PopStatus, ShardRef};
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
        self.full.report(agent, report);
        self.full.flush_progress().await;
    }
}

/// One object for [`merge_objects`], with what an agent's shard record says of it.
#[derive(Clone, Debug)]
pub struct BenchShard {
    pub key: String,
    /// Size of the object.
    pub file_bytes: u64,
    /// Packets in it, and their captured bytes (0 and 0 when unknown: the merged size is
    /// then not known beforehand).
    pub packets: u64,
    pub bytes: u64,
}

/// Merges `objects` of `store` (one PoP each, as a full capture's shards are) as the leader
/// does at the end of a full capture: straight from the bucket, or through a scratch
/// directory under `scratch` when `via_scratch`. Returns the packets merged and the merged
/// object's key.
pub async fn merge_objects(
    store: Arc<dyn edgecap_storage::ObjectStore>,
    objects: Vec<BenchShard>,
    via_scratch: bool,
    scratch: std::path::PathBuf,
) -> anyhow::Result<(u64, String)> {
    let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await?);
    let settings =
        crate::config::FullSettings { merge_streams: if via_scratch { 0 } else { 256 }, ..Default::default() };
    let full = FullCaptures::new(
        repo,
        Arc::new(Registry::default()),
        "bench".into(),
        settings,
        Default::default(),
        scratch,
        Default::default(),
    );
    let mut record = CaptureRecord::from_request(
        "bench",
        CaptureRequest::for_test(CaptureType::Full),
        time::OffsetDateTime::now_utc(),
    );
    for (i, object) in objects.into_iter().enumerate() {
        let mut pop = PopResult::new(&format!("pop{i:03}"), &format!("agent{i:03}"), PopStatus::Done);
        pop.shards.push(ShardRef {
            key: object.key,
            packets: object.packets,
            bytes: object.bytes,
            file_bytes: object.file_bytes,
            first_ts_ns: 0,
            last_ts_ns: 0,
            sha256: String::new(),
            crc32c: String::new(),
            interface: String::new(),
            filter: String::new(),
        });
        record.pops.push(pop);
    }
    let packets = full
        .merge_into_bucket(&store, &record, &tokio_util::sync::CancellationToken::new())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .unwrap_or(0);
    Ok((packets, record.merged_key()))
}
