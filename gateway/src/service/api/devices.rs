//! Devices: a device's history.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::extract::{PathParams, QueryParams};
use super::ledger::ensure_fresh;
use super::{visible_classes, ApiError};
use crate::service::node::Node;
use crate::service::server::Peer;

#[derive(Deserialize)]
pub struct DeviceParam {
    id: String,
}

/// Paging and freshness of a history.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Cursor: only entries after this sequence number (the `next` of the previous page).
    pub after: Option<u64>,
    /// Page size, 1 to 10,000 (default 1,000).
    pub limit: Option<usize>,
    /// `local` (default) or `linearizable`.
    pub consistency: Option<String>,
}

/// A page of a device's history.
#[derive(Serialize, utoipa::ToSchema)]
pub struct HistoryPage {
    device_id: String,
    /// Entries in ledger order; components the caller may not see are `{"withheld": class}`,
    /// erased ones `{"erased": class, "erased_by": seq}`. A staff record has its `signature`
    /// (name, role, meaning, time); an entry that was corrected is `corrected` with the
    /// sequence numbers of its corrections in `corrected_by`.
    entries: Vec<serde_json::Value>,
    /// The cursor of the next page (`after=`), absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<u64>,
}

/// A device's history, oldest first, one page at a time.
#[utoipa::path(get, path = "/v1/devices/{id}/history", tag = "devices",
    params(("id" = String, Path, description = "Device id (UDI or local id)"), HistoryQuery),
    responses((status = 200, description = "A page of the history", body = HistoryPage),
              (status = 400, description = "Bad query parameter", body = super::Problem, content_type = "application/problem+json"),
              (status = 404, description = "The ledger has no entry about this device", body = super::Problem, content_type = "application/problem+json")))]
pub async fn history(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    PathParams(DeviceParam { id: device }): PathParams<DeviceParam>,
    QueryParams(q): QueryParams<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    ensure_fresh(&node, q.consistency.as_deref()).await?;
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad(format!(
            "query parameter limit: {limit} is not between 1 and 10000"
        ))
        .at("limit"));
    }
    let classes = visible_classes(&peer);
    let store = &node.store;
    // One more than the page, to know whether there is a next one.
    let mut seqs = store
        .device_history(&device, q.after, limit + 1)
        .map_err(ApiError::internal)?;
    if seqs.is_empty() && q.after.is_none() {
        return Err(ApiError::not_found(format!(
            "the ledger has no entry about device {device:?}"
        ))
        .at("id"));
    }
    let next = (seqs.len() > limit).then(|| {
        seqs.truncate(limit);
        seqs.last().copied().unwrap_or_default()
    });
    let mut entries = Vec::with_capacity(seqs.len());
    for seq in seqs {
        entries.push(
            crate::service::records::entry_view(store, seq, &classes)
                .map_err(ApiError::internal)?,
        );
    }
    Ok(Json(HistoryPage {
        device_id: device,
        entries,
        next,
    }))
}
