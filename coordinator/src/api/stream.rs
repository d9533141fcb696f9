//! `GET .../pcaps/{id}/stream` (extension): a running full capture, live, as pcapng over
//! HTTP (chunked) until it ends; see `full/stream.rs`.

use std::sync::Arc;

use axum::body::Body as ResponseBody;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::auth::Account;
use super::captures::find;
use super::error::{ApiError, code};
use crate::model::{CaptureStatus, CaptureType};

#[utoipa::path(get, path = "/client/v4/accounts/{account_id}/pcaps/{pcap_id}/stream", tag = "pcaps", operation_id = "stream_pcap",
    description = "Extension: the packets of a running full capture as they are captured, as pcapng (one interface per PoP, merged across PoPs in timestamp order with a 1 s reordering window), until the capture ends. A slow reader loses packets (counted in each interface's statistics at the end), never slows the capture; the file delivered to the bucket is complete.",
    params(("account_id" = String, Path, description = "The account"), ("pcap_id" = String, Path, description = "The full capture's id", pattern = "^[0-9a-f]{32}$")),
    responses((status = 200, description = "The live stream", content_type = "application/x-pcapng", body = Vec<u8>), crate::api::openapi::Errors))]
pub(super) async fn stream(
    State(state): State<Arc<ApiState>>,
    Account(account): Account,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let record = find(&state, &account, &id).await?;
    if record.capture_type == CaptureType::Simple {
        return Err(ApiError::bad_request(
            code::NOT_DOWNLOADABLE,
            "pcap_id: sample captures complete at once; only a running full capture can be streamed (download a sample's file)",
        ));
    }
    if !matches!(record.status, CaptureStatus::Pending | CaptureStatus::Running) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            code::NOT_READY,
            "pcap_id: the capture is no longer running; its merged file is delivered to its bucket",
        ));
    }
    let Some(live) = state.full.watch(&record) else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            code::LIMIT_REACHED,
            format!("pcap_id: this capture already has {} live viewers here", crate::full::MAX_VIEWERS),
        ));
    };
    let chunks = futures::stream::unfold(live, |mut live| async move {
        live.next_chunk().await.map(|bytes| (Ok::<_, std::convert::Infallible>(bytes), live))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-pcapng".to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (header::CONTENT_DISPOSITION, format!("inline; filename=\"pcap_{id}_live.pcapng\"")),
        ],
        ResponseBody::from_stream(chunks),
    )
        .into_response())
}
