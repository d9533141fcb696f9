//! Full captures: start them at the agents of a colo, hand out upload grants for their
//! shards, follow every PoP to its end, then merge all shards into one `pcap_<id>.pcap` in
//! the user's bucket. Works with any number of coordinator replicas sharing the state store.
//! One room per step:
//!
//! * [`plan`]: the replica that accepts a capture checks the bucket and the limits, picks the
//!   agents of the colo, and writes the capture record;
//! * [`jobs`]: it then writes one **job** per agent (`jobs/{agent}/{capture}`); every replica
//!   **watches** the jobs and forwards them (start, and stop when the job says so) to the
//!   agents connected to it, and again when an agent (re)connects ([`handover`]: the writing
//!   replica hands its own agents their jobs as soon as the write commits); agents' progress reports
//!   are folded into their PoP's state (`pops/{capture}/{agent}`, created by the first report
//!   from the record's pending copy, then compare-and-swap, never over a final state) by the
//!   replica they are connected to ([`progress`]);
//! * [`uploads`]: that replica grants presigned uploads for each closed shard and records the
//!   delivered shards (`shards/{capture}/{agent}/{shard}`);
//! * [`leader`]: one replica is elected (a leased `leader` key); [`follow`]: the leader follows
//!   every unfinished capture: it fails PoPs whose agent is gone longer than the reconnect
//!   grace or that miss their deadline, and rolls the PoPs up into the capture's status;
//! * [`merge`]: when every PoP is final, the leader merges the shards into the bucket and writes
//!   the result. When the leader dies, the next one takes over within the lease time and
//!   resumes: a merge that was running is done again (it overwrites the same object), shards
//!   are deleted only after the final status is written.
//! * [`stage`]: the merge within the file-descriptor limit (an agent's shards read as one
//!   stream; too many agents merged in stages).
//! * [`buckets`]: the S3 client of each destination, and the per-bucket credentials.
//!
//! Per PoP: `pending` -> `running` -> `uploading` -> `done`, or `failed` / `skipped` (see
//! [`crate::model::PopStatus`]). The capture: `pending` -> `running` -> `conversion_pending`
//! -> `conversion_running` -> `success` (a merged file was written; `error_message` names any
//! PoP that failed) or `failed`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::agents::Registry;
use crate::config::FullSettings;
use crate::store::Repo;

mod buckets;
mod budget;
mod stream;

mod follow;
mod from_bucket;
mod handover;
mod jobs;
mod leader;
mod merge;
mod plan;
mod progress;
mod stage;
mod uploads;
mod wakes;

pub(crate) use jobs::current_view;
pub(crate) use plan::PlanError;
pub(crate) use stream::MAX_VIEWERS;

/// A start that has not reached its agent after this long is refused by the agent.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The full-capture machinery of one coordinator replica.
pub(crate) struct FullCaptures {
    repo: Repo,
    registry: Arc<Registry>,
    settings: FullSettings,
    buckets: buckets::Buckets,
    tmp_dir: PathBuf,
    name: String,
    leader: watch::Sender<bool>,
    metrics: Arc<crate::metrics::Metrics>,
    streams: stream::Streams,
    /// Agents' reports waiting to be written into their PoPs' keys.
    progress: progress::Progress,
    /// Delivered shards' records, written in batches.
    shard_records: crate::store::PutBatch,
    /// New jobs handed to this replica's agents without waiting for the watch.
    handed_over: handover::HandedOver,
}

/// The shard prefix of a capture (relative to the destination prefix).
fn shard_prefix(capture_id: &str) -> String {
    format!("edgecap-shards/{capture_id}/")
}

/// The key a shard of `agent` in `pop` is written to (relative to the destination prefix).
fn shard_key(capture_id: &str, pop: &str, agent: &str, shard: &str) -> String {
    format!("{}{pop}/{agent}/{shard}", shard_prefix(capture_id))
}

impl FullCaptures {
    pub(crate) fn new(
        repo: Repo,
        registry: Arc<Registry>,
        name: String,
        settings: FullSettings,
        credentials: std::collections::HashMap<String, edgecap_storage::s3::StaticCredentials>,
        tmp_dir: PathBuf,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            repo,
            registry,
            buckets: buckets::Buckets::new(credentials, settings.endpoints.clone(), settings.instance_metadata),
            settings,
            tmp_dir,
            name,
            leader: watch::channel(false).0,
            metrics,
            streams: stream::Streams::default(),
            progress: progress::Progress::default(),
            shard_records: crate::store::PutBatch::default(),
            handed_over: handover::HandedOver::default(),
        }
    }

    /// One replica over `repo` for unit tests: no agents connected, no bucket credentials.
    #[cfg(test)]
    pub(crate) fn for_test(repo: Repo, settings: FullSettings) -> Self {
        Self::for_test_with_agents(repo, settings, Default::default())
    }

    /// [`FullCaptures::for_test`] whose agents are those of `registry`.
    #[cfg(test)]
    pub(crate) fn for_test_with_agents(repo: Repo, settings: FullSettings, registry: Arc<Registry>) -> Self {
        Self::new(repo, registry, "t".into(), settings, Default::default(), std::env::temp_dir(), Default::default())
    }

    /// Follows this replica's leadership (true while it is the leader).
    pub(crate) fn leadership(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    /// Whether the operator allows the endpoint a destination names (see [`EndpointPolicy`]);
    /// the reason names `destination_conf`.
    pub(crate) async fn check_endpoint(&self, destination: &crate::model::DestinationConf) -> Result<(), String> {
        match &destination.endpoint {
            Some(endpoint) => self.settings.endpoints.check(endpoint).await,
            None => Ok(()),
        }
    }

    /// The bucket a destination names, with the configured credentials for it (cached).
    pub(crate) async fn store_for(
        &self,
        destination: &crate::model::DestinationConf,
    ) -> Result<Arc<edgecap_storage::s3::S3Store>, edgecap_storage::StorageError> {
        self.buckets.store_for(destination).await
    }
}
