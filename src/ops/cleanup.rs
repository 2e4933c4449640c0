//! `cleanup`: delete old clips from a local store, and evict the oldest when it is too big.
//!
//! It runs from cron on the production server, unattended, against a tree it did not
//! create, so it is written to be safe first:
//!
//! - files are found by the no-follow walker (`walk::Walker`) (no-follow, one filesystem, stowage's own
//!   `.stowage*` files skipped) and deleted with `unlinkat(parent_fd, name)` only after a
//!   fresh `statat(AT_SYMLINK_NOFOLLOW)` shows the name still holds the same regular file
//!   (same device and inode) and that it is still eligible (still old; for eviction,
//!   unmodified). Symbolic links, FIFOs and the like are never deleted; a link's target is
//!   never looked at.
//! - an exclusive `flock` on `<root>/.stowage.lock` (mode 0600) keeps two runs apart: the
//!   second waits up to [`CleanupOptions::wait`], then returns with
//!   [`CleanupSummary::locked`] set and the holder named. A dry run takes no lock and
//!   creates no file, so it never makes a real run skip.
//! - it refuses what looks like a typo before deleting anything: `/`, a root not marked
//!   as a store ([`crate::local::STORE_MARKER_NAME`]; [`CleanupOptions::init_store`]
//!   marks it), a zero `max_age` or `max_used`, and — unless [`CleanupOptions::force`] — a
//!   run that would delete more than half of the store's files (found by a dry run under
//!   the lock). The size pass never deletes a file younger than
//!   [`CleanupOptions::min_age`], and [`CleanupOptions::max_delete`] caps a run.
//! - a file that cannot be deleted is recorded in [`CleanupSummary::errors`] and the run
//!   goes on; one that vanished or changed meanwhile is counted, not an error.
//! - directories left empty are removed (never the root). A directory is only removed if
//!   this run emptied it or it was already older than `max_age`, so a directory the
//!   service has just created for a new clip is left alone.
//!
//! # Memory
//!
//! The age pass streams the walk: O(depth), whatever the number of files.
//!
//! The `max_used` pass needs the oldest files first. It keeps at most
//! [`MAX_EVICTION_CANDIDATES`] (65,536) candidates — a bounded max-heap on
//! `(mtime, path)` holding the oldest seen so far, a few MB of paths — then deletes them
//! oldest first until the store fits. If that was not enough, it walks again and takes
//! the next 65,536 older than none already handled (a watermark on `(mtime, path)`).
//! Video clips are large, so one round frees tens of GB; a store of tiny files needs a
//! walk per 65,536 evictions, trading time for memory on a 2 GB server.

use std::collections::BinaryHeap;
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat};
use rustix::io::Errno;

use crate::local::{self, LockHeld, StoreLock, DELETE_PREFIX, LOCK_FILE_NAME, STORE_MARKER_NAME};
use crate::ops::KeyReason;
use crate::report::{NoopReporter, Reporter};
use crate::size::{human_bytes, SizeSpec};
use crate::walk::{system_time, EntryKind, WalkOptions, Walker};
use crate::{Error, Result};

/// [`CleanupOptions::min_age`] unless set: an hour.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(3600);

/// How many example paths a refusal names.
const EXAMPLES: usize = 3;

/// Most eviction candidates held in memory at once by the `max_used` pass.
pub const MAX_EVICTION_CANDIDATES: usize = 65_536;

/// A hook called with the relative path of each file just before it is re-checked and
/// deleted. Only for tests that need to change the tree at that exact moment.
#[doc(hidden)]
pub type BeforeDelete = Arc<dyn Fn(&Path) + Send + Sync>;

/// What to clean up.
#[derive(Clone)]
#[non_exhaustive]
pub struct CleanupOptions {
    /// The store root. Never deleted itself.
    pub root: PathBuf,
    /// Regular files whose mtime is older than this are deleted.
    pub max_age: Duration,
    /// After the age pass, if the store (sum of file sizes) is larger than this, the
    /// oldest files are deleted until it fits. A percentage is of the filesystem's size.
    pub max_used: Option<SizeSpec>,
    /// The size pass never deletes a file modified less than this long ago: the service
    /// may have just written it. One hour by default.
    pub min_age: Duration,
    /// Report what would be deleted (through [`Reporter::note`]) and delete nothing.
    pub dry_run: bool,
    /// Go ahead even when the run would delete more than half of the store's files
    /// (otherwise refused before anything is deleted).
    pub force: bool,
    /// Delete at most this many files in one run; then stop and set
    /// [`CleanupSummary::max_delete_reached`].
    pub max_delete: Option<u64>,
    /// Mark the root as a stowage store ([`crate::local::mark_store`]) if it is not yet;
    /// an unmarked root is refused otherwise. Never allowed for `/`.
    pub init_store: bool,
    /// How long to wait for another run (cleanup or migrate) to release the store lock
    /// before giving up with [`CleanupSummary::locked`] set.
    pub wait: Duration,
    #[doc(hidden)]
    pub before_delete: Option<BeforeDelete>,
    /// Called once a file passed its last check, just before it is taken away.
    #[doc(hidden)]
    pub after_check: Option<BeforeDelete>,
}

