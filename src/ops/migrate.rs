//! `migrate`: copy a whole bucket to a local directory (and back), verified and resumable.
//!
//! The flow is lock → plan → preflight → copy (a dry run takes no lock):
//! 1. **Plan**: stream the listing (fanned out over top-level prefixes); classify each
//!    object as rejected (unsafe key, or a key under another key's file — see
//!    `ClashGuard`), folder marker, already present (same size and mtime as the object's
//!    LastModified), conflict (a local file newer than the object), or to copy. Only the to-copy records are kept, and only up to
//!    [`PLAN_BUFFER_LIMIT`]; beyond that the copy pass lists again and copies as it
//!    lists, so memory stays flat however big the bucket.
//! 2. **Preflight**: the bytes to copy (rounded up to the block size) and the files to
//!    create must fit in the destination's free space minus `min_free` (and the store
//!    under `max_used`) before the first byte is written.
//! 3. **Copy**: up to `concurrency` objects at once, each streamed into an [`AtomicFile`]
//!    while hashed, checked against its size and its strongest proof (an S3 checksum —
//!    a COMPOSITE one with the part size S3 states —, the ETag unless SSE-KMS/SSE-C
//!    headers make it opaque, the part size S3 states for a multipart ETag no guess
//!    reproduces), given the object's mtime and
//!    Content-Type, fsynced and renamed into place — never over a file the plan did not
//!    see there (the service writes the same store while we run): a free name must still
//!    be free, a file to replace must still be that very file; otherwise the key is a
//!    conflict and the local file stays. A local file newer than the object is never
//!    planned for replacement at all. A broken body resumes with a Range
//!    request pinned to the ETag; a corrupt one is fetched again. Once a file is in place
//!    the source is asked again (HEAD): an object deleted meanwhile (the service deleting
//!    a clip through the read-through store) has the file just committed removed, and is
//!    listed in `vanished` (see `recheck_source` for why the order closes the race). One
//!    `syncfs` makes the run's renames durable before the summary is returned.
//!
//! A failed object is recorded and the run goes on. A full disk, revoked credentials or
//! an interruption stop it: no new copy starts, the ones in flight stop at their next
//! chunk (removing their temp file) or finish committing, and the summary counts exactly
//! what was put in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use object_store::{GetOptions, GetRange, ObjectStoreExt};
use tokio_util::sync::CancellationToken;

use crate::blocking;
use crate::checksum::{Proof, ProofCounts};
use crate::error::{Error, Result};
use crate::etag::{self, ContentHasher, Verdict};
use crate::key::Key;
use crate::local::{self, AtomicFile, Expect, PlaceError, StoreLock};
use crate::report::Reporter;
use crate::s3::list::ListedObject;
use crate::s3::ObjectHeaders;
use crate::size::{human_bytes, SizeSpec};
use crate::store::{Backend, BlobStore};
use crate::walk::{EntryKind, WalkOptions, Walker};

pub use crate::ops::KeyReason;
use crate::ops::Placement;

/// To-copy records kept from the planning pass; a bigger plan is listed again instead.
pub const PLAN_BUFFER_LIMIT: usize = 20_000;
/// Default number of objects copied at once: S3 latency, not bandwidth, bounds small
/// objects, so many requests in flight; each holds at most a 256 KiB write buffer.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// Bytes buffered per object before a write to disk.
const WRITE_BUFFER: usize = 256 << 10;
/// Objects bigger than one write buffer streamed at once. Bandwidth bounds them: on
/// loopback 16 streams move 2 MiB clips as fast as 64, but S3 caps each connection's rate,
/// and behind the WAN profile of `benches/migrate.rs` (16 MB/s per connection) 32 streams
/// copied `clips` 15–25% faster than 16 and as fast as 64. Each stream holds up to a write
/// buffer plus the HTTP client's read buffer: this cap, not `concurrency`, keeps peak RSS
/// flat whatever the object size (32 adds at most 8 MiB of write buffers).
const MAX_STREAMS: usize = 32;
/// Bytes read from a local file per chunk of an upload (the stop check runs per chunk).
const UPLOAD_CHUNK: usize = 256 << 10;
/// Attempts per object for broken or corrupt bodies.
const MAX_ATTEMPTS: u32 = 6;

/// Options of a migration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MigrateOptions {
    /// Only keys starting with this (relative to the store's own prefix).
    pub prefix: String,
    /// Objects copied at once.
    pub concurrency: usize,
    /// Space to leave free on the destination filesystem (s3-to-local).
    pub min_free: SizeSpec,
    /// Largest size the destination store may reach (s3-to-local).
    pub max_used: Option<SizeSpec>,
    /// Plan and report only; write nothing.
    pub dry_run: bool,
    /// s3-to-local: a local file of the object's size is present only if its content is
    /// proven the object's (recorded checksum, or its hash against the ETag), whatever its
    /// mtime; a file that differs is fetched again (rclone's `--checksum`). Reads every
    /// present file, so a rerun costs a pass over the data.
    pub checksum: bool,
    /// Cancelled on Ctrl-C / SIGTERM: the run stops, removes its temp files and reports.
    pub cancel: CancellationToken,
    /// s3-to-local: copy only objects whose LastModified is within this age (a catch-up
    /// into a store that `cleanup --max-age` keeps: older objects would be deleted again).
    /// The others are counted in [`MigrateSummary::too_old`].
    pub max_age: Option<std::time::Duration>,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            prefix: String::new(),
            concurrency: DEFAULT_CONCURRENCY,
            min_free: SizeSpec::Percent(5.0),
            max_used: None,
            dry_run: false,
            checksum: false,
            cancel: CancellationToken::new(),
            max_age: None,
        }
    }
}

/// What a migration did. `--json` prints exactly this.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct MigrateSummary {
    /// `s3-to-local` or `local-to-s3`.
    pub direction: String,
    /// Where objects came from.
    pub source: String,
    /// Where they went.
    pub destination: String,
    /// The local store root (the destination of s3-to-local, the source of local-to-s3):
    /// local keys are relative to it.
    pub root: String,
    /// True when nothing was written.
    pub dry_run: bool,
    /// Objects seen in the source listing.
    pub listed: u64,
    /// Objects copied in this run (verified, or listed in `unverified`).
    pub copied: u64,
    /// Objects already present and identical (not downloaded again).
    pub skipped: u64,
    /// Objects not copied because they are older than `--max-age`.
    pub too_old: u64,
    /// Folder markers turned into directories.
    pub folders: u64,
    /// Bytes copied in this run.
    pub bytes_copied: u64,
    /// Bytes the plan said were to copy.
    pub bytes_planned: u64,
    /// Objects that could not be copied, with the reason.
    pub failed: Vec<KeyReason>,
    /// Keys that cannot be stored safely, with the rule they break.
    pub rejected: Vec<KeyReason>,
    /// Objects not copied because the local file is not what the bucket's version may
    /// replace: written (or removed) locally since planning, or newer than the object.
    /// The local file is left as it is.
    pub conflicts: Vec<KeyReason>,
    /// Objects deleted from the source while this run was copying them (the service
    /// deleted the clip): not copied, or their copy removed again right after it was put
    /// in place, so a deleted clip never comes back. Not a problem: the store matches the
    /// source.
    pub vanished: Vec<KeyReason>,
    /// Objects copied whose content could not be checked against their ETag, and why.
    pub unverified: Vec<KeyReason>,
    /// How the objects copied in this run were proven (`size_only`: listed in
    /// `unverified`).
    pub proofs: ProofCounts,
    /// local-to-s3: how the files counted in `skipped` were found already in the bucket
    /// (`size_only`: no content proof was possible, and the size and the file's mtime equal
    /// to the object's LastModified decided). Empty for s3-to-local, whose skips are by
    /// size and mtime, or by content with `--checksum`.
    #[serde(skip_serializing_if = "ProofCounts::is_empty")]
    pub skipped_proofs: ProofCounts,
    /// Dry run: the keys that would be copied, each with its size.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_copy: Vec<KeyReason>,
    /// True when stopped by Ctrl-C / SIGTERM.
    pub interrupted: bool,
    /// Set when a fatal condition (disk full, access revoked) stopped the run early.
    pub aborted: Option<String>,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
}

impl MigrateSummary {
    /// True when some object failed, was rejected, is unverified or was left alone for a
    /// newer local file.
    pub fn has_problems(&self) -> bool {
        !self.failed.is_empty()
            || !self.rejected.is_empty()
            || !self.unverified.is_empty()
            || !self.conflicts.is_empty()
    }
}

