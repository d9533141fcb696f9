//! Conversions between the wire (`edgecap.agent.v1`) and the coordinator's types: the only
//! place proto enums, the deprecated state strings and wire filters are read or built.

use edgecap_capture::FilterV1;
use edgecap_proto::agent::v1 as pb;

use crate::model::{JobRecord, PopStatus, ShardRef, StopReason};

/// A typed filter as the agents receive it (they rebuild and re-validate it).
pub(crate) fn filter_to_pb(f: &FilterV1) -> pb::FilterV1 {
    pb::FilterV1 {
        source_address: f.source_address.map(|p| p.to_string()),
        destination_address: f.destination_address.map(|p| p.to_string()),
        source_port: f.source_port.map(u32::from),
        destination_port: f.destination_port.map(u32::from),
        protocol: f.protocol.map(u32::from),
    }
}

/// The scope agents apply, on the wire.
pub(crate) fn scope_to_pb(scope: &crate::model::CaptureScope) -> pb::AccountScope {
    pb::AccountScope { unrestricted: scope.unrestricted, prefixes: scope.prefixes.clone() }
}

pub(crate) fn start_message(job: &JobRecord) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::StartCapture(pb::StartCapture {
            capture_id: job.capture_id.clone(),
            filter: Some(filter_to_pb(&job.filter_v1)),
            filter_bpf: job.filter_bpf.clone().unwrap_or_default(),
            filter_bpf_hash: job.filter_bpf_hash.clone().unwrap_or_default(),
            time_limit_ms: job.time_limit * 1000,
            // With a shared budget the agent's limits are its first allowance.
            packet_limit: job.first_allowance.map_or(job.packet_limit.unwrap_or(0), |a| a.0),
            byte_limit: job.first_allowance.map_or(job.byte_limit.unwrap_or(0), |a| a.1),
            snaplen: 0,
            rotate_bytes: 0,
            rotate_seconds: 0,
            not_after_ns: job.not_after_ns,
            scope: Some(scope_to_pb(&job.scope.clone().unwrap_or_else(crate::model::CaptureScope::everything))),
            traceparent: job.traceparent.clone(),
            shared_budget: job.first_allowance.is_some(),
        })),
    }
}

pub(crate) fn stop_message(capture_id: &str) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::StopCapture(pb::StopCapture { capture_id: capture_id.to_string() })),
    }
}

/// The PoP status an agent's report says (`None`: nothing this coordinator understands).
pub(crate) fn report_status(report: &pb::CaptureReport) -> Option<PopStatus> {
    match pb::CaptureState::try_from(report.capture_state).unwrap_or(pb::CaptureState::Unspecified) {
        pb::CaptureState::Running => Some(PopStatus::Running),
        pb::CaptureState::Uploading => Some(PopStatus::Uploading),
        pb::CaptureState::Done => Some(PopStatus::Done),
        pb::CaptureState::Failed => Some(PopStatus::Failed),
        // An agent older than the enum sends the text only.
        pb::CaptureState::Unspecified => match report.state.as_str() {
            "running" => Some(PopStatus::Running),
            "uploading" => Some(PopStatus::Uploading),
            "done" => Some(PopStatus::Done),
            "failed" => Some(PopStatus::Failed),
            _ => None,
        },
    }
}

/// Why the agent's capture ended, if it says.
pub(crate) fn report_stop_reason(report: &pb::CaptureReport) -> Option<StopReason> {
    match pb::StopReason::try_from(report.stop_reason_code).unwrap_or(pb::StopReason::Unspecified) {
        pb::StopReason::TimeLimit => Some(StopReason::TimeLimit),
        pb::StopReason::PacketLimit => Some(StopReason::PacketLimit),
        pb::StopReason::ByteLimit => Some(StopReason::ByteLimit),
        pb::StopReason::Stopped => Some(StopReason::Stopped),
        pb::StopReason::SpoolFull => Some(StopReason::SpoolFull),
        pb::StopReason::Interrupted => Some(StopReason::Interrupted),
        pb::StopReason::Failed => Some(StopReason::Failed),
        pb::StopReason::Budget => Some(StopReason::Budget),
        pb::StopReason::Unspecified if report.stop_reason.is_empty() => None,
        pb::StopReason::Unspecified => Some(
            serde_json::from_value(serde_json::Value::String(report.stop_reason.clone()))
                .unwrap_or(StopReason::Unknown),
        ),
    }
}

/// What the coordinator records of a delivered shard.
pub(crate) fn shard_ref(uploaded: &pb::ShardUploaded) -> ShardRef {
    ShardRef {
        key: uploaded.key.clone(),
        packets: uploaded.packets,
        bytes: uploaded.bytes,
        file_bytes: uploaded.file_bytes,
        first_ts_ns: uploaded.first_ts_ns,
        last_ts_ns: uploaded.last_ts_ns,
        sha256: uploaded.sha256.clone(),
        crc32c: uploaded.crc32c.clone(),
        interface: uploaded.interface.clone(),
        filter: uploaded.filter.clone(),
    }
}

/// A presigned request as the agent receives it.
pub(crate) fn presigned(p: edgecap_storage::s3::Presigned) -> pb::PresignedRequest {
    pb::PresignedRequest {
        method: p.method,
        url: p.url,
        headers: p.headers.into_iter().map(|(name, value)| pb::HttpHeader { name, value }).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_read_from_the_enum_or_from_an_older_agents_text() {
        let enum_only = pb::CaptureReport {
            capture_state: pb::CaptureState::Uploading as i32,
            stop_reason_code: pb::StopReason::SpoolFull as i32,
            ..Default::default()
        };
        assert_eq!(report_status(&enum_only), Some(PopStatus::Uploading));
        assert_eq!(report_stop_reason(&enum_only), Some(StopReason::SpoolFull));
        let text_only =
            pb::CaptureReport { state: "done".into(), stop_reason: "packet_limit".into(), ..Default::default() };
        assert_eq!(report_status(&text_only), Some(PopStatus::Done));
        assert_eq!(report_stop_reason(&text_only), Some(StopReason::PacketLimit));
        let odd =
            pb::CaptureReport { state: "exploded".into(), stop_reason: "cosmic rays".into(), ..Default::default() };
        assert_eq!(report_status(&odd), None);
        assert_eq!(report_stop_reason(&odd), Some(StopReason::Unknown));
        assert_eq!(report_stop_reason(&pb::CaptureReport::default()), None);
    }
}
