//! Sample captures: ask every connected agent's lookback for the window
//! `[offset_time - time_limit, offset_time]` ([`fanout`], agents on other replicas through
//! [`relay`]), merge the answers by timestamp, keep the newest `packet_limit` packets, and
//! store one classic PCAP for `/download` ([`file`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgecap_common::lock;
use edgecap_common::tasks::Tasks;
use edgecap_storage::ObjectStore;

use crate::agents::Registry;
use crate::model::{CaptureStatus, CaptureType};
use crate::store::{Repo, RepoError};
use edgecap_state::StateError;

pub(crate) mod batch;
mod fanout;
mod file;
mod lease;
mod probe;
pub(crate) mod relay;
mod taken;

/// Cloudflare's wording when nothing matched.
pub(crate) const NO_PACKETS: &str =
    "No packets matched the filter in the time limit given. Please modify the filter or try again.";

/// How long a finished sample capture keeps trying to write its result.
const RESULT_PATIENCE: Duration = Duration::from_secs(600);

/// What sample captures need; one per coordinator replica.
pub(crate) struct SampleCaptures {
    pub(crate) repo: Repo,
    pub(crate) registry: Arc<Registry>,
    pub(crate) objects: Arc<dyn ObjectStore>,
    pub(crate) tmp_dir: PathBuf,
    /// `packet_limit` when a request gives none.
    pub(crate) packet_limit_max: u64,
    /// How long to wait for one agent's answer.
    pub(crate) timeout: Duration,
    /// How long to wait for a first agent when none is connected.
    pub(crate) agent_wait: Duration,
    /// Queries for agents on other replicas, and their answers.
    pub(crate) relay: Arc<relay::Relay>,
    /// The runs in progress.
    pub(crate) tasks: Tasks,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Sample captures running per account on this replica.
    pub(crate) running: Mutex<HashMap<String, usize>>,
}

/// One account's place among its running sample captures; given back on drop.
pub(crate) struct Place {
    samples: Arc<SampleCaptures>,
    account: String,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut running = lock(&self.samples.running);
        if let Some(count) = running.get_mut(&self.account) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(&self.account);
            }
        }
    }
}

impl SampleCaptures {
    /// Runs a capture just recorded as `pending`, in the background.
    pub(crate) fn start(self: &Arc<Self>, account: String, id: String) {
        self.tasks.spawn(self.clone().run(account, id));
    }

    /// Takes one of the account's places for a running sample capture, if fewer than `max`
    /// are taken (`Err(running)` otherwise). The place is given back when the [`Place`] is
    /// dropped: when the run ends, or when the capture is not started after all.
    pub(crate) fn reserve(self: &Arc<Self>, account: &str, max: usize) -> Result<Place, usize> {
        let mut running = lock(&self.running);
        let count = running.entry(account.to_string()).or_default();
        if *count >= max {
            return Err(*count);
        }
        *count += 1;
        Ok(Place { samples: self.clone(), account: account.to_string() })
    }

    /// Runs a capture in a place taken with [`SampleCaptures::reserve`].
    pub(crate) fn start_reserved(self: &Arc<Self>, place: Place, id: String) {
        let this = self.clone();
        self.tasks.spawn(async move {
            let account = place.account.clone();
            this.run(account, id).await;
            drop(place);
        });
    }

    /// Runs again the sample captures accepted before a restart: the window they name is
    /// fixed in time, so the answer is the same as long as the lookbacks still hold it.
    pub(crate) async fn resume_pending(self: &Arc<Self>) -> crate::store::Result<()> {
        for record in self.repo.list_all_captures().await? {
            if record.capture_type == CaptureType::Simple && record.status == CaptureStatus::Pending {
                tracing::info!(capture = %record.id, "resuming a sample capture accepted before the restart");
                self.start(record.account_id, record.id);
            }
        }
        Ok(())
    }

    /// Runs one sample capture to its final status. Never panics; every failure is recorded
    /// on the capture with a reason. Stops (leaving it `pending`, to be resumed) on shutdown.
    async fn run(self: Arc<Self>, account: String, id: String) {
        let record = match self.patiently("read", || self.repo.get_capture(&account, &id)).await {
            Ok(Some(record)) => record,
            _ => return,
        };
        // Part of the trace of the request that created it (on whichever replica).
        let span = tracing::info_span!("sample_capture", capture = %id);
        edgecap_telemetry::continue_trace(&span, &record.traceparent);
        tracing::Instrument::instrument(self.run_traced(account, id, record), span).await;
    }