impl CleanupOptions {
    /// Options deleting files under `root` older than `max_age`, no size limit, for real.
    pub fn new(root: impl Into<PathBuf>, max_age: Duration) -> Self {
        CleanupOptions {
            root: root.into(),
            max_age,
            max_used: None,
            min_age: DEFAULT_MIN_AGE,
            dry_run: false,
            force: false,
            max_delete: None,
            init_store: false,
            wait: Duration::ZERO,
            before_delete: None,
            after_check: None,
        }
    }
}

impl std::fmt::Debug for CleanupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CleanupOptions")
            .field("root", &self.root)
            .field("max_age", &self.max_age)
            .field("max_used", &self.max_used)
            .field("min_age", &self.min_age)
            .field("dry_run", &self.dry_run)
            .field("force", &self.force)
            .field("max_delete", &self.max_delete)
            .field("init_store", &self.init_store)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

/// Serializes a path as a string, a name that is not UTF-8 with U+FFFD in place of the
/// bad bytes: one odd file name must never stop a `--json` summary from being printed.
/// (The human output shows the same lossy form.)
pub(crate) fn lossy_path<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string_lossy())
}

/// What a cleanup run did (or, with `dry_run`, would do).
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct CleanupSummary {
    /// The store root.
    #[serde(serialize_with = "lossy_path")]
    pub root: PathBuf,
    /// Nothing was deleted: the figures are what a real run would do now.
    pub dry_run: bool,
    /// Another run held the lock for all of [`CleanupOptions::wait`]; this one did
    /// nothing and all counts are zero.
    pub locked: bool,
    /// With `locked`: who holds the lock (pid, since when, command), as it recorded itself.
    pub lock_holder: Option<String>,
    /// The `max_age` used, in seconds.
    pub max_age_s: u64,
    /// The age cutoff that `max_age` gave: files modified before this (RFC 3339) are old.
    pub modified_before: String,
    /// Regular files of the store seen by the age pass.
    pub store_files: u64,
    /// Files deleted (age and size passes together): the length of `deleted`.
    pub deleted_count: u64,
    /// The files deleted (or, in a dry run, that would be), keys relative to `root`, each
    /// with the pass that deleted it.
    pub deleted: Vec<KeyReason>,
    /// Bytes freed (sum of the deleted files' sizes).
    pub bytes_freed: u64,
    /// Of `deleted`, files deleted because they were older than `max_age`.
    pub deleted_for_age: u64,
    /// Of `deleted`, files deleted oldest-first to bring the store under `max_used`.
    pub deleted_for_size: u64,
    /// Directories removed because they were left empty.
    pub dirs_removed: u64,
    /// `.stowage-del.*` files left by a run that crashed mid-delete, removed.
    pub leftovers_removed: u64,
    /// The `max_used` limit in bytes, when one was given.
    pub max_used_bytes: Option<u64>,
    /// Store size (sum of file sizes) after the size pass, when `max_used` was given.
    pub store_bytes_after: Option<u64>,
    /// Files that disappeared before we deleted them (someone else did).
    pub vanished: u64,
    /// Files left alone because they were modified or replaced after being listed.
    pub changed: u64,
    /// Symbolic links seen and left alone (never followed, never deleted).
    pub symlinks_skipped: u64,
    /// Other filesystems mounted inside the root, not entered (keys relative to `root`).
    pub mounts_skipped: Vec<KeyReason>,
    /// Files and directories that could not be read or deleted, keys relative to `root`.
    pub errors: Vec<KeyReason>,
    /// The run stopped deleting at [`CleanupOptions::max_delete`] files.
    pub max_delete_reached: bool,
    /// Wall-clock duration of the run.
    pub elapsed_s: f64,
    /// The first few paths deleted (or, in a dry run, that would be), for a refusal.
    #[serde(skip)]
    examples: Vec<PathBuf>,
}

impl CleanupSummary {
    fn new(opts: &CleanupOptions) -> Self {
        CleanupSummary {
            root: opts.root.clone(),
            dry_run: opts.dry_run,
            locked: false,
            lock_holder: None,
            max_age_s: opts.max_age.as_secs(),
            modified_before: String::new(),
            store_files: 0,
            deleted_count: 0,
            deleted: Vec::new(),
            bytes_freed: 0,
            deleted_for_age: 0,
            deleted_for_size: 0,
            dirs_removed: 0,
            leftovers_removed: 0,
            max_used_bytes: None,
            store_bytes_after: None,
            vanished: 0,
            changed: 0,
            symlinks_skipped: 0,
            mounts_skipped: Vec::new(),
            errors: Vec::new(),
            max_delete_reached: false,
            elapsed_s: 0.0,
            examples: Vec::new(),
        }
    }

