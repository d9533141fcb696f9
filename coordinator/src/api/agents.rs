//! Operator extension: the agents connected to any replica (any valid token).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde_json::{Value, json};

use super::auth::AnyAccount;
use super::{ApiState, collection, repo_err};
use crate::agents::AgentInfo;

#[utoipa::path(get, path = "/edgecap/v1/agents", tag = "edgecap", operation_id = "list_agents",
    responses((status = 200, description = "Agents connected to any replica", body = crate::api::openapi::AgentListEnvelope), crate::api::openapi::Errors))]
pub(super) async fn list(State(state): State<Arc<ApiState>>, _caller: AnyAccount) -> Result<Response, super::ApiError> {
    // Every replica's agents (shared presence keys); lookback counters for those connected here.
    let local: HashMap<String, AgentInfo> =
        state.registry.agents().into_iter().map(|a| (a.agent_id.clone(), a)).collect();
    let mut present = state.repo.list_agents().await.map_err(repo_err)?;
    present.sort_by(|a, b| (&a.pop, &a.agent_id).cmp(&(&b.pop, &b.agent_id)));
    let agents: Vec<Value> = present
        .into_iter()
        .map(|p| {
            let mut v = json!({
                "agent_id": p.agent_id, "pop": p.pop, "interfaces": p.interfaces, "version": p.version,
                "coordinator": p.coordinator, "connected_at": p.connected_at,
            });
            if let Some(a) = local.get(&p.agent_id) {
                v["sample_rate"] = json!(a.sample_rate);
                v["lookback"] = json!({
                    "packets_seen": a.lookback.packets_seen, "packets_held": a.lookback.packets_held,
                    "bytes_held": a.lookback.bytes_held, "kernel_dropped": a.lookback.kernel_dropped,
                    "packets_evicted": a.lookback.packets_evicted, "oldest_ns": a.lookback.oldest_ns,
                });
                v["spool_damaged"] = json!(a.spool_damaged);
                if let Some(clock) = a.clock {
                    v["clock_offset_us"] = json!(clock.offset_ns / 1000);
                    v["clock_uncertainty_us"] = json!(clock.uncertainty_ns.div_ceil(1000));
                }
            }
            v
        })
        .collect();
    Ok(collection(agents))
}
