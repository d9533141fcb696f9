//! Full captures on the agent: record new traffic into shards spooled on local disk
//! ([`spool`]), report progress ([`reports`]), and deliver every shard to the user's bucket
//! through presigned requests from the coordinator ([`uploads`]). A capture is an async task
//! that opens it and records its end on blocking threads, holding none while it runs
//! ([`start`]).
//!
//! A shard's files are deleted only after the coordinator has recorded it (ShardCommitted).
//! An S3 outage therefore only makes the spool grow; the spool is bounded
//! (`--spool-max-mib`): when it is full, running captures stop (reason recorded), and what
//! was written is still delivered. After an agent restart the spool is scanned: a capture
//! cut short gets an `end.json` saying so, and its completed shards are delivered.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use edgecap_capture::session::StopHandle;
use edgecap_capture::source::SourceFactory;
use edgecap_common::lock;
use edgecap_proto::agent::v1 as pb;
use tokio::sync::oneshot;

use crate::config::FullCaptureConfig;
use crate::http::HttpClient;

mod budget;
mod finished;
mod inflight;
mod reports;
mod spool;
mod start;
mod stream;
mod uploads;

struct Job {
    dir: PathBuf,
    stop: Option<StopHandle>,
    /// Its share of a shared budget and the first portion (the size of the next ones).
    allowance: Option<(std::sync::Arc<edgecap_capture::session::Allowance>, (u64, u64))>,
    /// The copy of its packets for live viewers (while it runs).
    tap: Option<Arc<stream::StreamTap>>,
    end: Option<spool::EndFile>,
    shards_uploaded: u32,
    /// When the capture ended (for forgetting it later).
    ended_at: Option<Instant>,
    /// When its capture began running, ns since the epoch (reported as the PoP's
    /// `started_at`); 0: it never ran.
    started_ns: u64,
    /// When a final state was last reported (final states are repeated only now and then).
    final_reported: Option<Instant>,
    /// A stop that came while the capture was still being opened (no `stop` handle yet): it
    /// is stopped as soon as it runs, instead of running to its time limit.
    stop_requested: bool,
}

impl Job {
    /// A job whose capture is being started (its id taken, nothing running yet).
    fn reserved(dir: PathBuf) -> Self {
        Job {
            dir,
            stop: None,
            allowance: None,
            tap: None,
            end: None,
            shards_uploaded: 0,
            ended_at: None,
            started_ns: 0,
            final_reported: None,
            stop_requested: false,
        }
    }

    fn ended(dir: PathBuf, end: spool::EndFile) -> Self {
        Job {
            dir,
            stop: None,
            allowance: None,
            tap: None,
            end: Some(end),
            shards_uploaded: 0,
            ended_at: Some(Instant::now()),
            started_ns: 0,
            final_reported: None,
            stop_requested: false,
        }
    }

    /// Whether its capture has ended for good (no shard will be written any more).
    fn over(&self) -> bool {
        self.stop.is_none() && self.end.is_some()
    }
}

/// The agent's full captures.
pub(crate) struct Jobs {
    config: FullCaptureConfig,
    agent_id: String,
    pop: String,
    interface: Option<String>,
    sources: Arc<dyn SourceFactory>,
    /// The lookback's feed of `interface`, which captures take over while they run.
    lookback_feed: Option<Arc<edgecap_capture::live::Feed>>,
    /// The captures still running, being started, or with shards to deliver.
    jobs: Mutex<HashMap<String, Job>>,
    /// The captures over and delivered, kept for `keep_finished` ([`finished`]); a capture
    /// moves there from `jobs` under the jobs' lock, so that it is always in one of the two.
    finished: finished::Finished,
    waiters: Mutex<HashMap<String, oneshot::Sender<pb::coordinator_message::Msg>>>,
    http: HttpClient,
    /// Damaged spool entries set aside so far (unreadable manifests or job directories,
    /// manifests whose shard is missing).
    damaged: AtomicU64,
    /// Failed upload attempts (each is retried).
    upload_retries: AtomicU64,
    /// Scans of the spool by the upload loop.
    spool_scans: AtomicU64,
    /// When the oldest shard waiting for upload was written (ns since the epoch; 0: none).
    oldest_waiting_ns: AtomicU64,
    /// Bytes in the spool, as last measured.
    spool: spool::SpoolMeter,
    /// Woken when an ended capture's shards are delivered, so its PoP shows final at once
    /// (the merge waits for every PoP), and when a capture ends.
    pub(crate) report_now: tokio::sync::Notify,
    /// The captures started since their first report was last sent ([`Jobs::started_reports`]).
    started: Mutex<Vec<String>>,
    /// Woken when a capture has started, so its first report goes out at once (its PoP shows
    /// `running` without waiting for the next one-second tick).
    pub(crate) started_now: tokio::sync::Notify,
    /// Woken when a capture ends, so its last shard is delivered without waiting for the
    /// next spool scan.
    pub(crate) ended: tokio::sync::Notify,
    /// Woken by a running capture's writer thread when it has closed a shard (rotation), so
    /// the spool is scanned when there is something new in it, not on a short timer.
    pub(crate) shard_closed: Arc<tokio::sync::Notify>,
    /// The copies turned on for live viewers ([`stream::Streaming`]).
    streaming: stream::Streaming,
    /// Woken when a capture with a share of a shared budget starts (the budget loop sleeps
    /// while none runs).
    budgeted: tokio::sync::Notify,
}