    /// Counts one file deleted (or that a dry run would delete).
    fn deleted(&mut self, abs: &Path, size: u64, for_age: bool) {
        self.deleted_count += 1;
        self.bytes_freed += size;
        let reason = if for_age {
            self.deleted_for_age += 1;
            "older than the maximum age"
        } else {
            self.deleted_for_size += 1;
            "oldest while the store was over its size limit"
        };
        self.deleted.push(KeyReason::at(&self.root, abs, reason));
        if self.examples.len() < EXAMPLES {
            self.examples.push(abs.to_path_buf());
        }
    }

    /// More than half of the store's files would go: what a typo in a limit looks like.
    fn deletes_most_of_the_store(&self) -> bool {
        self.deleted_count > 0 && self.deleted_count.saturating_mul(2) > self.store_files
    }

    fn what_it_deletes(&self) -> String {
        let ex: Vec<_> = self
            .examples
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        format!(
            "{} of {} files ({}), e.g. {}",
            self.deleted_count,
            self.store_files,
            human_bytes(self.bytes_freed),
            ex.join(", ")
        )
    }

    fn error(&mut self, path: PathBuf, reason: impl Into<String>) {
        self.errors.push(KeyReason::at(&self.root, &path, reason));
    }
}

/// Deletes regular files under `opts.root` older than `opts.max_age`, then, with
/// `opts.max_used`, the oldest files until the store fits. Blocking; call it from a
/// blocking thread in async code.
///
/// `Err` only when the run cannot start or go on at all (root missing or unreadable, lock
/// file cannot be created); per-file failures are in [`CleanupSummary::errors`].
pub fn cleanup(opts: &CleanupOptions, reporter: &dyn Reporter) -> Result<CleanupSummary> {
    let started = Instant::now();
    check_limits(opts)?;
    let mut summary = CleanupSummary::new(opts);
    let root = &opts.root;
    let walker = Walker::new(root, age_walk())?;
    let root_fd = walker.root_fd();
    check_store_root(&root_fd, opts, reporter)?;

    let _lock = if opts.dry_run {
        None
    } else {
        match take_lock(&root_fd, root, opts.wait)? {
            Ok(lock) => Some(lock),
            Err(held) => {
                summary.locked = true;
                reporter.note(&format!(
                    "another stowage run (cleanup or migrate) holds {}: {held}; nothing done",
                    root.join(LOCK_FILE_NAME).display()
                ));
                summary.lock_holder = Some(held.holder);
                summary.elapsed_s = started.elapsed().as_secs_f64();
                return Ok(summary);
            }
        }
    };

    if !opts.dry_run && !opts.force {
        // Plan first (a dry run, under the lock) so a typo is refused before any delete.
        let mut plan_opts = opts.clone();
        plan_opts.dry_run = true;
        plan_opts.before_delete = None;
        let mut plan = CleanupSummary::new(&plan_opts);
        let plan_walker = Walker::new(root, age_walk())?;
        let plan_fd = plan_walker.root_fd();
        run_passes(&plan_opts, plan_walker, &plan_fd, &mut plan, &NoopReporter)?;
        if plan.deletes_most_of_the_store() {
            return Err(Error::config(
                "force",
                format!(
                    "this run would delete {}: more than half of the store under {}. \
                     Nothing was deleted. Check `max_age` and `max_used`; if that is \
                     really meant, run again with `force`",
                    plan.what_it_deletes(),
                    root.display()
                ),
            ));
        }
    }

    run_passes(opts, walker, &root_fd, &mut summary, reporter)?;
    if opts.dry_run && !opts.force && summary.deletes_most_of_the_store() {
        reporter.note(&format!(
            "a real run would refuse without `force`: it would delete {}, more than half of the store",
            summary.what_it_deletes()
        ));
    }
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The age pass walks stowage's own names too, to remove `.stowage-del.*` files left by
/// a crash (and skips every other one, and everything under a reserved directory).
fn age_walk() -> WalkOptions {
    WalkOptions::default()
        .dirs_post_order(true)
        .include_reserved(true)
}

/// The age pass, then the size pass when there is a `max_used`.
fn run_passes(
    opts: &CleanupOptions,
    walker: Walker,
    root_fd: &Arc<OwnedFd>,
    summary: &mut CleanupSummary,
    reporter: &dyn Reporter,
) -> Result<()> {
    let now = SystemTime::now();
    let cutoff = age_cutoff(now, opts.max_age);
    summary.modified_before = humantime::format_rfc3339_seconds(cutoff).to_string();
    age_pass(opts, walker, cutoff, summary, reporter);
    if let Some(spec) = opts.max_used {
        let vfs = rustix::fs::fstatvfs(&**root_fd)
            .map_err(|e| Error::io("statvfs", &opts.root, e.into()))?;
        let limit = spec.resolve(vfs.f_blocks.saturating_mul(vfs.f_frsize));
        summary.max_used_bytes = Some(limit);
        let young = age_cutoff(now, opts.min_age);
        size_pass(opts, root_fd, cutoff, young, limit, summary, reporter)?;
    }
    Ok(())
}

/// Refuses limits that would delete every file: they are typos, never a cron line.
fn check_limits(opts: &CleanupOptions) -> Result<()> {
    if opts.max_age.is_zero() {
        return Err(Error::config(
            "max_age",
            "must be more than zero, e.g. 7d or 24h",
        ));
    }
    match opts.max_used {
        Some(SizeSpec::Bytes(0)) => Err(Error::config(
            "max_used",
            "0 would delete every file; give the most the store may hold, e.g. 50GB, 50GiB or 80% (of the filesystem)",
        )),
        Some(SizeSpec::Percent(p)) if p <= 0.0 => Err(Error::config(
            "max_used",
            "0% would delete every file; give the most the store may hold, e.g. 80% (of the filesystem), 50GB or 50GiB",
        )),
        _ => Ok(()),
    }
}

/// Refuses `/`, and a root that is not marked as a stowage store (saying so when it is a
/// mount point, i.e. the root of a filesystem), unless `init_store` marks it now.
fn check_store_root(
    root_fd: &OwnedFd,
    opts: &CleanupOptions,
    reporter: &dyn Reporter,
) -> Result<()> {
    let root = &opts.root;
    let io = |e: Errno| Error::io("stat", root, e.into());
    let st = rustix::fs::fstat(root_fd).map_err(io)?;
    let parent = rustix::fs::statat(root_fd, "..", AtFlags::empty()).map_err(io)?;
    if (st.st_dev, st.st_ino) == (parent.st_dev, parent.st_ino) {
        return Err(Error::config(
            "root",
            format!(
                "{} is the root of the filesystem (/); cleanup never runs there: give the store's own directory",
                root.display()
            ),
        ));
    }
    if local::is_marked_store(root_fd).map_err(|e| Error::io("stat", root, e))? {
        return Ok(());
    }
    if opts.init_store {
        if opts.dry_run {
            reporter.note(&format!(
                "would mark {} as a stowage store ({})",
                root.display(),
                STORE_MARKER_NAME
            ));
        } else {
            local::mark_store_at(root_fd)
                .map_err(|e| Error::io("mark the store", root.join(STORE_MARKER_NAME), e))?;
        }
        return Ok(());
    }
    let mount = if st.st_dev != parent.st_dev {
        " is a mount point (the root of a filesystem) and"
    } else {
        ""
    };
    Err(Error::config(
        "init_store",
        format!(
            "{}{mount} is not marked as a stowage store (it has no {STORE_MARKER_NAME} file), \
             so cleanup will not delete anything there. If it really is the store, mark it \
             once with `init_store`",
            root.display()
        ),
    ))
}

fn at_max_delete(opts: &CleanupOptions, summary: &mut CleanupSummary) -> bool {
    let reached = opts.max_delete.is_some_and(|m| summary.deleted_count >= m);
    summary.max_delete_reached |= reached;
    reached
}

/// Files with an mtime strictly before this are "older than `max_age`".
pub(crate) fn age_cutoff(now: SystemTime, max_age: Duration) -> SystemTime {
    now.checked_sub(max_age).unwrap_or(UNIX_EPOCH)
}

/// `Ok(lock)` when we hold the lock, `Err(holder)` when another run (cleanup or migrate)
/// kept it for all of `wait`.
fn take_lock(
    root_fd: &OwnedFd,
    root: &Path,
    wait: Duration,
) -> Result<std::result::Result<StoreLock, LockHeld>> {
    StoreLock::acquire_at(root_fd, wait).map_err(|e| {
        Error::io(
            "lock (is the store root writable by this user?)",
            root.join(LOCK_FILE_NAME),
            e,
        )
    })
}

fn age_pass(
    opts: &CleanupOptions,
    walker: Walker,
    cutoff: SystemTime,
    summary: &mut CleanupSummary,
    reporter: &dyn Reporter,
) {
    reporter.phase(
        if opts.dry_run {
            "listing old files"
        } else {
            "deleting old files"
        },
        None,
        None,
    );
    let root = opts.root.clone();
    // emptied[d]: this run deleted something in the directory currently open at depth d
    // (the root is depth 0). Walk order is depth-first, so one flag per level suffices.
    let mut emptied: Vec<bool> = vec![false];
    fn mark(emptied: &mut Vec<bool>, depth: usize) {
        if emptied.len() <= depth {
            emptied.resize(depth + 1, false);
        }
        emptied[depth] = true;
    }
    for item in walker {
        let entry = match item {
            Ok(entry) => entry,
            Err(e) => {
                reporter.item_done(&e.path.to_string_lossy(), false);
                summary.error(e.path.clone(), e.to_string());
                continue;
            }
        };
        let depth = entry.depth();
        // Entries at `depth` live in the directory at `depth - 1`; flags deeper than that
        // belong to subtrees already finished, except a post-order directory's own flag.
        emptied.truncate(if entry.kind() == EntryKind::Dir {
            depth + 1
        } else {
            depth
        });
        let abs = root.join(entry.path());
        // stowage's own names, and anything under a directory with such a name, are never
        // store content. Under the lock, a `.stowage-del.*` file can only be a crashed
        // run's leftover: it had passed its checks and was about to be unlinked.
        let reserved_at = entry.path().iter().position(local::is_stowage_name);
        if let Some(at) = reserved_at {
            let leftover = at + 1 == entry.path().iter().count()
                && entry.kind() == EntryKind::File
                && entry
                    .file_name()
                    .as_bytes()
                    .starts_with(DELETE_PREFIX.as_bytes());
            if leftover && !opts.dry_run {
                match rustix::fs::unlinkat(entry.parent_fd(), entry.file_name_c(), AtFlags::empty())
                {
                    Ok(()) => {
                        summary.leftovers_removed += 1;
                        mark(&mut emptied, depth - 1);
                    }
                    Err(Errno::NOENT) => {}
                    Err(e) => summary.error(abs, delete_reason(&e.into())),
                }
            }
            continue;
        }
        match entry.kind() {
            EntryKind::File => {
                reporter.items_found(1);
                summary.store_files += 1;
                if entry.mtime() >= cutoff || at_max_delete(opts, summary) {
                    continue;
                }
                if opts.dry_run {
                    reporter.note(&format!(
                        "would delete {} ({}, modified {})",
                        abs.display(),
                        human_bytes(entry.size()),
                        humantime::format_rfc3339_seconds(entry.mtime())
                    ));
                    summary.deleted(&abs, entry.size(), true);
                    continue;
                }
                if let Some(hook) = &opts.before_delete {
                    hook(entry.path());
                }
                let eligible =
                    |st: &Stat| system_time(st.st_mtime, st.st_mtime_nsec as i64) < cutoff;
                let after_check = || {
                    if let Some(hook) = &opts.after_check {
                        hook(entry.path());
                    }
                };
                match delete_file(
                    entry.parent_fd(),
                    entry.file_name_c(),
                    entry.stat(),
                    eligible,
                    &after_check,
                ) {
                    Outcome::Deleted => {
                        summary.deleted(&abs, entry.size(), true);
                        reporter.bytes_done(entry.size());
                        reporter.item_done(&abs.to_string_lossy(), true);
                        mark(&mut emptied, depth - 1);
                    }
                    Outcome::Vanished => summary.vanished += 1,
                    Outcome::Changed => summary.changed += 1,
                    Outcome::Replaced => {
                        summary.changed += 1;
                        summary.error(abs, REPLACED);
                    }
                    Outcome::Failed(e) => {
                        reporter.item_done(&abs.to_string_lossy(), false);
                        summary.error(abs, delete_reason(&e));
                    }
                }
            }
            EntryKind::Dir => {
                let emptied_here = emptied.get(depth).copied().unwrap_or(false);
                emptied.truncate(depth);
                if opts.dry_run || !(emptied_here || entry.mtime() < cutoff) {
                    continue;
                }
                let same_dir = matches!(entry.stat_again(), Ok(st) if entry.is_same_file(&st));
                if !same_dir {
                    continue; // replaced (by a symlink, say) since listed: not ours to remove
                }
                match rustix::fs::unlinkat(
                    entry.parent_fd(),
                    entry.file_name_c(),
                    AtFlags::REMOVEDIR,
                ) {
                    Ok(()) => {
                        summary.dirs_removed += 1;
                        mark(&mut emptied, depth - 1);
                    }
                    // Not empty (files kept, or new ones), or gone: both fine.
                    Err(Errno::NOTEMPTY | Errno::EXIST | Errno::NOENT) => {}
                    Err(e) => summary.error(
                        abs,
                        format!("cannot remove empty directory: {}", std::io::Error::from(e)),
                    ),
                }
            }
            EntryKind::Symlink => summary.symlinks_skipped += 1,
            EntryKind::MountPoint => {
                reporter.note(&format!(
                    "not entering {}: another filesystem is mounted there",
                    abs.display()
                ));
                summary.mounts_skipped.push(KeyReason::at(
                    Path::new(""),
                    entry.path(),
                    "another filesystem is mounted there: not entered",
                ));
            }
            EntryKind::Other => {}
        }
    }
}

/// How one delete attempt ended.
enum Outcome {
    Deleted,
    Vanished,
    Changed,
    /// Written again twice during the delete: the newer file kept the name.
    Replaced,
    Failed(std::io::Error),
}

/// Deletes `name` in `parent` if it is still the regular file `listed` and `eligible`
/// accepts its fresh `stat`.
///
/// Deleting by name after a check would delete whatever the name holds by then (a new
/// clip the service renamed over it). So the file is first renamed to a private name
/// (`RENAME_NOREPLACE`), checked again there, where nobody else can swap it, and only then
/// unlinked; if it is not the one listed, it is renamed back.
fn delete_file(
    parent: BorrowedFd<'_>,
    name: &CStr,
    listed: &Stat,
    eligible: impl Fn(&Stat) -> bool,
    after_check: &dyn Fn(),
) -> Outcome {
    let is_listed = |st: &Stat| {
        FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
            && st.st_ino == listed.st_ino
            && st.st_dev == listed.st_dev
            && eligible(st)
    };
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if is_listed(&st) => {}
        Ok(_) => return Outcome::Changed,
        Err(Errno::NOENT) => return Outcome::Vanished,
        Err(e) => return Outcome::Failed(e.into()),
    }
    after_check();
    let private = CString::new(format!("{DELETE_PREFIX}{:016x}", fastrand::u64(..)))
        .expect("no NUL in a hex name");
    match rustix::fs::renameat_with(parent, name, parent, &*private, RenameFlags::NOREPLACE) {
        Ok(()) => {}
        Err(Errno::NOENT) => return Outcome::Vanished,
        // A filesystem without RENAME_NOREPLACE: the plain check-then-unlink.
        Err(Errno::INVAL | Errno::NOSYS) => {
            return match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
                Ok(()) => Outcome::Deleted,
                Err(Errno::NOENT) => Outcome::Vanished,
                Err(e) => Outcome::Failed(e.into()),
            }
        }
        Err(e) => return Outcome::Failed(e.into()),
    }
    let taken = rustix::fs::statat(parent, &*private, AtFlags::SYMLINK_NOFOLLOW);
    if !matches!(&taken, Ok(st) if is_listed(st)) {
        return put_back(parent, &private, name, Outcome::Changed);
    }
    match rustix::fs::unlinkat(parent, &*private, AtFlags::empty()) {
        Ok(()) => Outcome::Deleted,
        Err(e) => put_back(parent, &private, name, Outcome::Failed(e.into())),
    }
}

