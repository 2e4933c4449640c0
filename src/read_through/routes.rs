//! `/healthz` and `/metrics` for a server in front of a store (`stowage serve`): what a
//! load balancer probes and what Prometheus scrapes while the fallback is still in use.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use object_store::path::Path;
use object_store::ObjectStoreExt;

use super::{ReadThrough, DEFAULT_HEALTH_TIMEOUT};

#[derive(Clone)]
struct Probe {
    root: Option<PathBuf>,
    read_through: Option<ReadThrough>,
    /// Each check's bound: the read-through store's `health_timeout`, or the default.
    timeout: Duration,
    /// Root checks that outlived their timeout and still hold a blocking thread (a hung
    /// mount). While there are any, probes answer 503 at once instead of stacking up more
    /// stuck threads behind them.
    stuck_root_checks: Arc<AtomicUsize>,
}

/// A router answering `GET /healthz` (200 `ok` when the local `root` can be read and,
/// with a read-through store, its fallback answers a HEAD; 503 with the reason otherwise)
/// and `GET /metrics` (the [`ReadThrough::stats`] counters in the Prometheus text format;
/// empty without a read-through store).
///
/// Each check is bounded by [`super::ReadThroughOptions::health_timeout`] (3 s by default;
/// the same default without a read-through store): a fallback that accepts the
/// connection and never answers, or a hung disk, is a 503 saying so, not a probe that
/// hangs until the load balancer gives up.
pub fn health_and_metrics<S>(root: Option<PathBuf>, read_through: Option<ReadThrough>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(Probe {
            timeout: read_through
                .as_ref()
                .map_or(DEFAULT_HEALTH_TIMEOUT, |rt| rt.options().health_timeout),
            root,
            read_through,
            stuck_root_checks: Arc::new(AtomicUsize::new(0)),
        })
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
        check_root(p, root).await?;
    }
    if let Some(rt) = &p.read_through {
        // Any answer about a key that need not exist shows the fallback is up and ours.
        let key = Path::from("stowage-healthz");
        match tokio::time::timeout(p.timeout, rt.fallback().head(&key)).await {
            Ok(Ok(_) | Err(object_store::Error::NotFound { .. })) => {}
            Ok(Err(e)) => {
                return Err(format!(
                    "fallback does not answer: {}",
                    crate::error::redact(&e.to_string())
                ))
            }
            Err(_) => {
                return Err(format!(
                    "fallback did not answer a HEAD within {}",
                    seconds(p.timeout)
                ))
            }
        }
    }
    Ok(())
}

/// The root can be listed (its first entry read), within the timeout.
async fn check_root(p: &Probe, root: &std::path::Path) -> Result<(), String> {
    let stuck = || {
        format!(
            "store root {} did not answer within {}",
            root.display(),
            seconds(p.timeout)
        )
    };
    if p.stuck_root_checks.load(Ordering::SeqCst) > 0 {
        return Err(stuck());
    }
    // (finished, abandoned): whichever of the check and its timeout comes second settles
    // the count of stuck checks, under the lock.
    let fate = Arc::new(Mutex::new((false, false)));
    let (dir, stuck_count, task_fate) = (
        root.to_path_buf(),
        Arc::clone(&p.stuck_root_checks),
        Arc::clone(&fate),
    );
    let task = tokio::task::spawn_blocking(move || {
        let res = std::fs::read_dir(&dir).and_then(|mut d| d.next().transpose().map(drop));
        let mut f = task_fate.lock().unwrap_or_else(|e| e.into_inner());
        f.0 = true;
        if f.1 {
            stuck_count.fetch_sub(1, Ordering::SeqCst);
        }
        res
    });
    match tokio::time::timeout(p.timeout, task).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!("store root {} cannot be read: {e}", root.display())),
        Ok(Err(e)) => Err(format!("store root check failed: {e}")),
        Err(_) => {
            let mut f = fate.lock().unwrap_or_else(|e| e.into_inner());
            if !f.0 {
                f.1 = true;
                p.stuck_root_checks.fetch_add(1, Ordering::SeqCst);
            }
            Err(stuck())
        }
    }
}

/// `3 s`, `500 ms`.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
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
