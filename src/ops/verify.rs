//! `verify`: proof that a local copy matches its bucket, without downloading anything.
//!
//! The bucket listing streams past (the same hostile-key-proof listing as `migrate`); each
//! object's local file is checked for presence and size, then hashed in parallel against
//! the strongest proof at hand: the S3 checksum `migrate` recorded with the file (while the
//! bucket holds the same ETag), else the ETag (MD5, or the multipart ETag with the recorded
//! part size, else the likely ones). A file its ETag does not prove gets one HEAD before
//! any verdict: a checksum, an SSE-KMS/SSE-C ETag (unverifiable, never "differs") or part
//! 1's size decide. Afterwards the local tree is walked for files the bucket does not have.
//! Anything that cannot be checked is reported as unverifiable, never as identical.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{self, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::blocking;
use crate::checksum::{Checksum, Proof, ProofCounts};
use crate::error::{Error, Result};
use crate::etag::{self, ETag, Verdict};
use crate::key::Key;
use crate::local;
use crate::ops::{KeyReason, Placement};
use crate::report::Reporter;
use crate::s3::{ListedObject, ObjectHeaders};
use crate::store::{Backend, BlobStore};
use crate::walk::{EntryKind, WalkOptions, Walker};

/// Options of a verification.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// Only keys starting with this.
    pub prefix: String,
    /// Files hashed at once (CPU-bound: default, the number of CPUs).
    pub hash_concurrency: usize,
    /// Cancelled on Ctrl-C / SIGTERM.
    pub cancel: CancellationToken,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            prefix: String::new(),
            hash_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            cancel: CancellationToken::new(),
        }
    }
}

/// What `verify` found. `--json` prints exactly this.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct VerifySummary {
    /// The bucket (and prefix).
    pub source: String,
    /// The local directory.
    pub destination: String,
    /// The local store root (the same directory): local keys are relative to it.
    pub root: String,
    /// Objects in the bucket listing.
    pub listed: u64,
    /// Objects whose local copy has the same size and content.
    pub identical: u64,
    /// How the identical files were proven (folder markers not counted).
    pub proofs: ProofCounts,
    /// Bytes read from local files to hash them.
    pub bytes_hashed: u64,
    /// In the bucket, not on disk.
    pub missing: Vec<KeyReason>,
    /// On disk, not in the bucket.
    pub extra: Vec<KeyReason>,
    /// Present with another size.
    pub size_differs: Vec<KeyReason>,
    /// Same size, different content.
    pub content_differs: Vec<KeyReason>,
    /// Present with the same size, but the ETag cannot be checked against content.
    pub unverifiable: Vec<KeyReason>,
    /// Bucket keys that cannot exist on disk (unsafe keys): never copied.
    pub rejected: Vec<KeyReason>,
    /// True when stopped by Ctrl-C / SIGTERM (the lists are then incomplete).
    pub interrupted: bool,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
}

impl VerifySummary {
    /// True when the copy is not proven identical.
    pub fn has_differences(&self) -> bool {
        !(self.missing.is_empty()
            && self.extra.is_empty()
            && self.size_differs.is_empty()
            && self.content_differs.is_empty()
            && self.unverifiable.is_empty()
            && self.rejected.is_empty())
            || self.interrupted
    }
}

enum Finding {
    Identical(u64, Option<Proof>),
    Missing(String),
    SizeDiffers(KeyReason),
    ContentDiffers(KeyReason, u64),
    Unverifiable(KeyReason, u64),
    Rejected(KeyReason),
    Fatal(Error),
}

enum Check {
    Done(Finding),
    Hash {
        key: Key,
        root: PathBuf,
        size: u64,
        etag: Option<String>,
    },
}