/// Renames the file taken away as `private` back to `name`, then returns `outcome`. If
/// the name was taken again meanwhile, the newer of the two files keeps it and the other
/// is deleted (what the later rename would have done without cleanup in between).
fn put_back(parent: BorrowedFd<'_>, private: &CStr, name: &CStr, outcome: Outcome) -> Outcome {
    match rustix::fs::renameat_with(parent, private, parent, name, RenameFlags::NOREPLACE) {
        Ok(()) => outcome,
        Err(Errno::EXIST) => {
            let mtime = |n: &CStr| {
                rustix::fs::statat(parent, n, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| system_time(st.st_mtime, st.st_mtime_nsec as i64))
                    .ok()
            };
            let result = if mtime(name) >= mtime(private) {
                rustix::fs::unlinkat(parent, private, AtFlags::empty())
            } else {
                rustix::fs::renameat(parent, private, parent, name)
            };
            match result {
                Ok(()) => Outcome::Replaced,
                Err(e) => Outcome::Failed(std::io::Error::other(format!(
                    "the file was written again twice while being deleted and is left as {}: {}",
                    private.to_string_lossy(),
                    std::io::Error::from(e)
                ))),
            }
        }
        Err(e) => Outcome::Failed(std::io::Error::other(format!(
            "moved aside as {} to be deleted, but cannot be moved back: {}",
            private.to_string_lossy(),
            std::io::Error::from(e)
        ))),
    }
}

