//! Starting a capture from a job and running it to its end: the job is checked (deadline,
//! spool room, filter), the source opened, shards written by the capture engine, and the end
//! recorded in `end.json`. The opening and the end's files are blocking work, on blocking
//! threads; none is held while the capture runs (the capture's own threads tell its end).

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgecap_capture::session::{Allowance, Limits, LiveCapture, LiveConfig, OnEnd};
use edgecap_capture::shard::{ShardChecksum, ShardConfig, ShardFormat, ShardIdentity, ShardWriter};
use edgecap_capture::source::MAX_SNAPLEN;
use edgecap_common::{lock, now_ns};
use edgecap_proto::agent::v1 as pb;

use super::spool::{EndFile, JobFile, SPOOL_FRESH, is_capture_id, write_json};
use super::{Job, Jobs};
use crate::convert::StopReason;

/// A capture that could be started: what runs, and where.
pub(super) struct Prepared {
    live: LiveCapture,
    iface: String,
    expr: String,
    /// The share of a shared budget, and its first portion.
    allowance: Option<(Arc<Allowance>, (u64, u64))>,
    tap: Arc<super::stream::StreamTap>,
}

/// A capture started by [`Jobs::open_job`], for [`Jobs::end_job`] once it has ended.
pub(super) struct Started {
    id: String,
    dir: std::path::PathBuf,
    live: LiveCapture,
}

