//! Safe local-disk primitives: the only code that creates or opens files under a store root.
//!
//! Every path is reached from the root's own directory handle, one component at a time,
//! with `O_NOFOLLOW`, so neither a hostile key nor a symlink planted inside the root can
//! make stowage read or write outside it. Writes go to a temp file in the destination
//! directory and become visible under their final name only after `fsync` + `rename`.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::key::Key;

/// File-name prefix of stowage's temp files (`.stowage-tmp.<hex>`).
pub const TEMP_PREFIX: &str = ".stowage-tmp.";
/// File-name prefix cleanup gives a file it is about to delete (`.stowage-del.<hex>`), so
/// that what it unlinks is exactly what it checked. One left by a crash is removed by the
/// next cleanup.
pub const DELETE_PREFIX: &str = ".stowage-del.";
/// Name of the lock file stowage keeps in a store root.
pub const LOCK_FILE_NAME: &str = ".stowage.lock";
/// Name of the file that marks a directory as a stowage store. `cleanup` deletes only
/// under a marked root: a typo in `--root` must not turn it loose on someone else's tree.
pub const STORE_MARKER_NAME: &str = ".stowage";
/// Extended attribute holding an object's Content-Type (the freedesktop.org convention).
pub const CONTENT_TYPE_XATTR: &str = "user.mime_type";
/// Extended attribute holding the part size that reproduced a multipart ETag, so `verify`
/// can tell a changed file from an unusual part size.
pub const PART_SIZE_XATTR: &str = "user.stowage.part_size";
/// The extended attribute holding the S3 full-object checksum `migrate` checked the file
/// against, as `<alg>:<base64>` (see [`crate::checksum::Checksum::to_record`]).
pub const CHECKSUM_XATTR: &str = "user.stowage.checksum";
/// The extended attribute holding the ETag of the object the file was copied from, so a
/// recorded proof is only used while the bucket still holds that very object.
pub const ETAG_XATTR: &str = "user.stowage.etag";
/// The extended attribute naming how `migrate` proved the file (`md5`, `sha256`, ...,
/// `size_only` when nothing could be checked).
pub const PROOF_XATTR: &str = "user.stowage.proof";

/// True for names stowage creates for itself (temp files, lock file); such names are never
/// valid keys, never listed and never cleaned up as data.
pub fn is_stowage_name(name: &OsStr) -> bool {
    name.as_bytes()
        .starts_with(crate::key::RESERVED_PREFIX.as_bytes())
}

/// True for a stowage temp file name.
pub fn is_temp_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(TEMP_PREFIX.as_bytes())
}

fn open_root(root: &Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn open_subdir(dir: &impl AsFd, name: &str) -> rustix::io::Result<OwnedFd> {
    rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Why a key cannot be placed on disk, beyond [`Key`]'s own rules.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// A parent of the key is a file, or the key itself is a directory (`x` next to `x/y`).
    #[error("path clashes with another key's file or directory")]
    Clash,
    /// A component of the path is a symbolic link; stowage never follows them.
    #[error("a path component is a symbolic link")]
    Symlink,
    /// The name no longer holds what the plan saw there (another writer, such as the
    /// service, put or removed a file since): left as it is.
    #[error("{0}")]
    Changed(&'static str),
    /// Any other filesystem error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What a commit may replace under the final name, as seen when the copy was planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Nothing: the name must still be free (`RENAME_NOREPLACE`).
    Absent,
    /// Exactly this file, unchanged (`RENAME_EXCHANGE`, then the displaced inode is checked).
    File(FileId),
}

/// Identity and state of a regular file: the same inode, size and mtime mean nobody wrote
/// it in between (a rewrite in place changes the mtime, a replacement the inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    /// Device of the filesystem.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Apparent size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
}

impl FileId {
    // `stat` field widths differ between architectures; the casts are not all no-ops.
    #[allow(clippy::unnecessary_cast)]
    fn of(st: &rfs::Stat) -> FileId {
        FileId {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size: st.st_size.max(0) as u64,
            mtime: crate::walk::system_time(st.st_mtime as i64, st.st_mtime_nsec as i64),
        }
    }
}

impl PlaceError {
    fn from_errno(e: Errno) -> PlaceError {
        match e {
            Errno::NOTDIR | Errno::ISDIR | Errno::EXIST | Errno::NOTEMPTY => PlaceError::Clash,
            Errno::LOOP => PlaceError::Symlink,
            e => PlaceError::Io(e.into()),
        }
    }

    /// The crate error for writing `path`; a full disk stays recognisable through
    /// [`crate::Error::is_no_space`].
    pub(crate) fn into_error(self, path: PathBuf) -> crate::Error {
        let source = match self {
            PlaceError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        };
        crate::Error::io("write", path, source)
    }

    /// True when the disk (or quota) is full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, PlaceError::Io(e) if crate::error::is_enospc(e))
    }
}

/// Opens the directory that will hold `key`, creating missing directories, never
/// following a symlink. Returns the directory handle.
pub(crate) fn open_parent_dir(root: &Path, key: &Key, create: bool) -> Result<OwnedFd, PlaceError> {
    let root = open_root(root)?;
    match parent_dir_at(root.as_fd(), key, create) {
        Ok(dir) => Ok(dir.unwrap_or(root)),
        Err(e) => Err(PlaceError::from_errno(e)),
    }
}

/// The directory holding `key`'s file, opened one component at a time from `root`, each
/// with `O_NOFOLLOW` (with `create`, a missing one is made first); `None` when the file
/// sits in `root` itself.
fn parent_dir_at(
    root: BorrowedFd<'_>,
    key: &Key,
    create: bool,
) -> rustix::io::Result<Option<OwnedFd>> {
    let segs: Vec<&str> = key.segments().collect();
    let mut dir: Option<OwnedFd> = None;
    for seg in &segs[..segs.len() - 1] {
        let at = dir.as_ref().map_or(root, AsFd::as_fd);
        let next = match open_subdir(&at, seg) {
            Err(Errno::NOENT) if create => {
                match rfs::mkdirat(at, *seg, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e),
                }
                open_subdir(&at, seg)?
            }
            other => other?,
        };
        dir = Some(next);
    }
    Ok(dir)
}