const REPLACED: &str = "written again twice while cleanup was deleting it: the newer file was kept, the older one deleted";

fn delete_reason(e: &std::io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(c) if c == Errno::ACCESS.raw_os_error() || c == Errno::PERM.raw_os_error() => {
            "; check the owner and mode of the file's directory (or an immutable attribute), or run as the store's owner"
        }
        Some(c) if c == Errno::ROFS.raw_os_error() => "; the filesystem is read-only",
        _ => "",
    };
    format!("cannot delete: {e}{hint}")
}

/// A file that may be evicted by the size pass. Ordered by `(mtime, path)`: oldest first.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    mtime: SystemTime,
    path: PathBuf,
    size: u64,
    ino: u64,
    dev: u64,
}

#[allow(clippy::too_many_arguments)]
fn size_pass(
    opts: &CleanupOptions,
    root_fd: &Arc<OwnedFd>,
    cutoff: SystemTime,
    young: SystemTime,
    limit: u64,
    summary: &mut CleanupSummary,
    reporter: &dyn Reporter,
) -> Result<()> {
    // Every candidate with a key <= watermark has been handled (deleted, or tried).
    let mut watermark: Option<(SystemTime, PathBuf)> = None;
    let handled = |w: &Option<(SystemTime, PathBuf)>, mtime: SystemTime, path: &Path| {
        w.as_ref()
            .is_some_and(|(wm, wp)| (mtime, path) <= (*wm, wp.as_path()))
    };
    loop {
        reporter.phase("measuring the store", None, None);
        let mut total: u64 = 0;
        let mut heap: BinaryHeap<Candidate> = BinaryHeap::new();
        for item in Walker::new(&opts.root, WalkOptions::default())? {
            // Errors were already recorded by the age pass over the same tree.
            let Ok(entry) = item else { continue };
            if entry.kind() != EntryKind::File {
                continue;
            }
            let mtime = entry.mtime();
            // A dry run pretends the files it would have deleted are gone.
            if opts.dry_run && (mtime < cutoff || handled(&watermark, mtime, entry.path())) {
                continue;
            }
            total += entry.size();
            if handled(&watermark, mtime, entry.path()) {
                continue; // could not be deleted in an earlier round; still takes space
            }
            if mtime >= young {
                continue; // younger than min_age: takes space, never evicted
            }
            heap.push(Candidate {
                mtime,
                path: entry.path().to_path_buf(),
                size: entry.size(),
                ino: entry.ino(),
                dev: entry.dev(),
            });
            if heap.len() > MAX_EVICTION_CANDIDATES {
                heap.pop(); // the newest of those kept
            }
        }
        if total <= limit {
            summary.store_bytes_after = Some(total);
            return Ok(());
        }
        let excess = total - limit;
        let full_round = heap.len() == MAX_EVICTION_CANDIDATES;
        reporter.phase(
            if opts.dry_run {
                "listing oldest files over max-used"
            } else {
                "evicting oldest files"
            },
            None,
            Some(excess),
        );
        let mut freed = 0u64;
        let mut progressed = false;
        for c in heap.into_sorted_vec() {
            if freed >= excess || at_max_delete(opts, summary) {
                break;
            }
            progressed = true;
            let abs = opts.root.join(&c.path);
            if opts.dry_run {
                reporter.note(&format!(
                    "would delete {} ({}, modified {}) to get under max-used",
                    abs.display(),
                    human_bytes(c.size),
                    humantime::format_rfc3339_seconds(c.mtime)
                ));
                freed += c.size;
                summary.deleted(&abs, c.size, false);
            } else {
                if let Some(hook) = &opts.before_delete {
                    hook(&c.path);
                }
                let after_check = || {
                    if let Some(hook) = &opts.after_check {
                        hook(&c.path);
                    }
                };
                match evict(root_fd, &c, &after_check) {
                    Ok(Outcome::Deleted) => {
                        freed += c.size;
                        summary.deleted(&abs, c.size, false);
                        summary.dirs_removed += remove_empty_parents(root_fd, &c.path);
                        reporter.bytes_done(c.size);
                        reporter.item_done(&abs.to_string_lossy(), true);
                    }
                    Ok(Outcome::Vanished) => summary.vanished += 1,
                    Ok(Outcome::Changed) => summary.changed += 1,
                    Ok(Outcome::Replaced) => {
                        summary.changed += 1;
                        summary.error(abs, REPLACED);
                    }
                    Ok(Outcome::Failed(e)) | Err(e) => {
                        reporter.item_done(&abs.to_string_lossy(), false);
                        summary.error(abs, delete_reason(&e));
                    }
                }
            }
            watermark = Some((c.mtime, c.path));
        }
        if freed >= excess || !full_round || !progressed || summary.max_delete_reached {
            summary.store_bytes_after = Some(total - freed.min(total));
            if freed < excess && !summary.max_delete_reached {
                reporter.note(&format!(
                    "the store under {} is still {} over max-used: the remaining files could not be deleted or are younger than min-age",
                    opts.root.display(),
                    human_bytes(excess - freed)
                ));
            }
            return Ok(());
        }
    }
}

