//! Read-your-writes on any gateway: a read may name the ledger entry it must see, as the
//! `min_seq` query parameter or the `Medledger-Min-Seq` header (the `seq` a write answered).
//! Writes are acknowledged once a quorum has them and the gateway that took the write (or the
//! leader it forwarded to) applied them; another gateway may apply them a moment later, and a
//! read there meanwhile would not find them (404 for a device just registered). With `min_seq`
//! the gateway waits until it has applied entry `min_seq`, for at most [`MAX_WAIT`], and answers
//! 503 with `Retry-After` naming how far behind it is when it cannot. Without it a read is
//! this gateway's view as before (`consistency=linearizable` remains the stronger option: it
//! asks the leader how far to wait, at the cost of a round trip).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::service::node::Node;

/// The query parameter.
pub const MIN_SEQ_PARAM: &str = "min_seq";
/// The header (the same value; the query parameter wins when both are given).
pub const MIN_SEQ_HEADER: &str = "medledger-min-seq";
/// Longest wait for the gateway to apply the entry named: the time a follower normally needs
/// is one replication round (milliseconds); longer means it is cut off or catching up.
pub const MAX_WAIT: Duration = Duration::from_secs(2);

/// The layer: takes `min_seq` off the request (so the routes' own parameters stay as they are),
/// waits until this gateway has applied that entry, then runs the request.
pub async fn min_seq(State(node): State<Arc<Node>>, mut req: Request, next: Next) -> Response {
    let wanted = match take_min_seq(&mut req) {
        Ok(None) => return next.run(req).await,
        Ok(Some(seq)) => seq,
        Err(e) => return e.into_response(),
    };
    match node.wait_applied(wanted, MAX_WAIT).await {
        Ok(()) => next.run(req).await,
        Err(size) => {
            let behind = wanted.saturating_add(1).saturating_sub(size);
            let mut r = ApiError::unavailable(format!(
                "gateway {} has applied {size} entries and not yet entry {wanted} ({behind} \
                 behind) after waiting {} ms: retry, or read from another gateway",
                node.id,
                MAX_WAIT.as_millis()
            ))
            .at(MIN_SEQ_PARAM)
            .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

/// The `min_seq` of a request, taken off its query string; a bad value names the parameter.
fn take_min_seq(req: &mut Request) -> Result<Option<u64>, ApiError> {
    let parse = |v: &str, at: &str| {
        v.trim().parse::<u64>().map_err(|_| {
            ApiError::bad(format!(
                "{at}: {v:?} is not an entry sequence number (the seq a write answered)"
            ))
            .at(at)
        })
    };
    let mut found = None;
    if let Some(q) = req.uri().query().filter(|q| q.contains(MIN_SEQ_PARAM)) {
        let (mine, rest): (Vec<&str>, Vec<&str>) = q
            .split('&')
            .partition(|p| p.split('=').next() == Some(MIN_SEQ_PARAM));
        if let Some(p) = mine.last() {
            let v = p.split_once('=').map_or("", |(_, v)| v);
            found = Some(parse(v, "query parameter min_seq")?);
            let path = req.uri().path();
            let target = if rest.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", rest.join("&"))
            };
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(
                target
                    .parse()
                    .map_err(|e| ApiError::bad(format!("request target: {e}")))?,
            );
            *req.uri_mut() = Uri::from_parts(parts)
                .map_err(|e| ApiError::bad(format!("request target: {e}")))?;
        }
    }
    if found.is_none() {
        if let Some(v) = req.headers().get(MIN_SEQ_HEADER) {
            let v = v.to_str().unwrap_or("");
            found = Some(parse(v, "header Medledger-Min-Seq")?);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(uri: &str) -> (Result<Option<u64>, u16>, String) {
        let mut req = Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .expect("request");
        let r = take_min_seq(&mut req).map_err(|e| e.status.as_u16());
        (r, req.uri().to_string())
    }

    #[test]
    fn min_seq_is_taken_off_the_query() {
        assert_eq!(take("/v1/due?now=x"), (Ok(None), "/v1/due?now=x".into()));
        assert_eq!(
            take("/v1/due?min_seq=12&now=x"),
            (Ok(Some(12)), "/v1/due?now=x".into())
        );
        assert_eq!(
            take("/v1/devices/a?min_seq=3"),
            (Ok(Some(3)), "/v1/devices/a".into())
        );
        assert_eq!(take("/v1/due?min_seq=-1").0, Err(400));
        assert_eq!(take("/v1/due?min_seq").0, Err(400));
        // A parameter that only starts with the name is not it.
        assert_eq!(
            take("/v1/due?min_seqs=1").1,
            "/v1/due?min_seqs=1".to_string()
        );
    }
}
