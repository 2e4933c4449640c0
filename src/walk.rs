//! The one directory walker for local stores.
//!
//! Listing a local store, `cleanup`, `disk`, `verify`'s "extra files" and
//! `migrate local-to-s3` all need to visit every file under a root, on a server where the
//! tree may hold a million files, symlinks planted by someone else, other filesystems
//! mounted inside it, and directories that change while we look. `std::fs::read_dir`
//! recursion gets each of these wrong in its own way (it follows symlinked directories
//! through paths, re-resolves the whole path at each step, and invites collecting every
//! entry), so the crate has exactly one walker, and it:
//!
//! - works relative to open directory handles: every child is reached with
//!   `openat(parent_fd, name, O_DIRECTORY | O_NOFOLLOW)` and `statat(parent_fd, name,
//!   AT_SYMLINK_NOFOLLOW)`, never through a path string, so swapping a directory for a
//!   symlink during the walk cannot redirect it;
//! - never follows a symbolic link: links are yielded as [`EntryKind::Symlink`] for the
//!   caller to report or ignore;
//! - stays on the root's filesystem: a directory with another `st_dev` is yielded as
//!   [`EntryKind::MountPoint`] and not entered;
//! - skips stowage's own files (names starting with [`crate::key::RESERVED_PREFIX`]:
//!   temp files of writes in progress, the lock file) unless asked not to;
//! - streams: memory is O(depth), one open directory stream per level, never O(files);
//! - turns per-directory failures into [`WalkError`] items and goes on.
//!
//! The root path itself is resolved by the kernel like any path (operators may point
//! `LOCAL_STORAGE_PATH` at a symlink they made); everything *beneath* it is no-follow.
//!
//! Invariant: the walker never yields, opens or descends into anything that is not
//! reached from the root's own directory handle through real directories of the root's
//! filesystem.

use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::key::RESERVED_PREFIX;
use crate::{Error, Result};

/// What the walker should yield besides regular files, symlinks and mount points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) struct WalkOptions {
    /// Also yield names starting with [`RESERVED_PREFIX`] (stowage's temp files and lock
    /// file). Off by default: they are not store content.
    pub(crate) include_reserved: bool,
    /// Yield each directory (as [`EntryKind::Dir`]) *after* everything inside it, so a
    /// caller that deleted the contents can remove the directories left empty. A directory
    /// whose reading failed part-way is still yielded (after the error item; removing it
    /// then fails with `ENOTEMPTY`); one that could not be opened at all is not. The root
    /// itself is never yielded. Off by default.
    pub(crate) dirs_post_order: bool,
}

impl WalkOptions {
    /// Sets [`WalkOptions::include_reserved`].
    pub(crate) fn include_reserved(mut self, yes: bool) -> Self {
        self.include_reserved = yes;
        self
    }

    /// Sets [`WalkOptions::dirs_post_order`].
    pub(crate) fn dirs_post_order(mut self, yes: bool) -> Self {
        self.dirs_post_order = yes;
        self
    }
}

/// The type of a walked entry, as seen by `statat(AT_SYMLINK_NOFOLLOW)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EntryKind {
    /// A regular file.
    File,
    /// A directory, yielded after its contents when [`WalkOptions::dirs_post_order`] is set.
    Dir,
    /// A symbolic link. Never followed; its size and mtime are the link's own.
    Symlink,
    /// A directory on another filesystem than the root (a mount point). Not entered.
    MountPoint,
    /// A FIFO, socket or device node.
    Other,
}

/// One thing found under the root.
///
/// Besides the figures from `statat`, an entry carries its parent directory's open handle
/// and its own name, so callers can act on *this* entry (`unlinkat`, `statat`) without
/// resolving a path again — see [`Entry::parent_fd`] and [`Entry::stat_again`].
#[derive(Clone)]
pub(crate) struct Entry {
    path: PathBuf,
    kind: EntryKind,
    depth: usize,
    stat: Stat,
    parent: Arc<OwnedFd>,
    name: CString,
}

// `stat` field widths differ between architectures; the casts are not all no-ops.
#[allow(clippy::unnecessary_cast)]
impl Entry {
    /// Path relative to the root, e.g. `clips/123/video.mp4`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The entry's type.
    pub(crate) fn kind(&self) -> EntryKind {
        self.kind
    }

    /// 1 for entries directly in the root, 2 one level down, and so on.
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// Apparent size in bytes (`st_size`).
    pub(crate) fn size(&self) -> u64 {
        self.stat.st_size.max(0) as u64
    }

    /// Bytes allocated on disk (`st_blocks * 512`), what `du` counts.
    pub(crate) fn allocated(&self) -> u64 {
        (self.stat.st_blocks as u64).saturating_mul(512)
    }