    async fn run_traced(self: Arc<Self>, account: String, id: String, record: crate::model::CaptureRecord) {
        let cancel = self.tasks.token();
        self.metrics.add_running(crate::model::CaptureType::Simple, 1);
        let started = std::time::Instant::now();
        let outcome = fanout::execute(&self, &record, &cancel).await;
        self.metrics.add_running(crate::model::CaptureType::Simple, -1);
        let Some(outcome) = outcome else { return };
        self.metrics.fanout(started.elapsed().as_secs_f64());
        // The result is kept in memory and written when the state store is back (an outage of
        // up to RESULT_PATIENCE); the file is already stored.
        let mut written =
            self.patiently("write the result of", || self.write_result(&account, &id, &outcome, true, None)).await;
        if let Err(RepoError::State(StateError::TooLarge { bytes, .. })) = &written {
            // Never storable whole (a fleet of thousands of PoPs): the result without its
            // per-PoP details, saying so.
            let note =
                format!("the per-PoP details ({bytes} bytes) are larger than the state store takes and are not kept");
            written = self
                .patiently("write the result of", || {
                    self.write_result(&account, &id, &outcome, false, Some(note.clone()))
                })
                .await;
        }
        if let Ok(r) = written {
            self.metrics.capture_finished(crate::model::CaptureType::Simple, r.status);
            tracing::info!(capture = %id, status = ?r.status, packets = outcome.packets, "sample capture finished");
        }
    }

    /// Writes a capture's outcome (`details`: with its per-PoP results), adding `note` to its
    /// error message.
    async fn write_result(
        &self,
        account: &str,
        id: &str,
        outcome: &fanout::Outcome,
        details: bool,
        note: Option<String>,
    ) -> crate::store::Result<crate::model::CaptureRecord> {
        self.repo
            .update_capture(account, id, |r| {
                r.status = outcome.status;
                r.packets_captured = Some(outcome.packets);
                r.pops = if details { outcome.pops.clone() } else { Vec::new() };
                r.error_message = match (&outcome.error, &note) {
                    (Some(e), Some(n)) => Some(format!("{e}; {n}")),
                    (e, n) => e.clone().or(n.clone()),
                };
                r.object_key = outcome.object_key.clone();
            })
            .await
    }

    /// Retries `op` while the state store is unavailable, up to [`RESULT_PATIENCE`] or
    /// shutdown; the last error if it never succeeded (logged).
    async fn patiently<T, F, Fut>(&self, what: &str, mut op: F) -> crate::store::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = crate::store::Result<T>>,
    {
        let cancel = self.tasks.token();
        let started = tokio::time::Instant::now();
        let mut wait = Duration::from_millis(500);
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(RepoError::State(error)) if error.is_retryable() && started.elapsed() < RESULT_PATIENCE => {
                    tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "could not {what} a sample capture yet; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(RepoError::State(error)),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    tracing::error!(%error, "could not {what} a sample capture");
                    return Err(error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_account_runs_at_most_its_limit_of_sample_captures_and_places_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let samples = Arc::new(SampleCaptures {
            repo: repo.clone(),
            registry: Arc::new(Registry::default()),
            objects: edgecap_storage::open(&edgecap_storage::StorageConfig::LocalDir { root: dir.path().into() })
                .await
                .unwrap(),
            tmp_dir: dir.path().into(),
            packet_limit_max: 10,
            timeout: Duration::from_secs(1),
            agent_wait: Duration::ZERO,
            relay: Arc::new(relay::Relay::new(repo.clone(), Duration::from_secs(1))),
            tasks: Tasks::new(),
            metrics: Default::default(),
            running: Default::default(),
        });
        let first = samples.reserve("a", 2).unwrap();
        let _second = samples.reserve("a", 2).unwrap();
        assert_eq!(samples.reserve("a", 2).err(), Some(2));
        assert!(samples.reserve("b", 2).is_ok(), "another account is not affected");
        drop(first);
        assert!(samples.reserve("a", 2).is_ok());
    }
}