/// What the full-capture side reports to metrics.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FullGauges {
    /// Bytes in the spool.
    pub spool_bytes: u64,
    /// Age of the oldest shard waiting for upload, seconds (0 when none waits).
    pub upload_lag_seconds: f64,
    /// Failed upload attempts so far.
    pub upload_retries: u64,
    /// Scans of the spool for shards to upload so far.
    pub spool_scans: u64,
    /// Captures running now.
    pub active: u64,
}

impl Jobs {
    /// The directories the spool scans read: every job's (the finished ones are elsewhere),
    /// with whether the job was already over when listed (only then may an empty directory
    /// drain it: a capture ending after the listing may still have closed shards the scan did
    /// not see).
    fn undrained(&self) -> Vec<(String, PathBuf, bool)> {
        let jobs = lock(&self.jobs);
        jobs.iter().map(|(id, j)| (id.clone(), j.dir.clone(), j.over())).collect()
    }

    /// Whether some job's directory may still receive or hold shards.
    fn any_undrained(&self) -> bool {
        !lock(&self.jobs).is_empty()
    }

    /// The spool's size, at most `max_age` old: the live captures' directories walked, the
    /// rest of the spool as last listed. Blocking when it measures.
    fn spool_bytes(&self, max_age: std::time::Duration) -> u64 {
        let live: Vec<PathBuf> = self.undrained().into_iter().map(|(_, dir, _)| dir).collect();
        self.spool.bytes(&self.config.spool_dir, max_age, &live)
    }

    /// Moves the jobs that were over when listed and whose directory held no shard (drained:
    /// none can appear there again) to the finished captures ([`finished`]), which record
    /// them and remove their directories. Blocking.
    fn drain(&self, empty: impl IntoIterator<Item = String>) {
        let moved = {
            let mut jobs = lock(&self.jobs);
            let mut moved = Vec::new();
            for id in empty {
                if !jobs.get(&id).is_some_and(Job::over) {
                    continue;
                }
                let Some(job) = jobs.remove(&id) else { continue };
                // (Over, so its end is known.)
                let Some(end) = job.end else { continue };
                let ended_at = job.ended_at.unwrap_or_else(Instant::now);
                let ended_ns = edgecap_common::now_ns().saturating_sub(ended_at.elapsed().as_nanos() as u64);
                let record = finished::Record {
                    capture_id: id,
                    started_ns: job.started_ns,
                    ended_ns,
                    shards_uploaded: job.shards_uploaded,
                    stream_dropped: job.tap.as_ref().map_or(0, |t| t.dropped()),
                    end,
                };
                moved.push(finished::Moved { record, ended_at, reported: job.final_reported, dir: job.dir });
            }
            self.finished.take(&moved);
            moved
        };
        self.finished.persist(moved);
    }

    /// The PoP this agent captures for.
    pub(crate) fn pop(&self) -> &str {
        &self.pop
    }

    /// Lets captures feed the lookback through `feed` (when the config allows it).
    pub(crate) fn with_lookback_feed(mut self, feed: Option<Arc<edgecap_capture::live::Feed>>) -> Self {
        self.lookback_feed = feed.filter(|_| self.config.feed_lookback);
        self
    }

