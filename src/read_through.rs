//! [`ReadThrough`]: one [`ObjectStore`] over two, for moving a live service from one store
//! to another without downtime.
//!
//! Between a bulk `migrate` and the day the old store is switched off, a service reads
//! through the new store (the *primary*) to the old one (the *fallback*): whatever the bulk
//! copy missed is served from the fallback and copied into the primary as it is read (the
//! pattern of Cloudflare Sippy, Tigris shadow buckets and rclone's union `:writeback`).
//! Nothing here knows which side is local: local over S3 moves a service onto a disk, S3
//! over local moves it back.
//!
//! The rules, chosen so that nothing is lost, resurrected or silently wrong:
//!
//! - **Only a not-found falls back.** Any other primary error (permission denied, a full
//!   disk, a 503) is returned as it is.
//! - **Copy on read is verified and never replaces anything.** A fallback hit is fetched
//!   once (single flight: concurrent readers of the same key share one fallback GET) and
//!   checked against its size and MD5 or multipart ETag ([`crate::etag`]) before it is
//!   written with `PutMode::Create`, so a newer primary write always wins. A body that fails
//!   the check is not written, and every reader's stream ends in an error.
//! - **Deletes go to both stores, fallback first**, and cancel an in-flight copy of the key
//!   (waiting for one that is already committing), so a deleted object never comes back.
//!   A copy asks the fallback again once it is committed and removes itself if the object
//!   is gone there: another process's delete cannot cancel this one's flight.
//! - **Writes go to the primary; with dual write also to the fallback**, primary first. If
//!   the fallback write fails the primary keeps the object, the call returns the error and
//!   `dual_write_failures` counts it: the caller can retry (an overwrite) and a rollback
//!   to the fallback loses only what was reported as failed.
//! - **Listings are the union**, in key order, each key once (the primary's entry wins).
//!
//! Invariant: a copy into the primary is made only from a body whose size (and MD5 or
//! multipart ETag, when it is one) was checked, only with `PutMode::Create`, and never
//! after a delete of the same key through this store has begun.

use std::collections::HashMap;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use futures::FutureExt;
use object_store::path::Path;
use object_store::{
    Attributes, CopyMode, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, RenameTargetMode, UploadPart,
};
use tokio::sync::watch;

use crate::etag::{ContentHasher, Verdict};

mod config;
#[cfg(feature = "http")]
mod routes;
pub use config::{object_store_of, ReadThroughConfig};
#[cfg(feature = "http")]
pub use routes::health_and_metrics;

type OsResult<T> = object_store::Result<T>;

/// The name errors carry in their `store` field.
const STORE: &str = "ReadThrough";

/// How a [`ReadThrough`] behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReadThroughOptions {
    /// Copy an object read from the fallback into the primary. On by default.
    pub copy_on_read: bool,
    /// Also write every put, copy and rename to the fallback, so that going back to it
    /// loses nothing. Off by default.
    pub dual_write: bool,
    /// Objects larger than this are served from the fallback but not copied on read (a
    /// copy is held in memory until it is checked; a catch-up `migrate` copies them).
    pub max_copy_size: u64,
    /// How long `/healthz` (`health_and_metrics`, feature `http`) waits for the
    /// fallback's answer, and for the local root, before answering 503: a load
    /// balancer's probe must never hang.
    pub health_timeout: std::time::Duration,
}

/// The default [`ReadThroughOptions::health_timeout`]: shorter than the usual load
/// balancer probe timeout (5 s on AWS ALB, nginx's and HAProxy's checks alike).
pub const DEFAULT_HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl Default for ReadThroughOptions {
    fn default() -> ReadThroughOptions {
        ReadThroughOptions {
            copy_on_read: true,
            dual_write: false,
            max_copy_size: 256 << 20,
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
        }
    }
}

impl ReadThroughOptions {
    /// Turns copy on read on or off.
    pub fn with_copy_on_read(mut self, on: bool) -> ReadThroughOptions {
        self.copy_on_read = on;
        self
    }

    /// Turns dual write on or off.
    pub fn with_dual_write(mut self, on: bool) -> ReadThroughOptions {
        self.dual_write = on;
        self
    }

    /// Sets the largest object copied on read.
    pub fn with_max_copy_size(mut self, bytes: u64) -> ReadThroughOptions {
        self.max_copy_size = bytes;
        self
    }