    /// Last modification time.
    pub(crate) fn mtime(&self) -> SystemTime {
        system_time(self.stat.st_mtime, self.stat.st_mtime_nsec as i64)
    }

    /// Inode number; with [`Entry::dev`] it identifies the file.
    pub(crate) fn ino(&self) -> u64 {
        self.stat.st_ino as u64
    }

    /// Device of the filesystem holding the entry.
    pub(crate) fn dev(&self) -> u64 {
        self.stat.st_dev as u64
    }

    /// Number of hard links to the entry.
    pub(crate) fn nlink(&self) -> u64 {
        self.stat.st_nlink as u64
    }

    /// The full `statat` result taken when the entry was listed.
    pub(crate) fn stat(&self) -> &Stat {
        &self.stat
    }

    /// The entry's own name inside its parent directory.
    pub(crate) fn file_name(&self) -> &OsStr {
        OsStr::from_bytes(self.name.as_bytes())
    }

    /// The name as a C string, ready for `*at` calls on [`Entry::parent_fd`].
    pub(crate) fn file_name_c(&self) -> &CStr {
        &self.name
    }

    /// The open handle of the directory that holds this entry. Use it with `unlinkat`,
    /// `statat(AT_SYMLINK_NOFOLLOW)` and [`Entry::file_name_c`]: whatever happens to the
    /// path meanwhile, that names this directory's child.
    pub(crate) fn parent_fd(&self) -> BorrowedFd<'_> {
        self.parent.as_fd()
    }

    /// `statat(parent, name, AT_SYMLINK_NOFOLLOW)` now, to check before acting that the
    /// name still refers to what was listed (compare [`Entry::is_same_file`]).
    pub(crate) fn stat_again(&self) -> std::io::Result<Stat> {
        Ok(rustix::fs::statat(
            self.parent_fd(),
            self.file_name_c(),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Opens this regular file for reading through its parent's handle, never following
    /// a symlink, and checks that it is still the inode that was listed: a file swapped
    /// for a link (or any other file) since is an error, not something else read instead.
    pub(crate) fn open_file(&self) -> std::io::Result<std::fs::File> {
        let fd = rustix::fs::openat(
            self.parent_fd(),
            self.file_name_c(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::LOOP => std::io::Error::other("replaced by a symbolic link since it was listed"),
            e => e.into(),
        })?;
        if !self.is_same_file(&rustix::fs::fstat(&fd)?) {
            return Err(std::io::Error::other(
                "replaced by another file since it was listed",
            ));
        }
        Ok(std::fs::File::from(fd))
    }

    /// True when `st` describes the same inode on the same device, of the same type.
    pub(crate) fn is_same_file(&self, st: &Stat) -> bool {
        st.st_ino == self.stat.st_ino
            && st.st_dev == self.stat.st_dev
            && FileType::from_raw_mode(st.st_mode) == FileType::from_raw_mode(self.stat.st_mode)
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("size", &self.size())
            .field("mtime", &self.mtime())
            .finish_non_exhaustive()
    }
}

/// A failure on one part of the tree (a directory that cannot be read, an entry that
/// cannot be stat'ed). The walk goes on with the rest.
#[derive(Debug)]
pub(crate) struct WalkError {
    /// Absolute path (root joined with the relative path) of what failed.
    pub(crate) path: PathBuf,
    /// What the walker was doing: "read directory", "stat", "open directory".
    pub(crate) op: &'static str,
    /// The OS error.
    pub(crate) source: std::io::Error,
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.op,
            self.path.display(),
            self.source
        )?;
        match self.source.raw_os_error() {
            Some(e) if e == Errno::ACCESS.raw_os_error() || e == Errno::PERM.raw_os_error() => {
                f.write_str(" (check its owner and mode; run as the store's owner)")
            }
            _ => Ok(()),
        }
    }
}