    /// Opens the spool and takes over what a previous run left in it. Blocking.
    pub(crate) fn open(
        config: FullCaptureConfig,
        agent_id: &str,
        pop: &str,
        interface: Option<String>,
        sources: Arc<dyn SourceFactory>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.spool_dir)
            .with_context(|| format!("create spool directory {}", config.spool_dir.display()))?;
        let mut jobs: HashMap<String, Job> = HashMap::new();
        let mut damaged = 0;
        for entry in std::fs::read_dir(&config.spool_dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            if !spool::is_capture_id(&name) || !dir.is_dir() || !dir.join("job.json").exists() {
                continue;
            }
            let Some(job_file) = spool::read_json::<spool::JobFile>(&dir.join("job.json")) else {
                uploads::quarantine(&dir, "its job.json does not parse");
                damaged += 1;
                continue;
            };
            match spool::recover(&name, &dir) {
                Ok(end) => {
                    // (A refused capture's job.json names no interface: it never ran.)
                    let started_ns = if job_file.interface.is_empty() { 0 } else { job_file.started_ns };
                    jobs.insert(name, Job { started_ns, ..Job::ended(dir, end) });
                }
                Err(error) => {
                    // One damaged capture directory must not keep the agent from starting.
                    tracing::warn!(capture = %name, dir = %dir.display(), %error, "damaged spool directory skipped");
                    damaged += 1;
                }
            }
        }
        let skip = jobs.keys().cloned().collect();
        let (finished, damaged_lines) = finished::Finished::open(&config.spool_dir, config.keep_finished, &skip);
        damaged += damaged_lines;
        Ok(Self {
            config,
            agent_id: agent_id.to_string(),
            pop: pop.to_string(),
            interface,
            sources,
            lookback_feed: None,
            jobs: Mutex::new(jobs),
            finished,
            waiters: Mutex::new(HashMap::new()),
            http: HttpClient::new()?,
            damaged: AtomicU64::new(damaged),
            upload_retries: AtomicU64::new(0),
            spool_scans: AtomicU64::new(0),
            oldest_waiting_ns: AtomicU64::new(0),
            spool: spool::SpoolMeter::default(),
            report_now: tokio::sync::Notify::new(),
            started: Mutex::new(Vec::new()),
            started_now: tokio::sync::Notify::new(),
            ended: tokio::sync::Notify::new(),
            shard_closed: Arc::new(tokio::sync::Notify::new()),
            streaming: stream::Streaming::default(),
            budgeted: tokio::sync::Notify::new(),
        })
    }

    /// Spool, upload and capture figures for metrics (cheap: no file-system access).
    pub(crate) fn gauges(&self) -> FullGauges {
        let oldest = self.oldest_waiting_ns.load(Ordering::Relaxed);
        let now = edgecap_common::now_ns();
        FullGauges {
            spool_bytes: self.spool.last(),
            upload_lag_seconds: if oldest == 0 { 0.0 } else { now.saturating_sub(oldest) as f64 / 1e9 },
            upload_retries: self.upload_retries.load(Ordering::Relaxed),
            spool_scans: self.spool_scans.load(Ordering::Relaxed),
            active: lock(&self.jobs).values().filter(|j| j.end.is_none()).count() as u64,
        }
    }

    /// Damaged spool entries set aside since the agent started.
    pub(crate) fn damaged_entries(&self) -> u64 {
        self.damaged.load(Ordering::Relaxed)
    }

    /// Ends a running capture early (what was captured is kept and delivered).
    pub(crate) fn stop(&self, capture_id: &str) {
        let stop = match lock(&self.jobs).get_mut(capture_id) {
            Some(job) => {
                job.stop_requested |= job.end.is_none();
                job.stop.clone()
            }
            None => None,
        };
        tracing::info!(capture = %capture_id, "stop requested");
        if let Some(stop) = stop {
            stop.stop();
        }
    }

    /// Stops every running capture (agent shutdown): their ends are recorded normally. One
    /// still being opened stops as soon as it runs.
    pub(crate) fn stop_all(&self) {
        for job in lock(&self.jobs).values_mut() {
            job.stop_requested |= job.end.is_none();
            if let Some(stop) = &job.stop {
                stop.stop();
            }
        }
    }

    /// Routes a grant or commit answer to the upload waiting for it.
    pub(crate) fn deliver(&self, request_id: &str, msg: pb::coordinator_message::Msg) {
        if let Some(tx) = lock(&self.waiters).remove(request_id) {
            let _ = tx.send(msg);
        }
    }
}

#[cfg(test)]
mod tests;