/// One object to copy.
#[derive(Debug, Clone)]
struct Planned {
    key: Key,
    raw: ListedObject,
    /// What the commit may replace: what was under the name when this was planned.
    expect: Expect,
}

enum Class {
    Rejected(KeyReason),
    Conflict(KeyReason),
    Folder(Option<Key>),
    Present,
    Copy(Planned),
}

enum Outcome {
    Copied {
        bytes: u64,
        unverified: Option<String>,
        proof: Proof,
    },
    Failed(String),
    Rejected(String),
    /// Left alone: the local file changed since planning.
    Conflict(String),
    /// Deleted from the source during the copy; nothing of it left in place.
    Vanished(String),
    Fatal(Error),
    /// Stopped by an interruption or a fatal error elsewhere; nothing left behind.
    Cancelled,
}

/// Copies every object of the S3 (or memory) store `src` under `opts.prefix` into the
/// directory `dest`. See the module docs for the guarantees.
///
/// ```no_run
/// use stowage::ops::migrate::{s3_to_local, MigrateOptions};
/// use stowage::{NoopReporter, S3Config, StoreConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> stowage::Result<()> {
/// let bucket = StoreConfig::S3(S3Config::from_env_for_bucket("clips")?).open()?;
/// let mut opts = MigrateOptions::default();
/// opts.prefix = "2024/".into();
/// let summary = s3_to_local(&bucket, "/srv/clips".as_ref(), &opts, &NoopReporter).await?;
/// // Failed objects are data, not an early error: check them before switching over.
/// if !summary.failed.is_empty() || summary.aborted.is_some() {
///     eprintln!("{} failed; aborted: {:?}", summary.failed.len(), summary.aborted);
/// }
/// println!("copied {} objects, {} bytes", summary.copied, summary.bytes_copied);
/// # Ok(())
/// # }
/// ```
pub async fn s3_to_local(
    src: &BlobStore,
    dest: &Path,
    opts: &MigrateOptions,
    reporter: &dyn Reporter,
) -> Result<MigrateSummary> {
    let started = Instant::now();
    if src.object_backend().is_none() {
        return Err(Error::config(
            "source",
            "s3-to-local needs an S3 (or memory) store as its source",
        ));
    }
    let mut summary = MigrateSummary {
        direction: "s3-to-local".into(),
        source: format!("{}{}", src.describe(), opts.prefix),
        destination: dest.display().to_string(),
        root: dest.display().to_string(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    if !dest.is_absolute() {
        return Err(Error::config(
            "dest",
            format!("{} is relative; give an absolute directory", dest.display()),
        ));
    }
    // The lock comes before the listing: a cleanup during a long listing would otherwise
    // delete files the plan counts as present. A dry run writes nothing and takes none.
    let mut lock = if opts.dry_run {
        None
    } else {
        Some(RunLock::take(dest)?)
    };
    // 1. Plan.
    reporter.phase("listing", None, None);
    let mut buffered: Option<Vec<Planned>> = Some(Vec::new());
    let mut to_copy = 0u64;
    let mut folders = Vec::new();
    let mut clashes = ClashGuard::default();
    let block = fs_of(dest)?.f_frsize.max(512);
    let mut needs = Needs::default();
    {
        let mut pages = src.listing(&opts.prefix, true).ready_chunks(1000);
        while let Some(page) = pages.next().await {
            if opts.cancel.is_cancelled() {
                summary.interrupted = true;
                summary.elapsed_s = started.elapsed().as_secs_f64();
                return Ok(summary);
            }
            let page: Vec<ListedObject> = page.into_iter().collect::<Result<_>>()?;
            reporter.items_found(page.len() as u64);
            summary.listed += page.len() as u64;
            let before = page.len();
            let page = within_max_age(page, opts.max_age);
            summary.too_old += (before - page.len()) as u64;
            let classes = classify_page(dest, page, &mut clashes, opts.checksum).await?;
            for c in classes {
                match c {
                    // Listed once, in the summary (not also as a note).
                    Class::Rejected(kr) => summary.rejected.push(kr),
                    Class::Conflict(kr) => {
                        reporter.note(&format!("left alone {:?}: {}", kr.key, kr.reason));
                        summary.conflicts.push(kr);
                    }
                    Class::Folder(k) => folders.extend(k),
                    Class::Present => summary.skipped += 1,
                    Class::Copy(p) => {
                        to_copy += 1;
                        summary.bytes_planned += p.raw.size;
                        needs.bytes += p.raw.size;
                        needs.allocated += p.raw.size.div_ceil(block) * block;
                        needs.files += 1;
                        if opts.dry_run {
                            summary.would_copy.push(KeyReason {
                                key: p.raw.key.clone(),
                                reason: format!("{} bytes", p.raw.size),
                            });
                        }
                        if let Some(buf) = &mut buffered {
                            if buf.len() < PLAN_BUFFER_LIMIT {
                                buf.push(p);
                            } else {
                                buffered = None;
                            }
                        }
                    }
                }
            }
        }
    }
    summary.folders = folders.len() as u64;

    // 2. Preflight.
    preflight(dest, needs, opts).await?;
    if opts.dry_run || to_copy == 0 && folders.is_empty() {
        summary.elapsed_s = started.elapsed().as_secs_f64();
        return Ok(summary);
    }
    // Nothing but the lock is written before the preflight passed; from here on the
    // directory and lock file stay. Then the removal of temp files left by a killed run.
    if let Some(lock) = &mut lock {
        lock.keep();
        local::mark_store(dest).map_err(|e| Error::io("mark the store", dest, e))?;
    }
    let removed = remove_leftover_temp_files(dest).await?;
    if removed > 0 {
        reporter.note(&format!(
            "removed {removed} temp file(s) left by an interrupted run"
        ));
    }
    for f in &folders {
        let (root, f2) = (dest.to_path_buf(), f.clone());
        let res = blocking::try_run(move || local::create_dir_beneath(&root, &f2)).await;
        if let Err(e) = res {
            summary.rejected.push(KeyReason {
                key: format!("{f}/"),
                reason: e.to_string(),
            });
        }
    }

    // 3. Copy.
    reporter.phase("copying", Some(to_copy), Some(summary.bytes_planned));
    let work: BoxStream<'_, Result<Planned>> = match buffered {
        Some(v) => stream::iter(v.into_iter().map(Ok)).boxed(),
        None => {
            let root = dest.to_path_buf();
            let by_content = opts.checksum;
            let max_age = opts.max_age;
            let pages = src.listing(&opts.prefix, true).ready_chunks(1000);
            stream::unfold(
                (pages, ClashGuard::default()),
                move |(mut pages, mut clashes)| {
                    let root = root.clone();
                    async move {
                        let page = pages.next().await?;
                        let page: Vec<ListedObject> = match page.into_iter().collect::<Result<_>>()
                        {
                            Ok(p) => p,
                            Err(e) => return Some((vec![Err(e)], (pages, clashes))),
                        };
                        let page = within_max_age(page, max_age);
                        let classes =
                            match classify_page(&root, page, &mut clashes, by_content).await {
                                Ok(c) => c,
                                Err(e) => return Some((vec![Err(e)], (pages, clashes))),
                            };
                        let copies = classes
                            .into_iter()
                            .filter_map(|c| match c {
                                Class::Copy(p) => Some(Ok(p)),
                                _ => None,
                            })
                            .collect::<Vec<_>>();
                        Some((copies, (pages, clashes)))
                    }
                },
            )
            .flat_map(stream::iter)
            .boxed()
        }
    };
    let stop = opts.cancel.child_token();
    let ctx = Arc::new(CopyCtx {
        backend_store: src.clone(),
        root: dest.to_path_buf(),
        stop: stop.clone(),
        streams: tokio::sync::Semaphore::new(opts.concurrency.clamp(1, MAX_STREAMS)),
        http: crate::s3::http_client()?,
    });
    // No new copies once stopped; the loop below drains the ones in flight, so the
    // summary counts exactly the files that were put in place.
    let mut running = work
        .take_until(Box::pin(stop.clone().cancelled_owned()))
        .map(|p| {
            let ctx = Arc::clone(&ctx);
            async move {
                match p {
                    Ok(p) => {
                        let key = p.raw.key.clone();
                        (key, copy_one(&ctx, p, reporter).await)
                    }
                    Err(e) => (String::new(), Outcome::Fatal(e)),
                }
            }
        })
        .buffer_unordered(opts.concurrency.max(1));
    while let Some((key, outcome)) = running.next().await {
        match outcome {
            Outcome::Cancelled => {}
            Outcome::Copied {
                bytes,
                unverified,
                proof,
            } => {
                summary.copied += 1;
                summary.bytes_copied += bytes;
                summary.proofs.add(proof);
                if let Some(reason) = unverified {
                    reporter.note(&format!("unverified {key:?}: {reason}"));
                    summary.unverified.push(KeyReason {
                        key: key.clone(),
                        reason,
                    });
                }
                reporter.item_done(&key, true);
            }
            Outcome::Failed(reason) => {
                reporter.note(&format!("failed {key:?}: {reason}"));
                summary.failed.push(KeyReason {
                    key: key.clone(),
                    reason,
                });
                reporter.item_done(&key, false);
            }
            Outcome::Rejected(reason) => {
                summary.rejected.push(KeyReason {
                    key: key.clone(),
                    reason,
                });
                reporter.item_done(&key, false);
            }
            Outcome::Conflict(reason) => {
                reporter.note(&format!("left alone {key:?}: {reason}"));
                summary.conflicts.push(KeyReason {
                    key: key.clone(),
                    reason,
                });
                reporter.item_done(&key, false);
            }
            Outcome::Vanished(reason) => {
                reporter.note(&format!("not copied {key:?}: {reason}"));
                summary.vanished.push(KeyReason {
                    key: key.clone(),
                    reason,
                });
                reporter.item_done(&key, true);
            }
            Outcome::Fatal(e) => {
                // Disk full, access revoked, listing lost: stop, drain, report.
                if summary.aborted.is_none() {
                    summary.aborted = Some(e.to_string());
                }
                stop.cancel();
            }
        }
    }
    drop(running);
    summary.interrupted = opts.cancel.is_cancelled();
    // Make every rename of this run durable before reporting it.
    let root = dest.to_path_buf();
    let synced = blocking::try_run(move || local::sync_filesystem(&root)).await;
    if let Err(e) = synced {
        summary
            .aborted
            .get_or_insert_with(|| format!("flushing {} to disk failed: {e}", dest.display()));
    }
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The store lock of a run, taken before planning. Until [`RunLock::keep`], dropping it
/// removes the lock file and destination directory it created, so a run refused before
/// copying (no space, no credentials, nothing to do) leaves the disk as it found it.
struct RunLock {
    dest: PathBuf,
    lock: Option<StoreLock>,
    created_dir: bool,
    created_lock_file: bool,
}

impl RunLock {
    fn take(dest: &Path) -> Result<RunLock> {
        let created_dir = !dest.exists();
        std::fs::create_dir_all(dest).map_err(|e| Error::io("create directory", dest, e))?;
        let lock_path = dest.join(local::LOCK_FILE_NAME);
        let mut run = RunLock {
            dest: dest.to_path_buf(),
            lock: None,
            created_dir,
            created_lock_file: !lock_path.exists(),
        };
        match StoreLock::try_acquire(dest) {
            Ok(Some(l)) => run.lock = Some(l),
            Ok(None) => {
                // Another run's lock file: never ours to remove.
                run.created_lock_file = false;
                return Err(Error::Locked { path: lock_path });
            }
            Err(e) => return Err(Error::io("lock", lock_path, e)),
        }
        Ok(run)
    }

    /// The run writes: what was created stays.
    fn keep(&mut self) {
        self.created_dir = false;
        self.created_lock_file = false;
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // The file is removed while still locked, then the lock released.
        if self.created_lock_file {
            let _ = std::fs::remove_file(self.dest.join(local::LOCK_FILE_NAME));
        }
        drop(self.lock.take());
        if self.created_dir {
            let _ = std::fs::remove_dir(&self.dest);
        }
    }
}

struct CopyCtx {
    backend_store: BlobStore,
    root: PathBuf,
    /// Cancelled on interruption or a fatal error: copies in flight stop at their next
    /// chunk and remove their temp file; copies already committing finish and are counted.
    stop: CancellationToken,
    /// Permits for objects bigger than one write buffer ([`MAX_STREAMS`]).
    streams: tokio::sync::Semaphore,
    /// For the requests object_store cannot make (`HEAD ?partNumber=1`).
    http: reqwest::Client,
}

/// Finds keys that need a directory where an earlier key is a file (`x` then `x/y`).
/// Relies on listings being in byte order, so it only keeps the file keys that could
/// still be a prefix of what comes next.
#[derive(Default)]
struct ClashGuard {
    open: Vec<String>,
}

impl ClashGuard {
    /// True when `key` lies under an earlier file key; otherwise remembers `key`.
    fn clashes(&mut self, key: &str) -> bool {
        while let Some(top) = self.open.last() {
            let under = key.len() > top.len()
                && key.starts_with(top.as_str())
                && key.as_bytes()[top.len()] == b'/';
            if under {
                return true;
            }
            // Sorted order: once past `top/`, no later key can be under `top`.
            if key > top.as_str() && !format!("{top}/").as_str().gt(key) {
                self.open.pop();
            } else {
                break;
            }
        }
        self.open.push(key.trim_end_matches('/').to_owned());
        false
    }
}

/// The objects of `page` modified within `max_age` of now (all of them without one).
fn within_max_age(
    page: Vec<ListedObject>,
    max_age: Option<std::time::Duration>,
) -> Vec<ListedObject> {
    let Some(age) = max_age else { return page };
    let cutoff =
        chrono::Utc::now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    page.into_iter()
        .filter(|o| o.last_modified >= cutoff)
        .collect()
}

/// Classifies one listing page: clash detection in order, then local stats off the runtime.
async fn classify_page(
    root: &Path,
    page: Vec<ListedObject>,
    clashes: &mut ClashGuard,
    by_content: bool,
) -> Result<Vec<Class>> {
    let mut out: Vec<Option<Class>> = Vec::with_capacity(page.len());
    let mut rest = Vec::new();
    for o in page {
        if clashes.clashes(&o.key) {
            out.push(Some(Class::Rejected(KeyReason {
                key: o.key,
                reason: "path clashes with another key's file (a key cannot be both a file and a directory on disk)".into(),
            })));
        } else {
            out.push(None);
            rest.push(o);
        }
    }
    let root = root.to_path_buf();
    let mut classified = blocking::run(move || {
        rest.into_iter()
            .map(|o| classify(&root, o, by_content))
            .collect::<Vec<_>>()
    })
    .await?
    .into_iter();
    Ok(out
        .into_iter()
        .map(|c| c.unwrap_or_else(|| classified.next().expect("one class per object")))
        .collect())
}

fn classify(root: &Path, o: ListedObject, by_content: bool) -> Class {
    let key = match Placement::of(&o) {
        Placement::Folder(dir) => return Class::Folder(dir),
        Placement::Unsafe { reason, .. } => {
            return Class::Rejected(KeyReason {
                key: o.key,
                reason: reason.to_string(),
            })
        }
        Placement::File(k) => k,
    };
    let expect = match local::stat_file_id(root, &key) {
        Ok(Some(id)) if by_content && id.size == o.size => match same_content(root, &key, &o) {
            Some(true) => return Class::Present,
            // Unprovable either way (an SSE-KMS ETag and no checksum): size and mtime decide.
            None if same_time(id.mtime, o.last_modified) => return Class::Present,
            _ if newer(id.mtime, o.last_modified) => {
                return Class::Conflict(KeyReason {
                    key: o.key,
                    reason: "the local file is newer than the bucket's version (written locally since); left as it is".into(),
                })
            }
            _ => Expect::File(id),
        },
        Ok(Some(id)) if id.size == o.size && same_time(id.mtime, o.last_modified) => {
            return Class::Present
        }
        // The service wrote it after the bucket's version: never replaced by the older one.
        Ok(Some(id)) if newer(id.mtime, o.last_modified) => {
            return Class::Conflict(KeyReason {
                key: o.key,
                reason: "the local file is newer than the bucket's version (written locally since); left as it is".into(),
            })
        }
        Ok(Some(id)) => Expect::File(id),
        // Unreadable or absent: the commit must then find the name free.
        Ok(None) | Err(_) => Expect::Absent,
    };
    Class::Copy(Planned {
        key,
        raw: o,
        expect,
    })
}

/// `--checksum`: whether the local file holds the listed object's content: by the checksum
/// recorded when it was copied (while it was copied from this very ETag), else by hashing
/// it against the ETag (with the recorded part size, if any). `None` when neither can tell
/// (an opaque ETag and nothing recorded, an unreadable file).
fn same_content(root: &Path, key: &Key, o: &ListedObject) -> Option<bool> {
    let file = local::open_beneath(root, key).ok()?;
    let recorded_etag = local::read_etag(&file);
    // Servers that list no ETags (s3s-fs): the recorded one stands in for it.
    let etag = o.etag.clone().or_else(|| recorded_etag.clone());
    let same_object = recorded_etag.is_some() && recorded_etag == etag;
    if same_object && local::read_proof(&file).as_deref() == Some(Proof::SizeOnly.name()) {
        // Copied unverified (an SSE-KMS ETag, no checksum): hashing cannot tell.
        return None;
    }
    let hint = local::read_part_size(&file);
    let verdict = match local::read_checksum(&file) {
        Some(c) if same_object => etag::check_checksum(&c, o.size, hint, &file),
        _ => {
            let mut first = Some(file);
            etag::check_reader_hinted(etag.as_deref(), o.size, hint, || match first.take() {
                Some(f) => Ok(f),
                None => local::open_beneath(root, key),
            })
        }
    };
    match verdict.ok()? {
        Verdict::Match { .. } => Some(true),
        Verdict::Mismatch { .. } => Some(false),
        Verdict::Unverifiable { .. } => None,
    }
}

/// True when a local mtime is later than LastModified (compared to the millisecond, as
/// listings give it).
fn newer(mtime: SystemTime, lm: DateTime<Utc>) -> bool {
    DateTime::<Utc>::from(mtime).timestamp_millis() > lm.timestamp_millis()
}

/// Local mtimes are set from LastModified, which listings give to the millisecond.
fn same_time(mtime: SystemTime, lm: DateTime<Utc>) -> bool {
    DateTime::<Utc>::from(mtime).timestamp_millis() == lm.timestamp_millis()
}

/// What the copy pass will need on disk.
#[derive(Debug, Default, Clone, Copy)]
struct Needs {
    /// Apparent bytes.
    bytes: u64,
    /// Bytes once rounded up to the filesystem's block size.
    allocated: u64,
    /// Files to create.
    files: u64,
}

/// statvfs of the filesystem `dest` is (or will be) on: the nearest existing ancestor,
/// since a dry run may name a directory that does not exist yet.
fn fs_of(dest: &Path) -> Result<rustix::fs::StatVfs> {
    let mut probe = dest.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    local::fs_stats(&probe).map_err(|e| Error::io("statvfs", &probe, e))
}

async fn preflight(dest: &Path, needs: Needs, opts: &MigrateOptions) -> Result<()> {
    let st = fs_of(dest)?;
    let total = st.f_blocks * st.f_frsize;
    let avail = st.f_bavail * st.f_frsize;
    let keep = opts.min_free.resolve(total);
    let usable = avail.saturating_sub(keep);
    let needed = needs.allocated;
    if needed > usable {
        return Err(Error::NoSpace {
            path: dest.to_path_buf(),
            needed,
            available: usable,
            hint: format!(
                " ({} of objects take {} on disk; {} free minus `min_free` {} = {} usable). Free space, or lower `min_free`",
                human_bytes(needs.bytes),
                human_bytes(needed),
                human_bytes(avail),
                opts.min_free,
                human_bytes(usable)
            ),
        });
    }
    // Filesystems with a fixed inode table (ext4, tmpfs) run out of files, not bytes.
    if st.f_files > 0 && needs.files > st.f_favail {
        return Err(Error::NoSpace {
            path: dest.to_path_buf(),
            needed,
            available: usable,
            hint: format!(
                " (but {} files to create and only {} free inodes on that filesystem)",
                needs.files, st.f_favail
            ),
        });
    }
    if let Some(max) = opts.max_used {
        let limit = max.resolve(total);
        let root = dest.to_path_buf();
        let used = blocking::try_run(move || store_bytes(&root)).await?;
        if used + needs.bytes > limit {
            return Err(Error::NoSpace {
                path: dest.to_path_buf(),
                needed: needs.bytes,
                available: limit.saturating_sub(used),
                hint: format!(
                    ": that is the `max_used` limit, not the disk. The store holds {} and `max_used` is {}; \
                     {} more would exceed it. Raise it to at least {} (`max_used` {}B), or leave it out",
                    human_bytes(used),
                    max,
                    human_bytes(needs.bytes),
                    human_bytes(used + needs.bytes),
                    used + needs.bytes
                ),
            });
        }
    }
    Ok(())
}

/// Apparent bytes of the regular files under `root` (no symlinks followed, no other
/// filesystems entered), as `disk` counts the store.
fn store_bytes(root: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in Walker::new(root, WalkOptions::default())? {
        match entry {
            Ok(e) if e.kind() == EntryKind::File => total += e.size(),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(total)
}

/// Removes `.stowage-tmp.*` files left by a killed process, never those a live writer
/// (the service's `put`, another process) is still writing: see
/// [`local::remove_if_stale_temp`]. Returns how many.
async fn remove_leftover_temp_files(root: &Path) -> Result<u64> {
    let root = root.to_path_buf();
    blocking::try_run(move || {
        let mut removed = 0;
        for entry in Walker::new(&root, WalkOptions::default().include_reserved(true))? {
            let Ok(e) = entry else { continue };
            if e.kind() == EntryKind::File
                && local::is_temp_name(e.file_name())
                && local::remove_if_stale_temp(&e.parent_fd(), e.file_name()).unwrap_or(false)
            {
                removed += 1;
            }
        }
        Ok(removed)
    })
    .await
}

/// Why a GET could not be opened.
enum OpenError {
    /// Worth another try (5xx after object_store's own retries, connection trouble).
    Transient(String),
    /// Retrying cannot help.
    Permanent(String),
    /// The object is no longer in the source (deleted since the listing).
    Vanished,
}

async fn copy_one(ctx: &CopyCtx, p: Planned, reporter: &dyn Reporter) -> Outcome {
    let size = p.raw.size;
    // A big object gets its temp file first, so a key that cannot be placed (its name is a
    // directory) is refused before its body is fetched. A small one (one write buffer) is
    // created, written, checked and committed in a single blocking task once its body is
    // in memory: one hand-off to the blocking pool per object instead of four.
    let mut file = None;
    let mut _stream = None;
    if size as usize > WRITE_BUFFER {
        _stream = Some(ctx.streams.acquire().await.expect("semaphore never closed"));
        let (root, key) = (ctx.root.clone(), p.key.clone());
        match blocking::try_run(move || AtomicFile::create(&root, &key)).await {
            Ok(f) => file = Some(f),
            Err(e) => return place_outcome(&ctx.root, &p.key, e),
        }
    }
    let backend = ctx.backend_store.backend();
    let path = match backend.path(&p.key) {
        Ok(path) => path,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let mut attempt = 0u32;
    let mut last_reason = String::new();
    // Some servers list without ETags (s3s-fs); the first GET then supplies it.
    let mut etag = p.raw.etag.clone();
    let mut hasher = ContentHasher::new(etag.as_deref(), size);
    // What the first full GET said about encryption and checksums (never taken from a
    // ranged GET: a part-aligned range would bring that part's checksum).
    let mut headers: Option<ObjectHeaders> = None;
    let mut content_type: Option<String> = None;
    // Body chunks as received (no copy); written out once WRITE_BUFFER bytes are held.
    let mut buf = Chunks::default();
    loop {
        if ctx.stop.is_cancelled() {
            return Outcome::Cancelled;
        }
        if attempt > 0 {
            if attempt >= MAX_ATTEMPTS {
                return Outcome::Failed(format!(
                    "gave up after {MAX_ATTEMPTS} attempts: {last_reason}"
                ));
            }
            reporter.note(&format!(
                "retrying {:?} from byte {} ({last_reason})",
                p.raw.key,
                hasher.bytes() + buf.len
            ));
            backoff(attempt).await;
        }
        attempt += 1;
        // Resume where the last attempt stopped; every request is pinned to the listed
        // ETag, so a replaced object fails with 412 instead of mixing two versions.
        let offset = hasher.bytes() + buf.len;
        if offset < size || size == 0 {
            let mut body = match open_get(backend, &path, &p, etag.as_deref(), offset).await {
                Ok((body, ct, got_etag, got_headers)) => {
                    content_type = content_type.or(ct);
                    if offset == 0 {
                        if etag.is_none() {
                            etag = got_etag;
                        }
                        let asked = headers.as_mut().and_then(|h| h.part_size.take());
                        headers = got_headers.or(headers);
                        if let Some(h) = headers.as_mut() {
                            // Asked once per object, not again on a refetch.
                            h.part_size = asked;
                            let e = etag.as_deref();
                            ask_part_size_if_composite(backend, &ctx.http, &path, e, size, h).await;
                        }
                        hasher = ContentHasher::for_object(etag.as_deref(), size, headers.as_ref());
                    }
                    body
                }
                Err(OpenError::Transient(r)) => {
                    last_reason = r;
                    continue;
                }
                Err(OpenError::Permanent(r)) => return Outcome::Failed(r),
                Err(OpenError::Vanished) => return Outcome::Vanished(VANISHED_BEFORE.into()),
            };
            let mut broken = None;
            loop {
                let chunk = tokio::select! {
                    biased;
                    _ = ctx.stop.cancelled() => return Outcome::Cancelled,
                    c = body.next() => match c {
                        Some(c) => c,
                        None => break,
                    },
                };
                match chunk {
                    Ok(c) => {
                        reporter.bytes_done(c.len() as u64);
                        buf.push(c);
                        if buf.len >= WRITE_BUFFER as u64 {
                            let x = flush(ctx, &p.key, file, hasher, std::mem::take(&mut buf));
                            match x.await {
                                Ok((f, h)) => (file, hasher) = (Some(f), h),
                                Err(e) => return place_outcome(&ctx.root, &p.key, e),
                            }
                        }
                    }
                    Err(e) => {
                        broken = Some(e.to_string());
                        break;
                    }
                }
            }
            let got = hasher.bytes() + buf.len;
            if got < size {
                last_reason = match broken {
                    Some(e) => format!("body broke off at byte {got}: {e}"),
                    None => format!("body ended at byte {got} of {size}"),
                };
                continue;
            }
        }
        // The body is complete: write what is held, check it, then place it, in one
        // blocking task.
        let (root, key, etag2, lm, expect) = (
            ctx.root.clone(),
            p.key.clone(),
            etag.clone(),
            p.raw.last_modified,
            p.expect,
        );
        let ct = content_type.clone();
        let rest = std::mem::take(&mut buf);
        let finished = blocking::try_run(move || -> std::result::Result<Finished, PlaceError> {
            let mut file = match file {
                Some(f) => f,
                None => AtomicFile::create(&root, &key)?,
            };
            rest.write_to(&mut file, &mut hasher)?;
            let checked = Checked {
                whole_proof: hasher.proof(None),
                part_proof: hasher.proof(Some(0)),
                checksum: hasher.checksum().cloned(),
                etag: etag2,
                last_modified: lm,
                content_type: ct,
                expect,
            };
            match hasher.finish() {
                Some(v) => commit_checked(file, v, checked),
                None => Ok(Finished::NeedsPartSize { file, checked }),
            }
        })
        .await;
        // A multipart ETag no streamed part size reproduced: ask S3 for the part size
        // (one HEAD) before re-reading the file for every likely one.
        let finished = match finished {
            Ok(Finished::NeedsPartSize { file, checked }) => {
                let exact = exact_part_size(ctx, backend, &path, etag.as_deref(), size).await;
                blocking::try_run(move || {
                    let etag = checked.etag.as_deref();
                    let verdict = match exact {
                        Some(p) => {
                            etag::check_reader_hinted(etag, size, Some(p), || file.reopen_read())?
                        }
                        None => etag::check_reader(etag, size, || file.reopen_read())?,
                    };
                    commit_checked(file, verdict, checked)
                })
                .await
            }
            other => other,
        };
        hasher = ContentHasher::new(etag.as_deref(), size);
        return match finished {
            Ok(Finished::Committed {
                unverified,
                proof,
                placed,
            }) => {
                // The file is in place; was the object deleted from the source meanwhile?
                // (The body is done with: its stream permit goes to the next object.)
                _stream = None;
                match recheck_source(ctx, backend, &path, &p.key, placed, reporter).await {
                    Some(reason) => Outcome::Vanished(reason),
                    None => Outcome::Copied {
                        bytes: size,
                        unverified,
                        proof,
                    },
                }
            }
            Ok(Finished::Mismatch {
                file: f,
                expected,
                actual,
            }) => {
                // Fetch the whole object again.
                last_reason = format!("content does not match: expected {expected}, got {actual}");
                file = Some(f);
                continue;
            }
            Ok(Finished::NeedsPartSize { .. }) => unreachable!("resolved above"),
            Err(e) => place_outcome(&ctx.root, &p.key, e),
        };
    }
}

/// What a body's check decided, and what to record with the file.
struct Checked {
    whole_proof: Proof,
    part_proof: Proof,
    checksum: Option<crate::checksum::Checksum>,
    etag: Option<String>,
    last_modified: DateTime<Utc>,
    content_type: Option<String>,
    expect: Expect,
}

/// Places a checked temp file (or truncates it for a refetch on a mismatch), recording
/// its mtime, Content-Type and proof.
fn commit_checked(
    mut file: AtomicFile,
    verdict: Verdict,
    c: Checked,
) -> std::result::Result<Finished, PlaceError> {
    let (part_size, unverified) = match verdict {
        Verdict::Match { part_size } => (part_size, None),
        Verdict::Unverifiable { reason } => (None, Some(reason)),
        Verdict::Mismatch { expected, actual } => {
            // Corrupt or overlong body: start again from an empty file.
            file.truncate()?;
            return Ok(Finished::Mismatch {
                file,
                expected,
                actual,
            });
        }
    };
    file.set_modified(SystemTime::from(c.last_modified))?;
    if let Some(ct) = &c.content_type {
        file.set_content_type(ct)?;
    }
    if let Some(p) = part_size {
        file.set_part_size(p)?;
    }
    let proof = match (&unverified, part_size) {
        (Some(_), _) => Proof::SizeOnly,
        (None, Some(_)) => c.part_proof,
        (None, None) => c.whole_proof,
    };
    if let (None, Some(sum)) = (&unverified, &c.checksum) {
        // A COMPOSITE one goes with the part size recorded above.
        file.set_checksum(&sum.as_matched(part_size))?;
    }
    if let Some(e) = &c.etag {
        file.set_etag(e)?;
    }
    file.set_proof(proof)?;
    let placed = PlacedFile::of(file.file())?;
    // The data is fsynced before the rename; the renames of the whole run are made
    // durable by one syncfs before the summary is returned. Never over a file the plan
    // did not see there.
    file.commit_unsynced_dir_expecting(c.expect)?;
    Ok(Finished::Committed {
        unverified,
        proof,
        placed,
    })
}

/// Why an object deleted from the source during the run is not on disk.
const VANISHED_BEFORE: &str =
    "deleted from the bucket after it was listed (by the service, presumably): not copied";
const VANISHED_AFTER: &str = "deleted from the bucket while it was being copied (by the service, presumably): the copy was removed again";
const VANISHED_REPLACED: &str = "deleted from the bucket while it was being copied; the local name already holds another file (or none), left as it is";

/// The identity of the inode a commit put under a key's name.
#[derive(Debug, Clone, Copy)]
struct PlacedFile {
    dev: u64,
    ino: u64,
}

impl PlacedFile {
    fn of(file: &std::fs::File) -> std::io::Result<PlacedFile> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        Ok(PlacedFile {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    fn is(&self, st: &rustix::fs::Stat) -> bool {
        // `stat` field widths differ between architectures.
        #[allow(clippy::unnecessary_cast)]
        let (dev, ino) = (st.st_dev as u64, st.st_ino as u64);
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
            && dev == self.dev
            && ino == self.ino
    }
}

/// After a copy is committed: asks the source whether the object is still there, and if
/// it is gone, removes the file just committed (only that very inode). `Some(reason)` when
/// the object was deleted from the source, `None` when the copy stands.
///
/// Why commit-then-HEAD closes the race with a service deleting the clip: the service
/// deletes through [`crate::ReadThrough`], the bucket first, then the local file. Take the
/// moment our HEAD is answered:
/// - after the bucket delete: the HEAD says not-found and we remove our file here;
/// - before it: our commit came earlier still, so the service's local delete, which
///   follows its bucket delete, finds our file and removes it.
///
/// Either way the clip stays deleted. This needs the source to answer a HEAD after a
/// completed DELETE with not-found (S3 has been strongly consistent since 2020, as are
/// MinIO and s3s-fs). A delete that reaches only the bucket (the service not yet on the
/// read-through store) is not covered once our HEAD has been answered: `verify` lists such
/// a file as `extra`.
async fn recheck_source(
    ctx: &CopyCtx,
    backend: &Backend,
    path: &object_store::path::Path,
    key: &Key,
    placed: PlacedFile,
    reporter: &dyn Reporter,
) -> Option<String> {
    match backend.store.head(path).await {
        Err(object_store::Error::NotFound { .. }) => {}
        Ok(_) => return None,
        Err(e) => {
            // Unknown: the object was there moments ago, so the copy stands.
            reporter.note(&format!(
                "copied {:?}, but could not ask the bucket again whether it still holds it: {}",
                key.as_str(),
                crate::error::redact(&e.to_string())
            ));
            return None;
        }
    }
    let (root, key2) = (ctx.root.clone(), key.clone());
    match blocking::try_run(move || remove_if_placed(&root, &key2, placed)).await {
        Ok(true) => Some(VANISHED_AFTER.into()),
        Ok(false) => Some(VANISHED_REPLACED.into()),
        Err(e) => Some(format!(
            "deleted from the bucket while it was being copied, but the copy at {} could not be removed: {e}",
            key.to_path(&ctx.root).display()
        )),
    }
}

/// Removes `key`'s file under `root` if it is still the inode `placed`; `Ok(false)` when
/// the name holds something else (the service wrote it again) or nothing. Never follows a
/// symlink. Like cleanup, the file is first renamed to a private name and checked there,
/// where nobody can swap it, so a file renamed over the name meanwhile is never removed;
/// if the private name holds another file after all, it goes back.
fn remove_if_placed(root: &Path, key: &Key, placed: PlacedFile) -> std::io::Result<bool> {
    use rustix::fs::{renameat_with, statat, unlinkat, AtFlags, RenameFlags};
    use rustix::io::Errno;
    let dir = match local::open_parent_dir(root, key, false) {
        Ok(d) => d,
        Err(local::PlaceError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(false)
        }
        Err(local::PlaceError::Io(e)) => return Err(e),
        // A parent became a symlink or a file: not our file any more.
        Err(_) => return Ok(false),
    };
    let name = key.file_name();
    match statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if placed.is(&st) => {}
        Ok(_) | Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let private = format!("{}{:016x}", local::DELETE_PREFIX, fastrand::u64(..));
    match renameat_with(&dir, name, &dir, private.as_str(), RenameFlags::NOREPLACE) {
        Ok(()) => {}
        Err(Errno::NOENT) => return Ok(false),
        // No RENAME_NOREPLACE here: the plain check (above) then unlink.
        Err(Errno::INVAL | Errno::NOSYS) => {
            return match unlinkat(&dir, name, AtFlags::empty()) {
                Ok(()) => Ok(true),
                Err(Errno::NOENT) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    }
    let ours = matches!(statat(&dir, private.as_str(), AtFlags::SYMLINK_NOFOLLOW), Ok(st) if placed.is(&st));
    if !ours {
        // Another writer's file took the name between the check and the rename: back.
        return match renameat_with(&dir, private.as_str(), &dir, name, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(false),
            // A yet newer file has the name: it would have replaced this one anyway.
            Err(Errno::EXIST) => unlinkat(&dir, private.as_str(), AtFlags::empty())
                .map(|()| false)
                .map_err(Into::into),
            Err(e) => Err(e.into()),
        };
    }
    unlinkat(&dir, private.as_str(), AtFlags::empty())?;
    drop(dir);
    prune_empty_parents(root, key);
    Ok(true)
}

/// Removes the directories between `key` and `root` that are now empty, deepest first, as
/// a delete through the store does (S3 has no directories).
fn prune_empty_parents(root: &Path, key: &Key) {
    let segs: Vec<&str> = key.segments().collect();
    for depth in (1..segs.len()).rev() {
        let Ok(parent) = Key::new(segs[..depth].join("/")) else {
            break;
        };
        let Ok(dir) = local::open_parent_dir(root, &parent, false) else {
            break;
        };
        let removed =
            rustix::fs::unlinkat(&dir, parent.file_name(), rustix::fs::AtFlags::REMOVEDIR);
        if removed.is_err() {
            break;
        }
    }
}

/// The part size of a multipart object as S3 states it (`HEAD ?partNumber=1`), when its
/// answer is consistent with the ETag's part count and the object's size. Asked only once
/// the part sizes hashed in the stream failed: one request against re-reading the whole
/// file once per four guesses (up to 16 passes), while asking up front would cost a
/// request for every multipart object, most of which the 8 MiB or 5 MiB guess proves.
async fn exact_part_size(
    ctx: &CopyCtx,
    backend: &Backend,
    path: &object_store::path::Path,
    etag: Option<&str>,
    size: u64,
) -> Option<u64> {
    let Some(etag::ETag::Multipart { parts, .. }) = etag.map(etag::ETag::parse) else {
        return None;
    };
    let s3 = backend.s3.as_ref()?;
    let h = crate::s3::integrity::head_part(s3.signer.as_ref(), &ctx.http, path, 1)
        .await
        .ok()?;
    let (p, n) = (h.content_length?, u64::from(parts));
    // Some S3-compatible servers answer partNumber with the whole object: such an answer
    // is ignored, and the likely part sizes are tried instead.
    let fits = p > 0 && (n - 1) * p < size && size <= n * p;
    (h.parts_count == Some(parts) && fits).then_some(p)
}

/// Puts the part size S3 states (`HEAD ?partNumber=1`, and the last part) into `headers`
/// when a COMPOSITE checksum is to prove the object (see [`etag::composite_wanted`]), or
/// why it cannot be known; leaves it alone otherwise.
async fn ask_part_size_if_composite(
    backend: &Backend,
    http: &reqwest::Client,
    path: &object_store::path::Path,
    etag: Option<&str>,
    size: u64,
    headers: &mut ObjectHeaders,
) {
    let Some(parts) = etag::composite_wanted(etag, headers) else {
        return;
    };
    headers.part_size = Some(match backend.s3.as_ref() {
        Some(s3) => {
            let signer = s3.signer.as_ref();
            crate::s3::integrity::uniform_part_size(signer, http, path, parts, size).await
        }
        None => Err("the store states no part sizes".to_owned()),
    });
}

/// How the last step of a copy ended.
enum Finished {
    /// A multipart ETag the streamed part sizes did not reproduce.
    NeedsPartSize { file: AtomicFile, checked: Checked },
    Committed {
        unverified: Option<String>,
        proof: Proof,
        /// The inode now under the final name (as committed).
        placed: PlacedFile,
    },
    Mismatch {
        file: AtomicFile,
        expected: String,
        actual: String,
    },
}

/// Body chunks held between writes, kept as the HTTP client handed them over.
#[derive(Default)]
struct Chunks {
    chunks: Vec<Bytes>,
    len: u64,
}

impl Chunks {
    fn push(&mut self, c: Bytes) {
        self.len += c.len() as u64;
        self.chunks.push(c);
    }

    /// Hashes and appends every chunk to `file` (vectored writes, no copy in user space).
    fn write_to(self, file: &mut AtomicFile, hasher: &mut ContentHasher) -> std::io::Result<()> {
        for c in &self.chunks {
            hasher.update(c);
        }
        let mut slices: Vec<std::io::IoSlice<'_>> = self
            .chunks
            .iter()
            .map(|c| std::io::IoSlice::new(c))
            .collect();
        file.write_all_vectored(&mut slices)
    }
}

/// A GET body with the object's Content-Type, ETag and integrity headers.
type Opened = (
    BoxStream<'static, object_store::Result<Bytes>>,
    Option<String>,
    Option<String>,
    Option<ObjectHeaders>,
);

/// Opens a GET of the object from `offset`, pinned to `etag` when known.
async fn open_get(
    backend: &Backend,
    path: &object_store::path::Path,
    p: &Planned,
    etag: Option<&str>,
    offset: u64,
) -> std::result::Result<Opened, OpenError> {
    let opts = GetOptions {
        range: (offset > 0).then_some(GetRange::Offset(offset)),
        if_match: etag.map(str::to_owned),
        ..Default::default()
    };
    let res = match backend.store.get_opts(path, opts).await {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => return Err(OpenError::Vanished),
        Err(object_store::Error::Precondition { .. }) => {
            return Err(OpenError::Permanent(
                "object changed during the migration (ETag no longer matches); run again to copy the new version".into(),
            ))
        }
        Err(e @ (object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })) => {
            return Err(OpenError::Permanent(format!("access denied: {e}")))
        }
        Err(e) => return Err(OpenError::Transient(e.to_string())),
    };
    if res.meta.size != p.raw.size {
        return Err(OpenError::Permanent(format!(
            "object size changed during the migration ({} listed, {} now); run again to copy the new version",
            p.raw.size, res.meta.size
        )));
    }
    let ct = res
        .attributes
        .get(&object_store::Attribute::ContentType)
        .map(|v| v.as_ref().to_owned());
    let etag = res.meta.e_tag.clone();
    let headers = res.extensions.get::<ObjectHeaders>().cloned();
    Ok((res.into_stream(), ct, etag, headers))
}

/// Hashes and writes the held chunks to the temp file (created first if need be).
async fn flush(
    ctx: &CopyCtx,
    key: &Key,
    file: Option<AtomicFile>,
    mut hasher: ContentHasher,
    chunks: Chunks,
) -> std::result::Result<(AtomicFile, ContentHasher), PlaceError> {
    let (root, key) = (ctx.root.clone(), key.clone());
    blocking::try_run(move || {
        let mut file = match file {
            Some(f) => f,
            None => AtomicFile::create(&root, &key)?,
        };
        chunks.write_to(&mut file, &mut hasher)?;
        file.start_writeback();
        Ok((file, hasher))
    })
    .await
}

async fn backoff(attempt: u32) {
    crate::retry::Backoff::DEFAULT.sleep(attempt).await;
}

fn place_outcome(root: &Path, key: &Key, e: PlaceError) -> Outcome {
    match e {
        PlaceError::Io(io) => io_outcome(root, key, io),
        PlaceError::Changed(reason) => Outcome::Conflict(reason.into()),
        other => Outcome::Rejected(other.to_string()),
    }
}

fn io_outcome(root: &Path, key: &Key, e: std::io::Error) -> Outcome {
    if crate::error::is_enospc(&e) {
        Outcome::Fatal(Error::io("write (disk full)", key.to_path(root), e))
    } else {
        Outcome::Failed(format!("{}: {e}", key.to_path(root).display()))
    }
}

/// Copies every regular file under `source` into the S3 store `dst` (the rollback path).
/// Files the bucket already holds are skipped (see `already_in_bucket` for the proof it
/// takes); each upload carries a SHA-256 checksum the server verifies, and is checked
/// afterwards against the checksum the bucket stored, else the object's ETag.
pub async fn local_to_s3(
    source: &Path,
    dst: &BlobStore,
    opts: &MigrateOptions,
    reporter: &dyn Reporter,
) -> Result<MigrateSummary> {
    let started = Instant::now();
    if dst.object_backend().is_none() {
        return Err(Error::config(
            "destination",
            "local-to-s3 needs an S3 (or memory) store as its destination",
        ));
    }
    let mut summary = MigrateSummary {
        direction: "local-to-s3".into(),
        source: source.display().to_string(),
        destination: format!("{}{}", dst.describe(), opts.prefix),
        root: source.display().to_string(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    if !source.is_dir() {
        return Err(Error::config(
            "source",
            format!(
                "{} is not a directory; point `source` (or LOCAL_STORAGE_PATH) at the store",
                source.display()
            ),
        ));
    }
    // What the bucket already holds. One small record per object.
    reporter.phase("listing", None, None);
    let mut existing = std::collections::HashMap::new();
    let mut remote = dst.listing(&opts.prefix, true);
    while let Some(o) = remote.next().await {
        let o = o?;
        reporter.items_found(1);
        let present = Present {
            size: o.size,
            etag: o.etag,
            last_modified: o.last_modified,
        };
        existing.insert(o.key, present);
    }
    drop(remote);

    let files = local_files(source.to_path_buf(), opts.prefix.clone());
    reporter.phase(
        if opts.dry_run {
            "planning"
        } else {
            "uploading"
        },
        None,
        None,
    );
    let existing = Arc::new(existing);
    // For the requests object_store cannot make (`HEAD ?partNumber=N`).
    let http = &crate::s3::http_client()?;
    // Uploads are atomic on S3. Once stopped (interrupted, or a fatal error), no new ones
    // start, and those in flight stop at their next chunk, aborting their multipart
    // upload; the loop below drains them, so the summary counts exactly what is in the
    // bucket and no parts are left behind.
    let stop = opts.cancel.child_token();
    let mut running = files
        .take_until(Box::pin(stop.clone().cancelled_owned()))
        .map(|f| {
            let existing = Arc::clone(&existing);
            let stop = &stop;
            async move {
                match f {
                    Ok(f) => {
                        upload_one(dst, http, f, &existing, opts.dry_run, stop, reporter).await
                    }
                    // An unreadable directory is one failure, not the end of the run.
                    Err(e) => (
                        String::new(),
                        UploadOutcome::Done(Outcome::Failed(e.to_string())),
                    ),
                }
            }
        })
        .buffer_unordered(opts.concurrency.max(1));
    while let Some((key, outcome)) = running.next().await {
        summary.listed += 1;
        match outcome {
            UploadOutcome::Skipped(proof) => {
                summary.skipped += 1;
                summary.skipped_proofs.add(proof);
            }
            UploadOutcome::WouldCopy(size) => {
                summary.bytes_planned += size;
                summary.would_copy.push(KeyReason {
                    key,
                    reason: format!("{size} bytes"),
                });
            }
            UploadOutcome::Done(Outcome::Copied {
                bytes,
                unverified,
                proof,
            }) => {
                summary.copied += 1;
                summary.bytes_copied += bytes;
                summary.proofs.add(proof);
                summary.bytes_planned += bytes;
                if let Some(reason) = unverified {
                    summary.unverified.push(KeyReason {
                        key: key.clone(),
                        reason,
                    });
                }
                reporter.item_done(&key, true);
            }
            UploadOutcome::Done(Outcome::Failed(reason)) => {
                reporter.note(&format!("failed {key:?}: {reason}"));
                summary.failed.push(KeyReason {
                    key: key.clone(),
                    reason,
                });
                reporter.item_done(&key, false);
            }
            UploadOutcome::Done(Outcome::Rejected(reason)) => {
                summary.rejected.push(KeyReason { key, reason });
            }
            UploadOutcome::Done(Outcome::Fatal(e)) => {
                // Access revoked, bucket gone: stop, drain, report.
                if summary.aborted.is_none() {
                    summary.aborted = Some(e.to_string());
                }
                stop.cancel();
            }
            UploadOutcome::Done(Outcome::Conflict(reason)) => {
                summary.conflicts.push(KeyReason { key, reason });
            }
            UploadOutcome::Done(Outcome::Vanished(reason)) => {
                summary.vanished.push(KeyReason { key, reason });
            }
            UploadOutcome::Done(Outcome::Cancelled) => {}
        }
    }
    drop(running);
    summary.interrupted = opts.cancel.is_cancelled();
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// An object the bucket listing showed.
struct Present {
    size: u64,
    etag: Option<String>,
    last_modified: DateTime<Utc>,
}

enum UploadOutcome {
    /// Already in the bucket, as this proof showed.
    Skipped(Proof),
    WouldCopy(u64),
    Done(Outcome),
}

/// A regular file found under the source root: its key (or why it is not one), the walk
/// entry it came from (read through its parent's handle, never by path) and its path
/// (for messages).
struct LocalFile {
    rel: String,
    key: std::result::Result<Key, String>,
    entry: crate::walk::Entry,
    path: PathBuf,
    size: u64,
}

/// Size, ETag and integrity headers of a stored object (one HEAD with checksum mode; for
/// a COMPOSITE checksum, the part size S3 states too).
async fn head_object(
    dst: &BlobStore,
    http: &reqwest::Client,
    key: &Key,
) -> Result<(u64, Option<String>, Option<ObjectHeaders>)> {
    if let Some(b) = dst.object_backend() {
        let path = b.path(key)?;
        let opts = GetOptions {
            head: true,
            ..Default::default()
        };
        let r = b
            .store
            .get_opts(&path, opts)
            .await
            .map_err(|e| Error::backend(&b.name, &e))?;
        let mut headers = r.extensions.get::<ObjectHeaders>().cloned();
        if let Some(h) = headers.as_mut() {
            let (etag, size) = (r.meta.e_tag.as_deref(), r.meta.size);
            ask_part_size_if_composite(b, http, &path, etag, size, h).await;
        }
        return Ok((r.meta.size, r.meta.e_tag, headers));
    }
    let m = dst.head(key).await?;
    Ok((m.size, m.etag, None))
}

/// Runs `f` on the blocking pool with a shared handle to `file`.
async fn with_file<T: Send + 'static>(
    file: &Arc<std::fs::File>,
    f: impl FnOnce(&std::fs::File) -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let file = Arc::clone(file);
    blocking::try_run(move || f(&file)).await
}

async fn upload_one(
    dst: &BlobStore,
    http: &reqwest::Client,
    f: LocalFile,
    existing: &std::collections::HashMap<String, Present>,
    dry_run: bool,
    stop: &CancellationToken,
    reporter: &dyn Reporter,
) -> (String, UploadOutcome) {
    let key = match f.key {
        Ok(k) => k,
        Err(reason) => return (f.rel, UploadOutcome::Done(Outcome::Rejected(reason))),
    };
    let name = key.to_string();
    let failed = |reason: String| UploadOutcome::Done(Outcome::Failed(reason));
    // One handle for the hash, the xattr and the upload: the very inode the walk saw, so
    // a file swapped for a link to something outside the store is never read.
    let entry = f.entry.clone();
    let file = match blocking::try_run(move || entry.open_file()).await {
        Ok(file) => Arc::new(file),
        Err(e) => return (name, failed(format!("{}: {e}", f.path.display()))),
    };
    if let Some(present) = existing.get(&name).filter(|p| p.size == f.size) {
        if let Some(proof) = already_in_bucket(dst, http, &key, &file, present).await {
            reporter.bytes_done(f.size);
            return (name, UploadOutcome::Skipped(proof));
        }
    }
    if dry_run {
        return (name, UploadOutcome::WouldCopy(f.size));
    }
    let ct = match with_file(&file, |fh| Ok(local::read_content_type(fh))).await {
        Ok(ct) => ct,
        Err(e) => return (name, failed(format!("{}: {e}", f.path.display()))),
    };
    let upload = match file.try_clone() {
        Ok(fh) => fh,
        Err(e) => return (name, failed(format!("{}: {e}", f.path.display()))),
    };
    // A stopped run ends the body with an error, which aborts a multipart upload.
    let body = tokio_util::io::ReaderStream::with_capacity(
        tokio::fs::File::from_std(upload),
        UPLOAD_CHUNK,
    )
    .map(|chunk| match stop.is_cancelled() {
        true => Err(std::io::Error::other("migration stopped")),
        false => chunk,
    });
    if let Err(e) = dst.put_stream(&key, body, ct.as_deref()).await {
        return (
            name,
            UploadOutcome::Done(match e {
                e @ (Error::AccessDenied { .. } | Error::NoSuchBucket { .. }) => Outcome::Fatal(e),
                _ if stop.is_cancelled() => Outcome::Cancelled,
                e => Outcome::Failed(e.to_string()),
            }),
        );
    }
    reporter.bytes_done(f.size);
    // Check what landed against what we sent: the checksum S3 stored (and verified on
    // receipt) when it sends one, else the ETag.
    let (stored_size, etag, headers) = match head_object(dst, http, &key).await {
        Ok(m) => m,
        Err(e) => {
            return (
                name,
                failed(format!("uploaded but cannot be read back: {e}")),
            )
        }
    };
    if stored_size != f.size {
        return (
            name,
            failed(format!(
                "uploaded {} bytes but the bucket holds {stored_size}",
                f.size
            )),
        );
    }
    let size = f.size;
    let verdict = with_file(&file, move |fh| {
        etag::check_open_file_for_object(fh, size, etag.as_deref(), headers.as_ref())
    })
    .await;
    let outcome = match verdict {
        Ok((Verdict::Match { .. }, proof)) => Outcome::Copied {
            bytes: f.size,
            unverified: None,
            proof,
        },
        Ok((Verdict::Unverifiable { reason }, _)) => Outcome::Copied {
            bytes: f.size,
            unverified: Some(reason),
            proof: Proof::SizeOnly,
        },
        Ok((Verdict::Mismatch { expected, actual }, _)) => Outcome::Failed(format!(
            "uploaded object does not match the file: ETag {expected}, file {actual}"
        )),
        Err(e) => Outcome::Failed(format!("{}: {e}", f.path.display())),
    };
    (name, UploadOutcome::Done(outcome))
}

/// Whether the bucket already holds the content of `file` (of the listed object's size),
/// and the proof of it:
/// 1. the listed ETag, when it reads as a content MD5 or a multipart ETag (no request);
/// 2. else (an SSE-KMS or SSE-C ETag looks like an MD5 but is none; s3s-fs lists no ETags)
///    one HEAD with checksum mode: the checksum the bucket stored — every stowage upload
///    sends a SHA-256 and S3 keeps it, and S3 adds a CRC64NVME to every upload since 2025 —
///    else the ETag, unless the headers call it opaque;
/// 3. only when nothing can prove the content either way (an opaque ETag and no stored
///    checksum: an object uploaded by another tool before checksums existed), the size and
///    an mtime equal to the object's LastModified to the millisecond. That is the file
///    `migrate s3-to-local` copied from this very object (it gives each file its object's
///    LastModified), unchanged since: a replaced object has a new LastModified, a file
///    written since has a new mtime, and either goes up again. Re-uploading instead would
///    bring back the bug this replaces (every such object uploaded on every run); a file
///    copied by other means has another mtime and is uploaded once, with a SHA-256 the
///    bucket then keeps, so the next run proves it by content.
///
/// A content mismatch is never skipped, whatever the times say. In an SSE-KMS bucket a
/// present file is read twice (its listed ETag looks like an MD5 until the HEAD says
/// otherwise); a plain bucket costs no request and one read, as before.
async fn already_in_bucket(
    dst: &BlobStore,
    http: &reqwest::Client,
    key: &Key,
    file: &Arc<std::fs::File>,
    present: &Present,
) -> Option<Proof> {
    let size = present.size;
    let listed = present
        .etag
        .clone()
        .filter(|e| !matches!(etag::ETag::parse(e), etag::ETag::Opaque(_)));
    if let Some(e) = listed {
        let v = with_file(file, move |fh| etag::check_open_file(fh, size, Some(&e))).await;
        match v {
            Ok(Verdict::Match { part_size: None }) => return Some(Proof::Md5),
            Ok(Verdict::Match { part_size: Some(_) }) => return Some(Proof::MultipartMd5),
            _ => {}
        }
    }
    let (stored, etag, headers) = head_object(dst, http, key).await.ok()?;
    if stored != size {
        return None;
    }
    let v = with_file(file, move |fh| {
        etag::check_open_file_for_object(fh, size, etag.as_deref(), headers.as_ref())
    })
    .await;
    match v.ok()? {
        (Verdict::Match { .. }, proof) => Some(proof),
        (Verdict::Mismatch { .. }, _) => None,
        (Verdict::Unverifiable { .. }, _) => {
            let mtime = with_file(file, |fh| fh.metadata()?.modified()).await.ok()?;
            same_time(mtime, present.last_modified).then_some(Proof::SizeOnly)
        }
    }
}

/// Streams the regular files under `root` whose key starts with `prefix` (symlinks and
/// stowage's own files are never uploaded). A directory that cannot be read is an error
/// item, and the walk goes on.
fn local_files(root: PathBuf, prefix: String) -> BoxStream<'static, Result<LocalFile>> {
    crate::walk::files_stream(root.clone(), prefix)
        .map(move |entry| {
            let e = entry?;
            let key = Key::from_relative_path(e.path()).map_err(|err| match err {
                Error::InvalidKey { reason, .. } => reason.to_string(),
                err => err.to_string(),
            });
            Ok(LocalFile {
                rel: e.path().to_string_lossy().into_owned(),
                key,
                path: root.join(e.path()),
                size: e.size(),
                entry: e,
            })
        })
        .boxed()
}
