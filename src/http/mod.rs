//! `stowage::http`: serving a [`BlobStore`]'s files over HTTP.
//!
//! With S3 the service handed out URLs and S3 served the bytes; on a local store the service
//! must serve them itself, at the URLs [`BlobStore::download_url`] produces. [`router`]
//! answers `GET` and `HEAD` for keys the way S3 (and nginx) do — single byte ranges,
//! validators and conditional requests in RFC 9110 order, a safe `Content-Disposition` —
//! and closes the holes of a naive file handler:
//!
//! - the request path is percent-decoded segment by segment and must be a valid [`Key`];
//!   anything else (`..`, `%2e%2e`, `%2f`, `\`, NUL, empty segments) is a 404 that touches
//!   no file, and files are opened with [`local::open_beneath`], which never follows a
//!   symlink;
//! - with a signing secret ([`ServeOptions::secret`] or [`LocalUrls::secret`]) every
//!   request, on every backend, needs a valid, unexpired [`crate::signing`] signature,
//!   checked before the file is looked up; an S3 store without one is refused unless
//!   public access is asked for ([`ServeOptions::public_s3_without_signatures`]);
//! - only passive media (video, audio, raster images) is served `inline`; anything else
//!   (HTML, SVG, ...) is an `application/octet-stream` attachment, and every response
//!   carries `Content-Security-Policy: default-src 'none'; sandbox` and `nosniff`, so a
//!   stored file never runs as a page on the serving origin;
//! - headers and body come from one open file descriptor, read in 64 KiB chunks, so memory
//!   does not grow with the file and a file replaced mid-download is served whole, old
//!   or new, never mixed.
//!
//! On S3 the router answers with a 302 to a presigned URL, or proxies the bytes
//! ([`S3Delivery`]); a Memory store is always proxied.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::Router;
//! use stowage::http::{router, ServeOptions};
//! use stowage::{BlobStore, Key};
//!
//! let store = BlobStore::memory();
//! store.put(&Key::new("clips/1.mp4")?, "0123456789".into()).await?;
//!
//! let app: Router = Router::new().nest("/api/files", router(store, ServeOptions::default())?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn(async move { axum::serve(listener, app).await });
//!
//! let resp = reqwest::Client::new()
//!     .get(format!("http://{addr}/api/files/clips/1.mp4"))
//!     .header("Range", "bytes=2-4")
//!     .send()
//!     .await?;
//! assert_eq!(resp.status(), 206);
//! assert_eq!(resp.headers()["content-type"], "video/mp4");
//! assert_eq!(resp.text().await?, "234");
//! # Ok(())
//! # }
//! ```

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::Error;
use crate::key::Key;
use crate::local;
use crate::signing::{self, SignatureError};
use crate::store::{file_chunks, read_exactly_at, BackendKind, BlobStore, LocalUrls, Meta};

mod range;
use range::{evaluate, normalize_etag, unix_secs, Outcome};

/// The Cache-Control sent by default. Not `immutable`: keys are rewritten in place (the
/// service re-renders a clip, migrate catches up), so a cache must be able to revalidate.
pub const DEFAULT_CACHE_CONTROL: &str = "public, max-age=86400";

/// Sent with every response: whatever a file turns out to be, a browser that renders it
/// runs no script, loads nothing and treats it as a unique origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; sandbox";

/// Bytes read from a local file per chunk of a response body. Small enough that hundreds
/// of concurrent downloads stay within a few tens of MiB, large enough for few syscalls.
const CHUNK: usize = 64 << 10;

/// How many times a proxied object is looked up again when it changed between the `HEAD`
/// that chose the range and the `GET` that fetched it.
const PROXY_ATTEMPTS: usize = 3;

