//! The copy phase of `s3_to_local`: one object from the bucket into an `AtomicFile`,
//! hashed and checked while it streams, committed without replacing what the plan did
//! not see, then checked against the bucket again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use object_store::{GetOptions, GetRange};
use tokio_util::sync::CancellationToken;

use crate::blocking;
use crate::checksum::Proof;
use crate::error::Error;
use crate::etag::{self, ContentHasher, Verdict};
use crate::key::Key;
use crate::local::{AtomicFile, Expect, PlaceError};
use crate::report::Reporter;
use crate::s3::ObjectHeaders;
use crate::store::{Backend, BlobStore};

use super::*;

pub(super) struct CopyCtx {
    pub(super) backend_store: BlobStore,
    pub(super) root: PathBuf,
    /// Cancelled on interruption or a fatal error: copies in flight stop at their next
    /// chunk and remove their temp file; copies already committing finish and are counted.
    pub(super) stop: CancellationToken,
    /// Permits for objects bigger than one write buffer ([`MAX_STREAMS`]).
    pub(super) streams: Arc<tokio::sync::Semaphore>,
    /// For the requests object_store cannot make (`HEAD ?partNumber=1`).
    pub(super) http: reqwest::Client,
}

/// Why a GET could not be opened.
pub(super) enum OpenError {
    /// Worth another try (5xx after object_store's own retries, connection trouble).
    Transient(String),
    /// Retrying cannot help.
    Permanent(String),
    /// The object is no longer in the source (deleted since the listing).
    Vanished,
}

pub(super) async fn copy_one(ctx: &CopyCtx, p: Planned, reporter: &dyn Reporter) -> Outcome {
    let size = p.raw.size;
    // A big object gets its temp file first, so a key that cannot be placed (its name is a
    // directory) is refused before its body is fetched. A small one (one write buffer) is
    // created, written, checked and committed in a single blocking task once its body is
    // in memory: one hand-off to the blocking pool per object instead of four.
    let mut file = None;
    // Held while the body streams in; given back before the commit's fsync, which needs no
    // buffer, so the next big object starts downloading meanwhile.
    let mut stream_permit = None;
    if size as usize > WRITE_BUFFER {
        stream_permit = Some(ctx.streams.acquire().await.expect("semaphore never closed"));
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
    // A big object's other ranges, fetched beside the first one (`ranged`); decided once,
    // from how fast the first GET brings its first bytes.
    let mut tails: Option<Tails> = None;
    let mut may_split = size >= RANGED_MIN;
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
        if size as usize > WRITE_BUFFER && stream_permit.is_none() {
            // Fetched again after a corrupt body.
            stream_permit = Some(ctx.streams.acquire().await.expect("semaphore never closed"));
        }
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
            // Decided on this GET only if it started at the object's first byte.
            may_split &= offset == 0;
            let mut first_chunk_at = None;
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
                    Ok(mut c) => {
                        let at = hasher.bytes() + buf.len;
                        let since = *first_chunk_at.get_or_insert_with(std::time::Instant::now);
                        if may_split && at >= SPLIT_PROBE {
                            may_split = false;
                            if slow_enough_to_split(size, at, since.elapsed()) {
                                if let (Some(f), Some(e)) = (file.as_mut(), etag.as_deref()) {
                                    let (sz, stop) = ((size, e), &ctx.stop);
                                    tails = Tails::start(backend, &path, &ctx.streams, f, sz, stop);
                                }
                            }
                        }
                        // Where this stream stops: the object's end, or the first tail's start.
                        let first_end = tails.as_ref().map_or(size, |t| t.first_end);
                        let room = first_end.saturating_sub(at);
                        let reached = tails.is_some() && c.len() as u64 >= room;
                        if reached {
                            // The rest is the tails' to bring.
                            c.truncate(room as usize);
                        }
                        reporter.bytes_done(c.len() as u64);
                        buf.push(c);
                        if buf.len >= WRITE_BUFFER as u64 {
                            let x = flush(ctx, &p.key, file, hasher, std::mem::take(&mut buf));
                            match x.await {
                                Ok((f, h)) => (file, hasher) = (Some(f), h),
                                Err(e) => return place_outcome(&ctx.root, &p.key, e),
                            }
                        }
                        if reached {
                            break;
                        }
                    }
                    Err(e) => {
                        broken = Some(e.to_string());
                        break;
                    }
                }
            }
            // A GET that broke before the probe fetches the object whole.
            may_split = false;
            let got = hasher.bytes() + buf.len;
            let first_end = tails.as_ref().map_or(size, |t| t.first_end);
            if got < first_end {
                last_reason = match broken {
                    Some(e) => format!("body broke off at byte {got}: {e}"),
                    None => format!("body ended at byte {got} of {size}"),
                };
                continue;
            }
        }
        // The body is complete (with its tails, once they are in): write what is held,
        // check it, then place it, in one blocking task.
        let tail_ranges = match tails.take() {
            Some(mut t) => {
                let done = tokio::select! {
                    biased;
                    _ = ctx.stop.cancelled() => return Outcome::Cancelled,
                    done = t.finish() => done,
                };
                match done {
                    Ok(bytes) => reporter.bytes_done(bytes),
                    Err(TailError::Vanished) => return Outcome::Vanished(VANISHED_BEFORE.into()),
                    Err(TailError::Failed(reason)) => return Outcome::Failed(reason),
                }
                t.into_ranges()
            }
            None => Vec::new(),
        };
        stream_permit = None;
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
            hash_ranges(&file, &tail_ranges, &mut hasher)?;
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
                // The file is in place; whether the object was deleted from the source
                // meanwhile is asked by the run, outside this copy's slot.
                Outcome::Placed(Box::new(PlacedCopy {
                    listed: p.raw.key.clone(),
                    seq: p.seq,
                    key: p.key.clone(),
                    path,
                    placed,
                    bytes: size,
                    unverified,
                    proof,
                }))
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
pub(super) struct Checked {
    pub(super) whole_proof: Proof,
    pub(super) part_proof: Proof,
    pub(super) checksum: Option<crate::checksum::Checksum>,
    pub(super) etag: Option<String>,
    pub(super) last_modified: DateTime<Utc>,
    pub(super) content_type: Option<String>,
    pub(super) expect: Expect,
}

