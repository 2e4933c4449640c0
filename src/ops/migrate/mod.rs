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
//! 3. **Copy**: up to `concurrency` objects at once, each streamed into an `AtomicFile`
//!    while hashed, checked against its size and its strongest proof (an S3 checksum —
//!    a COMPOSITE one with the part size S3 states —, the ETag unless SSE-KMS/SSE-C
//!    headers make it opaque, the part size S3 states for a multipart ETag no guess
//!    reproduces), given the object's mtime and
//!    Content-Type, fsynced and renamed into place — never over a file the plan did not
//!    see there (the service writes the same store while we run): a free name must still
//!    be free, a file to replace must still be that very file; otherwise the key is a
//!    conflict and the local file stays. A local file newer than the object is never
//!    planned for replacement at all. A broken body resumes with a Range
//!    request pinned to the ETag; a corrupt one is fetched again. Within a second of a
//!    file being in place the source is asked again (one listing for many copies close
//!    together, a HEAD for a key it does not show): an object deleted meanwhile (the
//!    service deleting a clip through the read-through store) has the file just committed
//!    removed, and is listed in `vanished` (see `recheck` for why the order closes the
//!    race). One `syncfs` makes the run's renames durable before the summary is returned.
//!
//! A failed object is recorded and the run goes on. A full disk, revoked credentials or
//! an interruption stop it: no new copy starts, the ones in flight stop at their next
//! chunk (removing their temp file) or finish committing, and the summary counts exactly
//! what was put in place.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{self, BoxStream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::blocking;
use crate::checksum::{Proof, ProofCounts};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::local::{self, Expect};
use crate::report::Reporter;
use crate::s3::list::ListedObject;
use crate::size::SizeSpec;
use crate::store::BlobStore;

pub use crate::ops::KeyReason;
use crate::ops::Placement;

mod download;
mod plan;
mod ranged;
mod recheck;
mod upload;

use download::*;
use plan::*;
use ranged::*;
use recheck::*;
pub use upload::local_to_s3;

/// To-copy records kept from the planning pass; a bigger plan is listed again instead.
pub const PLAN_BUFFER_LIMIT: usize = 20_000;
/// Default number of objects copied at once: S3 latency, not bandwidth, bounds small
/// objects, so many requests in flight; each holds at most a 256 KiB write buffer (and
/// its connection's read buffer). Behind the WAN profile of `benches/migrate.rs` (20–40 ms
/// a request) 128 copied `small` (5,000 × 16 KiB) in 4.1–4.3 s against 6.4 s at 64, and
/// `clips` and `mixed` as fast; 128 requests in flight at 30 ms are ~4,300 GETs/s, under
/// S3's 5,500 per prefix. What rclone's `--transfers 64 --checkers 64` keeps in flight too.
pub const DEFAULT_CONCURRENCY: usize = 128;
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
    /// Its position in the listing: how far apart two objects are in a re-listing.
    seq: u64,
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
    /// In place and checked; the bucket is still to be asked whether it holds the object
    /// (`recheck`), which the run does for many copies at once, outside the copies' slots.
    Placed(Box<PlacedCopy>),
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
            let page = numbered(page, summary.listed);
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
                (pages, ClashGuard::default(), 0u64),
                move |(mut pages, mut clashes, seen)| {
                    let root = root.clone();
                    async move {
                        let page = pages.next().await?;
                        let page: Vec<ListedObject> = match page.into_iter().collect::<Result<_>>()
                        {
                            Ok(p) => p,
                            Err(e) => return Some((vec![Err(e)], (pages, clashes, seen))),
                        };
                        let page = numbered(page, seen);
                        let seen = seen + page.len() as u64;
                        let page = within_max_age(page, max_age);
                        let classes =
                            match classify_page(&root, page, &mut clashes, by_content).await {
                                Ok(c) => c,
                                Err(e) => return Some((vec![Err(e)], (pages, clashes, seen))),
                            };
                        let copies = classes
                            .into_iter()
                            .filter_map(|c| match c {
                                Class::Copy(p) => Some(Ok(p)),
                                _ => None,
                            })
                            .collect::<Vec<_>>();
                        Some((copies, (pages, clashes, seen)))
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
        streams: Arc::new(tokio::sync::Semaphore::new(
            opts.concurrency.clamp(1, MAX_STREAMS),
        )),
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
    // Files in place whose source is still to be asked about, in batches, beside the copies.
    let mut rechecks = futures::stream::FuturesUnordered::new();
    let mut waiting: Vec<PlacedCopy> = Vec::new();
    let mut ask_by: Option<tokio::time::Instant> = None;
    let mut copies_done = false;
    loop {
        let due = ask_by.is_some_and(|t| t <= tokio::time::Instant::now());
        if !waiting.is_empty() && (waiting.len() >= RECHECK_BATCH || copies_done || due) {
            let (ctx, batch) = (Arc::clone(&ctx), std::mem::take(&mut waiting));
            ask_by = None;
            rechecks.push(async move { recheck_batch(&ctx, batch, reporter).await });
        }
        let done: Vec<(String, Outcome)> = tokio::select! {
            Some(done) = rechecks.next(), if !rechecks.is_empty() => done,
            () = tokio::time::sleep_until(ask_by.unwrap_or_else(tokio::time::Instant::now)),
                if ask_by.is_some() => continue,
            next = running.next(), if !copies_done => match next {
                Some(done) => vec![done],
                None => {
                    copies_done = true;
                    continue;
                }
            },
            else => break,
        };
        for (key, outcome) in done {
            match outcome {
                Outcome::Placed(copy) => {
                    ask_by.get_or_insert_with(|| tokio::time::Instant::now() + RECHECK_WAIT);
                    waiting.push(*copy);
                }
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
