//! Certificates as the replicated ledger records them: the issuance and revocation of one
//! serial, found through their event ids (O(1) whatever the ledger's size).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::PathParams;
use super::ApiError;
use crate::service::node::Node;
use crate::service::revocation::{issued_event_id, revoked_event_id};

#[derive(Deserialize)]
pub struct SerialParam {
    serial: String,
}

/// One ledger entry about a certificate.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct CertificateEntry {
    pub seq: u64,
    /// The entry's device id: the certificate's subject (`staff:<id>`, `gateway:<id>`, a device
    /// id).
    pub subject: String,
    /// When it happened (RFC 3339).
    pub occurred_at: Option<String>,
    /// The revocation reason, for a revocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the ledger says about a serial.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct CertificateStatus {
    /// The serial, normalised (lowercase hex).
    pub serial: String,
    pub issued: Option<CertificateEntry>,
    pub revoked: Option<CertificateEntry>,
}

fn entry(node: &Node, event_id: &str) -> Result<Option<CertificateEntry>, ApiError> {
    let Some(seq) = node
        .store
        .find_event_id(event_id)
        .map_err(ApiError::internal)?
    else {
        return Ok(None);
    };
    let e = node.store.entry(seq).map_err(ApiError::internal)?;
    let openings = node.store.openings(seq).map_err(ApiError::internal)?;
    let reason = e
        .body
        .components
        .iter()
        .position(|c| c.name == "reason")
        .and_then(|i| openings.get(i).cloned().flatten())
        .and_then(|o| serde_json::from_str::<String>(&o.value).ok());
    Ok(Some(CertificateEntry {
        seq,
        subject: e.body.device_id.clone(),
        occurred_at: e.body.occurred_at.clone(),
        reason,
    }))
}

/// The issuance and revocation of a certificate, by serial, as the replicated ledger records
/// them (any gateway answers for certificates of every gateway's issuing CA).
#[utoipa::path(get, path = "/v1/certificates/{serial}", tag = "identity",
    params(("serial" = String, Path, description = "Certificate serial (hex)")),
    responses((status = 200, description = "What the ledger records", body = CertificateStatus),
              (status = 400, description = "Not a serial", body = super::Problem, content_type = "application/problem+json"),
              (status = 404, description = "The ledger knows nothing of it", body = super::Problem, content_type = "application/problem+json")))]
pub async fn certificate(
    State(node): State<Arc<Node>>,
    PathParams(SerialParam { serial }): PathParams<SerialParam>,
) -> Result<Json<CertificateStatus>, ApiError> {
    let serial = certs::crl::normalize_serial(&serial)
        .map_err(|e| ApiError::bad(format!("path parameter serial: {e}")).at("serial"))?;
    let issued = entry(&node, &issued_event_id(&serial))?;
    let revoked = entry(&node, &revoked_event_id(&serial))?;
    if issued.is_none() && revoked.is_none() {
        return Err(ApiError::not_found(format!(
            "the ledger records no certificate with serial {serial}"
        ))
        .at("serial"));
    }
    Ok(Json(CertificateStatus {
        serial,
        issued,
        revoked,
    }))
}