/// Places a checked temp file (or truncates it for a refetch on a mismatch), recording
/// its mtime, Content-Type and proof.
pub(super) fn commit_checked(
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
pub(super) const VANISHED_BEFORE: &str =
    "deleted from the bucket after it was listed (by the service, presumably): not copied";
/// The identity of the inode a commit put under a key's name.
#[derive(Debug, Clone, Copy)]
/// The identity of a file migrate put in place. The inode alone is not enough: once the
/// service deletes the file, the filesystem may hand the same inode number to the next
/// file it creates (a clip written again under the same name), so the size and the mtime
/// (the object's LastModified, which migrate set, to the nanosecond) must match too.
pub(super) struct PlacedFile {
    pub(super) dev: u64,
    pub(super) ino: u64,
    pub(super) size: u64,
    pub(super) mtime: (i64, i64),
}

impl PlacedFile {
    pub(super) fn of(file: &std::fs::File) -> std::io::Result<PlacedFile> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        Ok(PlacedFile {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
        })
    }

    pub(super) fn is(&self, st: &rustix::fs::Stat) -> bool {
        // `stat` field widths differ between architectures.
        #[allow(clippy::unnecessary_cast)]
        let (dev, ino) = (st.st_dev as u64, st.st_ino as u64);
        #[allow(clippy::unnecessary_cast)]
        let (size, mtime) = (
            st.st_size as u64,
            (st.st_mtime as i64, st.st_mtime_nsec as i64),
        );
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
            && dev == self.dev
            && ino == self.ino
            && size == self.size
            && mtime == self.mtime
    }
}

/// The part size of a multipart object as S3 states it (`HEAD ?partNumber=1`), when its
/// answer is consistent with the ETag's part count and the object's size. Asked only once
/// the part sizes hashed in the stream failed: one request against re-reading the whole
/// file once per four guesses (up to 16 passes), while asking up front would cost a
/// request for every multipart object, most of which the 8 MiB or 5 MiB guess proves.
pub(super) async fn exact_part_size(
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
pub(super) async fn ask_part_size_if_composite(
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
pub(super) enum Finished {
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
pub(super) struct Chunks {
    pub(super) chunks: Vec<Bytes>,
    pub(super) len: u64,
}

impl Chunks {
    pub(super) fn push(&mut self, c: Bytes) {
        self.len += c.len() as u64;
        self.chunks.push(c);
    }

    /// Hashes and appends every chunk to `file` (vectored writes, no copy in user space).
    pub(super) fn write_to(
        self,
        file: &mut AtomicFile,
        hasher: &mut ContentHasher,
    ) -> std::io::Result<()> {
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

impl OpenError {
    /// What a failed GET of the object means for the copy.
    pub(super) fn of(e: object_store::Error) -> OpenError {
        match e {
            object_store::Error::NotFound { .. } => OpenError::Vanished,
            object_store::Error::Precondition { .. } => OpenError::Permanent(
                "object changed during the migration (ETag no longer matches); run again to copy the new version".into(),
            ),
            e @ (object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }) => {
                OpenError::Permanent(format!("access denied: {e}"))
            }
            e => OpenError::Transient(e.to_string()),
        }
    }
}

/// A GET body with the object's Content-Type, ETag and integrity headers.
pub(super) type Opened = (
    BoxStream<'static, object_store::Result<Bytes>>,
    Option<String>,
    Option<String>,
    Option<ObjectHeaders>,
);

/// Opens a GET of the object from `offset`, pinned to `etag` when known.
pub(super) async fn open_get(
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
    let res = backend
        .store
        .get_opts(path, opts)
        .await
        .map_err(OpenError::of)?;
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
pub(super) async fn flush(
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

pub(super) async fn backoff(attempt: u32) {
    crate::retry::Backoff::DEFAULT.sleep(attempt).await;
}

pub(super) fn place_outcome(root: &Path, key: &Key, e: PlaceError) -> Outcome {
    match e {
        PlaceError::Io(io) => io_outcome(root, key, io),
        PlaceError::Changed(reason) => Outcome::Conflict(reason.into()),
        other => Outcome::Rejected(other.to_string()),
    }
}

pub(super) fn io_outcome(root: &Path, key: &Key, e: std::io::Error) -> Outcome {
    if crate::error::is_enospc(&e) {
        Outcome::Fatal(Error::io("write (disk full)", key.to_path(root), e))
    } else {
        Outcome::Failed(format!("{}: {e}", key.to_path(root).display()))
    }
}