/// Compares the objects of `src` under `opts.prefix` with the files under `dest`.
pub async fn s3_to_local(
    src: &BlobStore,
    dest: &Path,
    opts: &VerifyOptions,
    reporter: &dyn Reporter,
) -> Result<VerifySummary> {
    let started = Instant::now();
    let backend = src.object_backend().ok_or_else(|| {
        Error::config(
            "source",
            "verify needs an S3 (or memory) store as its source",
        )
    })?;
    if !dest.is_dir() {
        return Err(Error::config(
            "dest",
            format!(
                "{} is not a directory; point `dest` (or LOCAL_STORAGE_PATH) at the migrated store",
                dest.display()
            ),
        ));
    }
    let mut summary = VerifySummary {
        source: format!("{}{}", src.describe(), opts.prefix),
        destination: dest.display().to_string(),
        root: dest.display().to_string(),
        ..Default::default()
    };
    reporter.phase("verifying", None, None);
    let listed_keys = Arc::new(std::sync::Mutex::new(HashSet::<Box<str>>::new()));
    let hashing = Arc::new(Semaphore::new(opts.hash_concurrency.max(1)));
    let root = dest.to_path_buf();
    // For the requests object_store cannot make (`HEAD ?partNumber=1`).
    let http = crate::s3::http_client()?;
    let checks = {
        let listed_keys = Arc::clone(&listed_keys);
        src.listing(&opts.prefix, true)
            .ready_chunks(1000)
            .then(move |page| {
                let (root, listed_keys) = (root.clone(), Arc::clone(&listed_keys));
                async move {
                    let page: Vec<ListedObject> = match page.into_iter().collect::<Result<_>>() {
                        Ok(p) => p,
                        Err(e) => return vec![Check::Done(Finding::Fatal(e))],
                    };
                    blocking::run(move || {
                        let mut keys = listed_keys.lock().expect("not poisoned");
                        page.into_iter()
                            .map(|o| classify(&root, o, &mut keys))
                            .collect::<Vec<_>>()
                    })
                    .await
                    .unwrap_or_else(|c| vec![Check::Done(Finding::Fatal(c.into()))])
                }
            })
    };
    let mut results = checks
        .flat_map(stream::iter)
        .map(|check| {
            let (hashing, http) = (Arc::clone(&hashing), http.clone());
            async move {
                match check {
                    Check::Done(f) => f,
                    Check::Hash {
                        key,
                        root,
                        size,
                        etag,
                    } => {
                        let etag = match src.etag_or_head(&key, etag).await {
                            Ok(etag) => etag,
                            Err(e) => return Finding::Fatal(e),
                        };
                        let _permit = hashing.acquire().await.expect("semaphore open");
                        let finding = check_file(&root, &key, size, etag.clone()).await;
                        let finding = match finding {
                            // The ETag may be no MD5 at all: ask the bucket what it is.
                            Finding::ContentDiffers(..) | Finding::Unverifiable(..)
                                if !recorded_proof(&finding) =>
                            {
                                let e = etag.as_deref();
                                ask_the_bucket(backend, &http, &root, &key, size, e, finding).await
                            }
                            f => f,
                        };
                        reporter.bytes_done(size);
                        finding
                    }
                }
            }
        })
        .buffer_unordered(64)
        .boxed();
    loop {
        let next = tokio::select! {
            biased;
            _ = opts.cancel.cancelled() => { summary.interrupted = true; break; }
            n = results.next() => n,
        };
        let Some(finding) = next else { break };
        summary.listed += 1;
        reporter.item_done("", true);
        match finding {
            Finding::Identical(n, proof) => {
                summary.identical += 1;
                summary.bytes_hashed += n;
                if let Some(p) = proof {
                    summary.proofs.add(p);
                }
            }
            Finding::Missing(key) => summary.missing.push(KeyReason {
                key,
                reason: "not on disk".into(),
            }),
            Finding::SizeDiffers(kr) => summary.size_differs.push(kr),
            Finding::ContentDiffers(kr, n) => {
                summary.bytes_hashed += n;
                summary.content_differs.push(kr);
            }
            Finding::Unverifiable(kr, n) => {
                summary.bytes_hashed += n;
                summary.unverifiable.push(kr);
            }
            Finding::Rejected(kr) => summary.rejected.push(kr),
            Finding::Fatal(e) => return Err(e),
        }
    }
    drop(results);
    if !summary.interrupted {
        let keys = std::mem::take(&mut *listed_keys.lock().expect("not poisoned"));
        let (root, prefix) = (dest.to_path_buf(), opts.prefix.clone());
        summary.extra = blocking::try_run(move || extra_files(&root, &prefix, &keys)).await?;
    }
    for list in [
        &mut summary.missing,
        &mut summary.extra,
        &mut summary.size_differs,
        &mut summary.content_differs,
        &mut summary.unverifiable,
        &mut summary.rejected,
    ] {
        list.sort_by(|a, b| a.key.cmp(&b.key));
    }
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The reason prefix of a finding that came from a proof `migrate` recorded (a checksum,
/// or a part size): no HEAD can make it weaker.
const RECORDED: &str = "recorded ";

fn recorded_proof(f: &Finding) -> bool {
    matches!(f, Finding::ContentDiffers(kr, _) if kr.reason.starts_with(RECORDED))
}

/// Checks one local file with the strongest proof at hand, offline: the checksum
/// `migrate` recorded (while the bucket holds the object it was recorded from), else the
/// ETag with the recorded part size, else the ETag with the likely part sizes.
async fn check_file(root: &Path, key: &Key, size: u64, etag: Option<String>) -> Finding {
    let (root, k) = (root.to_path_buf(), key.clone());
    let kr = |reason: String| KeyReason {
        key: key.to_string(),
        reason,
    };
    let checked = blocking::try_run(move || {
        // Opened beneath the root without following symlinks, like every local read; the
        // first pass reads the handle the records came from.
        let mut first = local::open_beneath(&root, &k).ok();
        let recorded_etag = first.as_ref().and_then(local::read_etag);
        let same_object = match (&recorded_etag, &etag) {
            (Some(r), Some(e)) => r == e,
            _ => true,
        };
        let checksum = first
            .as_ref()
            .and_then(local::read_checksum)
            .filter(|_| same_object);
        if let Some(c) = checksum {
            // A COMPOSITE checksum was recorded with the part size it was checked with.
            let part_size = first.as_ref().and_then(local::read_part_size);
            let f = match first.take() {
                Some(f) => f,
                None => local::open_beneath(&root, &k)?,
            };
            return etag::check_checksum(&c, size, part_size, f)
                .map(|v| (v, Some(c.proof()), true));
        }
        let hint = first.as_ref().and_then(local::read_part_size);
        let proof = match etag.as_deref().map(ETag::parse) {
            Some(ETag::Md5(_)) => Some(Proof::Md5),
            Some(ETag::Multipart { .. }) => Some(Proof::MultipartMd5),
            _ => None,
        };
        etag::check_reader_hinted(etag.as_deref(), size, hint, || match first.take() {
            Some(f) => Ok(f),
            None => local::open_beneath(&root, &k),
        })
        .map(|v| (v, proof, hint.is_some()))
    })
    .await;
    match checked {
        Ok((Verdict::Match { .. }, proof, _)) => Finding::Identical(size, proof),
        Ok((Verdict::Mismatch { expected, actual }, _, recorded)) => {
            let what = if recorded {
                format!("{RECORDED}proof: the bucket's object has {expected}, the file {actual}")
            } else {
                format!(
                    "content differs: the bucket's ETag is {expected}, the file hashes to {actual}"
                )
            };
            Finding::ContentDiffers(kr(what), size)
        }
        Ok((Verdict::Unverifiable { reason }, _, _)) => Finding::Unverifiable(kr(reason), size),
        Err(e) => Finding::Unverifiable(kr(format!("cannot read the local file: {e}")), 0),
    }
}

/// Hashes `file` with a full-object `checksum`'s algorithm and compares.
fn hash_with(checksum: &Checksum, size: u64, file: std::fs::File) -> std::io::Result<Verdict> {
    etag::check_checksum(checksum, size, None, file)
}

/// The integrity headers of a HEAD of `key` (with checksum mode), if the store sends any.
async fn head_headers(backend: &Backend, key: &Key) -> Option<ObjectHeaders> {
    let path = backend.path(key).ok()?;
    let opts = object_store::GetOptions {
        head: true,
        ..Default::default()
    };
    let res = backend.store.get_opts(&path, opts).await.ok()?;
    res.extensions.get::<ObjectHeaders>().cloned()
}

/// Judges again, with what a HEAD says, a file its ETag did not prove: a checksum, an
/// ETag that is no MD5, or (multipart) the part size S3 states for part 1.
async fn ask_the_bucket(
    backend: &Backend,
    http: &reqwest::Client,
    root: &Path,
    key: &Key,
    size: u64,
    etag: Option<&str>,
    finding: Finding,
) -> Finding {
    let Some(mut h) = head_headers(backend, key).await else {
        return finding;
    };
    // A COMPOSITE checksum as the proof: the part size S3 states.
    if let Some(parts) = etag::composite_wanted(etag, &h) {
        let asked = match (backend.s3.as_ref(), backend.path(key)) {
            (Some(s3), Ok(path)) => {
                let signer = s3.signer.as_ref();
                crate::s3::integrity::uniform_part_size(signer, http, &path, parts, size).await
            }
            _ => Err("the store states no part sizes".to_owned()),
        };
        h.part_size = Some(asked);
    }
    match recheck(root, key, size, etag, &h, finding).await {
        f @ Finding::Unverifiable(..) => {
            with_part_size(backend, http, root, key, size, etag, f).await
        }
        f => f,
    }
}

/// Judges a multipart ETag no likely part size reproduced with the part size S3 states
/// (`HEAD ?partNumber=1`), for files `migrate` recorded none with.
async fn with_part_size(
    backend: &Backend,
    http: &reqwest::Client,
    root: &Path,
    key: &Key,
    size: u64,
    etag: Option<&str>,
    finding: Finding,
) -> Finding {
    let Some(ETag::Multipart { parts, .. }) = etag.map(ETag::parse) else {
        return finding;
    };
    let (Some(s3), Ok(path)) = (backend.s3.as_ref(), backend.path(key)) else {
        return finding;
    };
    let Ok(h) = crate::s3::integrity::head_part(s3.signer.as_ref(), http, &path, 1).await else {
        return finding;
    };
    let (Some(p), n) = (h.content_length, u64::from(parts)) else {
        return finding;
    };
    if h.parts_count != Some(parts) || p == 0 || (n - 1) * p >= size || size > n * p {
        return finding;
    }
    let (root, k, e) = (root.to_path_buf(), key.clone(), etag.map(str::to_owned));
    let v = blocking::try_run(move || {
        etag::check_reader_hinted(e.as_deref(), size, Some(p), || {
            local::open_beneath(&root, &k)
        })
    })
    .await;
    let kr = |reason: String| KeyReason {
        key: key.to_string(),
        reason,
    };
    match v {
        Ok(Verdict::Match { .. }) => Finding::Identical(size, Some(Proof::MultipartMd5)),
        Ok(Verdict::Mismatch { expected, actual }) => Finding::ContentDiffers(
            kr(format!(
                "content differs: the bucket's ETag is {expected}, the file hashes to {actual}"
            )),
            size,
        ),
        _ => finding,
    }
}

/// Judges again a file the ETag could not prove, with what a HEAD said: a full-object
/// checksum is checked; an ETag the headers call opaque (SSE-KMS, SSE-C) makes the
/// object unverifiable, never "differs".
async fn recheck(
    root: &Path,
    key: &Key,
    size: u64,
    etag: Option<&str>,
    h: &ObjectHeaders,
    finding: Finding,
) -> Finding {
    let kr = |reason: String| KeyReason {
        key: key.to_string(),
        reason,
    };
    if let Some(c) = h.best_checksum().cloned() {
        let (root, k) = (root.to_path_buf(), key.clone());
        let proof = c.proof();
        let v =
            blocking::try_run(move || hash_with(&c, size, local::open_beneath(&root, &k)?)).await;
        return match v {
            Ok(Verdict::Match { .. }) => Finding::Identical(size, Some(proof)),
            Ok(Verdict::Mismatch { expected, actual }) => Finding::ContentDiffers(
                kr(format!("content differs: the bucket's checksum is {expected}, the file hashes to {actual}")),
                size,
            ),
            Ok(Verdict::Unverifiable { reason }) => Finding::Unverifiable(kr(reason), size),
            Err(e) => Finding::Unverifiable(kr(format!("cannot read the local file: {e}")), 0),
        };
    }
    if h.part_size.is_some() {
        // Set only when a COMPOSITE checksum is the proof (see `ask_the_bucket`).
        let (root, k, e, h) = (
            root.to_path_buf(),
            key.clone(),
            etag.map(str::to_owned),
            h.clone(),
        );
        let v = blocking::try_run(move || {
            let f = local::open_beneath(&root, &k)?;
            etag::check_open_file_for_object(&f, size, e.as_deref(), Some(&h))
        })
        .await;
        return match v {
            Ok((Verdict::Match { .. }, proof)) => Finding::Identical(size, Some(proof)),
            Ok((Verdict::Mismatch { expected, actual }, _)) => Finding::ContentDiffers(
                kr(format!("content differs: the bucket's checksum is {expected}, the file hashes to {actual}")),
                size,
            ),
            Ok((Verdict::Unverifiable { reason }, _)) => Finding::Unverifiable(kr(reason), size),
            Err(e) => Finding::Unverifiable(kr(format!("cannot read the local file: {e}")), 0),
        };
    }
    match h.opaque_etag_reason() {
        Some(reason) => Finding::Unverifiable(
            kr(format!(
                "{reason} and the bucket sent no full-object checksum (ETag {})",
                etag.unwrap_or("none")
            )),
            size,
        ),
        None => finding,
    }
}

fn classify(root: &Path, o: ListedObject, keys: &mut HashSet<Box<str>>) -> Check {
    let key = match Placement::of(&o) {
        // A folder marker: identical when its directory exists (a cleanup may have pruned it).
        Placement::Folder(None) => return Check::Done(Finding::Identical(0, None)),
        Placement::Folder(Some(dir)) => {
            return Check::Done(match local::is_dir_beneath(root, &dir) {
                Ok(true) => Finding::Identical(0, None),
                Ok(false) => Finding::Missing(o.key),
                Err(e) => Finding::Unverifiable(
                    KeyReason {
                        key: o.key,
                        reason: format!("cannot stat the local directory: {e}"),
                    },
                    0,
                ),
            })
        }
        Placement::Unsafe { reason, folder } => {
            let reason = if folder {
                reason.to_string()
            } else {
                format!("{reason}: cannot be stored on disk")
            };
            return Check::Done(Finding::Rejected(KeyReason { key: o.key, reason }));
        }
        Placement::File(k) => k,
    };
    keys.insert(key.as_str().into());
    match local::stat_file(root, &key) {
        Ok(None) => Check::Done(Finding::Missing(o.key)),
        Ok(Some((size, _))) if size != o.size => Check::Done(Finding::SizeDiffers(KeyReason {
            key: o.key,
            reason: format!("{} bytes in the bucket, {size} on disk", o.size),
        })),
        Ok(Some(_)) => Check::Hash {
            root: root.to_path_buf(),
            key,
            size: o.size,
            etag: o.etag,
        },
        Err(e) => Check::Done(Finding::Unverifiable(
            KeyReason {
                key: o.key,
                reason: format!("cannot stat the local file: {e}"),
            },
            0,
        )),
    }
}

/// Regular files (and symlinks) under `root` whose key is not in `keys`.
fn extra_files(root: &Path, prefix: &str, keys: &HashSet<Box<str>>) -> Result<Vec<KeyReason>> {
    let mut out = Vec::new();
    for entry in Walker::new(root, WalkOptions::default())? {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                out.push(KeyReason {
                    key: e.path.display().to_string(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let rel = entry.path().to_string_lossy();
        if !rel.starts_with(prefix) {
            continue;
        }
        match entry.kind() {
            EntryKind::File if !keys.contains(rel.as_ref()) => out.push(KeyReason {
                key: rel.into_owned(),
                reason: "on disk, not in the bucket".into(),
            }),
            EntryKind::Symlink => out.push(KeyReason {
                key: rel.into_owned(),
                reason: "a symbolic link in the store (never created by migrate)".into(),
            }),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(key: &str) -> ListedObject {
        ListedObject {
            key: key.into(),
            size: 0,
            last_modified: chrono::Utc::now(),
            etag: None,
            problem: None,
        }
    }

    fn finding(root: &Path, key: &str) -> String {
        match classify(root, marker(key), &mut HashSet::new()) {
            Check::Done(Finding::Identical(..)) => "identical".into(),
            Check::Done(Finding::Missing(k)) => format!("missing {k}"),
            _ => "other".into(),
        }
    }

    #[test]
    fn a_folder_marker_is_identical_only_when_its_directory_exists() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("clips/kept")).unwrap();
        std::fs::write(tmp.path().join("clips/file"), b"").unwrap();
        assert_eq!(finding(tmp.path(), "clips/kept/"), "identical");
        assert_eq!(finding(tmp.path(), "/"), "identical");
        // Say a cleanup pruned it, or a file holds the name.
        assert_eq!(finding(tmp.path(), "clips/gone/"), "missing clips/gone/");
        assert_eq!(finding(tmp.path(), "clips/file/"), "missing clips/file/");
    }
}