/// Opens the regular file for `key` under `root` for reading, never following a symlink at
/// any component. A directory or anything else that is not a regular file is `NotFound`.
///
/// Where the kernel has `openat2` (Linux 5.6), the whole path is resolved in one syscall
/// with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`; elsewhere each directory is opened in turn
/// with `O_NOFOLLOW`. Both refuse the same paths.
pub fn open_beneath(root: &Path, key: &Key) -> io::Result<File> {
    open_beneath_stat(root, key).map(|(file, _)| file)
}

/// [`open_beneath`], with the `fstat` it took to check the file is a regular one.
pub(crate) fn open_beneath_stat(root: &Path, key: &Key) -> io::Result<(File, rfs::Stat)> {
    open_beneath_stat_at(open_root(root)?.as_fd(), key)
}

/// [`open_beneath_stat`] under a root directory already open as `root`.
pub(crate) fn open_beneath_stat_at(
    root: BorrowedFd<'_>,
    key: &Key,
) -> io::Result<(File, rfs::Stat)> {
    let not_found = |e: Errno| match e {
        Errno::LOOP | Errno::NOTDIR | Errno::XDEV => io::Error::from(io::ErrorKind::NotFound),
        e => e.into(),
    };
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match open_beneath_in_one(root, key, flags) {
        Some(fd) => fd.map_err(not_found)?,
        None => open_walking(root, key, flags).map_err(not_found)?,
    };
    regular_file(fd)
}

/// The file `fd` with its `fstat`, or `NotFound` when it is not a regular file.
fn regular_file(fd: OwnedFd) -> io::Result<(File, rfs::Stat)> {
    let st = rfs::fstat(&fd)?;
    if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
        return Err(io::Error::from(io::ErrorKind::NotFound));
    }
    Ok((File::from(fd), st))
}

/// Opens `key` under `root` one directory at a time, each with `O_NOFOLLOW`: where
/// `openat2` is missing.
fn open_walking(root: BorrowedFd<'_>, key: &Key, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let dir = parent_dir_at(root, key, false)?;
    let at = dir.as_ref().map_or(root, AsFd::as_fd);
    rfs::openat(at, key.file_name(), flags, Mode::empty())
}

/// [`open_beneath_stat_at`] from the kernel's caches alone, for callers on an async
/// runtime that must not wait for the disk: `openat2` with `RESOLVE_CACHED` (Linux 5.12).
/// `None` when the lookup would need the disk, the kernel lacks it, or anything failed:
/// the caller then takes the blocking path, which gives the authoritative answer (404s
/// included).
#[cfg(feature = "http")]
pub(crate) fn open_beneath_cached_at(root: BorrowedFd<'_>, key: &Key) -> Option<(File, rfs::Stat)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static UNAVAILABLE: AtomicBool = AtomicBool::new(false);
    if UNAVAILABLE.load(Ordering::Relaxed) {
        return None;
    }
    let resolve = rfs::ResolveFlags::CACHED
        | rfs::ResolveFlags::BENEATH
        | rfs::ResolveFlags::NO_SYMLINKS
        | rfs::ResolveFlags::NO_MAGICLINKS;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = match rfs::openat2(root, key.as_str(), flags, Mode::empty(), resolve) {
        Ok(fd) => fd,
        Err(Errno::NOSYS | Errno::PERM | Errno::INVAL) => {
            UNAVAILABLE.store(true, Ordering::Relaxed);
            return None;
        }
        Err(_) => return None,
    };
    regular_file(fd).ok()
}

/// A store root kept open for serving: opening a key is then one `openat2` beneath the
/// held handle, instead of opening and closing the root for every request as well.
///
/// A directory handle follows the directory, not its path: after the root is renamed, or
/// its path made to name another directory (a symlink switched, a directory moved into
/// place), the handle still reaches the old one. So at most once per [`ROOT_RECHECK`] the
/// path is looked up again (one `stat`) and compared, by device and inode, with what is
/// held: a different directory is opened and held instead, and a path that names nothing
/// any more (or a directory that cannot be opened, e.g. out of file descriptors) leaves
/// nothing held, so that each request opens the path itself, as without a held root.
#[cfg(feature = "http")]
pub(crate) struct HeldRoot {
    path: PathBuf,
    held: std::sync::RwLock<Option<HeldDir>>,
    epoch: std::time::Instant,
    /// Milliseconds after `epoch` when the path was last compared with `held`.
    checked_ms: std::sync::atomic::AtomicU64,
}

/// The directory a [`HeldRoot`] holds, with its device and inode.
#[cfg(feature = "http")]
struct HeldDir {
    dir: std::sync::Arc<OwnedFd>,
    id: (u64, u64),
}

/// How long a [`HeldRoot`] may keep serving a directory its path no longer names.
#[cfg(feature = "http")]
pub(crate) const ROOT_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(feature = "http")]
impl HeldRoot {
    /// Opens `path` and holds it (or holds nothing if it cannot be opened now).
    pub(crate) fn new(path: &Path) -> HeldRoot {
        HeldRoot {
            path: path.to_path_buf(),
            held: std::sync::RwLock::new(Self::open(path)),
            epoch: std::time::Instant::now(),
            checked_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn open(path: &Path) -> Option<HeldDir> {
        let dir = open_root(path).ok()?;
        let st = rfs::fstat(&dir).ok()?;
        Some(HeldDir {
            dir: std::sync::Arc::new(dir),
            id: (st.st_dev, st.st_ino),
        })
    }

    /// The store root's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The held root directory, or `None` when nothing is held (the caller opens
    /// [`Self::path`] itself, off the async runtime).
    pub(crate) fn held(&self) -> Option<std::sync::Arc<OwnedFd>> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.checked_ms.load(Relaxed);
        if now.saturating_sub(last) >= ROOT_RECHECK.as_millis() as u64
            && self
                .checked_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            self.recheck();
        }
        let held = self.held.read().unwrap_or_else(|e| e.into_inner());
        held.as_ref().map(|h| std::sync::Arc::clone(&h.dir))
    }

