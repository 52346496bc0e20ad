//! The ledger: the signed tree head, the gateways' keys, consistency proofs, receipts, exports,
//! and the caller's own identity.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::extract::{PathParams, QueryParams};
use super::{visible_classes, ApiError};
use crate::service::node::Node;
use crate::service::server::Peer;

/// How fresh a read must be.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Freshness {
    /// `local` (default): this gateway's view. `linearizable`: confirmed with a quorum to include
    /// everything committed before the request.
    pub consistency: Option<String>,
}

/// Waits, for a `linearizable` read, until this node has applied everything committed before it.
pub async fn ensure_fresh(node: &Node, consistency: Option<&str>) -> Result<(), ApiError> {
    type RaftErr<E> = openraft::error::RaftError<u64, E>;
    match consistency {
        None | Some("local") => Ok(()),
        Some("linearizable") => {
            // On the leader this confirms leadership with a quorum and waits until everything
            // committed so far is applied. A follower waits until it has applied the leader's
            // commit index.
            match node.raft.ensure_linearizable().await {
                Ok(_) => Ok(()),
                Err(RaftErr::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                    let Some(leader) = f.leader_node else {
                        return Err(ApiError::unavailable("no leader"));
                    };
                    let resp = node
                        .peers
                        .get()
                        .get(format!(
                            "https://{}/cluster/status?consistency=linearizable",
                            leader.addr
                        ))
                        .send()
                        .await
                        .map_err(|e| ApiError::unavailable(format!("leader unreachable: {e}")))?;
                    let status: crate::service::node::ClusterStatus =
                        resp.json().await.map_err(ApiError::unavailable)?;
                    node.raft
                        .wait(Some(std::time::Duration::from_secs(5)))
                        .applied_index_at_least(status.last_applied, "linearizable read")
                        .await
                        .map_err(ApiError::unavailable)?;
                    Ok(())
                }
                Err(e) => Err(ApiError::unavailable(e)),
            }
        }
        Some(other) => Err(ApiError::bad(format!(
            "query parameter consistency: unknown value {other:?} (local, linearizable)"
        ))
        .at("consistency")),
    }
}

/// A signed tree head (docs/ledger-format.md): size, root, time, node id, signature.
#[derive(Serialize, utoipa::ToSchema)]
pub struct HeadDoc {
    size: u64,
    /// Merkle root, hex.
    root: String,
    /// Unix milliseconds.
    time_ms: i64,
    node_id: u64,
    /// Ed25519 signature, hex.
    signature: String,
}

/// This gateway's signed tree head over what it has applied.
#[utoipa::path(get, path = "/v1/head", tag = "ledger", params(Freshness),
    responses((status = 200, description = "Signed tree head", body = HeadDoc),
              (status = 503, description = "No quorum for a linearizable read", body = super::Problem, content_type = "application/problem+json")))]
pub async fn head(
    State(node): State<Arc<Node>>,
    QueryParams(q): QueryParams<Freshness>,
) -> Result<Json<ledger_node::SignedTreeHead>, ApiError> {
    ensure_fresh(&node, q.consistency.as_deref()).await?;
    Ok(Json(node.tree_head().map_err(ApiError::internal)?))
}

/// One gateway's signing key.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NodeKeyDoc {
    node_id: u64,
    /// Ed25519 public key, hex.
    public_key: String,
    /// The key's endorsement by the site (docs/ledger-format.md §9.5), when the ledger records
    /// one: absent for a gateway without an issuing CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    endorsement: Option<EndorsementDoc>,
}

/// An X.509 certificate of a gateway's ledger key and its chain up to the site root.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EndorsementDoc {
    /// The ledger entry (`certificate-issued`, profile `ledger-key`) that records it.
    seq: u64,
    /// The endorsement certificate, PEM.
    certificate_pem: String,
    /// The same certificate, DER in base64 (standard alphabet, padded).
    certificate_der: String,
    /// The chain above it, PEM, nearest first: the gateway's issuing CA, then the site root
    /// this gateway trusts (`openssl verify -CAfile ROOT -untrusted ISSUING CERT`).
    chain_pem: Vec<String>,
}

/// The public keys of the gateways, as the replicated ledger records them: what entries,
/// checkpoints, receipts and exports are signed with; with each key's endorsement by the site
/// where the ledger records one.
#[utoipa::path(get, path = "/v1/keys", tag = "ledger",
    responses((status = 200, description = "Every gateway's key", body = Vec<NodeKeyDoc>)))]
