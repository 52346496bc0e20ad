//! Staff accounts of the web page, for the peer gateways: a gateway asks the others for an
//! account at sign-in (`web::auth::Auth::lookup`), so an account added on one gateway signs in
//! on all. Gateways only: the record holds the Argon2id hash.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::extract::PathParams;
use super::ApiError;
use crate::accounts::{check_id, Accounts};
use crate::service::node::Node;

#[derive(Deserialize)]
pub struct AccountParam {
    id: String,
}

/// One staff account as this gateway's `staff.json` holds it (hash included).
#[utoipa::path(get, path = "/v1/staff-accounts/{id}", tag = "cluster",
    params(("id" = String, Path, description = "The account's id")),
    responses((status = 200, description = "The account record (docs/web.md)", body = Object),
              (status = 404, description = "No such account on this gateway", body = super::Problem, content_type = "application/problem+json")))]
pub async fn get_account(
    State(node): State<Arc<Node>>,
    PathParams(AccountParam { id }): PathParams<AccountParam>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_id(&id).map_err(|e| ApiError::bad(e.to_string()).at("id"))?;
    let accounts = Accounts::in_data_dir(&node.disk_dir());
    let found = tokio::task::spawn_blocking(move || accounts.get(&id).map(|a| (id, a)))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    match found {
        (_, Some(a)) => Ok(Json(serde_json::to_value(a).map_err(ApiError::internal)?)),
        (id, None) => Err(ApiError::not_found(format!(
            "gateway {} has no staff account {id:?}",
            node.id
        ))
        .at("id")),
    }
}