/// How the router behaves.
#[derive(Clone)]
pub struct ServeOptions {
    /// Cache-Control of successful and 304 responses; `None` sends none.
    /// Default: [`DEFAULT_CACHE_CONTROL`].
    pub cache_control: Option<HeaderValue>,
    /// The `Content-Disposition` type sent with passive media (video, audio, raster
    /// images). Default: inline. Every other type is always an `attachment` sent as
    /// `application/octet-stream`, so no stored file can become a page on this origin.
    pub disposition: Disposition,
    /// How an S3 store's files are delivered. Default: redirect.
    pub s3: S3Delivery,
    /// The secret every request must be signed with ([`crate::signing`], at least
    /// [`signing::MIN_SECRET_LEN`] bytes). Default `None`: a local store's own
    /// [`LocalUrls::secret`]; set it to sign the router's URLs for an S3 or memory store.
    /// Redacted in `Debug`.
    pub secret: Option<String>,
    /// Serve an S3 store's objects **to anyone who knows a key**, without a signature.
    /// Default `false`: [`router`] refuses an S3 store that has no [`Self::secret`],
    /// because mounting it would quietly turn a private bucket into a public one.
    pub public_s3_without_signatures: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            cache_control: Some(HeaderValue::from_static(DEFAULT_CACHE_CONTROL)),
            disposition: Disposition::Inline,
            s3: S3Delivery::Redirect,
            secret: None,
            public_s3_without_signatures: false,
        }
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("cache_control", &self.cache_control)
            .field("disposition", &self.disposition)
            .field("s3", &self.s3)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "public_s3_without_signatures",
                &self.public_s3_without_signatures,
            )
            .finish()
    }
}

/// The `Content-Disposition` sent with a file (always with the key's file name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Disposition {
    /// `inline`: browsers and players show the file (video plays in the page).
    #[default]
    Inline,
    /// `attachment`: browsers save the file.
    Attachment,
    /// No `Content-Disposition` header.
    Omit,
}

/// How files of an S3 store reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum S3Delivery {
    /// `302 Found` to a presigned URL (or the public base URL): S3 serves the bytes.
    #[default]
    Redirect,
    /// Stream the object through this server (ranges and validators as for local files).
    Proxy,
}

/// Attached to the extensions of a 500 response: the error behind it, for the server's
/// log. The response body itself says only "internal server error", never a path.
#[derive(Debug, Clone)]
pub struct ServeError(pub Arc<Error>);

/// Attached to the extensions of a `GET` response (200 or 206) whose body is bytes of a
/// local file: the open file its headers were decided from, and the byte range the body
/// holds. A server that owns its sockets may send the body itself from this file — `stowage
/// serve` hands it to `sendfile(2)` instead of copying it through user space — and drop
/// the response's own streaming body, which sends the same bytes; anyone else can ignore
/// it. Never attached to `HEAD`, 304, 412 or 416 responses, nor to proxied objects.
#[derive(Debug, Clone)]
pub struct FileBody {
    file: Arc<File>,
    range: Range<u64>,
    first: Bytes,
}

impl FileBody {
    /// The open file: the same inode the response's validators and length describe, even
    /// if the key has been replaced since.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// The bytes of [`Self::file`] the body holds (`Content-Length` is its length).
    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }

    /// The first bytes of [`Self::range`], when they were already read to decide the
    /// answer (empty otherwise): send these, then the rest of the range from the file.
    pub fn first(&self) -> &Bytes {
        &self.first
    }
}

struct Shared {
    store: BlobStore,
    /// A local store's root, held open for the router's lifetime.
    root: Option<local::HeldRoot>,
    opts: ServeOptions,
    /// The signing secret: when set, every request must be signed.
    secret: Option<Vec<u8>>,
}