pub async fn keys(State(node): State<Arc<Node>>) -> Result<Json<Vec<NodeKeyDoc>>, ApiError> {
    use base64::Engine;
    let keys = node.store.node_keys().map_err(ApiError::internal)?;
    let root = node.site_root_pem();
    let mut out = Vec::new();
    for (node_id, k) in keys {
        let endorsement =
            crate::service::revocation::recorded_endorsement(&node.store, node_id, &k)
                .map_err(ApiError::internal)?
                .and_then(|(seq, e)| {
                    let der = certs::pem::certs_from_pem(
                        e.certificate.as_bytes(),
                        std::path::Path::new("the endorsement"),
                    )
                    .ok()?
                    .into_iter()
                    .next()?;
                    Some(EndorsementDoc {
                        seq,
                        certificate_pem: e.certificate,
                        certificate_der: base64::engine::general_purpose::STANDARD.encode(der),
                        chain_pem: std::iter::once(e.issuer_certificate)
                            .chain(root.clone())
                            .collect(),
                    })
                });
        out.push(NodeKeyDoc {
            node_id,
            public_key: hex::encode(k),
            endorsement,
        });
    }
    Ok(Json(out))
}

/// The two tree sizes of a consistency proof.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// The older size (at least 1).
    pub from: u64,
    /// The newer size (default: the ledger's size now).
    pub to: Option<u64>,
}

/// An RFC 9162 consistency proof between two sizes.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConsistencyDoc {
    from: u64,
    to: u64,
    /// Root of the first `from` entries, hex.
    from_root: String,
    /// Root of the first `to` entries, hex.
    to_root: String,
    /// The proof's hashes, hex, in RFC 9162 §2.1.4 order.
    proof: Vec<String>,
    /// A signed head of size `to` when `to` is the ledger's current size.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<HeadDoc>)]
    head: Option<ledger_node::SignedTreeHead>,
}

/// A consistency proof between an older tree size and a newer one: shows that the newer ledger
/// extends the older one (no entry changed or removed).
#[utoipa::path(get, path = "/v1/proofs/consistency", tag = "ledger", params(ConsistencyQuery),
    responses((status = 200, description = "The proof", body = ConsistencyDoc),
              (status = 400, description = "Sizes out of range", body = super::Problem, content_type = "application/problem+json")))]
pub async fn consistency(
    State(node): State<Arc<Node>>,
    QueryParams(q): QueryParams<ConsistencyQuery>,
) -> Result<Json<ConsistencyDoc>, ApiError> {
    let head = node.tree_head().map_err(ApiError::internal)?;
    let to = q.to.unwrap_or(head.size);
    if q.from == 0 || q.from > to {
        return Err(ApiError::bad(format!(
            "query parameter from: {} must be between 1 and to ({to})",
            q.from
        ))
        .at("from"));
    }
    if to > head.size {
        return Err(ApiError::bad(format!(
            "query parameter to: {to} is beyond the {} entries of the ledger",
            head.size
        ))
        .at("to"));
    }
    let store = &node.store;
    let proof = store
        .consistency_proof(q.from, to)
        .map_err(ApiError::internal)?;
    Ok(Json(ConsistencyDoc {
        from: q.from,
        to,
        from_root: hex::encode(store.root(q.from).map_err(ApiError::internal)?),
        to_root: hex::encode(store.root(to).map_err(ApiError::internal)?),
        proof: proof.iter().map(hex::encode).collect(),
        head: (to == head.size).then_some(head),
    }))
}

#[derive(Deserialize)]
pub struct SeqParam {
    seq: u64,
}

/// A receipt for one entry: the entry with the components the caller may see, its inclusion
/// proof, a signed tree head (the latest checkpoint with its co-signatures when it holds the
/// entry, else this gateway's head) and the site's endorsements of the keys; `medledger verify`
/// checks it offline, also against the site root.
#[utoipa::path(get, path = "/v1/entries/{seq}/receipt", tag = "ledger",
    params(("seq" = u64, Path, description = "Sequence number of the entry")),
    responses((status = 200, description = "Receipt (docs/ledger-format.md)", body = Object),
              (status = 400, description = "Bad sequence number", body = super::Problem, content_type = "application/problem+json"),
              (status = 404, description = "No such entry", body = super::Problem, content_type = "application/problem+json")))]
