//! `POST /v1/import`: a batch of an import file (`medledger import --config`/`--gateway`), a thin
//! handler over [`crate::service::import`].

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};

use super::extract::JsonBody;
use super::ApiError;
use crate::service::import::{self, ImportAnswer, ImportBatch};
use crate::service::node::Node;
use crate::service::server::Peer;

/// Body limit of a batch.
pub const IMPORT_BODY: usize = import::MAX_BATCH_BYTES;

/// Import a batch of events of an existing maintenance history (administrators and gateways),
/// in the batch's order, each once by its `event_id`: an event whose id the ledger holds is
/// answered `already_there` without being written again, so a batch or a whole file sent again
/// records nothing twice. An event refused (its fields, a correction of another device's entry,
/// the ledger's rules) is answered `refused` with the reason and the others go on. The answer
/// comes once this gateway applied the batch. Imported entries name the caller as author and
/// carry no signature manifestation (nobody signs a history recorded elsewhere).
#[utoipa::path(post, path = "/v1/import", tag = "events",
    request_body(content = ImportBatch, content_type = "application/json"),
    responses(
        (status = 200, description = "One outcome per event, in order", body = ImportAnswer),
        (status = 403, description = "Not an administrator or a gateway, or a read-only learner", body = super::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the batch size limit (8 MiB)", body = super::Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON of the wrong shape, or more than 1000 events", body = super::Problem, content_type = "application/problem+json"),
        (status = 503, description = "No leader reachable: send the batch again", body = super::Problem, content_type = "application/problem+json"),
        (status = 507, description = "A disk below its free-space reserve", body = super::Problem, content_type = "application/problem+json"),
    ))]
pub async fn import_batch(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    JsonBody(batch): JsonBody<ImportBatch>,
) -> Result<Json<ImportAnswer>, ApiError> {
    Ok(Json(import::import_batch(&node, &peer.0, batch).await?))
}
