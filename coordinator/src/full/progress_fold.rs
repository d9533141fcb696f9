//! How an agent's report is folded into its PoP's state (`progress.rs`).

use edgecap_proto::agent::v1 as pb;

use crate::convert;
use crate::model::{PopResult, PopStatus};

/// A report that carries only counters (and clock) for a status already known.
pub(super) fn plain(report: &pb::CaptureReport) -> bool {
    report.error.is_empty() && convert::report_stop_reason(report).is_none()
}

/// Where a status stands in a PoP's life: a status is never lowered (a report queued on a
/// replica the agent has since left must not undo what it reported since).
fn rank(status: PopStatus) -> u8 {
    match status {
        PopStatus::Pending => 0,
        PopStatus::Running => 1,
        PopStatus::Uploading => 2,
        PopStatus::Done | PopStatus::Failed | PopStatus::Skipped => 3,
    }
}

/// Folds an agent's report into its PoP's state: never out of a final state, never to a
/// lower status, counters (cumulative at the agent) never lower.
pub(super) fn apply_report(pop: &mut PopResult, report: &pb::CaptureReport) {
    if pop.is_final() {
        return;
    }
    if let Some(c) = &report.counters {
        pop.packets = pop.packets.max(c.written);
        pop.matched = pop.matched.max(c.matched);
        pop.received = pop.received.max(c.received);
        pop.kernel_dropped = pop.kernel_dropped.max(c.kernel_dropped);
        pop.agent_dropped = pop.agent_dropped.max(c.agent_dropped);
        pop.bytes = pop.bytes.max(c.bytes_written);
        pop.excluded = pop.excluded.max(c.excluded);
    }
    pop.stream_dropped = pop.stream_dropped.max(report.stream_dropped);
    if pop.started_at.is_none() && report.started_unix_ns != 0 {
        pop.started_at = Some(crate::model::rfc3339_ns(report.started_unix_ns));
    }
    if let Some(clock) = &report.clock {
        pop.clock_offset_us = Some(clock.offset_ns / 1000);
        pop.clock_uncertainty_us = Some(clock.uncertainty_ns.div_ceil(1000));
    }
    if let Some(reason) = convert::report_stop_reason(report) {
        pop.stop_reason = Some(reason);
    }
    if !report.error.is_empty() {
        pop.error = Some(report.error.clone());
    }
    if let Some(status) = convert::report_status(report).filter(|s| rank(*s) >= rank(pop.status)) {
        pop.status = status;
    }
}
