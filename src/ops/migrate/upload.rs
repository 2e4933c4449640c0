//! `local_to_s3`: the rollback direction, a local store uploaded to a bucket, each file
//! read from the one handle the walk checked and proven present afterwards.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use object_store::GetOptions;
use tokio_util::sync::CancellationToken;

use crate::blocking;
use crate::checksum::Proof;
use crate::error::{Error, Result};
use crate::etag::{self, Verdict};
use crate::key::Key;
use crate::local::{self};
use crate::report::Reporter;
use crate::s3::ObjectHeaders;
use crate::store::BlobStore;

use super::*;

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
    // Files bigger than a chunk go up at most MAX_STREAMS at once: each holds up to a part
    // in memory (8 MiB on S3), whatever `concurrency` says.
    let streams = tokio::sync::Semaphore::new(opts.concurrency.clamp(1, MAX_STREAMS));
    let mut running = files
        .take_until(Box::pin(stop.clone().cancelled_owned()))
        .map(|f| {
            let existing = Arc::clone(&existing);
            let (stop, streams) = (&stop, &streams);
            async move {
                match f {
                    Ok(f) => {
                        let run = Run {
                            dry_run: opts.dry_run,
                            stop,
                            streams,
                        };
                        upload_one(dst, http, f, &existing, run, reporter).await
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
            UploadOutcome::Done(Outcome::Placed(_)) => {
                unreachable!("only a download places a local file")
            }
        }
    }
    drop(running);
    summary.interrupted = opts.cancel.is_cancelled();
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// An object the bucket listing showed.
pub(super) struct Present {
    pub(super) size: u64,
    pub(super) etag: Option<String>,
    pub(super) last_modified: DateTime<Utc>,
}

pub(super) enum UploadOutcome {
    /// Already in the bucket, as this proof showed.
    Skipped(Proof),
    WouldCopy(u64),
    Done(Outcome),
}

/// A regular file found under the source root: its key (or why it is not one), the walk
/// entry it came from (read through its parent's handle, never by path) and its path
/// (for messages).
pub(super) struct LocalFile {
    pub(super) rel: String,
    pub(super) key: std::result::Result<Key, String>,
    pub(super) entry: crate::walk::Entry,
    pub(super) path: PathBuf,
    pub(super) size: u64,
}

/// Size, ETag and integrity headers of a stored object (one HEAD with checksum mode; for
/// a COMPOSITE checksum, the part size S3 states too).
pub(super) async fn head_object(
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
pub(super) async fn with_file<T: Send + 'static>(
    file: &Arc<std::fs::File>,
    f: impl FnOnce(&std::fs::File) -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let file = Arc::clone(file);
    blocking::try_run(move || f(&file)).await
}

/// What every upload of a run shares.
pub(super) struct Run<'a> {
    pub(super) dry_run: bool,
    pub(super) stop: &'a CancellationToken,
    /// Permits for files bigger than one chunk ([`MAX_STREAMS`]).
    pub(super) streams: &'a tokio::sync::Semaphore,
}

pub(super) async fn upload_one(
    dst: &BlobStore,
    http: &reqwest::Client,
    f: LocalFile,
    existing: &std::collections::HashMap<String, Present>,
    run: Run<'_>,
    reporter: &dyn Reporter,
) -> (String, UploadOutcome) {
    let Run {
        dry_run,
        stop,
        streams,
    } = run;
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
    let _stream = match f.size > UPLOAD_CHUNK as u64 {
        true => Some(streams.acquire().await.expect("semaphore never closed")),
        false => None,
    };
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
pub(super) async fn already_in_bucket(
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
pub(super) fn local_files(root: PathBuf, prefix: String) -> BoxStream<'static, Result<LocalFile>> {
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
