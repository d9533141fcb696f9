//! The admin API for agent enrollment (`/edgecap/v1/admin/...`, admin tokens only):
//! bootstrap tokens, the certificates signed for agents, revocations.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use serde_json::{Value, json};

use super::auth::Admin;
use super::body::Body;
use super::error::{ApiError, code};
use super::validate::{integer, parse_object, string};
use super::{ApiState, collection, envelope, repo_err};

/// Longest a bootstrap token may live: one week.
const MAX_BOOTSTRAP_TTL: u64 = 7 * 86_400;
/// Most PoP patterns one bootstrap token may name.
const MAX_POPS: usize = 1_000;

/// A PoP name, `prefix*`, or `*`.
fn pop_pattern(pattern: &str) -> Result<(), ApiError> {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    if name.is_empty() && pattern == "*" {
        return Ok(());
    }
    edgecap_tls::validate_name(name)
        .map_err(|e| ApiError::bad_request(code::INVALID_VALUE, format!("pops: {pattern:?}: {e}")))
}

/// `{"pops": ["ams01", "ord*"], "ttl_seconds": 3600}` -> the token (shown this once).
pub(super) async fn create_bootstrap_token(
    State(state): State<Arc<ApiState>>,
    _admin: Admin,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let map = parse_object(&body)?;
    let pops = match map.get("pops") {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_POPS => {
            items.iter().map(|v| string("pops", v).map(str::to_string)).collect::<Result<Vec<_>, _>>()?
        }
        Some(Value::Array(_)) => {
            return Err(ApiError::bad_request(
                code::INVALID_VALUE,
                format!("pops: name 1 to {MAX_POPS} PoPs (or prefixes ending in *)"),
            ));
        }
        Some(_) => return Err(ApiError::bad_request(code::WRONG_TYPE, "pops: must be an array of strings")),
        None => return Err(ApiError::bad_request(code::MISSING_FIELD, "pops: required")),
    };
    pops.iter().try_for_each(|p| pop_pattern(p))?;
    let ttl = match map.get("ttl_seconds").filter(|v| !v.is_null()) {
        Some(v) => integer("ttl_seconds", v, 60, MAX_BOOTSTRAP_TTL)?,
        None => 3600,
    };
    let (token, expires) =
        state.enrollment.create_bootstrap_token(pops.clone(), Duration::from_secs(ttl)).await.map_err(repo_err)?;
    Ok(envelope(json!({
        "token": token,
        "pops": pops,
        "expires_on": crate::model::rfc3339_secs(expires),
    })))
}

/// The unexpired bootstrap tokens (by a prefix of their hash; the token itself is never kept).
pub(super) async fn list_bootstrap_tokens(
    State(state): State<Arc<ApiState>>,
    _admin: Admin,
) -> Result<Response, ApiError> {
    let tokens = state.enrollment.bootstrap_tokens().await.map_err(repo_err)?;
    Ok(collection(
        tokens
            .into_iter()
            .map(|(hash, t)| {
                json!({
                    "id": &hash[..16.min(hash.len())],
                    "pops": t.pops,
                    "created_on": t.created,
                    "expires_on": crate::model::rfc3339_secs(t.expires),
                })
            })
            .collect(),
    ))
}

/// Certificates signed for enrolled agents, with whether each is revoked.
pub(super) async fn list_certificates(State(state): State<Arc<ApiState>>, _admin: Admin) -> Result<Response, ApiError> {
    let revoked = state.enrollment.revoked();
    let certs = state.enrollment.certificates().await.map_err(repo_err)?;
    Ok(collection(
        certs
            .into_iter()
            .map(|c| {
                json!({
                    "agent_id": c.agent_id,
                    "pop": c.pop,
                    "serial": c.serial,
                    "issued_on": c.issued,
                    "expires_on": crate::model::rfc3339_secs(c.not_after),
                    "revoked": revoked.contains(&c.serial),
                })
            })
            .collect(),
    ))
}

/// `{"agent_id": "..."}` (every certificate signed for it) and/or `{"serial": "..."}`.
pub(super) async fn revoke(
    State(state): State<Arc<ApiState>>,
    _admin: Admin,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let map = parse_object(&body)?;
    let agent = map.get("agent_id").filter(|v| !v.is_null()).map(|v| string("agent_id", v)).transpose()?;
    let serial = map.get("serial").filter(|v| !v.is_null()).map(|v| string("serial", v)).transpose()?;
    if agent.is_none() && serial.is_none() {
        return Err(ApiError::bad_request(code::MISSING_FIELD, "agent_id or serial: one is required"));
    }
    if let Some(agent) = agent {
        edgecap_tls::validate_name(agent)
            .map_err(|e| ApiError::bad_request(code::INVALID_VALUE, format!("agent_id: {e}")))?;
    }
    if let Some(serial) = serial {
        let hex = serial.strip_prefix("0x").unwrap_or(serial).replace(':', "");
        if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::bad_request(
                code::INVALID_VALUE,
                "serial: hexadecimal, as `edgecap admin certificates` or `openssl x509 -serial` shows it",
            ));
        }
    }
    let serial = serial.map(edgecap_tls::enroll::normalize_serial);
    let serials = state.enrollment.revoke(agent, serial.as_deref()).await.map_err(repo_err)?;
    if serials.is_empty() {
        return Err(ApiError::not_found(
            code::NOT_FOUND,
            format!("agent_id: no certificate was signed for agent {:?}", agent.unwrap_or_default()),
        ));
    }
    Ok(envelope(json!({ "revoked": serials })))
}

/// Every revocation in force.
pub(super) async fn list_revocations(State(state): State<Arc<ApiState>>, _admin: Admin) -> Result<Response, ApiError> {
    let all = state.enrollment.revocations().await.map_err(repo_err)?;
    Ok(collection(all.into_iter().map(|r| json!(r)).collect()))
}