    /// Sets how long `/healthz` waits for the fallback and the local root.
    pub fn with_health_timeout(mut self, timeout: std::time::Duration) -> ReadThroughOptions {
        self.health_timeout = timeout;
        self
    }
}

/// What a [`ReadThrough`] has done since it was built ([`ReadThrough::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ReadThroughStats {
    /// Reads (GETs, ranged or not) the primary did not have and the fallback answered.
    pub fallback_hits: u64,
    /// HEADs the primary did not have and the fallback answered.
    pub fallback_heads: u64,
    /// Objects copied from the fallback into the primary, checked.
    pub copies: u64,
    /// Copies not made for a reason that is no failure: the primary got the key first, it
    /// was deleted meanwhile, or it is larger than `max_copy_size`.
    pub copies_skipped: u64,
    /// Copies that failed: a body that did not match its size or ETag, a broken fallback
    /// stream, or a primary write error.
    pub copy_failures: u64,
    /// Copies removed again right after they were made, because the fallback no longer
    /// had the object: another process deleted it while this one copied it.
    pub copies_removed: u64,
    /// Writes, copies or renames that reached the primary but not the fallback.
    pub dual_write_failures: u64,
}

impl ReadThroughStats {
    /// The counters in the Prometheus text exposition format (version 0.0.4), each a
    /// `counter` named `stowage_read_through_<field>_total`.
    pub fn prometheus(&self) -> String {
        let rows: [(&str, u64, &str); 7] = [
            (
                "fallback_hits",
                self.fallback_hits,
                "Reads the primary store did not have and the fallback answered.",
            ),
            (
                "fallback_heads",
                self.fallback_heads,
                "HEAD requests the primary store did not have and the fallback answered.",
            ),
            (
                "copies",
                self.copies,
                "Objects copied from the fallback into the primary after a size and ETag check.",
            ),
            (
                "copies_skipped",
                self.copies_skipped,
                "Copies on read not made: the primary got the key first, it was deleted, or it was too large.",
            ),
            (
                "copy_failures",
                self.copy_failures,
                "Copies on read that failed (body check, fallback stream or primary write).",
            ),
            (
                "copies_removed",
                self.copies_removed,
                "Copies on read removed again because another process deleted the object meanwhile.",
            ),
            (
                "dual_write_failures",
                self.dual_write_failures,
                "Writes that reached the primary store but not the fallback.",
            ),
        ];
        let mut out = String::new();
        for (name, value, help) in rows {
            let metric = format!("stowage_read_through_{name}_total");
            out.push_str(&format!(
                "# HELP {metric} {help}\n# TYPE {metric} counter\n{metric} {value}\n"
            ));
        }
        out
    }
}

#[derive(Debug, Default)]
struct Counters {
    fallback_hits: AtomicU64,
    fallback_heads: AtomicU64,
    copies: AtomicU64,
    copies_skipped: AtomicU64,
    copy_failures: AtomicU64,
    copies_removed: AtomicU64,
    dual_write_failures: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A primary store read through to a fallback (see the [module docs](self)). Cheap to
/// clone; clones share the stores, the counters and the copies in flight.
///
/// ```
/// use std::sync::Arc;
/// use object_store::{memory::InMemory, path::Path, ObjectStore, ObjectStoreExt};
/// use stowage::read_through::{ReadThrough, ReadThroughOptions};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (new, old) = (Arc::new(InMemory::new()), Arc::new(InMemory::new()));
/// old.put(&Path::from("clip.mp4"), "frames".into()).await?;
///
/// let store = ReadThrough::new(new.clone(), old, ReadThroughOptions::default());
/// assert_eq!(store.get(&Path::from("clip.mp4")).await?.bytes().await?, "frames");
/// store.wait_for_copies().await;
/// assert_eq!(new.get(&Path::from("clip.mp4")).await?.bytes().await?, "frames");
/// assert_eq!(store.stats().fallback_hits, 1);
/// assert_eq!(store.stats().copies, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ReadThrough {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    primary: Arc<dyn ObjectStore>,
    fallback: Arc<dyn ObjectStore>,
    opts: ReadThroughOptions,
    counters: Counters,
    flights: Mutex<HashMap<Path, Arc<Flight>>>,
}

impl std::fmt::Display for ReadThrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{STORE}({} then {})",
            self.shared.primary, self.shared.fallback
        )
    }
}