    /// Opens `path` as a root directory, for a request made while nothing is held.
    pub(crate) fn open_path(path: &Path) -> io::Result<std::sync::Arc<OwnedFd>> {
        open_root(path).map(std::sync::Arc::new)
    }

    /// Holds the directory the path names now, if it is not the one held.
    fn recheck(&self) {
        let held_id = {
            let held = self.held.read().unwrap_or_else(|e| e.into_inner());
            held.as_ref().map(|h| h.id)
        };
        let named = match rfs::stat(&self.path) {
            Ok(st) => Some((st.st_dev, st.st_ino)),
            Err(Errno::NOENT | Errno::NOTDIR) => None,
            // Anything else (EACCES on a parent, ENOMEM...) says nothing about which
            // directory the path names: keep what is held.
            Err(_) if held_id.is_some() => return,
            Err(_) => None,
        };
        if named.is_some() && named == held_id {
            return;
        }
        let fresh = named.and_then(|_| Self::open(&self.path));
        *self.held.write().unwrap_or_else(|e| e.into_inner()) = fresh;
    }
}

/// `openat2(root, key, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or `None` when the kernel
/// (or a seccomp filter) does not offer it; remembered for the next call.
fn open_beneath_in_one(
    root: BorrowedFd<'_>,
    key: &Key,
    flags: OFlags,
) -> Option<rustix::io::Result<OwnedFd>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static UNAVAILABLE: AtomicBool = AtomicBool::new(false);
    if UNAVAILABLE.load(Ordering::Relaxed) {
        return None;
    }
    let resolve = rfs::ResolveFlags::BENEATH
        | rfs::ResolveFlags::NO_SYMLINKS
        | rfs::ResolveFlags::NO_MAGICLINKS;
    match rfs::openat2(root, key.as_str(), flags, Mode::empty(), resolve) {
        Err(Errno::NOSYS | Errno::PERM | Errno::INVAL) => {
            UNAVAILABLE.store(true, Ordering::Relaxed);
            None
        }
        r => Some(r),
    }
}

/// Reads the Content-Type stored with a file, if any.
pub fn read_content_type(file: &File) -> Option<String> {
    read_xattr(file, CONTENT_TYPE_XATTR)
}

/// Reads the multipart part size `migrate` recorded with a file, if any.
pub fn read_part_size(file: &File) -> Option<u64> {
    read_xattr(file, PART_SIZE_XATTR)?.parse().ok()
}

/// Reads the S3 checksum `migrate` recorded with a file, if any.
pub fn read_checksum(file: &File) -> Option<crate::checksum::Checksum> {
    crate::checksum::Checksum::from_record(&read_xattr(file, CHECKSUM_XATTR)?)
}

/// Reads how `migrate` proved a file (see [`PROOF_XATTR`]), if recorded.
pub fn read_proof(file: &File) -> Option<String> {
    read_xattr(file, PROOF_XATTR)
}

/// Reads the ETag of the object a file was copied from, if recorded.
pub fn read_etag(file: &File) -> Option<String> {
    read_xattr(file, ETAG_XATTR)
}

fn read_xattr(file: &File, name: &str) -> Option<String> {
    let mut buf = [0u8; 256];
    let n = rfs::fgetxattr(file, name, &mut buf).ok()?;
    String::from_utf8(buf[..n].to_vec())
        .ok()
        .filter(|s| !s.is_empty())
}

/// A file being written under a temporary name next to its final name.
///
/// Invariant: the final name only ever holds complete content. [`AtomicFile::commit`]
/// fsyncs the data, renames it into place and fsyncs the directory; dropping an
/// uncommitted `AtomicFile` removes the temp file.
#[derive(Debug)]
pub struct AtomicFile {
    dir: OwnedFd,
    temp_name: String,
    final_name: String,
    file: Option<File>,
    final_path: PathBuf,
}

impl AtomicFile {
    /// Creates the temp file for `key` under `root`, creating parent directories.
    ///
    /// The temp file stays locked (`flock`, shared) until committed or dropped, so a sweep
    /// of leftover temp files (`remove_if_stale_temp`) never takes a live writer's. A
    /// parent directory removed meanwhile by another writer pruning empty directories
    /// ([`remove`]) is created again.
    pub fn create(root: &Path, key: &Key) -> Result<AtomicFile, PlaceError> {
        let mut attempt = 0;
        loop {
            match AtomicFile::create_once(root, key) {
                Err(PlaceError::Io(e))
                    if e.kind() == io::ErrorKind::NotFound && attempt < CREATE_ATTEMPTS =>
                {
                    attempt += 1;
                }
                res => return res,
            }
        }
    }

    fn create_once(root: &Path, key: &Key) -> Result<AtomicFile, PlaceError> {
        let dir = open_parent_dir(root, key, true)?;
        let final_name = key.file_name().to_owned();
        // Refuse early if the final name is a directory: the rename would fail only
        // after the whole body was transferred.
        if let Ok(st) = rfs::statat(&dir, final_name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            if rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory {
                return Err(PlaceError::Clash);
            }
        }
        loop {
            let temp_name = format!("{TEMP_PREFIX}{:016x}", fastrand::u64(..));
            match rfs::openat(
                &dir,
                temp_name.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            ) {
                Ok(fd) => {
                    rfs::flock(&fd, rfs::FlockOperation::LockShared).map_err(io::Error::from)?;
                    // A sweep may have taken the file between its creation and the lock.
                    let ours = rfs::fstat(&fd).map_err(io::Error::from)?;
                    match rfs::statat(&dir, temp_name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) if st.st_ino == ours.st_ino && st.st_dev == ours.st_dev => {}
                        _ => continue,
                    }
                    return Ok(AtomicFile {
                        dir,
                        temp_name,
                        final_name,
                        file: Some(File::from(fd)),
                        final_path: key.to_path(root),
                    });
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(PlaceError::from_errno(e)),
            }
        }
    }

