//! `stowage serve`: the `stowage::http` router as a standalone file server for a local
//! store, with an access log on stderr and a graceful stop on SIGTERM / Ctrl-C.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use clap::Args;
use futures::StreamExt;
use http::HeaderValue;
use stowage::http::{Disposition, ServeError, ServeOptions, DEFAULT_CACHE_CONTROL};
use stowage::{BlobStore, StoreConfig};

use crate::exit::Exit;

/// Serve a local store's files over HTTP, where download URLs point.
///
/// GET and HEAD for /<base-path>/<key>: byte ranges, ETag/Last-Modified and conditional
/// requests, Content-Type from the stored type or the extension. Paths that are not valid
/// keys are 404 and symlinks are never followed. When STORAGE_URL_SECRET is set, every
/// request needs the expires/sig query that download URLs carry (else 403).
///
/// One access-log line per request goes to stderr: client, method, path, status, bytes
/// sent, duration. SIGTERM or Ctrl-C stops accepting connections and lets in-flight
/// downloads finish; a second signal exits at once.
///
/// Example:
///   stowage serve --root /opt/meme-maker/storage --listen 127.0.0.1:8000
///
/// Exit codes: 0 stopped by a signal after finishing in-flight requests; 2 configuration
/// error or the address cannot be bound.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct ServeArgs {
    /// Store root to serve.
    #[arg(long, env = "LOCAL_STORAGE_PATH", default_value = stowage::config::DEFAULT_LOCAL_PATH, value_name = "DIR")]
    root: PathBuf,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "ADDR")]
    listen: SocketAddr,
    /// URL path the files are served under (where download URLs point).
    #[arg(
        long,
        env = "FILES_PATH",
        default_value = "/api/files",
        value_name = "PATH"
    )]
    base_path: String,
    /// Cache-Control sent with files; an empty value sends none.
    #[arg(long, default_value = DEFAULT_CACHE_CONTROL, value_name = "VALUE")]
    cache_control: String,
    /// Send files with `Content-Disposition: attachment` (download) instead of inline.
    #[arg(long)]
    attachment: bool,
}

/// What `ServeArgs` resolve to before anything is bound.
struct Plan {
    store: BlobStore,
    options: ServeOptions,
    base_path: String,
}

impl ServeArgs {
    fn plan(&self) -> stowage::Result<Plan> {
        let config_err = |name: &str, reason: String| stowage::Error::Config {
            name: name.into(),
            reason,
        };
        let root = super::absolute("--root", &self.root)?;
        let base_path = self.base_path.trim_end_matches('/');
        if !self.base_path.starts_with('/') {
            return Err(config_err(
                "--base-path",
                format!(
                    "{:?}: expected a path starting with '/', like /api/files",
                    self.base_path
                ),
            ));
        }
        // The signing secret, its lifetime and BASE_URL come from the same environment the
        // service reads, with the root and path from the flags.
        let mut vars: HashMap<String, String> = std::env::vars().collect();
        vars.insert("STORAGE_TYPE".into(), "local".into());
        vars.insert(
            "LOCAL_STORAGE_PATH".into(),
            root.to_string_lossy().into_owned(),
        );
        vars.insert("FILES_PATH".into(), self.base_path.clone());
        let store = StoreConfig::from_env_map(&vars)?.open()?;
        let cache_control = match self.cache_control.trim() {
            "" => None,
            v => Some(HeaderValue::from_str(v).map_err(|_| {
                config_err(
                    "--cache-control",
                    format!("{v:?} is not a valid header value"),
                )
            })?),
        };
        let options = ServeOptions {
            cache_control,
            disposition: if self.attachment {
                Disposition::Attachment
            } else {
                Disposition::Inline
            },
            ..ServeOptions::default()
        };
        Ok(Plan {
            store,
            options,
            base_path: base_path.to_owned(),
        })
    }
}

pub(crate) async fn run(args: ServeArgs) -> Exit {
    let plan = match args.plan() {
        Ok(p) => p,
        Err(e) => return crate::fatal(&e),
    };
    let signed = plan.store.local_urls().is_some_and(|u| u.secret.is_some());
    let described = plan.store.describe();
    let files = match stowage::http::router(plan.store, plan.options) {
        Ok(f) => f,
        Err(e) => return crate::fatal(&e),
    };
    let app = if plan.base_path.is_empty() {
        files
    } else {
        Router::new().nest(&plan.base_path, files)
    }
    .layer(axum::middleware::from_fn(access_log));

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return Exit::Error;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    eprintln!(
        "stowage serve: {described} listening on http://{addr}{}/ (signed URLs {})",
        plan.base_path,
        if signed { "required" } else { "off" }
    );
    let cancel = crate::interrupt::cancel_on_signals();
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        cancel.cancelled().await;
        eprintln!("stowage serve: no longer accepting connections; finishing in-flight requests");
    })
    .await;
    match served {
        Ok(()) => {
            eprintln!("stowage serve: stopped");
            Exit::Success
        }
        Err(e) => {
            eprintln!("error: serving on {addr}: {e}");
            Exit::Error
        }
    }
}

/// Writes one line per request to stderr when its response body is finished (or the
/// client went away): `client "METHOD path" status bytes duration`. The query string is
/// left out: it carries the URL signature.
async fn access_log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "-".into());
    // The path is written with bidi and other format characters spelled out, so a key
    // cannot reorder or hide what the log line shows.
    let request = format!(
        "{} {}",
        req.method(),
        stowage::key::display_safe(req.uri().path())
    );
    let resp = next.run(req).await;
    let (parts, body) = resp.into_parts();
    let mut line = LogLine {
        client,
        request,
        status: parts.status.as_u16(),
        error: parts
            .extensions
            .get::<ServeError>()
            .map(|e| e.0.to_string()),
        bytes: 0,
        start,
    };
    let body = body.into_data_stream().map(move |chunk| {
        if let Ok(c) = &chunk {
            line.sent(c.len());
        }
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// An access-log line, printed when the response body is dropped (sent or abandoned).
struct LogLine {
    client: String,
    request: String,
    status: u16,
    error: Option<String>,
    bytes: u64,
    start: Instant,
}

impl LogLine {
    // A method, so the closure above captures (and drops) the whole line, not one field.
    fn sent(&mut self, n: usize) {
        self.bytes += n as u64;
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let ms = self.start.elapsed().as_secs_f64() * 1e3;
        match &self.error {
            Some(e) => eprintln!(
                "{} \"{}\" {} {} {ms:.1}ms error: {e}",
                self.client, self.request, self.status, self.bytes
            ),
            None => eprintln!(
                "{} \"{}\" {} {} {ms:.1}ms",
                self.client, self.request, self.status, self.bytes
            ),
        }
    }
}