impl std::error::Error for WalkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl From<WalkError> for Error {
    fn from(e: WalkError) -> Error {
        Error::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

/// One open directory on the walk stack.
struct Frame {
    /// Handle shared with the entries found in this directory.
    fd: Arc<OwnedFd>,
    /// Entry stream, reading from a duplicate of `fd`.
    stream: Dir,
    /// Path relative to the root.
    rel: PathBuf,
    /// This directory as an entry of its parent (None for the root).
    as_entry: Option<Entry>,
}

/// A streaming, no-follow walk of a directory tree. See the [module docs](self).
///
/// `Iterator<Item = Result<Entry, WalkError>>`: entries in depth-first order; an `Err`
/// item is one failure, not the end of the walk.
pub(crate) struct Walker {
    root: PathBuf,
    root_stat: Stat,
    root_fd: Arc<OwnedFd>,
    opts: WalkOptions,
    stack: Vec<Frame>,
}

impl Walker {
    /// Opens `root` and prepares to walk it. Fails (with the path and a hint) only when
    /// the root itself cannot be opened as a directory.
    pub(crate) fn new(root: impl Into<PathBuf>, opts: WalkOptions) -> Result<Walker> {
        let root = root.into();
        let fd = rustix::fs::open(
            &root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("open store root", &root, e.into()))?;
        let root_stat =
            rustix::fs::fstat(&fd).map_err(|e| Error::io("stat store root", &root, e.into()))?;
        let fd = Arc::new(fd);
        let stream = open_stream(&fd).map_err(|e| Error::io("read directory", &root, e))?;
        let frame = Frame {
            fd: Arc::clone(&fd),
            stream,
            rel: PathBuf::new(),
            as_entry: None,
        };
        Ok(Walker {
            root,
            root_stat,
            root_fd: fd,
            opts,
            stack: vec![frame],
        })
    }

    /// The root directory's own `fstat`, taken when it was opened (`du` counts its blocks).
    pub(crate) fn root_stat(&self) -> &Stat {
        &self.root_stat
    }

    /// The root's open directory handle.
    pub(crate) fn root_fd(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.root_fd)
    }

    fn error(&self, rel: &Path, op: &'static str, e: impl Into<std::io::Error>) -> WalkError {
        WalkError {
            path: self.root.join(rel),
            op,
            source: e.into(),
        }
    }

    /// Handles one name read from the directory on top of the stack.
    fn visit(&mut self, name: CString) -> Option<Result<Entry, WalkError>> {
        let top = self.stack.last().expect("visit with an empty stack");
        let depth = self.stack.len();
        let parent = Arc::clone(&top.fd);
        let rel = top.rel.join(OsStr::from_bytes(name.as_bytes()));
        let stat = match rustix::fs::statat(&*parent, &*name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return None, // removed since it was listed
            Err(e) => return Some(Err(self.error(&rel, "stat", e))),
        };
        let kind = match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => EntryKind::File,
            FileType::Symlink => EntryKind::Symlink,
            FileType::Directory if stat.st_dev != self.root_stat.st_dev => EntryKind::MountPoint,
            FileType::Directory => EntryKind::Dir,
            _ => EntryKind::Other,
        };
        let entry = Entry {
            path: rel,
            kind,
            depth,
            stat,
            parent,
            name,
        };
        if kind != EntryKind::Dir {
            return Some(Ok(entry));
        }
        // Descend. O_NOFOLLOW + O_DIRECTORY: if the name became a symlink since statat,
        // this fails (ELOOP/ENOTDIR) instead of following it.
        let flags = OFlags::RDONLY
            | OFlags::DIRECTORY
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NOCTTY;
        let fd = match rustix::fs::openat(&*entry.parent, &*entry.name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return None,
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => {
                return Some(Err(self.error(
                    &entry.path,
                    "enter directory (replaced by a non-directory during the walk)",
                    e,
                )))
            }
            Err(e) => return Some(Err(self.error(&entry.path, "open directory", e))),
        };
        // The name may have been swapped for another directory between statat and openat.
        match rustix::fs::fstat(&fd) {
            Ok(st) if st.st_ino == entry.stat.st_ino && st.st_dev == entry.stat.st_dev => {}
            Ok(_) => {
                let e = std::io::Error::other("it was replaced during the walk; left alone");
                return Some(Err(self.error(&entry.path, "enter directory", e)));
            }
            Err(e) => return Some(Err(self.error(&entry.path, "stat directory", e))),
        }
        let fd = Arc::new(fd);
        let stream = match open_stream(&fd) {
            Ok(s) => s,
            Err(e) => return Some(Err(self.error(&entry.path, "read directory", e))),
        };
        let rel = entry.path.clone();
        self.stack.push(Frame {
            fd,
            stream,
            rel,
            as_entry: Some(entry),
        });
        None
    }
}

/// A directory stream over a duplicate of `fd`, so `fd` itself can be shared with entries.
fn open_stream(fd: &OwnedFd) -> std::io::Result<Dir> {
    let dup = fd.try_clone()?;
    Ok(Dir::new(dup)?)
}

impl Iterator for Walker {
    type Item = std::result::Result<Entry, WalkError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let top = self.stack.last_mut()?;
            match top.stream.read() {
                None => {
                    let frame = self.stack.pop().expect("non-empty stack");
                    if self.opts.dirs_post_order {
                        if let Some(entry) = frame.as_entry {
                            return Some(Ok(entry));
                        }
                    }
                }
                Some(Err(e)) => {
                    // rustix's Dir ends the stream after an error; report it and move on.
                    let rel = top.rel.clone();
                    return Some(Err(self.error(&rel, "read directory", e)));
                }
                Some(Ok(de)) => {
                    let name = de.file_name();
                    let bytes = name.to_bytes();
                    if bytes == b"." || bytes == b".." {
                        continue;
                    }
                    if !self.opts.include_reserved && bytes.starts_with(RESERVED_PREFIX.as_bytes())
                    {
                        continue;
                    }
                    let name = name.to_owned();
                    if let Some(item) = self.visit(name) {
                        return Some(item);
                    }
                }
            }
        }
    }
}

