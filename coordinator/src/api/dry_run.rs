//! `POST .../pcaps` with `"dry_run": true` (extension): what the capture would do, with
//! nothing started. The same checks as a real request (fields, the account's scope, for a
//! full capture the bucket's ownership, the colos, the PoPs' capacity), then every agent that
//! would take part is asked for its recent matching traffic (the capture's filter and scope
//! over the last ten seconds of its lookback): the PoPs and agents, those offline, the rate
//! of matching packets and bytes at each, and when the capture would reach its limits.

use std::sync::Arc;

use axum::response::Response;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{ApiState, envelope};
use crate::model::{CaptureRequest, CaptureScope, CaptureType};

pub(super) async fn answer(
    state: &Arc<ApiState>,
    account: &str,
    request: CaptureRequest,
    scope: CaptureScope,
) -> Result<Response, ApiError> {
    let (selected, offline): (Vec<String>, Vec<Value>) = match request.capture_type {
        CaptureType::Full => {
            let (agents, offline) =
                state.full.check(account, &request, &scope).await.map_err(super::captures::plan_error)?;
            (
                agents.into_iter().map(|a| a.agent_id).collect(),
                offline
                    .into_iter()
                    .map(|a| json!({"pop": a.pop, "agent_id": a.agent_id, "last_connected": a.connected_at}))
                    .collect(),
            )
        }
        // A sample capture asks every connected agent of the scope.
        CaptureType::Simple => (Vec::new(), Vec::new()),
    };
    let filter = crate::convert::filter_to_pb(&request.filter);
    let (bpf, hash) = request.filter_bpf.as_ref().map(|f| (f.text.clone(), f.hash.clone())).unwrap_or_default();
    let full = request.capture_type == CaptureType::Full;
    let rates = state
        .samples
        .probe(&filter, (&bpf, &hash), &scope, |agent, pop| {
            if full { selected.iter().any(|a| a == agent) } else { scope.pop_allowed(pop) }
        })
        .await;
    let pps: f64 = rates.iter().map(|r| r.pps).sum();
    let bps: f64 = rates.iter().map(|r| r.bps).sum();
    let seconds =
        |limit: Option<u64>, rate: f64| limit.filter(|_| rate > 0.0).map(|l| (l as f64 / rate * 10.0).round() / 10.0);
    let to_packets = seconds(request.packet_limit, pps);
    let to_bytes = seconds(request.byte_limit, bps);
    // What ends a full capture first: the time limit, or a limit reached sooner.
    let mut ends_by = ("time_limit", request.time_limit as f64);
    for (name, at) in [("packet_limit", to_packets), ("byte_limit", to_bytes)] {
        if let Some(at) = at.filter(|at| *at < ends_by.1) {
            ends_by = (name, at);
        }
    }
    let mut result = json!({
        "dry_run": true,
        "type": request.capture_type,
        "effective_filter": edgecap_capture::filter::combine(
            &edgecap_capture::filter::combine(&request.filter.to_bpf(), &bpf),
            &scope.to_bpf()
        ),
        "pops": rates.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
        "offline": offline,
        "matching_pps": (pps * 10.0).round() / 10.0,
        "matching_bps": bps.round(),
    });
    if full {
        result["colo_names"] = json!(if request.colo_names.is_empty() {
            request.colo_name.iter().cloned().collect::<Vec<_>>()
        } else {
            request.colo_names.clone()
        });
        result["estimated_seconds_to_packet_limit"] = json!(to_packets);
        result["estimated_seconds_to_byte_limit"] = json!(to_bytes);
        result["ends_by"] = json!(ends_by.0);
        result["estimated_seconds"] = json!(ends_by.1);
    } else {
        // A sample reads the window now: the packets it would hold, at most packet_limit.
        result["estimated_packets"] =
            json!((pps * request.time_limit as f64).round().min(request.packet_limit.unwrap_or(0) as f64));
    }
    Ok(envelope(result))
}