/// An axum router serving `GET` and `HEAD` for the keys of `store`, to be nested where
/// the store's download URLs point (`Router::new().nest("/api/files", router(store,
/// opts)?)`, see the [module docs](self)). It accepts any outer state type.
///
/// With a signing secret ([`ServeOptions::secret`], else the local store's
/// [`LocalUrls::secret`]) every request, on every backend, needs a valid `expires`/`sig`
/// query, as produced by [`BlobStore::download_url`] or [`signing::signed_query`];
/// otherwise 403.
///
/// # Errors
///
/// [`Error::Config`] for an S3 store without a secret unless
/// [`ServeOptions::public_s3_without_signatures`] is set, and for a secret shorter than
/// [`signing::MIN_SECRET_LEN`] bytes.
pub fn router<S>(store: BlobStore, opts: ServeOptions) -> crate::Result<Router<S>>
where
    S: Clone + Send + Sync + 'static,
{
    let secret = opts.secret.clone().or_else(|| {
        store
            .local_urls()
            .and_then(|u: &LocalUrls| u.secret.clone())
    });
    if let Some(s) = &secret {
        if s.len() < signing::MIN_SECRET_LEN {
            return Err(Error::config(
                "ServeOptions::secret",
                format!(
                    "is {} bytes; use at least {} random bytes",
                    s.len(),
                    signing::MIN_SECRET_LEN
                ),
            ));
        }
    }
    if store.kind() == BackendKind::S3 && secret.is_none() && !opts.public_s3_without_signatures {
        return Err(Error::config(
            "ServeOptions::secret",
            format!(
                "is not set for {}: without it anyone who knows a key could fetch it. Set a \
                 signing secret, or set public_s3_without_signatures if the bucket's \
                 contents are meant to be public",
                store.describe()
            ),
        ));
    }
    let shared = Arc::new(Shared {
        root: store.local_root().map(local::HeldRoot::new),
        store,
        opts,
        secret: secret.map(String::into_bytes),
    });
    Ok(Router::new()
        .route("/", any(serve))
        .route("/{*key}", any(serve))
        .fallback(serve)
        .with_state(shared))
}