/// Opens the directories of `rel`'s parent one by one from the root, no-follow and
/// staying on the root's filesystem. Returns the chain of handles, root first.
fn open_parents(
    root_fd: &Arc<OwnedFd>,
    rel: &Path,
) -> std::io::Result<Vec<(Arc<OwnedFd>, CString)>> {
    let root_dev = rustix::fs::fstat(&**root_fd)?.st_dev;
    let mut chain: Vec<(Arc<OwnedFd>, CString)> = Vec::new();
    let mut dir = Arc::clone(root_fd);
    let parent = rel.parent().unwrap_or(Path::new(""));
    for comp in parent.components() {
        let Component::Normal(name) = comp else {
            return Err(std::io::Error::other("unexpected path component"));
        };
        let cname = CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let next = rustix::fs::openat(&*dir, &*cname, flags, Mode::empty())?;
        if rustix::fs::fstat(&next)?.st_dev != root_dev {
            return Err(std::io::Error::other(
                "another filesystem is now mounted on its directory",
            ));
        }
        chain.push((dir, cname));
        dir = Arc::new(next);
    }
    chain.push((dir, CString::default()));
    Ok(chain)
}

fn evict(
    root_fd: &Arc<OwnedFd>,
    c: &Candidate,
    after_check: &dyn Fn(),
) -> std::io::Result<Outcome> {
    let chain = match open_parents(root_fd, &c.path) {
        Ok(chain) => chain,
        Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
            return Ok(Outcome::Vanished)
        }
        // A directory on the way became a symlink or a file: what we listed is gone.
        Err(e)
            if e.raw_os_error() == Some(Errno::LOOP.raw_os_error())
                || e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) =>
        {
            return Ok(Outcome::Changed)
        }
        Err(e) => return Err(e),
    };
    let (dir, _) = chain.last().expect("chain holds at least the root");
    let name = CString::new(c.path.file_name().unwrap_or(OsStr::new("")).as_bytes())
        .map_err(std::io::Error::other)?;
    let listed = (c.ino, c.dev, c.mtime);
    let st_listed = rustix::fs::statat(dir.as_fd(), &*name, AtFlags::SYMLINK_NOFOLLOW);
    let st = match st_listed {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(Outcome::Vanished),
        Err(e) => return Err(e.into()),
    };
    if (st.st_ino as u64, st.st_dev as u64) != (listed.0, listed.1) {
        return Ok(Outcome::Changed);
    }
    let unchanged = |s: &Stat| system_time(s.st_mtime, s.st_mtime_nsec as i64) == listed.2;
    Ok(delete_file(dir.as_fd(), &name, &st, unchanged, after_check))
}