pub async fn receipt(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    PathParams(SeqParam { seq }): PathParams<SeqParam>,
) -> Result<Response, ApiError> {
    // Against the latest co-signed checkpoint (else the latest checkpoint) when it holds the
    // entry: a head every gateway recorded, with the voter set and co-signatures of the
    // gateways that applied it (§9.6); else this gateway's own.
    let head = match ledger_node::export::recorded_cut(&node.store, seq.saturating_add(1))
        .map_err(ApiError::internal)?
    {
        Some(c) => c,
        None => node.tree_head().map_err(ApiError::internal)?,
    };
    if seq >= head.size {
        return Err(ApiError::not_found(format!(
            "no entry {seq}: the ledger has {} entries",
            head.size
        ))
        .at("seq"));
    }
    let mut r =
        ledger_node::export::make_receipt(&node.store, seq, &head, &Some(visible_classes(&peer)))
            .map_err(ApiError::internal)?;
    r.endorsements = crate::service::revocation::endorsements_of(&node.store, &r.node_keys)
        .map_err(ApiError::internal)?;
    Ok(Json(r).into_response())
}

/// For whom an export is made.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// A staff role (biomed, supervisor, auditor, insurer, admin) to make the export for: only
    /// the classes that role reads are opened. Default: the caller's own role; a role that
    /// reads a class the caller may not see is refused.
    pub role: Option<String>,
}

/// The whole ledger as an export (JSON Lines, docs/ledger-format.md), cut at the latest
/// replicated checkpoint so that every gateway serves the same bytes; components the caller's
/// role (or the narrower audience `role`) may not see are exported as commitments only.
#[utoipa::path(get, path = "/v1/export", tag = "ledger", params(ExportQuery),
    responses((status = 200, description = "Export", body = String, content_type = "application/jsonl"),
              (status = 400, description = "Unknown role", body = super::Problem, content_type = "application/problem+json"),
              (status = 403, description = "The role reads classes the caller may not see", body = super::Problem, content_type = "application/problem+json")))]
pub async fn export(
    State(node): State<Arc<Node>>,
    Extension(peer): Extension<Peer>,
    QueryParams(q): QueryParams<ExportQuery>,
) -> Result<Response, ApiError> {
    let mut classes = visible_classes(&peer);
    if let Some(role) = &q.role {
        let role: certs::StaffRole = role.parse().map_err(|e: certs::Error| {
            ApiError::bad(format!("query parameter role: {e}")).at("role")
        })?;
        let audience = crate::records::role_classes(role);
        if let Some(c) = audience.iter().find(|c| !classes.contains(c)) {
            return Err(ApiError::forbidden(format!(
                "an export for {role} opens class {}, which this caller may not see",
                c.as_str()
            ))
            .at("role"));
        }
        classes = audience;
    }
    let head =
        match ledger_node::export::recorded_cut(&node.store, 0).map_err(ApiError::internal)? {
            Some(h) => h,
            None => node.tree_head().map_err(ApiError::internal)?,
        };
    let store = node.store.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        ledger_node::export::write_export(&store, &head, &Some(classes), &mut out).map(|()| out)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/jsonl")],
        bytes,
    )
        .into_response())
}

/// The caller's identity as the gateway sees it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Whoami {
    profile: String,
    id: String,
    role: Option<String>,
    name: Option<String>,
    serial: String,
    fingerprint: String,
    /// The disclosure classes whose values this identity sees.
    visible_classes: Vec<String>,
}

/// The caller's identity as the gateway sees it (for staff tooling and TLS diagnostics).
#[utoipa::path(get, path = "/v1/whoami", tag = "ledger",
    responses((status = 200, description = "The caller's identity", body = Whoami)))]
pub async fn whoami(Extension(peer): Extension<Peer>) -> Json<Whoami> {
    let id = &peer.0;
    Json(Whoami {
        profile: id.profile.as_str().to_owned(),
        id: id.id.clone(),
        role: id.role.clone(),
        name: id.name.clone(),
        serial: id.serial.clone(),
        fingerprint: id.fingerprint.clone(),
        visible_classes: visible_classes(&peer)
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect(),
    })
}
