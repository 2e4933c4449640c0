//! `/healthz` and `/metrics` for a server in front of a store (`stowage serve`): what a
//! load balancer probes and what Prometheus scrapes while the fallback is still in use.

use std::path::PathBuf;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use object_store::path::Path;
use object_store::ObjectStoreExt;

use super::ReadThrough;

#[derive(Clone)]
struct Probe {
    root: Option<PathBuf>,
    read_through: Option<ReadThrough>,
}

/// A router answering `GET /healthz` (200 `ok` when the local `root` can be read and,
/// with a read-through store, its fallback answers a HEAD; 503 with the reason otherwise)
/// and `GET /metrics` (the [`ReadThrough::stats`] counters in the Prometheus text format;
/// empty without a read-through store).
pub fn health_and_metrics<S>(root: Option<PathBuf>, read_through: Option<ReadThrough>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(Probe { root, read_through })
}

async fn healthz(State(p): State<Probe>) -> Response {
    match check(&p).await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

async fn check(p: &Probe) -> Result<(), String> {
    if let Some(root) = &p.root {
        let mut dir = tokio::fs::read_dir(root)
            .await
            .map_err(|e| format!("store root {} cannot be read: {e}", root.display()))?;
        dir.next_entry()
            .await
            .map_err(|e| format!("store root {} cannot be read: {e}", root.display()))?;
    }
    if let Some(rt) = &p.read_through {
        // Any answer about a key that need not exist shows the fallback is up and ours.
        match rt.fallback().head(&Path::from("stowage-healthz")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(format!(
                    "fallback does not answer: {}",
                    crate::error::redact(&e.to_string())
                ))
            }
        }
    }
    Ok(())
}

async fn metrics(State(p): State<Probe>) -> Response {
    let body = p
        .read_through
        .as_ref()
        .map(|rt| rt.stats().prometheus())
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