impl Jobs {
    /// Runs the capture a job asks for, from start to end (idempotent: a capture already
    /// known is left alone).
    pub(crate) async fn start(self: Arc<Self>, job: pb::StartCapture) {
        // The capture's work here joins its trace (the job's `traceparent`).
        let span = tracing::info_span!("agent_capture", capture = %job.capture_id, pop = %self.pop);
        edgecap_telemetry::continue_trace(&span, &job.traceparent);
        let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
        let ended_tx = std::sync::Mutex::new(Some(ended_tx));
        let on_end = OnEnd::new(move || {
            if let Some(tx) = lock(&ended_tx).take() {
                let _ = tx.send(());
            }
        });
        let (id, traceparent) = (job.capture_id.clone(), job.traceparent.clone());
        let (this, in_span) = (self.clone(), span.clone());
        let started = match tokio::task::spawn_blocking(move || in_span.in_scope(|| this.open_job(job, on_end))).await {
            Ok(Some(started)) => started,
            Ok(None) => return,
            Err(error) => {
                // A bug: the job must not stay reserved (counted active, a repeated start
                // refused) for ever.
                tracing::error!(capture = %id, %error, "opening a full capture failed unexpectedly");
                let (this, dir) = (self.clone(), self.config.spool_dir.join(&id));
                let refuse = move || this.refuse(id, dir, traceparent, format!("agent error while opening: {error}"));
                let _ = tokio::task::spawn_blocking(refuse).await;
                return;
            }
        };
        // Sent by the capture's last thread as it exits.
        let _ = ended.await;
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || span.in_scope(|| this.end_job(started))).await;
    }

    /// Records that a capture did not start, and why (`job.json` and `end.json`, so that its
    /// failure is reported and survives a restart).
    fn refuse(&self, id: String, dir: std::path::PathBuf, traceparent: String, error: String) {
        tracing::warn!(capture = %id, %error, "full capture not started");
        let end = EndFile { counters: Default::default(), stop_reason: StopReason::Failed, error, interrupted: false };
        let _ = std::fs::create_dir_all(&dir);
        let job_file = JobFile { capture_id: id.clone(), interface: String::new(), started_ns: now_ns(), traceparent };
        let _ = write_json(&dir.join("job.json"), &job_file);
        let _ = write_json(&dir.join("end.json"), &end);
        lock(&self.jobs).insert(id, Job::ended(dir, end));
    }

    /// Checks and opens the job's capture; `None` when it is not started (already known,
    /// or refused: then its end is recorded here).
    fn open_job(self: &Arc<Self>, job: pb::StartCapture, on_end: OnEnd) -> Option<Started> {
        let id = job.capture_id.clone();
        if !is_capture_id(&id) {
            tracing::warn!(capture = %id, "start refused: bad capture id");
            return None;
        }
        // Reserve the id first: a start repeated (after a reconnect) while this one is still
        // opening its source finds it taken.
        if !self.reserve(&id) {
            return None;
        }
        self.open_reserved(job, on_end)
    }

    /// Takes `id` for a capture being opened; `false` if it is known already.
    pub(super) fn reserve(&self, id: &str) -> bool {
        let mut jobs = lock(&self.jobs);
        if jobs.contains_key(id) || self.finished.contains(id) {
            return false;
        }
        jobs.insert(id.to_string(), Job::reserved(self.config.spool_dir.join(id)));
        true
    }

    /// [`Jobs::open_job`] once the id is reserved.
    pub(super) fn open_reserved(self: &Arc<Self>, job: pb::StartCapture, on_end: OnEnd) -> Option<Started> {
        let id = job.capture_id.clone();
        let dir = self.config.spool_dir.join(&id);
        let prepared = match self.prepare(&job, &dir, Some(on_end)) {
            Ok(prepared) => prepared,
            Err(error) => {
                self.refuse(id, dir, job.traceparent, error);
                return None;
            }
        };
        tracing::info!(capture = %id, iface = %prepared.iface, filter = %prepared.expr, "full capture started");
        tracing::debug!(target: "edgecap_timeline", capture = %id, pop = %self.pop, "capture started");
        if let Some(job) = lock(&self.jobs).get_mut(&id) {
            job.started_ns = now_ns();
            job.stop = Some(prepared.live.stop_handle());
            job.allowance = prepared.allowance.clone();
            if job.allowance.is_some() {
                self.budgeted.notify_one();
            }
            job.tap = Some(prepared.tap.clone());
            // Stopped while it was being opened: it ends now, having run for a moment.
            if job.stop_requested {
                prepared.live.stop();
            }
        }
        lock(&self.started).push(id.clone());
        self.started_now.notify_one();
        Some(Started { id, dir, live: prepared.live })
    }

    /// Records the end of a capture that has ended (its threads are done or exiting).
    pub(super) fn end_job(&self, started: Started) {
        let Started { id, dir, live } = started;
        let counters = live.wait();
        let error = match &counters.stop_reason {
            Some(edgecap_capture::session::StopReason::Failed(e)) => e.clone(),
            _ => String::new(),
        };
        let mut end = EndFile {
            counters: counters.clone(),
            stop_reason: StopReason::from_session(counters.stop_reason.as_ref()),
            error,
            interrupted: false,
        };
        if let Some(previous) =
            lock(&self.jobs).get_mut(&id).and_then(|job| job.end.take()).filter(|e| !e.error.is_empty())
        {
            // A spool-full stop recorded its reason first.
            end.error = previous.error;
            end.stop_reason = previous.stop_reason;
        }
        if let Err(e) = write_json(&dir.join("end.json"), &end) {
            tracing::error!(capture = %id, error = %e, "could not record the end of a capture");
        }
        tracing::info!(capture = %id, line = %counters.line(), "full capture ended");
        if let Some(job) = lock(&self.jobs).get_mut(&id) {
            job.end = Some(end);
            job.stop = None;
            job.ended_at = Some(Instant::now());
        }
        // Its last shard goes up now, and its end is reported now (it may have none).
        self.ended.notify_one();
        self.report_now.notify_one();
    }

    /// Checks the job and starts its capture; the error says why it could not start.
    pub(super) fn prepare(
        &self,
        job: &pb::StartCapture,
        dir: &std::path::Path,
        on_end: Option<OnEnd>,
    ) -> Result<Prepared, String> {
        let id = &job.capture_id;
        if job.not_after_ns != 0 && now_ns() > job.not_after_ns {
            return Err("the start request reached the agent after its start deadline".into());
        }
        // The account's scope: applied by this agent in any case; no scope, no capture.
        let scope = crate::convert::scope_from_pb(job.scope.as_ref()).map_err(|e| e.to_string())?.to_bpf();
        let iface = self.interface.clone().ok_or("this agent has no capture interface")?;
        if self.spool_bytes(SPOOL_FRESH) >= self.config.spool_max_bytes {
            return Err(format!("spool {} is full", self.config.spool_dir.display()));
        }
        let filter = match job.filter.as_ref().map(crate::convert::filter_from_pb).transpose() {
            Ok(f) => f.unwrap_or_default(),
            Err(e) => return Err(format!("filter refused: {e}")),
        };
        let snaplen = if job.snaplen == 0 { MAX_SNAPLEN } else { job.snaplen.clamp(16, MAX_SNAPLEN) };
        let mut config = LiveConfig::new(&iface, "");
        config.snaplen = snaplen;
        config.buffer_size = self.config.buffer_bytes;
        config.feed = self.lookback_feed.clone();
        config.on_end = on_end;
        let source = self.sources.open(&iface, &config.open_options()).map_err(|e| e.to_string())?;
        let linktype = source.linktype();
        if !job.filter_bpf.is_empty() {
            edgecap_capture::bpf::verify_for_linktype(&job.filter_bpf, linktype, snaplen as i32, &job.filter_bpf_hash)
                .map_err(|e| format!("interface {iface}: {e}"))?;
        }
        let expr = edgecap_capture::filter::combine(&filter.to_bpf(), &job.filter_bpf);
        let filter_hash = if expr.is_empty() {
            String::new()
        } else {
            edgecap_capture::bpf::check(&expr, linktype, snaplen as i32).map_err(|e| e.to_string())?.hash
        };
        let job_file = JobFile {
            capture_id: id.clone(),
            interface: iface.clone(),
            started_ns: now_ns(),
            traceparent: job.traceparent.clone(),
        };
        std::fs::create_dir_all(dir)
            .and_then(|_| write_json(&dir.join("job.json"), &job_file))
            .map_err(|e| format!("spool: {e}"))?;
        config.filter = expr.clone();
        config.scope = scope.clone();
        // The shards' provenance names what was applied: the filter and the scope.
        let effective = edgecap_capture::filter::combine(&expr, &scope);
        // A shared budget: the limits are a first allowance, raised as the coordinator grants
        // more (budget.rs); otherwise they are this PoP's own.
        // (0: nothing yet; the maximum: that limit does not apply.)
        let allowance = job.shared_budget.then(|| {
            let first = (job.packet_limit, job.byte_limit);
            (Arc::new(Allowance::new(first.0, first.1)), first)
        });
        config.limits = Limits {
            time: Some(Duration::from_millis(job.time_limit_ms.max(1))),
            packets: (job.packet_limit > 0 && allowance.is_none()).then_some(job.packet_limit),
            bytes: (job.byte_limit > 0 && allowance.is_none()).then_some(job.byte_limit),
            allowance: allowance.as_ref().map(|(a, _)| a.clone()),
        };
        let rotate_seconds = if job.rotate_seconds > 0 { job.rotate_seconds } else { self.config.rotate_seconds };
        let shards = ShardWriter::new(
            ShardConfig {
                path: dir.join("shard.pcap"),
                format: ShardFormat::Pcap,
                rotate_bytes: Some(if job.rotate_bytes > 0 { job.rotate_bytes } else { self.config.rotate_bytes }),
                rotate_every: Some(Duration::from_secs(u64::from(rotate_seconds))),
                checksum: ShardChecksum::Crc32c,
            },
            ShardIdentity {
                capture_id: id.clone(),
                pop: self.pop.clone(),
                agent: self.agent_id.clone(),
                interface: iface.clone(),
                linktype: linktype as u16,
                snaplen,
                filter: effective,
                filter_hash,
            },
        );
        let tap = super::stream::StreamTap::new(&iface, linktype as u32, snaplen);
        let sink = super::stream::TeeSink::new(shards, tap.clone(), self.shard_closed.clone());
        let live = LiveCapture::start(config, source, Box::new(sink)).map_err(|e| e.to_string())?;
        Ok(Prepared { live, iface, expr, allowance, tap })
    }
}