impl ReadThrough {
    /// Reads `primary` first and `fallback` on a not-found.
    pub fn new(
        primary: Arc<dyn ObjectStore>,
        fallback: Arc<dyn ObjectStore>,
        opts: ReadThroughOptions,
    ) -> ReadThrough {
        ReadThrough {
            shared: Arc::new(Shared {
                primary,
                fallback,
                opts,
                counters: Counters::default(),
                flights: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The options it was built with.
    pub fn options(&self) -> &ReadThroughOptions {
        &self.shared.opts
    }

    /// The primary store.
    pub fn primary(&self) -> &Arc<dyn ObjectStore> {
        &self.shared.primary
    }

    /// The fallback store.
    pub fn fallback(&self) -> &Arc<dyn ObjectStore> {
        &self.shared.fallback
    }

    /// The counters so far.
    pub fn stats(&self) -> ReadThroughStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReadThroughStats {
            fallback_hits: get(&c.fallback_hits),
            fallback_heads: get(&c.fallback_heads),
            copies: get(&c.copies),
            copies_skipped: get(&c.copies_skipped),
            copy_failures: get(&c.copy_failures),
            copies_removed: get(&c.copies_removed),
            dual_write_failures: get(&c.dual_write_failures),
        }
    }

    /// Waits until no copy on read is in flight (copies run in the background, so a test
    /// or a clean shutdown waits here for them).
    pub async fn wait_for_copies(&self) {
        loop {
            let flight = self.shared.lock_flights().values().next().cloned();
            match flight {
                Some(f) => f.wait_done().await,
                None => return,
            }
        }
    }

    /// The flight fetching `location` from the fallback: the one under way, or a new one.
    fn flight(&self, location: &Path) -> Arc<Flight> {
        let mut flights = self.shared.lock_flights();
        if let Some(f) = flights.get(location) {
            return Arc::clone(f);
        }
        let flight = Arc::new(Flight::new());
        flights.insert(location.clone(), Arc::clone(&flight));
        drop(flights);
        let (shared, loc, f) = (
            Arc::clone(&self.shared),
            location.clone(),
            Arc::clone(&flight),
        );
        tokio::spawn(async move { shared.run_flight(loc, f).await });
        flight
    }

    /// A GET the primary did not have: single flight for a plain whole-object read; the
    /// fallback directly for ranges, conditions and versions (a background flight still
    /// copies the whole object).
    async fn get_from_fallback(&self, location: &Path, options: GetOptions) -> OsResult<GetResult> {
        let plain = options.range.is_none()
            && options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none();
        if plain {
            let flight = self.flight(location);
            match flight.wait_head().await {
                Ok((meta, attributes)) if meta.size <= self.shared.opts.max_copy_size => {
                    bump(&self.shared.counters.fallback_hits);
                    let range = 0..meta.size;
                    return Ok(GetResult {
                        payload: GetResultPayload::Stream(flight.body(location.clone())),
                        meta,
                        range,
                        attributes,
                        extensions: Default::default(),
                    });
                }
                Ok(_) => {} // too large to share: read it directly below
                Err(e) => return Err(e.to_error(location)),
            }
        }
        let res = self.shared.fallback.get_opts(location, options).await?;
        bump(&self.shared.counters.fallback_hits);
        if self.shared.opts.copy_on_read && res.meta.size <= self.shared.opts.max_copy_size {
            self.flight(location);
        }
        Ok(res)
    }

    async fn delete_one(&self, location: &Path) -> OsResult<()> {
        let s = &self.shared;
        // The fallback first: once it is gone there, no new flight can fetch it.
        ok_if_missing(s.fallback.delete(location).await)?;
        let flight = s.lock_flights().get(location).cloned();
        if let Some(f) = flight {
            f.cancelled.store(true, Ordering::SeqCst);
            // A flight past its cancellation check holds this until its write is done,
            // so the primary delete below comes after it.
            drop(f.commit.lock().await);
        }
        ok_if_missing(s.primary.delete(location).await)
    }

    /// Runs a fallback write for dual write; its failure is counted and returned.
    async fn mirror(
        &self,
        what: &str,
        write: impl std::future::Future<Output = OsResult<()>>,
    ) -> OsResult<()> {
        write.await.map_err(|e| {
            bump(&self.shared.counters.dual_write_failures);
            dual_write_error(what, e)
        })
    }
}

fn dual_write_error(what: &str, e: object_store::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: format!("{what} reached the primary store but not the fallback: {e}").into(),
    }
}

fn ok_if_missing(r: OsResult<()>) -> OsResult<()> {
    match r {
        Err(object_store::Error::NotFound { .. }) => Ok(()),
        r => r,
    }
}

impl Shared {
    fn lock_flights(&self) -> std::sync::MutexGuard<'_, HashMap<Path, Arc<Flight>>> {
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run_flight(self: Arc<Shared>, location: Path, flight: Arc<Flight>) {
        let outcome = self.fetch(&location, &flight).await;
        if let Some(payload) = outcome {
            self.commit(&location, &flight, payload).await;
        }
        let mut flights = self.lock_flights();
        if flights
            .get(&location)
            .is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            flights.remove(&location);
        }
        drop(flights);
        flight.update(|st| st.done = true);
    }

    /// Fetches the whole object from the fallback into the flight, checking it as it
    /// streams. `Some` with the body when it passed and is to be copied.
    async fn fetch(&self, location: &Path, flight: &Flight) -> Option<PutPayload> {
        let res = match self
            .fallback
            .get_opts(location, GetOptions::default())
            .await
        {
            Ok(res) => res,
            Err(e) => {
                flight.update(|st| st.body_end = Some(Err(FlightError::from(&e))));
                return None;
            }
        };
        let (meta, attributes) = (res.meta.clone(), res.attributes.clone());
        flight.update(|st| st.head = Some((meta.clone(), attributes)));
        if meta.size > self.opts.max_copy_size {
            bump(&self.counters.copies_skipped);
            flight.update(|st| st.body_end = Some(Err(FlightError::TooLarge)));
            return None;
        }
        let mut hasher = ContentHasher::new(meta.e_tag.as_deref(), meta.size);
        let mut body = res.into_stream();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    hasher.update(&chunk);
                    flight.update(|st| st.chunks.push(chunk));
                }
                Err(e) => {
                    bump(&self.counters.copy_failures);
                    flight.update(|st| st.body_end = Some(Err(FlightError::from(&e))));
                    return None;
                }
            }
        }
        if let Some(Verdict::Mismatch { expected, actual }) = hasher.finish() {
            bump(&self.counters.copy_failures);
            let why = format!(
                "the fallback's body for {location} does not match its size or ETag (expected {expected}, got {actual})"
            );
            flight.update(|st| st.body_end = Some(Err(FlightError::Failed(why))));
            return None;
        }
        // Size checked, and the MD5 or multipart ETag when it is one (an opaque ETag, as
        // for SSE-KMS objects, cannot be checked: the size is all there is, as in migrate).
        let chunks = flight.update(|st| {
            st.body_end = Some(Ok(()));
            st.chunks.clone()
        });
        self.opts
            .copy_on_read
            .then(|| PutPayload::from_iter(chunks))
    }

    async fn commit(&self, location: &Path, flight: &Flight, payload: PutPayload) {
        let _committing = flight.commit.lock().await;
        if flight.cancelled.load(Ordering::SeqCst) {
            bump(&self.counters.copies_skipped);
            return;
        }
        let attributes = flight
            .update(|st| st.head.as_ref().map(|(_, a)| a.clone()))
            .unwrap_or_default();
        let create = |attributes: Attributes| PutOptions {
            mode: PutMode::Create,
            attributes,
            ..Default::default()
        };
        let mut res = self
            .primary
            .put_opts(location, payload.clone(), create(attributes.clone()))
            .await;
        if matches!(res, Err(object_store::Error::NotImplemented { .. })) && !attributes.is_empty()
        {
            // A primary that cannot keep attributes still gets the bytes.
            res = self
                .primary
                .put_opts(location, payload, create(Attributes::new()))
                .await;
        }
        match res {
            Ok(put) => {
                bump(&self.counters.copies);
                self.remove_copy_if_deleted(location, put.e_tag).await;
            }
            Err(object_store::Error::AlreadyExists { .. }) => bump(&self.counters.copies_skipped),
            Err(_) => bump(&self.counters.copy_failures),
        }
    }

    /// After a copy on read is committed: if the fallback no longer has the object,
    /// another process deleted it while this one was copying, and the copy is removed.
    ///
    /// A delete in this process cancels the flight (see `ReadThrough::delete_one`);
    /// another process's delete cannot. Its delete goes fallback, then primary; this copy
    /// goes primary (the commit), then the fallback (the HEAD here). If the HEAD is
    /// answered after the other's fallback delete, it says not-found and the copy goes
    /// here; if before, the commit came before the other's primary delete, which removes
    /// the copy. Either way the object stays deleted (given a fallback that answers a HEAD
    /// after a completed DELETE with not-found, as S3 does).
    ///
    /// The copy is removed only while the primary still holds it (its ETag is the one our
    /// put returned). What remains: a newer write to the primary landing between that
    /// HEAD and the delete would be removed with it; object_store has no conditional
    /// delete to close that window of two requests.
    async fn remove_copy_if_deleted(&self, location: &Path, ours: Option<String>) {
        match self.fallback.head(location).await {
            Err(object_store::Error::NotFound { .. }) => {}
            // Still there, or no answer: the object existed moments ago; the copy stands.
            _ => return,
        }
        let still_ours = match (self.primary.head(location).await, ours) {
            (Ok(meta), Some(ours)) => meta.e_tag.as_deref() == Some(ours.as_str()),
            _ => false,
        };
        if still_ours && ok_if_missing(self.primary.delete(location).await).is_ok() {
            bump(&self.counters.copies_removed);
        }
    }
}

