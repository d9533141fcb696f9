//! Conversions between the wire (`edgecap.agent.v1`) and the agent's types: the only place
//! the agent reads a wire filter or writes a state or stop reason onto the wire.

use edgecap_capture::{FilterV1, IpPrefix};
use edgecap_proto::agent::v1 as pb;
use serde::{Deserialize, Serialize};

/// Where one capture is, as the agent reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CaptureState {
    Running,
    /// Ended; shards still spooled.
    Uploading,
    Done,
    Failed,
}

/// Why a capture ended; kept in the spool's `end.json` under these names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StopReason {
    TimeLimit,
    PacketLimit,
    ByteLimit,
    Stopped,
    SpoolFull,
    Interrupted,
    Failed,
    /// Its share of a shared budget was spent.
    Budget,
    #[serde(other)]
    Unknown,
}

impl StopReason {
    /// The capture engine's reason for a capture that ended by itself.
    pub(crate) fn from_session(reason: Option<&edgecap_capture::session::StopReason>) -> Self {
        use edgecap_capture::session::StopReason as S;
        match reason {
            Some(S::TimeLimit) => StopReason::TimeLimit,
            Some(S::PacketLimit) => StopReason::PacketLimit,
            Some(S::ByteLimit) => StopReason::ByteLimit,
            Some(S::Stopped) => StopReason::Stopped,
            Some(S::Budget) => StopReason::Budget,
            Some(S::Failed(_)) => StopReason::Failed,
            None => StopReason::Unknown,
        }
    }

    fn to_pb(self) -> pb::StopReason {
        match self {
            StopReason::TimeLimit => pb::StopReason::TimeLimit,
            StopReason::PacketLimit => pb::StopReason::PacketLimit,
            StopReason::ByteLimit => pb::StopReason::ByteLimit,
            StopReason::Stopped => pb::StopReason::Stopped,
            StopReason::SpoolFull => pb::StopReason::SpoolFull,
            StopReason::Interrupted => pb::StopReason::Interrupted,
            StopReason::Failed => pb::StopReason::Failed,
            StopReason::Budget => pb::StopReason::Budget,
            StopReason::Unknown => pb::StopReason::Unspecified,
        }
    }

    /// The name older coordinators read (the deprecated text field).
    fn text(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    }
}

/// A capture's counters as reports carry them.
pub(crate) fn counters(c: &edgecap_capture::session::Counters) -> pb::CaptureCounters {
    pb::CaptureCounters {
        received: c.received,
        matched: c.matched,
        written: c.written,
        kernel_dropped: c.kernel_dropped,
        agent_dropped: c.agent_dropped,
        bytes_written: c.bytes_written,
        excluded: c.excluded,
    }
}

/// Sets a report's state, in the enum and (for older coordinators) as text.
pub(crate) fn set_state(report: &mut pb::CaptureReport, state: CaptureState) {
    let (code, text) = match state {
        CaptureState::Running => (pb::CaptureState::Running, "running"),
        CaptureState::Uploading => (pb::CaptureState::Uploading, "uploading"),
        CaptureState::Done => (pb::CaptureState::Done, "done"),
        CaptureState::Failed => (pb::CaptureState::Failed, "failed"),
    };
    report.capture_state = code as i32;
    report.state = text.to_string();
}

/// Sets a report's stop reason, in the enum and as text.
pub(crate) fn set_stop_reason(report: &mut pb::CaptureReport, reason: StopReason) {
    report.stop_reason_code = reason.to_pb() as i32;
    report.stop_reason = reason.text();
}

/// Rebuilds a typed filter from the wire; the agent re-validates rather than trusting it.
pub fn filter_from_pb(f: &pb::FilterV1) -> Result<FilterV1, String> {
    let port = |name: &str, v: Option<u32>| -> Result<Option<u16>, String> {
        v.map(|p| u16::try_from(p).map_err(|_| format!("{name}: {p} is not a port"))).transpose()
    };
    let address = |name: &'static str, v: Option<&str>| {
        v.map(|a| IpPrefix::parse(name, a)).transpose().map_err(|e| e.to_string())
    };
    let filter = FilterV1 {
        source_address: address("source_address", f.source_address.as_deref())?,
        destination_address: address("destination_address", f.destination_address.as_deref())?,
        source_port: port("source_port", f.source_port)?,
        destination_port: port("destination_port", f.destination_port)?,
        protocol: f
            .protocol
            .map(|p| u8::try_from(p).map_err(|_| format!("protocol: {p} is out of range")))
            .transpose()?,
    };
    filter.check_satisfiable().map_err(|e| e.to_string())?;
    Ok(filter)
}

/// The account scope a query or job carries; refused when it carries none.
pub(crate) fn scope_from_pb(
    scope: Option<&pb::AccountScope>,
) -> Result<edgecap_capture::scope::Scope, edgecap_capture::scope::ScopeError> {
    match scope {
        Some(s) => edgecap_capture::scope::Scope::from_parts(true, s.unrestricted, &s.prefixes),
        None => edgecap_capture::scope::Scope::from_parts(false, false, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_filters_are_revalidated() {
        let ok = pb::FilterV1 { protocol: Some(17), destination_port: Some(53), ..Default::default() };
        assert_eq!(filter_from_pb(&ok).unwrap().to_bpf(), "dst port 53 and (ip proto 17 or ip6 proto 17)");
        for bad in [
            pb::FilterV1 { source_port: Some(70000), ..Default::default() },
            pb::FilterV1 { protocol: Some(300), ..Default::default() },
            pb::FilterV1 { source_address: Some("1.2.3.4 or tcp".into()), ..Default::default() },
        ] {
            assert!(filter_from_pb(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reports_carry_the_enum_and_the_text() {
        let mut r = pb::CaptureReport::default();
        set_state(&mut r, CaptureState::Uploading);
        set_stop_reason(&mut r, StopReason::SpoolFull);
        assert_eq!((r.capture_state, r.state.as_str()), (pb::CaptureState::Uploading as i32, "uploading"));
        assert_eq!((r.stop_reason_code, r.stop_reason.as_str()), (pb::StopReason::SpoolFull as i32, "spool_full"));
        let old: StopReason = serde_json::from_str(r#""interrupted""#).unwrap();
        assert_eq!(old, StopReason::Interrupted);
        assert_eq!(serde_json::from_str::<StopReason>(r#""what""#).unwrap(), StopReason::Unknown);
    }
}