    /// The path the file will have once committed (for messages).
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// The open temp file.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file present until commit")
    }

    /// Appends `buf`.
    pub fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file().write_all(buf)
    }

    /// Asks the kernel to start writing what was appended so far to disk, without waiting.
    /// Called as a download streams in, it spreads the disk writes over the transfer, so
    /// the fsync in [`AtomicFile::commit`] has little left to do.
    pub(crate) fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        let fd = self.file().as_raw_fd();
        // SAFETY: `fd` is an open descriptor owned by `self.file` for the whole call;
        // sync_file_range only reads it. Failure is harmless: commit fsyncs anyway.
        unsafe {
            libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    /// Appends every buffer in `bufs`, with as few `writev` calls as it takes.
    pub(crate) fn write_all_vectored(
        &mut self,
        mut bufs: &mut [io::IoSlice<'_>],
    ) -> io::Result<()> {
        /// Linux refuses more buffers than this in one call.
        const IOV_MAX: usize = 1024;
        let f = self.file();
        io::IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            match f.write_vectored(&bufs[..bufs.len().min(IOV_MAX)]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sets the modification time the committed file will carry.
    pub fn set_modified(&mut self, t: SystemTime) -> io::Result<()> {
        let ts = to_timespec(t);
        rfs::futimens(
            self.file(),
            &Timestamps {
                last_access: ts,
                last_modification: ts,
            },
        )?;
        Ok(())
    }

    /// Records a Content-Type in an extended attribute. Filesystems without user xattrs
    /// are silently accepted: the type is then derived from the extension when served.
    pub fn set_content_type(&mut self, content_type: &str) -> io::Result<()> {
        self.set_xattr(CONTENT_TYPE_XATTR, content_type)
    }

    /// Records the part size that reproduced the object's multipart ETag.
    pub(crate) fn set_part_size(&mut self, part_size: u64) -> io::Result<()> {
        self.set_xattr(PART_SIZE_XATTR, &part_size.to_string())
    }

    /// Records the S3 checksum the content was checked against.
    pub(crate) fn set_checksum(&mut self, checksum: &crate::checksum::Checksum) -> io::Result<()> {
        self.set_xattr(CHECKSUM_XATTR, &checksum.to_record())
    }

    /// Records how the content was proven.
    pub(crate) fn set_proof(&mut self, proof: crate::checksum::Proof) -> io::Result<()> {
        self.set_xattr(PROOF_XATTR, proof.name())
    }

    /// Records the ETag of the object the content came from.
    pub(crate) fn set_etag(&mut self, etag: &str) -> io::Result<()> {
        self.set_xattr(ETAG_XATTR, etag)
    }

    fn set_xattr(&mut self, name: &str, value: &str) -> io::Result<()> {
        match rfs::fsetxattr(
            self.file(),
            name,
            value.as_bytes(),
            rfs::XattrFlags::empty(),
        ) {
            Ok(()) | Err(Errno::NOTSUP) | Err(Errno::PERM) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the temp file again for reading (to re-hash what was written).
    pub(crate) fn reopen_read(&self) -> io::Result<File> {
        let fd = rfs::openat(
            &self.dir,
            self.temp_name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(File::from(fd))
    }

    /// Discards what was written so far (to restart a download from the beginning).
    pub(crate) fn truncate(&mut self) -> io::Result<()> {
        use std::io::Seek;
        let f = self.file();
        f.set_len(0)?;
        f.seek(io::SeekFrom::Start(0))?;
        Ok(())
    }

    /// Makes the content durable and visible under the final name.
    pub fn commit(self) -> Result<(), PlaceError> {
        let dir = self.commit_unsynced_dir()?;
        rfs::fsync(&dir).map_err(io::Error::from)?;
        Ok(())
    }

    /// Like [`AtomicFile::commit`], but never replaces an existing file: the same
    /// no-replace rename as [`Expect::Absent`] (`renameat2(RENAME_NOREPLACE)`), so of two
    /// writers racing for one name exactly one wins, then the directory fsync. `Ok(false)`
    /// when the final name was already taken by a file (the temp file is removed). For
    /// `store::LocalStore`'s `PutMode::Create` / `CopyMode::Create`.
    pub(crate) fn commit_noreplace(self) -> Result<bool, PlaceError> {
        match self.commit_unsynced_dir_expecting(Expect::Absent) {
            Ok(dir) => {
                rfs::fsync(&dir).map_err(io::Error::from)?;
                Ok(true)
            }
            Err(PlaceError::Changed(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Like [`AtomicFile::commit`] — the data is fsynced before the rename, so the final
    /// name only ever holds complete content — but leaves the rename itself to be made
    /// durable by the caller, who must fsync the returned directory (or `syncfs`) before
    /// reporting the file as stored. Lets a bulk copy sync once instead of per file.
    pub(crate) fn commit_unsynced_dir(mut self) -> Result<OwnedFd, PlaceError> {
        self.file().sync_all()?;
        rfs::renameat(
            &self.dir,
            self.temp_name.as_str(),
            &self.dir,
            self.final_name.as_str(),
        )
        .map_err(PlaceError::from_errno)?;
        self.committed()
    }

    /// Like [`AtomicFile::commit_unsynced_dir`], but never replaces a file the caller did
    /// not plan to replace: with [`Expect::Absent`] the name must still be free, with
    /// [`Expect::File`] it must still hold that very file, unchanged. Otherwise nothing is
    /// replaced and the error is [`PlaceError::Changed`].
    pub(crate) fn commit_unsynced_dir_expecting(
        mut self,
        expect: Expect,
    ) -> Result<OwnedFd, PlaceError> {
        self.file().sync_all()?;
        match expect {
            Expect::Absent => self.rename_noreplace()?,
            Expect::File(id) => self.exchange_checked(id)?,
        }
        self.committed()
    }

    /// The temp name is gone: nothing left for `Drop` to remove. The file stays open
    /// (and its temp lock held) until here, so a temp sweep never takes it mid-commit.
    fn committed(&mut self) -> Result<OwnedFd, PlaceError> {
        self.temp_name.clear();
        self.file = None;
        Ok(self.dir.try_clone()?)
    }

    fn rename_noreplace(&self) -> Result<(), PlaceError> {
        let (temp, fin) = (self.temp_name.as_str(), self.final_name.as_str());
        let res = match rfs::renameat_with(
            &self.dir,
            temp,
            &self.dir,
            fin,
            rfs::RenameFlags::NOREPLACE,
        ) {
            // Filesystems without renameat2 flags: a hard link never replaces either.
            Err(Errno::INVAL) | Err(Errno::NOSYS) => {
                rfs::linkat(&self.dir, temp, &self.dir, fin, AtFlags::empty()).map(|()| {
                    let _ = rfs::unlinkat(&self.dir, temp, AtFlags::empty());
                })
            }
            other => other,
        };
        match res {
            Ok(()) => Ok(()),
            Err(Errno::EXIST) if self.final_is_dir() => Err(PlaceError::Clash),
            Err(Errno::EXIST) => Err(PlaceError::Changed(WRITTEN_SINCE_PLANNING)),
            Err(e) => Err(PlaceError::from_errno(e)),
        }
    }

    /// Swaps the new file in, then checks that what it displaced (now under the temp
    /// name) is `expected`; if not, swaps back. Readers see the new content only for
    /// that moment, and no other writer's file is ever lost.
    fn exchange_checked(&mut self, expected: FileId) -> Result<(), PlaceError> {
        let (temp, fin) = (self.temp_name.clone(), self.final_name.clone());
        let exchange = |dir: &OwnedFd| {
            rfs::renameat_with(
                dir,
                temp.as_str(),
                dir,
                fin.as_str(),
                rfs::RenameFlags::EXCHANGE,
            )
        };
        match exchange(&self.dir) {
            Ok(()) => {}
            Err(Errno::NOENT) => return Err(PlaceError::Changed(REMOVED_SINCE_PLANNING)),
            Err(Errno::INVAL) | Err(Errno::NOSYS) => {
                // No RENAME_EXCHANGE here: check, then rename. The window between the two
                // is the only one left; filesystems stowage targets (ext4, xfs, btrfs,
                // tmpfs) never take this path.
                return match self.stat_name(&fin) {
                    Some(id) if id == expected => {
                        rfs::renameat(&self.dir, temp.as_str(), &self.dir, fin.as_str())
                            .map_err(PlaceError::from_errno)
                    }
                    Some(_) => Err(PlaceError::Changed(WRITTEN_SINCE_PLANNING)),
                    None => Err(PlaceError::Changed(REMOVED_SINCE_PLANNING)),
                };
            }
            Err(e) => return Err(PlaceError::from_errno(e)),
        }
        if self.stat_name(&temp) == Some(expected) {
            let _ = rfs::unlinkat(&self.dir, temp.as_str(), AtFlags::empty());
            return Ok(());
        }
        // Someone wrote the name since planning: put their file back.
        exchange(&self.dir).map_err(PlaceError::from_errno)?;
        let ours = FileId::of(&rfs::fstat(self.file()).map_err(io::Error::from)?);
        if self
            .stat_name(&temp)
            .is_some_and(|id| id.ino != ours.ino || id.dev != ours.dev)
        {
            // Yet another file was renamed onto the name while ours was there: it is the
            // newest, so it goes back under the final name too.
            exchange(&self.dir).map_err(PlaceError::from_errno)?;
        }
        Err(PlaceError::Changed(WRITTEN_SINCE_PLANNING))
    }

    fn stat_name(&self, name: &str) -> Option<FileId> {
        rfs::statat(&self.dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .filter(|st| rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::RegularFile)
            .map(|st| FileId::of(&st))
    }

    fn final_is_dir(&self) -> bool {
        rfs::statat(
            &self.dir,
            self.final_name.as_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory)
    }
}

/// Tries of [`AtomicFile::create`] when a parent directory vanishes under it (another
/// writer pruned it as empty): each try creates it again, so a few always suffice unless
/// something keeps removing it.
const CREATE_ATTEMPTS: u32 = 5;

/// Removes the temp file `name` in `dir` if no live writer holds it, i.e. it was left by
/// a killed process. Every [`AtomicFile`] holds a shared `flock` on its temp file until
/// it is committed or dropped, and the kernel releases it when the process dies; so an
/// exclusive lock that can be taken means nobody is writing it. The age of the file says
/// nothing here: a running service's upload may stall for an hour, and a run killed a
/// second ago leaves temp files no one will finish. Returns whether it was removed.
pub(crate) fn remove_if_stale_temp(dir: &impl AsFd, name: &OsStr) -> io::Result<bool> {
    if !is_temp_name(name) {
        return Ok(false);
    }
    let fd = match rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    match rfs::flock(&fd, rfs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    // Still the same file under that name (not one created since we opened it)?
    let ours = rfs::fstat(&fd)?;
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_ino == ours.st_ino && st.st_dev == ours.st_dev => {}
        _ => return Ok(false),
    }
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Why [`AtomicFile::commit_unsynced_dir_expecting`] left a name alone.
const WRITTEN_SINCE_PLANNING: &str = "written locally since planning";
const REMOVED_SINCE_PLANNING: &str = "removed locally since planning";

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.temp_name.is_empty() {
            let _ = rfs::unlinkat(&self.dir, self.temp_name.as_str(), AtFlags::empty());
        }
    }
}

fn to_timespec(t: SystemTime) -> Timespec {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => Timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: d.subsec_nanos() as _,
        },
        Err(e) => Timespec {
            tv_sec: -(e.duration().as_secs() as i64),
            tv_nsec: 0,
        },
    }
}

/// Removes `key`'s file. `Ok(false)` when it was not there. Directories left empty
/// between the file and the root are removed too, as S3 has no directories.
pub fn remove(root: &Path, key: &Key) -> io::Result<bool> {
    let Some((dir, st)) = stat_beneath(root, key)? else {
        return Ok(false);
    };
    if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
        return Ok(false);
    }
    match rfs::unlinkat(&dir, key.file_name(), AtFlags::empty()) {
        Ok(()) => {}
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    drop(dir);
    prune_empty_parents(root, key);
    Ok(true)
}

/// Removes the directories between `key` and `root` that are now empty, deepest first,
/// stopping at the first that is not (S3 has no directories, so a store keeps none it
/// does not need). Never the root itself; every directory reached without following links.
pub(crate) fn prune_empty_parents(root: &Path, key: &Key) {
    let segs: Vec<&str> = key.segments().collect();
    for depth in (1..segs.len()).rev() {
        let Ok(parent) = Key::new(segs[..depth].join("/")) else {
            break;
        };
        let Ok(pdir) = open_parent_dir(root, &parent, false) else {
            break;
        };
        if rfs::unlinkat(&pdir, parent.file_name(), AtFlags::REMOVEDIR).is_err() {
            break;
        }
    }
}

/// Filesystem figures for the filesystem holding `path`.
pub(crate) fn fs_stats(path: &Path) -> io::Result<rfs::StatVfs> {
    Ok(rfs::statvfs(path)?)
}

/// Creates the directory `key` (and its parents) under `root`, never following a symlink.
pub(crate) fn create_dir_beneath(root: &Path, key: &Key) -> Result<(), PlaceError> {
    let dir = open_parent_dir(root, key, true)?;
    match rfs::mkdirat(&dir, key.file_name(), Mode::from_raw_mode(0o755)) {
        Ok(()) => Ok(()),
        Err(Errno::EXIST) => {
            let st = rfs::statat(&dir, key.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io::Error::from)?;
            match rfs::FileType::from_raw_mode(st.st_mode) {
                rfs::FileType::Directory => Ok(()),
                rfs::FileType::Symlink => Err(PlaceError::Symlink),
                _ => Err(PlaceError::Clash),
            }
        }
        Err(e) => Err(PlaceError::from_errno(e)),
    }
}

/// Size and modification time of the regular file for `key`, if there is one (symlinks
/// and other kinds of file count as absent).
pub(crate) fn stat_file(root: &Path, key: &Key) -> io::Result<Option<(u64, SystemTime)>> {
    Ok(stat_file_id(root, key)?.map(|id| (id.size, id.mtime)))
}

/// Like [`stat_file`], with the file's identity, so a later commit can check that it
/// replaces this very file ([`Expect::File`]).
pub(crate) fn stat_file_id(root: &Path, key: &Key) -> io::Result<Option<FileId>> {
    Ok(stat_beneath(root, key)?
        .filter(|(_, st)| rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::RegularFile)
        .map(|(_, st)| FileId::of(&st)))
}

/// True when `key` names a directory under `root` (reached without following symlinks).
pub(crate) fn is_dir_beneath(root: &Path, key: &Key) -> io::Result<bool> {
    Ok(stat_beneath(root, key)?.is_some_and(|(_, st)| {
        rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory
    }))
}

/// The parent directory of `key` and what its name holds (not following a symlink), or
/// `None` when nothing is there: a missing parent, a parent that is not a real directory
/// (a symlink or a file), or a missing name.
fn stat_beneath(root: &Path, key: &Key) -> io::Result<Option<(OwnedFd, rfs::Stat)>> {
    let dir = match open_parent_dir(root, key, false) {
        Ok(d) => d,
        Err(PlaceError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(PlaceError::Io(e)) => return Err(e),
        Err(_) => return Ok(None),
    };
    match rfs::statat(&dir, key.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((dir, st))),
        Err(Errno::NOENT) | Err(Errno::NOTDIR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// An exclusive lock on a store root (`flock` on [`LOCK_FILE_NAME`]), held until dropped.
/// Operations that write or delete under a root take it so they never overlap.
///
/// The lock file is private (mode 0600; an older, wider one owned by this user is
/// narrowed), since `flock` works on a read-only descriptor: a world-readable lock file
/// would let any local user stop every cleanup. The holder writes its pid, start time and
/// command into the file, so a run that finds the lock taken can say who has it.
#[derive(Debug)]
pub struct StoreLock {
    file: File,
}

/// The lock was held by another process for all of the wait.
#[derive(Debug, Clone)]
pub struct LockHeld {
    /// What the holder recorded (`pid 42, since ..., command ...`), or why nothing can be
    /// said about it.
    pub holder: String,
}

impl std::fmt::Display for LockHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.holder)
    }
}

impl StoreLock {
    /// Takes the lock without waiting: `Ok(None)` when another process holds it.
    pub fn try_acquire(root: &Path) -> io::Result<Option<StoreLock>> {
        StoreLock::try_acquire_at(&open_root(root)?)
    }

    /// Like [`StoreLock::try_acquire`], for a root already open as `root_dir`.
    pub(crate) fn try_acquire_at(root_dir: &impl AsFd) -> io::Result<Option<StoreLock>> {
        Ok(StoreLock::acquire_at(root_dir, std::time::Duration::ZERO)?.ok())
    }

    /// Takes the lock, waiting up to `wait` for another holder to let go. `Ok(Err(_))`
    /// names the holder when it did not.
    pub(crate) fn acquire_at(
        root_dir: &impl AsFd,
        wait: std::time::Duration,
    ) -> io::Result<Result<StoreLock, LockHeld>> {
        let fd = open_lock_file(root_dir)?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            match rfs::flock(&fd, rfs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    let lock = StoreLock {
                        file: File::from(fd),
                    };
                    lock.record_holder()?;
                    return Ok(Ok(lock));
                }
                Err(Errno::WOULDBLOCK) => {}
                Err(e) => return Err(e.into()),
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(Err(LockHeld {
                    holder: describe_holder(&fd),
                }));
            }
            std::thread::sleep((deadline - now).min(std::time::Duration::from_millis(200)));
        }
    }

    fn record_holder(&self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut command: String = std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        command = command
            .chars()
            .filter(|c| !c.is_control())
            .take(300)
            .collect();
        let record = format!(
            "pid {}\nsince {since}\ncommand {command}\n",
            std::process::id()
        );
        self.file.set_len(0)?;
        self.file.write_all_at(record.as_bytes(), 0)
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // A record left behind would name a process that no longer holds the lock.
        let _ = self.file.set_len(0);
    }
}

/// Opens (creating it 0600) the lock file, and narrows an existing one that others can
/// read or write, when this user owns it.
fn open_lock_file(root_dir: &impl AsFd) -> io::Result<OwnedFd> {
    let fd = rfs::openat(
        root_dir,
        LOCK_FILE_NAME,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::from_raw_mode(0o600),
    )?;
    let st = rfs::fstat(&fd)?;
    if st.st_mode & 0o077 != 0 && st.st_uid == rustix::process::geteuid().as_raw() {
        rfs::fchmod(&fd, Mode::from_raw_mode(0o600))?;
    }
    Ok(fd)
}

/// Who holds the lock, from what the holder wrote into the lock file.
fn describe_holder(fd: &OwnedFd) -> String {
    let mut buf = [0u8; 1024];
    let n = rustix::io::pread(fd, &mut buf, 0).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(str::to_owned)
    };
    let Some(pid) = field("pid").and_then(|p| p.parse::<u32>().ok()) else {
        return "a process that did not record itself (not a stowage run: another user or \
                tool holding the lock file open?)"
            .into();
    };
    let since = field("since")
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
    let mut out = format!("pid {pid}");
    if let Some(t) = since {
        let ago = SystemTime::now()
            .duration_since(t)
            .map(|d| humantime::format_duration(std::time::Duration::from_secs(d.as_secs())))
            .map(|d| format!(", {d} ago"))
            .unwrap_or_default();
        out += &format!(", since {}{ago}", humantime::format_rfc3339_seconds(t));
    }
    if let Some(c) = field("command") {
        out += &format!(", command `{c}`");
    }
    if !Path::new("/proc").join(pid.to_string()).exists() {
        out += " (that process is gone: another process, one that did not record itself, \
                holds the lock)";
    }
    out
}

/// Marks `root` as a stowage store by creating [`STORE_MARKER_NAME`] in it (nothing
/// happens if it is there already). Opening or creating a local store and migrating into
/// one call it; `cleanup` refuses a root without it.
pub fn mark_store(root: &Path) -> io::Result<()> {
    mark_store_at(&open_root(root)?)
}

/// Like [`mark_store`], for a root already open as `root_dir`.
pub(crate) fn mark_store_at(root_dir: &impl AsFd) -> io::Result<()> {
    if is_marked_store(root_dir)? {
        return Ok(());
    }
    let fd = match rfs::openat(
        root_dir,
        STORE_MARKER_NAME,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    ) {
        Ok(fd) => fd,
        Err(Errno::EXIST) if is_marked_store(root_dir)? => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    File::from(fd).write_all(
        b"This directory is a stowage store. `stowage cleanup` only deletes under a \
          directory holding this file; do not copy it elsewhere.\n",
    )
}

/// Whether `root_dir` holds the store marker (a regular file, not a link).
pub(crate) fn is_marked_store(root_dir: &impl AsFd) -> io::Result<bool> {
    match rfs::statat(root_dir, STORE_MARKER_NAME, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::RegularFile),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Flushes everything written to the filesystem holding `root` (`syncfs`): makes the
/// renames of [`AtomicFile::commit_unsynced_dir`] durable in one call.
pub(crate) fn sync_filesystem(root: &Path) -> io::Result<()> {
    let dir = open_root(root)?;
    rfs::syncfs(&dir)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two writers putting and removing siblings: each removal prunes the directories it
    /// emptied, which used to make the other's put fail with ENOENT.
    #[test]
    fn a_put_survives_its_parent_being_pruned_by_a_sibling_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let writers: Vec<_> = ["x", "y"]
            .into_iter()
            .map(|name| {
                let root = tmp.path().to_path_buf();
                std::thread::spawn(move || {
                    let key = Key::new(format!("a/b/c/{name}")).unwrap();
                    for i in 0..500 {
                        let mut f = AtomicFile::create(&root, &key)
                            .unwrap_or_else(|e| panic!("create #{i}: {e}"));
                        f.write_all(b"clip").unwrap();
                        f.commit().unwrap_or_else(|e| panic!("commit #{i}: {e}"));
                        remove(&root, &key).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
    }

    fn put(root: &Path, key: &Key, data: &[u8]) {
        let mut f = AtomicFile::create(root, key).unwrap();
        f.write_all(data).unwrap();
        f.commit().unwrap();
    }

    fn commit_expecting(root: &Path, key: &Key, expect: Expect) -> Result<(), PlaceError> {
        let mut f = AtomicFile::create(root, key).unwrap();
        f.write_all(b"from the bucket").unwrap();
        f.commit_unsynced_dir_expecting(expect).map(drop)
    }

    #[test]
    fn a_commit_replaces_only_the_file_it_planned_to_replace() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let key = Key::new("clips/a.mp4").unwrap();
        let read = || std::fs::read(key.to_path(root)).unwrap();
        // Planned over nothing, written meanwhile: left alone.
        put(root, &key, b"service");
        let r = commit_expecting(root, &key, Expect::Absent);
        assert!(
            matches!(r, Err(PlaceError::Changed(WRITTEN_SINCE_PLANNING))),
            "{r:?}"
        );
        assert_eq!(read(), b"service");
        // Planned over this very file, unchanged: replaced.
        let planned = stat_file_id(root, &key).unwrap().unwrap();
        commit_expecting(root, &key, Expect::File(planned)).unwrap();
        assert_eq!(read(), b"from the bucket");
        // Planned over a file since replaced by another writer: swapped back.
        let planned = stat_file_id(root, &key).unwrap().unwrap();
        put(root, &key, b"service again");
        let r = commit_expecting(root, &key, Expect::File(planned));
        assert!(
            matches!(r, Err(PlaceError::Changed(WRITTEN_SINCE_PLANNING))),
            "{r:?}"
        );
        assert_eq!(read(), b"service again");
        // Planned over a file since removed: not brought back.
        let planned = stat_file_id(root, &key).unwrap().unwrap();
        assert!(remove(root, &key).unwrap());
        std::fs::create_dir_all(root.join("clips")).unwrap();
        let r = commit_expecting(root, &key, Expect::File(planned));
        assert!(
            matches!(r, Err(PlaceError::Changed(REMOVED_SINCE_PLANNING))),
            "{r:?}"
        );
        assert!(!key.to_path(root).exists());
        let names: Vec<_> = std::fs::read_dir(root.join("clips")).unwrap().collect();
        assert!(names.is_empty(), "no temp file left: {names:?}");
    }

    #[test]
    fn only_temp_files_no_writer_holds_are_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let key = Key::new("clips/live.mp4").unwrap();
        let mut live = AtomicFile::create(tmp.path(), &key).unwrap();
        live.write_all(b"in flight").unwrap();
        let dir = tmp.path().join("clips");
        std::fs::write(dir.join(".stowage-tmp.00000000deadbeef"), b"left by a kill").unwrap();
        let dir_fd = open_root(&dir).unwrap();
        let mut removed = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name();
            if remove_if_stale_temp(&dir_fd, &name).unwrap() {
                removed.push(name);
            }
        }
        assert_eq!(removed, [OsStr::new(".stowage-tmp.00000000deadbeef")]);
        live.commit().unwrap();
        assert_eq!(std::fs::read(dir.join("live.mp4")).unwrap(), b"in flight");
    }

    /// Every way of opening beneath a held root directory: `openat2`, the one-directory-
    /// at-a-time walk used where `openat2` is missing, and the cached-only lookup.
    fn open_all_ways(root: &OwnedFd, key: &str) -> [Option<Vec<u8>>; 3] {
        use std::io::Read;
        let key = Key::new(key).unwrap();
        let read = |f: File| {
            let mut v = Vec::new();
            (&f).read_to_end(&mut v).unwrap();
            v
        };
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let walked = open_walking(root.as_fd(), &key, flags)
            .ok()
            .and_then(|fd| regular_file(fd).ok());
        let cached = {
            #[cfg(feature = "http")]
            let c = open_beneath_cached_at(root.as_fd(), &key);
            #[cfg(not(feature = "http"))]
            let c = open_beneath_stat_at(root.as_fd(), &key).ok();
            c
        };
        [
            open_beneath_stat_at(root.as_fd(), &key).ok(),
            walked,
            cached,
        ]
        .map(|o| o.map(|(f, _)| read(f)))
    }

    #[test]
    fn a_held_root_never_follows_a_symlink_out_of_it_or_within_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("a/b"), "a-b").unwrap();
        std::fs::write(root.join("top"), "top").unwrap();
        std::fs::write(outside.join("secret"), "TOP-SECRET").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("dirlink")).unwrap();
        std::os::unix::fs::symlink(root.join("a/b"), root.join("alias")).unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("adir")).unwrap();
        let held = open_root(&root).unwrap();
        // Warm the dentry cache so the cached-only lookup can answer.
        let _ = open_all_ways(&held, "a/b");
        let _ = open_all_ways(&held, "top");
        for (key, want) in [("a/b", "a-b"), ("top", "top")] {
            let got = open_all_ways(&held, key);
            assert!(
                got.iter().all(|g| g.as_deref() == Some(want.as_bytes())),
                "{key}: {got:?}"
            );
        }
        for key in [
            "link",
            "dirlink/secret",
            "alias",
            "adir/b",
            "a",
            "missing",
            "a/missing",
        ] {
            assert_eq!(open_all_ways(&held, key), [None, None, None], "{key}");
        }
    }

    #[cfg(feature = "http")]
    #[test]
    fn a_held_root_follows_its_path_within_the_recheck() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("k"), "one").unwrap();
        let held = HeldRoot::new(&root);
        let key = Key::new("k").unwrap();
        let read = |held: &HeldRoot| {
            let dir = held.held()?;
            let (f, _) = open_beneath_stat_at(dir.as_fd(), &key).ok()?;
            Some(std::io::read_to_string(f).unwrap())
        };
        assert_eq!(read(&held).as_deref(), Some("one"));
        let settle = || std::thread::sleep(ROOT_RECHECK + std::time::Duration::from_millis(100));

        // The path made to name another directory: the old one is served until the
        // recheck, the new one after.
        std::fs::rename(&root, tmp.path().join("old")).unwrap();
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("k"), "two").unwrap();
        settle();
        assert_eq!(read(&held).as_deref(), Some("two"));

        // The path gone: nothing held, so each request opens the path (and finds nothing).
        std::fs::rename(&root, tmp.path().join("older")).unwrap();
        settle();
        assert!(held.held().is_none());
        assert!(HeldRoot::open_path(held.path()).is_err());

        // Back again: held again.
        std::fs::rename(tmp.path().join("old"), &root).unwrap();
        settle();
        assert_eq!(read(&held).as_deref(), Some("one"));
    }
}