/// Converts a `stat` timestamp to `SystemTime` (handles times before 1970).
pub(crate) fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nsecs as u64)
    }
}

/// The regular files under `root` whose path relative to it starts with `prefix`, for
/// async callers: the walk runs on a blocking thread and hands entries over through a
/// bounded channel, so memory stays flat however many files there are. A root that cannot
/// be opened, or a directory that cannot be read, is an `Err` item; the walk goes on after
/// a directory error. Dropping the stream stops the walk.
pub(crate) fn files_stream(
    root: PathBuf,
    prefix: String,
) -> futures::stream::BoxStream<'static, Result<Entry>> {
    use futures::StreamExt;
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    tokio::task::spawn_blocking(move || {
        let walker = match Walker::new(&root, WalkOptions::default()) {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        for entry in walker {
            let item = match entry {
                Ok(e)
                    if e.kind() == EntryKind::File
                        && e.path().to_string_lossy().starts_with(prefix.as_str()) =>
                {
                    Ok(e)
                }
                Ok(_) => continue,
                Err(e) => Err(Error::from(e)),
            };
            if tx.blocking_send(item).is_err() {
                return;
            }
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn walk(root: &Path, opts: WalkOptions) -> Vec<(String, EntryKind)> {
        let mut v: Vec<_> = Walker::new(root, opts)
            .unwrap()
            .map(|r| r.unwrap())
            .map(|e| (e.path().to_str().unwrap().to_owned(), e.kind()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn yields_files_links_and_post_order_dirs_but_not_reserved_names() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        fs::write(r.join("a/b/f"), b"12345").unwrap();
        fs::write(r.join("top"), b"").unwrap();
        fs::write(r.join(".stowage.lock"), b"").unwrap();
        fs::write(r.join("a/.stowage-tmp.00ff"), b"").unwrap();
        std::os::unix::fs::symlink("/etc", r.join("a/link")).unwrap();

        use EntryKind::*;
        assert_eq!(
            walk(r, WalkOptions::default()),
            [
                ("a/b/f".into(), File),
                ("a/link".into(), Symlink),
                ("top".into(), File)
            ]
        );
        let all = walk(
            r,
            WalkOptions::default()
                .include_reserved(true)
                .dirs_post_order(true),
        );
        assert_eq!(
            all,
            [
                (".stowage.lock".into(), File),
                ("a".into(), Dir),
                ("a/.stowage-tmp.00ff".into(), File),
                ("a/b".into(), Dir),
                ("a/b/f".into(), File),
                ("a/link".into(), Symlink),
                ("top".into(), File),
            ]
        );
    }

    #[test]
    fn directories_come_after_their_contents() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("a/b/c")).unwrap();
        fs::write(t.path().join("a/b/c/f"), b"x").unwrap();
        let order: Vec<_> = Walker::new(t.path(), WalkOptions::default().dirs_post_order(true))
            .unwrap()
            .map(|e| e.unwrap().path().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(order, ["a/b/c/f", "a/b/c", "a/b", "a"]);
    }

    #[test]
    fn entry_reports_size_and_can_restat_itself() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), vec![0u8; 10_000]).unwrap();
        let e = Walker::new(t.path(), WalkOptions::default())
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(e.size(), 10_000);
        assert_eq!(e.depth(), 1);
        assert!(e.allocated() >= 8192 || e.allocated() == 0);
        assert!(e.is_same_file(&e.stat_again().unwrap()));
        fs::remove_file(t.path().join("f")).unwrap();
        fs::write(t.path().join("f"), b"new").unwrap();
        // A new file under the same name is not the listed one (the old inode is gone).
        let again = e.stat_again().unwrap();
        assert_eq!(again.st_size, 3);
    }

    #[test]
    fn missing_root_is_an_error_naming_the_path() {
        let err = Walker::new("/nonexistent/stowage-root", WalkOptions::default())
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("/nonexistent/stowage-root"),
            "{err}"
        );
    }

    #[test]
    fn pre_1970_times_convert() {
        assert_eq!(
            system_time(-1, 500_000_000),
            UNIX_EPOCH - Duration::from_millis(500)
        );
        assert_eq!(system_time(1, 5), UNIX_EPOCH + Duration::new(1, 5));
    }
}
