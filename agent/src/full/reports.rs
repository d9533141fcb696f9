//! Progress reports: what each capture is doing, sent to the coordinator about once a
//! second (a capture's first as soon as it has started); the final states of the captures
//! over and delivered when a repeat is due ([`super::finished`]); and the clean-up of
//! captures finished long ago. Blocking (reads the spool), but for the first reports.

use std::collections::HashMap;
use std::time::Instant;

use edgecap_common::lock;
use edgecap_proto::agent::v1 as pb;

use super::Jobs;
use super::finished::{Record, next_final};
use super::spool::{EndFile, SPOOL_FRESH, drainable, manifests};
use crate::convert::{self, CaptureState, StopReason};

impl Jobs {
    /// The first reports of the captures started since the last call and still running,
    /// from memory: a capture that has just started has closed no shard, so no spool scan
    /// (and no blocking thread) stands between its start and its PoP showing `running`.
    /// Later reports, and every report after a reconnection, come from [`Jobs::reports`].
    pub(crate) fn started_reports(&self) -> Vec<pb::CaptureReport> {
        let started = std::mem::take(&mut *lock(&self.started));
        if started.is_empty() {
            return Vec::new();
        }
        let spool_bytes = self.spool.last();
        let jobs = lock(&self.jobs);
        let mut out = Vec::new();
        for id in started {
            let Some(job) = jobs.get(&id).filter(|job| job.end.is_none()) else { continue };
            let Some(stop) = &job.stop else { continue };
            let mut report = report_of(&id, job, 0, spool_bytes);
            running(&mut report, stop);
            out.push(report);
        }
        out
    }

    /// Forgets the captures waiting for a first report: a new connection's first reports
    /// are [`Jobs::reports`] of everything.
    pub(crate) fn forget_started(&self) {
        lock(&self.started).clear();
    }

    /// Progress of every capture worth reporting now. `all_final` re-reports finished ones
    /// (after a reconnect); otherwise they are repeated when [`next_final`] says. Blocking.
    pub(crate) fn reports(&self, all_final: bool) -> Vec<pb::CaptureReport> {
        let spool = self.spool_bytes(SPOOL_FRESH);
        let spool_full = spool > self.config.spool_max_bytes;
        // Spooled shards per capture, read once (without holding the lock) for both the
        // clean-up and the reports; a drained job is moved to the finished ones.
        let mut pending: HashMap<String, u32> = HashMap::new();
        let mut empty = Vec::new();
        for (id, dir, over) in self.undrained() {
            let (good, damaged) = manifests(&dir);
            if drainable(over, &good, &damaged, &dir) {
                empty.push(id.clone());
            }
            pending.insert(id, good.len() as u32);
        }
        self.drain(empty);
        let keep = self.config.keep_finished;
        let mut forgotten = Vec::new();
        let mut out = Vec::new();
        let mut jobs = lock(&self.jobs);
        // A capture over whose directory never drains (it cannot be read) is forgotten too.
        jobs.retain(|id, job| {
            let pending_shards = pending.get(id).copied().unwrap_or(0);
            let forget = pending_shards == 0 && job.ended_at.is_some_and(|t| t.elapsed() > keep);
            if forget {
                forgotten.push((id.clone(), job.dir.clone()));
            }
            !forget
        });
        for (id, job) in jobs.iter_mut() {
            let pending_shards = pending.get(id).copied().unwrap_or(0);
            // Built only for what is reported: captures kept after their end (an hour) are
            // passed over without it, but for the rare repeat of their final state.
            let report = match (&job.stop, &job.end) {
                (Some(stop), _) => {
                    if spool_full {
                        tracing::warn!(capture = %id, spool, "spool full: stopping the capture");
                        job.end = Some(EndFile {
                            counters: Default::default(),
                            stop_reason: StopReason::SpoolFull,
                            error: format!(
                                "agent spool full ({} MiB, object store unreachable?); capture stopped early, everything written is delivered",
                                spool >> 20
                            ),
                            interrupted: false,
                        });
                        stop.stop();
                    }
                    let mut report = report_of(id, job, pending_shards, spool);
                    running(&mut report, stop);
                    report
                }
                (None, Some(end)) => {
                    if pending_shards == 0 {
                        let now = Instant::now();
                        let ended = job.ended_at.unwrap_or(now);
                        let due = all_final || job.final_reported.is_none_or(|at| now >= next_final(ended, at));
                        if !due {
                            continue;
                        }
                        job.final_reported = Some(now);
                    }
                    let mut report = report_of(id, job, pending_shards, spool);
                    ended(&mut report, end, pending_shards > 0);
                    report
                }
                // Being started.
                (None, None) => continue,
            };
            out.push(report);
        }
        drop(jobs);
        for (id, dir) in forgotten {
            let _ = std::fs::remove_dir_all(&dir);
            tracing::debug!(capture = %id, "finished capture forgotten");
        }
        for record in self.finished.due(all_final) {
            out.push(finished_report(&record, spool));
        }
        out
    }
}

/// The final report of a capture over and delivered.
fn finished_report(record: &Record, spool_bytes: u64) -> pb::CaptureReport {
    let mut report = pb::CaptureReport {
        capture_id: record.capture_id.clone(),
        shards_closed: record.shards_uploaded,
        shards_uploaded: record.shards_uploaded,
        spool_bytes,
        stream_dropped: record.stream_dropped,
        started_unix_ns: record.started_ns,
        ..Default::default()
    };
    ended(&mut report, &record.end, false);
    report
}

/// An ended capture's report: its end, and its state (`uploading` while shards wait).
fn ended(report: &mut pb::CaptureReport, end: &EndFile, uploading: bool) {
    let state = if uploading {
        CaptureState::Uploading
    } else if end.error.is_empty() {
        CaptureState::Done
    } else {
        CaptureState::Failed
    };
    report.counters = Some(convert::counters(&end.counters));
    report.error = end.error.clone();
    report.interrupted = end.interrupted;
    convert::set_state(report, state);
    convert::set_stop_reason(report, end.stop_reason);
}

/// What every report of `job` says, with `pending` of its shards still in the spool; the
/// caller adds its state and counters.
fn report_of(id: &str, job: &super::Job, pending: u32, spool_bytes: u64) -> pb::CaptureReport {
    pb::CaptureReport {
        capture_id: id.to_string(),
        shards_closed: job.shards_uploaded + pending,
        shards_uploaded: job.shards_uploaded,
        spool_bytes,
        stream_dropped: job.tap.as_ref().map_or(0, |t| t.dropped()),
        started_unix_ns: job.started_ns,
        ..Default::default()
    }
}

/// A running capture's report: its counters now.
fn running(report: &mut pb::CaptureReport, stop: &edgecap_capture::session::StopHandle) {
    report.counters = Some(convert::counters(&stop.counters()));
    convert::set_state(report, CaptureState::Running);
}