/// After an eviction, removes the file's parent directories that are now empty, deepest
/// first, stopping at the first that is not (never the root). Returns how many.
fn remove_empty_parents(root_fd: &Arc<OwnedFd>, rel: &Path) -> u64 {
    let Ok(chain) = open_parents(root_fd, rel) else {
        return 0;
    };
    let mut removed = 0;
    // chain[i] = (dir_i, name of dir_{i+1} in dir_i); the last element is the file's dir.
    for (dir, child) in chain.iter().rev().skip(1) {
        if rustix::fs::unlinkat(dir.as_fd(), &**child, AtFlags::REMOVEDIR).is_err() {
            break;
        }
        removed += 1;
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_never_underflows() {
        let now = UNIX_EPOCH + Duration::from_secs(100);
        assert_eq!(
            age_cutoff(now, Duration::from_secs(40)),
            UNIX_EPOCH + Duration::from_secs(60)
        );
        // Before 1970 is a valid cutoff; an absurd age must not panic either.
        assert_eq!(
            age_cutoff(now, Duration::from_secs(1000)),
            UNIX_EPOCH - Duration::from_secs(900)
        );
        let _ = age_cutoff(now, Duration::MAX);
    }

    #[test]
    fn put_back_restores_the_name_or_keeps_the_newer_of_two() {
        let t = tempfile::tempdir().unwrap();
        let dir = rustix::fs::open(
            t.path(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let (private, name) = (c".stowage-del.0001", c"clip.mp4");
        let write = |n: &str, data: &str, age_s: u64| {
            let f = std::fs::File::create(t.path().join(n)).unwrap();
            std::io::Write::write_all(&mut &f, data.as_bytes()).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(age_s))
                .unwrap();
        };
        let read = |n: &str| std::fs::read_to_string(t.path().join(n)).ok();

        // The name is free: the file goes back, and the outcome is the caller's.
        write(".stowage-del.0001", "taken", 10);
        assert!(matches!(
            put_back(dir.as_fd(), private, name, Outcome::Changed),
            Outcome::Changed
        ));
        assert_eq!(read("clip.mp4").as_deref(), Some("taken"));

        // Taken again by a newer file: that one stays, the one taken away goes.
        write(".stowage-del.0001", "taken", 10);
        write("clip.mp4", "newest", 0);
        assert!(matches!(
            put_back(dir.as_fd(), private, name, Outcome::Changed),
            Outcome::Replaced
        ));
        assert_eq!(read("clip.mp4").as_deref(), Some("newest"));
        assert_eq!(read(".stowage-del.0001"), None);

        // Taken again by an older file (migrate back-dates mtimes): the newer one wins.
        write(".stowage-del.0001", "taken, newer", 0);
        write("clip.mp4", "older", 100);
        assert!(matches!(
            put_back(dir.as_fd(), private, name, Outcome::Changed),
            Outcome::Replaced
        ));
        assert_eq!(read("clip.mp4").as_deref(), Some("taken, newer"));
        assert_eq!(read(".stowage-del.0001"), None);
    }

    #[test]
    fn candidates_order_oldest_first_then_by_path() {
        let c = |s: u64, p: &str| Candidate {
            mtime: UNIX_EPOCH + Duration::from_secs(s),
            path: p.into(),
            size: 0,
            ino: 0,
            dev: 0,
        };
        let mut v = [c(5, "a"), c(1, "z"), c(1, "b")];
        v.sort();
        let order: Vec<_> = v.iter().map(|c| c.path.to_str().unwrap()).collect();
        assert_eq!(order, ["b", "z", "a"]);
    }
}