/// One fetch of a key from the fallback, shared by every reader that asks meanwhile.
#[derive(Debug)]
struct Flight {
    state: Mutex<FlightState>,
    progress: watch::Sender<u64>,
    cancelled: AtomicBool,
    commit: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct FlightState {
    head: Option<(ObjectMeta, Attributes)>,
    chunks: Vec<Bytes>,
    /// `Some` once the body is complete and checked, or failed.
    body_end: Option<Result<(), FlightError>>,
    /// The flight has finished (the copy too).
    done: bool,
}

#[derive(Debug, Clone)]
enum FlightError {
    NotFound(String),
    TooLarge,
    Failed(String),
}

impl From<&object_store::Error> for FlightError {
    fn from(e: &object_store::Error) -> FlightError {
        match e {
            object_store::Error::NotFound { .. } => FlightError::NotFound(e.to_string()),
            e => FlightError::Failed(e.to_string()),
        }
    }
}

impl FlightError {
    fn to_error(&self, location: &Path) -> object_store::Error {
        match self {
            FlightError::NotFound(msg) => object_store::Error::NotFound {
                path: location.to_string(),
                source: msg.clone().into(),
            },
            FlightError::TooLarge => object_store::Error::Generic {
                store: STORE,
                source: "too large to share".into(),
            },
            FlightError::Failed(msg) => object_store::Error::Generic {
                store: STORE,
                source: msg.clone().into(),
            },
        }
    }
}

impl Flight {
    fn new() -> Flight {
        Flight {
            state: Mutex::new(FlightState::default()),
            progress: watch::Sender::new(0),
            cancelled: AtomicBool::new(false),
            commit: tokio::sync::Mutex::new(()),
        }
    }