async fn serve(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let mut resp = answer(&sh, req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn answer(sh: &Shared, req: Request) -> Response {
    let method = req.method();
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let head = method == Method::HEAD;
    let Some(key) = key_from_path(req.uri().path()) else {
        return not_found();
    };
    let mut signed_until = None;
    if let Some(secret) = &sh.secret {
        let now = SystemTime::now();
        // Only the expiry the signature covers may decide caching: the query can spell
        // the parameter in ways a second parse would not see (`%65xpires`).
        match signing::verify(secret, &key, req.uri().query(), now) {
            Ok(expires) => {
                signed_until = Some(expires.saturating_sub(unix_secs(now).max(0) as u64))
            }
            Err(e) => return forbidden(e),
        }
    }
    let headers = req.headers();
    // By capability: a store with a local root is served from its files' handles, an S3
    // store may redirect to a presigned URL, anything else (memory, a read-through store,
    // a store the caller built) is proxied through its `ObjectStore`.
    let mut resp = if let Some(root) = &sh.root {
        serve_local(sh, root, key, headers, head).await
    } else if sh.store.kind() == BackendKind::S3 && sh.opts.s3 == S3Delivery::Redirect {
        redirect(sh, &key).await
    } else {
        serve_proxied(sh, key, headers, head).await
    };
    // A signed URL must not outlive its expiry in a shared cache: keep the response
    // private and cacheable only until the signature expires.
    if let (Some(left), Some(configured)) = (signed_until, &sh.opts.cache_control) {
        if resp.headers().get(header::CACHE_CONTROL) == Some(configured) {
            let v = HeaderValue::try_from(format!("private, max-age={left}")).expect("ASCII");
            resp.headers_mut().insert(header::CACHE_CONTROL, v);
        }
    }
    resp
}

/// The key a request path names, or `None` (a 404) when it is not a valid [`Key`].
///
/// Each `/`-separated segment is percent-decoded on its own: a `%2F` inside a segment
/// would otherwise silently change which key is meant, so a decoded `/` rejects the path.
fn key_from_path(path: &str) -> Option<Key> {
    let rest = path.strip_prefix('/')?;
    let mut segments = Vec::new();
    for raw in rest.split('/') {
        let seg = percent_decode_str(raw).decode_utf8().ok()?;
        if seg.contains('/') {
            return None;
        }
        segments.push(seg);
    }
    Key::new(segments.join("/")).ok()
}

async fn serve_local(
    sh: &Shared,
    root: &local::HeldRoot,
    key: Key,
    headers: &HeaderMap,
    head: bool,
) -> Response {
    // A file whose path, inode and first chunk are in the kernel's caches is answered on
    // this thread. Otherwise opening, the metadata, the conditional and range decision and
    // the first chunk of the body are one trip to the blocking pool (which also opens the
    // root when none is held).
    let held = root.held();
    let cached = held
        .as_ref()
        .map(|dir| open_and_decide(dir.as_fd(), &key, headers, head, true));
    let opened = match cached {
        Some(Ok(Some(o))) => Ok(o),
        _ => {
            let (k, headers) = (key.clone(), headers.clone());
            let root = match held {
                Some(dir) => Ok(dir),
                None => Err(root.path().to_path_buf()),
            };
            crate::blocking::try_run(move || {
                let dir = match root {
                    Ok(dir) => dir,
                    Err(path) => local::HeldRoot::open_path(&path)?,
                };
                open_and_decide(dir.as_fd(), &k, &headers, head, false)
                    .map(|o| o.expect("the blocking path always opens"))
            })
            .await
        }
    };
    let Opened {
        file,
        meta,
        outcome,
        first,
    } = match opened {
        Ok(x) => x,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return not_found(),
        Err(e) => {
            return internal(Error::Io {
                op: "open",
                path: key.to_path(root.path()),
                source: e,
            });
        }
    };
    let mut file_body = None;
    let body = match &outcome {
        Outcome::Full(r) | Outcome::Partial(r) if !head && !r.is_empty() => {
            let rest = r.start + first.len() as u64..r.end;
            let file = Arc::new(file);
            file_body = Some(FileBody {
                file: Arc::clone(&file),
                range: r.clone(),
                first: first.clone(),
            });
            if rest.is_empty() {
                Body::from(first)
            } else if first.is_empty() {
                Body::from_stream(file_chunks(file, rest, CHUNK))
            } else {
                let first = futures::stream::once(async move { Ok(first) });
                Body::from_stream(first.chain(file_chunks(file, rest, CHUNK)))
            }
        }
        _ => Body::empty(),
    };
    let mut resp = respond(sh, &meta, outcome, body);
    if let Some(f) = file_body {
        resp.extensions_mut().insert(f);
    }
    resp
}

/// Opens `key` and decides the answer from its metadata and `headers`. With `cached_only`
/// nothing waits for the disk (the path and inode are resolved from the kernel's caches):
/// `Ok(None)` when they were not cached, and the caller asks again on the blocking pool,
/// which also reads the first [`CHUNK`] of the body so that a cold file costs one trip
/// there. Otherwise the body is read only when it is sent ([`file_chunks`] waits for the
/// disk on the blocking pool, not here), or never, when the server sends it itself
/// ([`FileBody`]).
fn open_and_decide(
    root: BorrowedFd<'_>,
    key: &Key,
    headers: &HeaderMap,
    head: bool,
    cached_only: bool,
) -> io::Result<Option<Opened>> {
    // The `fstat` that checked the file is a regular one is its metadata too.
    let (file, st) = if cached_only {
        match local::open_beneath_cached_at(root, key) {
            Some(f) => f,
            None => return Ok(None),
        }
    } else {
        local::open_beneath_stat_at(root, key)?
    };
    let content_type = local::read_content_type(&file);
    let meta = crate::store::local_served_meta(key.clone(), &st, content_type);
    let outcome = evaluate(&meta, headers);
    let first = match &outcome {
        Outcome::Full(r) | Outcome::Partial(r) if !head && r.end > r.start => {
            if cached_only {
                Bytes::new()
            } else {
                let n = (r.end - r.start).min(CHUNK as u64) as usize;
                read_exactly_at(&file, n, r.start)?
            }
        }
        _ => Bytes::new(),
    };
    Ok(Some(Opened {
        file,
        meta,
        outcome,
        first,
    }))
}

/// What the blocking half of [`serve_local`] hands back.
struct Opened {
    file: File,
    meta: Meta,
    outcome: Outcome,
    /// The first [`CHUNK`] of the body when read on the blocking pool (empty for a cached
    /// file, HEAD and bodiless answers).
    first: Bytes,
}

/// Serves an object-store object through this server. The range is chosen from a `HEAD`;
/// the body is fetched only if it is still the same object (same ETag), else the decision
/// is made again, so a replaced object is never served as a mix of two.
async fn serve_proxied(sh: &Shared, key: Key, headers: &HeaderMap, head: bool) -> Response {
    for _ in 0..PROXY_ATTEMPTS {
        let meta = match sh.store.head(&key).await {
            Ok(m) => m,
            Err(Error::NotFound { .. } | Error::InvalidKey { .. }) => return not_found(),
            Err(e) => return internal(e),
        };
        let outcome = evaluate(&meta, headers);
        let range = match &outcome {
            Outcome::Full(r) | Outcome::Partial(r) if !head && r.end > r.start => r.clone(),
            _ => return respond(sh, &meta, outcome, Body::empty()),
        };
        let got = match sh.store.get_stream_range(&key, Some(range.clone())).await {
            Ok(g) => g,
            Err(Error::NotFound { .. }) => continue,
            Err(e) => return internal(e),
        };
        if got.meta.etag != meta.etag || got.meta.size != meta.size || got.range != range {
            continue;
        }
        return respond(sh, &meta, outcome, Body::from_stream(got.body));
    }
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        "the object kept changing; try again\n",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn redirect(sh: &Shared, key: &Key) -> Response {
    let url = match sh.store.download_url(key).await {
        Ok(u) => u,
        Err(e) => return internal(e),
    };
    let Ok(location) = HeaderValue::try_from(url) else {
        return internal(Error::Backend {
            store: sh.store.describe(),
            source: "presigned URL is not a valid header value".into(),
        });
    };
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::FOUND;
    let h = r.headers_mut();
    h.insert(header::LOCATION, location);
    // The presigned URL expires: a cached redirect would outlive it.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Builds the response for `outcome`: status, validators, type, disposition, ranges.
fn respond(sh: &Shared, meta: &Meta, outcome: Outcome, body: Body) -> Response {
    // Room for every header set here and the two `serve` adds: no regrowth per request.
    let mut h = HeaderMap::with_capacity(12);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(etag) = meta.etag.as_deref().map(normalize_etag) {
        if let Ok(v) = HeaderValue::try_from(etag) {
            h.insert(header::ETAG, v);
        }
    }
    let modified =
        SystemTime::UNIX_EPOCH + Duration::from_secs(meta.last_modified.timestamp().max(0) as u64);
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::try_from(httpdate::fmt_http_date(modified)).expect("HTTP dates are ASCII"),
    );
    if let Some(cc) = &sh.opts.cache_control {
        h.insert(header::CACHE_CONTROL, cc.clone());
    }
    let status = match outcome {
        Outcome::NotModified => StatusCode::NOT_MODIFIED,
        Outcome::PreconditionFailed => {
            h.remove(header::CACHE_CONTROL);
            StatusCode::PRECONDITION_FAILED
        }
        Outcome::Unsatisfiable => {
            h.remove(header::CACHE_CONTROL);
            h.insert(header::CONTENT_RANGE, content_range_value(None, meta.size));
            StatusCode::RANGE_NOT_SATISFIABLE
        }
        Outcome::Full(ref r) | Outcome::Partial(ref r) => {
            let (ct, disposition) = match content_type(meta) {
                ct if is_passive_media(&ct) => (ct, sh.opts.disposition),
                _ => (
                    HeaderValue::from_static("application/octet-stream"),
                    Disposition::Attachment,
                ),
            };
            h.insert(header::CONTENT_TYPE, ct);
            if let Some(d) = content_disposition(disposition, meta.key.file_name()) {
                h.insert(header::CONTENT_DISPOSITION, d);
            }
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(r.end - r.start));
            if let Outcome::Partial(_) = outcome {
                h.insert(
                    header::CONTENT_RANGE,
                    content_range_value(Some(r.clone()), meta.size),
                );
                StatusCode::PARTIAL_CONTENT
            } else {
                StatusCode::OK
            }
        }
    };
    // A 304 has no body; an empty body of unknown length keeps hyper from adding a
    // `Content-Length: 0` to HEAD's 304 that GET's 304 would not have.
    let body = if status == StatusCode::NOT_MODIFIED {
        Body::from_stream(futures::stream::empty::<io::Result<Bytes>>())
    } else {
        body
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = h;
    r
}

fn content_range_value(range: Option<Range<u64>>, len: u64) -> HeaderValue {
    let v = match range {
        Some(r) => format!("bytes {}-{}/{len}", r.start, r.end - 1),
        None => format!("bytes */{len}"),
    };
    HeaderValue::try_from(v).expect("digits are a valid header value")
}

/// The stored Content-Type when it is a usable header value, else one guessed from the
/// extension, else `application/octet-stream`.
fn content_type(meta: &Meta) -> HeaderValue {
    meta.content_type
        .as_deref()
        .filter(|ct| ct.parse::<mime_guess::mime::Mime>().is_ok())
        .and_then(|ct| HeaderValue::from_str(ct).ok())
        .or_else(|| {
            mime_guess::from_path(meta.key.file_name())
                .first()
                .and_then(|m| HeaderValue::from_str(m.essence_str()).ok())
        })
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"))
}

/// Whether a browser shows `content_type` only as media, never running anything in it:
/// video, audio and raster images. SVG is an image that runs scripts, so it is not here,
/// and neither is anything else (HTML, XML, PDF, text...).
fn is_passive_media(content_type: &HeaderValue) -> bool {
    let Ok(ct) = content_type.to_str() else {
        return false;
    };
    let Ok(m) = ct.parse::<mime_guess::mime::Mime>() else {
        return false;
    };
    match m.type_().as_str() {
        "video" | "audio" => true,
        "image" => {
            matches!(
                m.subtype().as_str(),
                "png" | "jpeg" | "gif" | "webp" | "avif" | "bmp"
            ) && m.suffix().is_none()
        }
        _ => false,
    }
}

/// RFC 8187 `attr-char`: what `filename*` may carry unencoded.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `inline; filename="<ascii>"[; filename*=UTF-8''<pct>]` (RFC 6266, RFC 8187).
///
/// The quoted `filename` keeps printable ASCII except `"`, `\`, `;`, `%` and `,`, which
/// some clients mis-parse, and replaces everything else (control characters, non-ASCII)
/// with `_`; when that changed the name, `filename*` carries it exactly, percent-encoded.
/// Nothing of the key can end the header or start another, and bidi or other format
/// characters are written out ([`crate::key::display_safe`]) so the name shown is the
/// name stored (no `clip\u{202E}4pm.exe` posing as `clipexe.mp4`).
fn content_disposition(kind: Disposition, name: &str) -> Option<HeaderValue> {
    let kind = match kind {
        Disposition::Inline => "inline",
        Disposition::Attachment => "attachment",
        Disposition::Omit => return None,
    };
    let name = &*crate::key::display_safe(name);
    let fallback: String = name
        .chars()
        .map(|c| match c {
            '"' | '\\' | ';' | '%' | ',' => '_',
            ' ' => ' ',
            c if c.is_ascii_graphic() => c,
            _ => '_',
        })
        .collect();
    let mut v = format!("{kind}; filename=\"{fallback}\"");
    if fallback != name {
        v.push_str("; filename*=UTF-8''");
        v.extend(utf8_percent_encode(name, ATTR_CHAR));
    }
    Some(HeaderValue::try_from(v).expect("only visible ASCII and spaces"))
}

fn text(status: StatusCode, body: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

fn forbidden(e: SignatureError) -> Response {
    let body = match e {
        SignatureError::Missing => "forbidden: this URL must be signed\n",
        SignatureError::Expired => "forbidden: this URL has expired\n",
        _ => "forbidden: invalid signature\n",
    };
    let mut r = text(StatusCode::FORBIDDEN, body);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn internal(e: Error) -> Response {
    let mut r = text(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n");
    r.extensions_mut().insert(ServeError(Arc::new(e)));
    r
}

/// The pure RFC 9110 logic of the router, for the fuzz targets in `fuzz/`: not a stable
/// API.
#[doc(hidden)]
pub mod fuzzing {
    use std::ops::Range;

    use chrono::DateTime;
    use http::{HeaderMap, StatusCode};

    use super::range::{self, Outcome, RangeSpec};
    use crate::key::Key;
    use crate::store::Meta;

    /// The router's `parse_range`: `None` to ignore the header (200), `Some(None)` for 416,
    /// `Some(Some(range))` for 206.
    pub fn parse_range(value: &str, len: u64) -> Option<Option<Range<u64>>> {
        match range::parse_range(value, len) {
            RangeSpec::Ignore => None,
            RangeSpec::Unsatisfiable => Some(None),
            RangeSpec::Bytes(r) => Some(Some(r)),
        }
    }

    /// The router's `evaluate` for an object of `size` bytes with `etag`, last modified at
    /// `modified` (Unix seconds): the status and, for 200 and 206, the byte range sent.
    pub fn evaluate(
        size: u64,
        etag: Option<&str>,
        modified: i64,
        headers: &HeaderMap,
    ) -> (StatusCode, Option<Range<u64>>) {
        let meta = Meta {
            key: Key::new("k").expect("a valid key"),
            size,
            last_modified: DateTime::from_timestamp(modified, 0).unwrap_or_default(),
            etag: etag.map(str::to_owned),
            content_type: None,
        };
        match super::evaluate(&meta, headers) {
            Outcome::Full(r) => (StatusCode::OK, Some(r)),
            Outcome::Partial(r) => (StatusCode::PARTIAL_CONTENT, Some(r)),
            Outcome::NotModified => (StatusCode::NOT_MODIFIED, None),
            Outcome::PreconditionFailed => (StatusCode::PRECONDITION_FAILED, None),
            Outcome::Unsatisfiable => (StatusCode::RANGE_NOT_SATISFIABLE, None),
        }
    }

    /// The router's `key_from_path`: the key a request path names.
    pub fn key_from_path(path: &str) -> Option<Key> {
        super::key_from_path(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_are_not_keys_are_refused() {
        for p in [
            "/",
            "",
            "//etc/passwd",
            "/../x",
            "/a/../b",
            "/%2e%2e/x",
            "/%2E%2E/x",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a%00b",
            "/a//b",
            "/a/",
            "/%0d%0aSet-Cookie:x",
            "/%ff",
            "/.stowage.lock",
        ] {
            assert_eq!(key_from_path(p), None, "{p:?}");
        }
    }

    #[test]
    fn paths_decode_to_the_key_download_url_encoded() {
        for k in [
            "clips/1.mp4",
            "sp ace/ünï \"q\";.mp4",
            "50%.txt",
            "take#2",
            "a+b",
        ] {
            let key = Key::new(k).unwrap();
            let path = format!("/{}", crate::store::encode_key_path(&key));
            assert_eq!(key_from_path(&path), Some(key), "{path}");
        }
    }

    #[test]
    fn only_passive_media_is_inline() {
        let passive = |ct: &'static str| is_passive_media(&HeaderValue::from_static(ct));
        for ct in [
            "video/mp4",
            "video/webm; codecs=\"vp9\"",
            "audio/mpeg",
            "image/png",
            "IMAGE/JPEG",
            "image/gif",
            "image/webp",
            "image/avif",
            "image/bmp",
        ] {
            assert!(passive(ct), "{ct}");
        }
        for ct in [
            "text/html",
            "image/svg+xml",
            "image/svg",
            "application/xhtml+xml",
            "text/xml",
            "application/pdf",
            "text/plain",
            "application/octet-stream",
            "multipart/x-mixed-replace",
            "image/x-icon",
            "not a type",
        ] {
            assert!(!passive(ct), "{ct}");
        }
    }

    #[test]
    fn dispositions_cannot_inject_headers() {
        let d = |n| {
            content_disposition(Disposition::Inline, n)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(d("clip.mp4"), "inline; filename=\"clip.mp4\"");
        assert_eq!(
            d("a\"b;c.mp4"),
            "inline; filename=\"a_b_c.mp4\"; filename*=UTF-8''a%22b%3Bc.mp4"
        );
        assert_eq!(
            d("ünï.mp4"),
            "inline; filename=\"_n_.mp4\"; filename*=UTF-8''%C3%BCn%C3%AF.mp4"
        );
        assert_eq!(
            d("x\r\nSet-Cookie: a=b"),
            "inline; filename=\"x[U+000D][U+000A]Set-Cookie: a=b\""
        );
        assert_eq!(
            d("clip\u{202E}4pm.exe"),
            "inline; filename=\"clip[U+202E]4pm.exe\""
        );
        assert_eq!(
            content_disposition(Disposition::Attachment, "a b").unwrap(),
            "attachment; filename=\"a b\""
        );
        assert!(content_disposition(Disposition::Omit, "a").is_none());
    }
}
