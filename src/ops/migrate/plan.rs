//! The plan phase of `s3_to_local`: the run lock, classifying each listed object against
//! what is on disk, and the preflight that refuses a run the disk cannot hold.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};

use crate::blocking;
use crate::checksum::Proof;
use crate::error::{Error, Result};
use crate::etag::{self, Verdict};
use crate::key::Key;
use crate::local::{self, Expect, StoreLock};
use crate::s3::list::ListedObject;
use crate::size::human_bytes;
use crate::walk::{EntryKind, WalkOptions, Walker};

use super::*;

/// The store lock of a run, taken before planning. Until [`RunLock::keep`], dropping it
/// removes the lock file and destination directory it created, so a run refused before
/// copying (no space, no credentials, nothing to do) leaves the disk as it found it.
pub(super) struct RunLock {
    pub(super) dest: PathBuf,
    pub(super) lock: Option<StoreLock>,
    pub(super) created_dir: bool,
    pub(super) created_lock_file: bool,
}

impl RunLock {
    pub(super) fn take(dest: &Path) -> Result<RunLock> {
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
    pub(super) fn keep(&mut self) {
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

/// Finds keys that need a directory where an earlier key is a file (`x` then `x/y`).
/// Relies on listings being in byte order, so it only keeps the file keys that could
/// still be a prefix of what comes next.
#[derive(Default)]
pub(super) struct ClashGuard {
    pub(super) open: Vec<String>,
}

impl ClashGuard {
    /// True when `key` lies under an earlier file key; otherwise remembers `key`.
    pub(super) fn clashes(&mut self, key: &str) -> bool {
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
pub(super) fn within_max_age(
    page: Vec<(u64, ListedObject)>,
    max_age: Option<std::time::Duration>,
) -> Vec<(u64, ListedObject)> {
    let Some(age) = max_age else { return page };
    let cutoff =
        chrono::Utc::now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
    page.into_iter()
        .filter(|(_, o)| o.last_modified >= cutoff)
        .collect()
}

/// Numbers a listing page's entries by their position in the whole listing, `first` on.
pub(super) fn numbered(page: Vec<ListedObject>, first: u64) -> Vec<(u64, ListedObject)> {
    (first..).zip(page).collect()
}

/// Classifies one listing page (each entry with its position in the listing): clash
/// detection in order, then local stats off the runtime.
pub(super) async fn classify_page(
    root: &Path,
    page: Vec<(u64, ListedObject)>,
    clashes: &mut ClashGuard,
    by_content: bool,
) -> Result<Vec<Class>> {
    let mut out: Vec<Option<Class>> = Vec::with_capacity(page.len());
    let mut rest = Vec::new();
    for (seq, o) in page {
        if clashes.clashes(&o.key) {
            out.push(Some(Class::Rejected(KeyReason {
                key: o.key,
                reason: "path clashes with another key's file (a key cannot be both a file and a directory on disk)".into(),
            })));
        } else {
            out.push(None);
            rest.push((seq, o));
        }
    }
    let root = root.to_path_buf();
    let mut classified = blocking::run(move || {
        rest.into_iter()
            .map(|(seq, o)| match classify(&root, o, by_content) {
                Class::Copy(p) => Class::Copy(Planned { seq, ..p }),
                other => other,
            })
            .collect::<Vec<_>>()
    })
    .await?
    .into_iter();
    Ok(out
        .into_iter()
        .map(|c| c.unwrap_or_else(|| classified.next().expect("one class per object")))
        .collect())
}

pub(super) fn classify(root: &Path, o: ListedObject, by_content: bool) -> Class {
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
        seq: 0,
    })
}

/// `--checksum`: whether the local file holds the listed object's content: by the checksum
/// recorded when it was copied (while it was copied from this very ETag), else by hashing
/// it against the ETag (with the recorded part size, if any). `None` when neither can tell
/// (an opaque ETag and nothing recorded, an unreadable file).
pub(super) fn same_content(root: &Path, key: &Key, o: &ListedObject) -> Option<bool> {
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
pub(super) fn newer(mtime: SystemTime, lm: DateTime<Utc>) -> bool {
    DateTime::<Utc>::from(mtime).timestamp_millis() > lm.timestamp_millis()
}

/// Local mtimes are set from LastModified, which listings give to the millisecond.
pub(super) fn same_time(mtime: SystemTime, lm: DateTime<Utc>) -> bool {
    DateTime::<Utc>::from(mtime).timestamp_millis() == lm.timestamp_millis()
}

/// What the copy pass will need on disk.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Needs {
    /// Apparent bytes.
    pub(super) bytes: u64,
    /// Bytes once rounded up to the filesystem's block size.
    pub(super) allocated: u64,
    /// Files to create.
    pub(super) files: u64,
}

/// statvfs of the filesystem `dest` is (or will be) on: the nearest existing ancestor,
/// since a dry run may name a directory that does not exist yet.
pub(super) fn fs_of(dest: &Path) -> Result<rustix::fs::StatVfs> {
    let mut probe = dest.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    local::fs_stats(&probe).map_err(|e| Error::io("statvfs", &probe, e))
}

pub(super) async fn preflight(dest: &Path, needs: Needs, opts: &MigrateOptions) -> Result<()> {
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
pub(super) fn store_bytes(root: &Path) -> Result<u64> {
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
pub(super) async fn remove_leftover_temp_files(root: &Path) -> Result<u64> {
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