    /// Changes the state and wakes every reader.
    fn update<T>(&self, f: impl FnOnce(&mut FlightState) -> T) -> T {
        let out = f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
        self.progress.send_modify(|n| *n += 1);
        out
    }

    /// Waits until `ready` picks something out of the state.
    async fn wait<T>(&self, mut ready: impl FnMut(&FlightState) -> Option<T>) -> T {
        let mut rx = self.progress.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(t) = ready(&self.state.lock().unwrap_or_else(|p| p.into_inner())) {
                return t;
            }
            // The sender lives in `self`, so this cannot fail while we wait.
            let _ = rx.changed().await;
        }
    }

    async fn wait_head(&self) -> Result<(ObjectMeta, Attributes), FlightError> {
        self.wait(|st| match (&st.head, &st.body_end) {
            (Some(h), _) => Some(Ok(h.clone())),
            (None, Some(Err(e))) => Some(Err(e.clone())),
            _ => None,
        })
        .await
    }

    async fn wait_done(&self) {
        self.wait(|st| st.done.then_some(())).await
    }

    /// The body as it arrives; ends in an error if the fetch or the check failed.
    fn body(self: Arc<Flight>, location: Path) -> BoxStream<'static, OsResult<Bytes>> {
        stream::unfold(Some((self, 0usize)), move |state| {
            let location = location.clone();
            async move {
                let (flight, i) = state?;
                let next = flight
                    .wait(|st| match (st.chunks.get(i), &st.body_end) {
                        (Some(c), _) => Some(Some(Ok(c.clone()))),
                        (None, Some(Ok(()))) => Some(None),
                        (None, Some(Err(e))) => Some(Some(Err(e.to_error(&location)))),
                        (None, None) => None,
                    })
                    .await;
                match next {
                    Some(Ok(c)) => Some((Ok(c), Some((flight, i + 1)))),
                    Some(Err(e)) => Some((Err(e), None)),
                    None => None,
                }
            }
        })
        .boxed()
    }
}

#[async_trait]
impl ObjectStore for ReadThrough {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> OsResult<PutResult> {
        let mirror = PutOptions {
            attributes: opts.attributes.clone(),
            ..Default::default()
        };
        let res = self
            .shared
            .primary
            .put_opts(location, payload.clone(), opts)
            .await?;
        if self.shared.opts.dual_write {
            let fallback = &self.shared.fallback;
            self.mirror(
                "put",
                fallback
                    .put_opts(location, payload, mirror)
                    .map(|r| r.map(drop)),
            )
            .await?;
        }
        Ok(res)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> OsResult<Box<dyn MultipartUpload>> {
        let primary = self
            .shared
            .primary
            .put_multipart_opts(location, opts.clone())
            .await?;
        if !self.shared.opts.dual_write {
            return Ok(primary);
        }
        let fallback = match self
            .shared
            .fallback
            .put_multipart_opts(location, opts)
            .await
        {
            Ok(u) => u,
            Err(e) => {
                let mut primary = primary;
                let _ = primary.abort().await;
                bump(&self.shared.counters.dual_write_failures);
                return Err(dual_write_error("multipart upload", e));
            }
        };
        Ok(Box::new(DualUpload {
            primary,
            fallback,
            store: self.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> OsResult<GetResult> {
        match self
            .shared
            .primary
            .get_opts(location, options.clone())
            .await
        {
            Err(object_store::Error::NotFound { .. }) if options.head => {
                let res = self.shared.fallback.get_opts(location, options).await?;
                bump(&self.shared.counters.fallback_heads);
                Ok(res)
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.get_from_fallback(location, options).await
            }
            r => r,
        }
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> OsResult<Vec<Bytes>> {
        match self.shared.primary.get_ranges(location, ranges).await {
            Err(object_store::Error::NotFound { .. }) => {
                let res = self.shared.fallback.get_ranges(location, ranges).await?;
                bump(&self.shared.counters.fallback_hits);
                if self.shared.opts.copy_on_read {
                    self.flight(location);
                }
                Ok(res)
            }
            r => r,
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, OsResult<Path>>,
    ) -> BoxStream<'static, OsResult<Path>> {
        let this = self.clone();
        locations
            .then(move |location| {
                let this = this.clone();
                async move {
                    let location = location?;
                    this.delete_one(&location).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, OsResult<ObjectMeta>> {
        merge_listings(
            self.shared.primary.list(prefix),
            self.shared.fallback.list(prefix),
        )
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, OsResult<ObjectMeta>> {
        merge_listings(
            self.shared.primary.list_with_offset(prefix, offset),
            self.shared.fallback.list_with_offset(prefix, offset),
        )
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> OsResult<ListResult> {
        let (p, f) = futures::try_join!(
            self.shared.primary.list_with_delimiter(prefix),
            self.shared.fallback.list_with_delimiter(prefix)
        )?;
        let mut objects = p.objects;
        let known: std::collections::HashSet<Path> =
            objects.iter().map(|m| m.location.clone()).collect();
        objects.extend(
            f.objects
                .into_iter()
                .filter(|m| !known.contains(&m.location)),
        );
        objects.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        let mut common_prefixes = p.common_prefixes;
        common_prefixes.extend(f.common_prefixes);
        common_prefixes.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        common_prefixes.dedup();
        Ok(ListResult {
            common_prefixes,
            objects,
            extensions: Default::default(),
        })
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> OsResult<()> {
        self.shared.primary.copy_opts(from, to, options).await?;
        if self.shared.opts.dual_write {
            // The primary decided whether `to` may be replaced; the fallback follows it.
            let fallback = &self.shared.fallback;
            let mirror = CopyOptions {
                mode: CopyMode::Overwrite,
                ..Default::default()
            };
            self.mirror("copy", async {
                ok_if_missing(fallback.copy_opts(from, to, mirror).await)
            })
            .await?;
        }
        Ok(())
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> OsResult<()> {
        self.shared.primary.rename_opts(from, to, options).await?;
        let fallback = &self.shared.fallback;
        if self.shared.opts.dual_write {
            let mirror = RenameOptions {
                target_mode: RenameTargetMode::Overwrite,
                ..Default::default()
            };
            self.mirror("rename", async {
                ok_if_missing(fallback.rename_opts(from, to, mirror).await)
            })
            .await
        } else {
            // `from` is gone: it must not come back from the fallback either.
            ok_if_missing(fallback.delete(from).await)
        }
    }
}

/// Both sides of a dual-write multipart upload. A failed part fails the upload (the
/// caller aborts both, nothing is committed anywhere); the primary completes first, and a
/// fallback that then fails to complete is a dual-write failure.
#[derive(Debug)]
struct DualUpload {
    primary: Box<dyn MultipartUpload>,
    fallback: Box<dyn MultipartUpload>,
    store: ReadThrough,
}

#[async_trait]
impl MultipartUpload for DualUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let p = self.primary.put_part(data.clone());
        let f = self.fallback.put_part(data);
        async move {
            futures::try_join!(p, f)?;
            Ok(())
        }
        .boxed()
    }

    async fn complete(&mut self) -> OsResult<PutResult> {
        let res = self.primary.complete().await;
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                let _ = self.fallback.abort().await;
                return Err(e);
            }
        };
        let fallback = self.fallback.complete().map(|r| r.map(drop));
        self.store.mirror("multipart upload", fallback).await?;
        Ok(res)
    }

    async fn abort(&mut self) -> OsResult<()> {
        let (p, f) = futures::join!(self.primary.abort(), self.fallback.abort());
        p.and(f)
    }
}

/// Merges two listings in key order into one, each key once; on a tie the first
/// (primary) entry wins. An error from either side is passed on in place.
fn merge_listings(
    primary: BoxStream<'static, OsResult<ObjectMeta>>,
    fallback: BoxStream<'static, OsResult<ObjectMeta>>,
) -> BoxStream<'static, OsResult<ObjectMeta>> {
    enum Take {
        Primary,
        Fallback,
        Both,
    }
    stream::unfold(
        (primary.peekable(), fallback.peekable()),
        |(mut p, mut f)| async move {
            let take = match (Pin::new(&mut p).peek().await, Pin::new(&mut f).peek().await) {
                (None, None) => return None,
                (Some(Err(_)), _) | (Some(_), None) => Take::Primary,
                (_, Some(Err(_))) | (None, Some(_)) => Take::Fallback,
                (Some(Ok(a)), Some(Ok(b))) => match a.location.as_ref().cmp(b.location.as_ref()) {
                    std::cmp::Ordering::Less => Take::Primary,
                    std::cmp::Ordering::Greater => Take::Fallback,
                    std::cmp::Ordering::Equal => Take::Both,
                },
            };
            let item = match take {
                Take::Primary => p.next().await,
                Take::Fallback => f.next().await,
                Take::Both => {
                    f.next().await;
                    p.next().await
                }
            }?;
            Some((item, (p, f)))
        },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_well_formed() {
        let stats = ReadThroughStats {
            fallback_hits: 3,
            copies: 2,
            copy_failures: 1,
            ..Default::default()
        };
        let text = stats.prometheus();
        assert!(text.ends_with('\n'));
        let mut names = Vec::new();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 21, "{text}");
        for group in lines.chunks(3) {
            let help = group[0].strip_prefix("# HELP ").expect("HELP first");
            let (name, doc) = help.split_once(' ').expect("HELP name and text");
            assert!(!doc.is_empty() && !doc.contains('\\') && !doc.contains('\n'));
            assert_eq!(group[1], format!("# TYPE {name} counter"));
            let (sample, value) = group[2].split_once(' ').expect("sample and value");
            assert_eq!(sample, name);
            value.parse::<u64>().expect("integer value");
            assert!(name.ends_with("_total"));
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            assert!(!name.starts_with(|c: char| c.is_ascii_digit()));
            names.push(name.to_owned());
        }
        let before = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), before, "metric names are unique");
        assert!(text.contains("\nstowage_read_through_fallback_hits_total 3\n"));
        assert!(text.contains("\nstowage_read_through_copy_failures_total 1\n"));
    }
}
