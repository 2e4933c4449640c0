//! [`LocalStore`]: stowage's local backend as an [`object_store::ObjectStore`].
//!
//! Anything written against `Arc<dyn ObjectStore>` (DataFusion, Parquet readers, object
//! store wrappers) can use a local directory through object_store's own `LocalFileSystem`,
//! but that store does not fsync by default, follows symlinks out of its root, cannot
//! store a Content-Type and refuses keys ending in `#<digits>`. `LocalStore` is the same
//! trait over stowage's [`crate::local`] primitives instead, so it keeps their guarantees:
//!
//! - every [`Path`] becomes a [`Key`] first; a path that is not a valid key is an error,
//!   never a path on disk;
//! - every file is reached from the root's directory handle one component at a time with
//!   `O_NOFOLLOW` ([`local::open_beneath`], `local::open_parent_dir`): no symlink is
//!   followed, inside the root or out of it;
//! - every write is an [`AtomicFile`] (temp file, fsync, rename, directory fsync), and
//!   `PutMode::Create` / `CopyMode::Create` rename with `RENAME_NOREPLACE`, so exactly one
//!   of several racing creators wins;
//! - attributes live in `user.*` extended attributes (Content-Type in `user.mime_type`,
//!   where the rest of stowage reads it);
//! - stowage's own files (`.stowage*`: temp files, the lock file) are never listed.
//!
//! Listing does not use the no-follow walker (`walk::Walker`): object_store callers expect keys in
//! order and a listing that starts at the prefix's directory, so `Lister` reads one
//! directory at a time, sorts it, and descends the same no-follow way the walker does.
//!
//! Invariant: no `LocalStore` method opens, creates, renames or removes anything that is
//! not reached from the root's own directory handle through real directories.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, CopyMode, CopyOptions, GetOptions, GetRange, GetResult,
    GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, RenameTargetMode,
    UploadPart,
};
use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::key::{Key, RESERVED_PREFIX};
use crate::local::{self, AtomicFile, PlaceError, CONTENT_TYPE_XATTR};

/// object_store's result type, used by every trait method here.
type OsResult<T> = object_store::Result<T>;

/// The name errors carry in their `store` field.
const STORE: &str = "LocalStore";
/// Objects handed over per blocking call while listing.
const LIST_PAGE: usize = 1000;
/// Extended-attribute name prefix for the Content-* and Cache-Control attributes.
const ATTR_XATTR_PREFIX: &str = "user.stowage.attr.";
/// Extended-attribute name prefix for user metadata (`Attribute::Metadata`).
const META_XATTR_PREFIX: &str = "user.stowage.meta.";

/// A local directory as an [`ObjectStore`], with stowage's local guarantees (see the
/// [module docs](self)). Cheap to clone; clones share nothing but the root path.
///
/// What it does not do:
/// - `PutMode::Update` is `NotImplemented`: a compare-and-swap on a local file needs a
///   lock every writer takes, and plain overwrites here take none, so a check of the
///   current ETag followed by a rename could not be atomic;
/// - tags are `NotImplemented` (a filesystem has nothing to keep them in);
/// - attributes are `NotImplemented` on a filesystem without user extended attributes,
///   rather than silently dropped;
/// - versions are not kept: a `GetOptions` with a version is `NotSupported`;
/// - `MultipartStore` (upload ids that outlive the upload handle) is not implemented;
///   `put_multipart` is;
/// - a file whose name is not a valid key (a newline, a backslash, not UTF-8) is not
///   an object: listings skip it rather than end at it;
/// - `list_with_delimiter` reads only the prefix's own directory, so a subdirectory that
///   holds nothing but an upload in progress is reported as a common prefix.
///
/// ```
/// use std::sync::Arc;
/// use object_store::{path::Path, ObjectStore, ObjectStoreExt};
/// use stowage::LocalStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(dir.path())?);
///
/// let path = Path::parse("frames/take#2")?;
/// store.put(&path, "pixels".into()).await?;
/// assert_eq!(store.get(&path).await?.bytes().await?, "pixels");
/// assert_eq!(store.head(&path).await?.size, 6);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: Arc<std::path::Path>,
}

impl LocalStore {
    /// A store over the existing directory `root`. The root itself is resolved like any
    /// path (it may be a symlink an operator made); everything beneath it is no-follow.
    pub fn new(root: impl Into<PathBuf>) -> crate::Result<LocalStore> {
        let root = root.into();
        match std::fs::metadata(&root) {
            Ok(md) if md.is_dir() => Ok(LocalStore {
                root: Arc::from(root),
            }),
            Ok(_) => Err(crate::Error::config(
                root.display().to_string(),
                "a local store root must be a directory, and this is a file",
            )),
            Err(e) => Err(crate::Error::io("open store root", root, e)),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    fn root_buf(&self) -> PathBuf {
        self.root.to_path_buf()
    }
}

impl std::fmt::Display for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{STORE}({})", self.root.display())
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> OsResult<PutResult> {
        let PutOptions {
            mode,
            tags,
            attributes,
            ..
        } = opts;
        let no_replace = match mode {
            PutMode::Overwrite => false,
            PutMode::Create => true,
            PutMode::Update(_) => {
                return Err(self.not_implemented("`put_opts` with `PutMode::Update`"))
            }
        };
        if !tags.encoded().is_empty() {
            return Err(self.not_implemented("`put_opts` with tags"));
        }
        let key = key_of(location)?;
        let (root, location) = (self.root_buf(), location.clone());
        let name = self.to_string();
        blocking(move || {
            let mut file = create_file(&root, &key, &attributes, &name)?;
            for chunk in payload.iter() {
                file.write_all(chunk)
                    .map_err(|e| io_error("write", &location, file.final_path(), e))?;
            }
            commit(file, no_replace, &root, &key, &location)
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> OsResult<Box<dyn MultipartUpload>> {
        let PutMultipartOptions {
            tags, attributes, ..
        } = opts;
        if !tags.encoded().is_empty() {
            return Err(self.not_implemented("`put_multipart_opts` with tags"));
        }
        let key = key_of(location)?;
        let (root, temp_key) = (self.root_buf(), key.clone());
        let name = self.to_string();
        let (file, writer) = blocking(move || {
            let mut file = create_file(&root, &temp_key, &attributes, &name)?;
            let writer = file
                .file()
                .try_clone()
                .map_err(|e| generic(format!("duplicate the temp file handle: {e}")))?;
            Ok((file, writer))
        })
        .await?;
        Ok(Box::new(LocalUpload {
            root: self.root_buf(),
            key,
            location: location.clone(),
            file: Some(file),
            writer: Arc::new(writer),
            next_offset: 0,
            parts_issued: 0,
            parts_written: Arc::new(AtomicUsize::new(0)),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> OsResult<GetResult> {
        if options.version.is_some() {
            return Err(object_store::Error::NotSupported {
                source: format!("{self} keeps no object versions").into(),
            });
        }
        let key = key_of(location)?;
        let (root, location) = (self.root_buf(), location.clone());
        blocking(move || {
            let path = key.to_path(&root);
            let (file, st) = local::open_beneath_stat(&root, &key)
                .map_err(|e| io_error("open", &location, &path, e))?;
            let meta = object_meta(location.clone(), &st);
            options.check_preconditions(&meta)?;
            let range = match &options.range {
                Some(r) => r
                    .as_range(meta.size)
                    .map_err(|e| generic(format!("{location}: {e}")))?,
                None => 0..meta.size,
            };
            let attributes =
                read_attributes(&file).map_err(|e| io_error("read xattrs", &location, &path, e))?;
            Ok(GetResult {
                payload: GetResultPayload::File(file, path),
                meta,
                range,
                attributes,
                extensions: Default::default(),
            })
        })
        .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> OsResult<Vec<Bytes>> {
        let key = key_of(location)?;
        let (root, location, ranges) = (self.root_buf(), location.clone(), ranges.to_vec());
        blocking(move || {
            let path = key.to_path(&root);
            let file = local::open_beneath(&root, &key)
                .map_err(|e| io_error("open", &location, &path, e))?;
            let size = file
                .metadata()
                .map_err(|e| io_error("stat", &location, &path, e))?
                .len();
            ranges
                .into_iter()
                .map(|r| read_range(&file, size, r, &location, &path))
                .collect()
        })
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, OsResult<Path>>,
    ) -> BoxStream<'static, OsResult<Path>> {
        let root = self.root_buf();
        locations
            .map(move |location| {
                let root = root.clone();
                async move {
                    let location = location?;
                    let key = key_of(&location)?;
                    let loc = location.clone();
                    // A missing key is not an error, as on S3.
                    blocking(move || {
                        local::remove(&root, &key)
                            .map_err(|e| io_error("remove", &loc, &key.to_path(&root), e))
                    })
                    .await?;
                    Ok(location)
                }
            })
            .buffered(10)
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, OsResult<ObjectMeta>> {
        self.list_after(prefix, None)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, OsResult<ObjectMeta>> {
        self.list_after(prefix, Some(offset.to_string()))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> OsResult<ListResult> {
        let prefix = prefix_key(prefix)?;
        let root = self.root_buf();
        blocking(move || {
            let mut result = ListResult {
                common_prefixes: Vec::new(),
                objects: Vec::new(),
                extensions: Default::default(),
            };
            let Some((dir, dev)) = open_dir(&root, prefix.as_ref()).map_err(list_error(&root))?
            else {
                return Ok(result);
            };
            let rel = prefix.map(|p| format!("{p}/")).unwrap_or_default();
            for child in read_level(&dir, dev, &rel).map_err(list_error(&root))? {
                let key = format!("{rel}{}", child.name);
                let Ok(path) = Path::parse(&key) else {
                    continue;
                };
                if child.is_dir {
                    result.common_prefixes.push(path);
                } else {
                    result.objects.push(object_meta(path, &child.stat));
                }
            }
            Ok(result)
        })
        .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> OsResult<()> {
        let no_replace = matches!(options.mode, CopyMode::Create);
        let (from_key, to_key) = (key_of(from)?, key_of(to)?);
        let (root, from, to) = (self.root_buf(), from.clone(), to.clone());
        let name = self.to_string();
        blocking(move || {
            let from_path = from_key.to_path(&root);
            let mut src = local::open_beneath(&root, &from_key)
                .map_err(|e| io_error("open", &from, &from_path, e))?;
            let attributes =
                read_attributes(&src).map_err(|e| io_error("read xattrs", &from, &from_path, e))?;
            let mut dst = create_file(&root, &to_key, &attributes, &name)?;
            io::copy(&mut src, dst.file())
                .map_err(|e| io_error("copy to", &to, dst.final_path(), e))?;
            commit(dst, no_replace, &root, &to_key, &to).map(drop)
        })
        .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> OsResult<()> {
        let no_replace = matches!(options.target_mode, RenameTargetMode::Create);
        let (from_key, to_key) = (key_of(from)?, key_of(to)?);
        let (root, from, to) = (self.root_buf(), from.clone(), to.clone());
        blocking(move || rename(&root, (&from_key, &from), (&to_key, &to), no_replace)).await
    }
}

impl LocalStore {
    fn not_implemented(&self, operation: &str) -> object_store::Error {
        object_store::Error::NotImplemented {
            operation: operation.to_owned(),
            implementer: self.to_string(),
        }
    }

    /// `list` and `list_with_offset`: pages of a sorted, no-follow walk of the prefix's
    /// directory, each page read on a blocking thread.
    fn list_after(
        &self,
        prefix: Option<&Path>,
        offset: Option<String>,
    ) -> BoxStream<'static, OsResult<ObjectMeta>> {
        let prefix = match prefix_key(prefix) {
            Ok(p) => p,
            Err(e) => return stream::once(async { Err(e) }).boxed(),
        };
        let root = self.root_buf();
        let start = ListState::Start {
            root,
            prefix,
            offset,
        };
        stream::try_unfold(start, list_step)
            .map_ok(|page| stream::iter(page.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }
}

/// One page of a `list` stream: opens the listing first, ends it when the walk is over.
async fn list_step(state: ListState) -> OsResult<Option<(Vec<ObjectMeta>, ListState)>> {
    let lister = match state {
        ListState::Done => return Ok(None),
        ListState::Running(lister) => lister,
        ListState::Start {
            root,
            prefix,
            offset,
        } => match blocking(move || Lister::open(&root, prefix, offset)).await? {
            Some(lister) => lister,
            None => return Ok(None),
        },
    };
    let (lister, page) = blocking(move || {
        let mut lister = lister;
        let page = lister.next_page(LIST_PAGE)?;
        Ok((lister, page))
    })
    .await?;
    let next = if lister.is_done() {
        ListState::Done
    } else {
        ListState::Running(lister)
    };
    Ok(Some((page, next)))
}

/// Runs blocking filesystem work off the async threads ([`crate::blocking`]: a panic is
/// resumed in the caller).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> OsResult<T> + Send + 'static,
) -> OsResult<T> {
    crate::blocking::try_run(f).await
}

/// The key for an object_store path: the one conversion every method goes through.
fn key_of(location: &Path) -> OsResult<Key> {
    Key::parse(location.as_ref()).map_err(|e| generic(format!("not a stowage key: {e}")))
}

/// The key of a listing prefix; `None` for the whole store.
fn prefix_key(prefix: Option<&Path>) -> OsResult<Option<Key>> {
    match prefix {
        Some(p) if !p.as_ref().is_empty() => key_of(p).map(Some),
        _ => Ok(None),
    }
}

fn generic(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: message.into(),
    }
}

/// An I/O error on `location` (whose file is `path`), as object_store's semantic variants.
fn io_error(
    op: &'static str,
    location: &Path,
    path: &std::path::Path,
    e: io::Error,
) -> object_store::Error {
    let path_str = location.to_string();
    match e.kind() {
        io::ErrorKind::NotFound => object_store::Error::NotFound {
            path: path_str,
            source: e.into(),
        },
        io::ErrorKind::PermissionDenied => object_store::Error::PermissionDenied {
            path: path_str,
            source: e.into(),
        },
        _ => object_store::Error::Generic {
            store: STORE,
            source: Box::new(crate::Error::io(op, path, e)),
        },
    }
}

/// A [`PlaceError`] (clash with a directory, symlink, full disk) for `key`.
fn place_error(root: &std::path::Path, key: &Key, e: PlaceError) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(e.into_error(key.to_path(root))),
    }
}

fn list_error(root: &std::path::Path) -> impl Fn(io::Error) -> object_store::Error + '_ {
    move |e| object_store::Error::Generic {
        store: STORE,
        source: Box::new(crate::Error::io("list", root, e)),
    }
}

/// The temp file for `key`, with `attributes` already set on it.
fn create_file(
    root: &std::path::Path,
    key: &Key,
    attributes: &Attributes,
    store: &str,
) -> OsResult<AtomicFile> {
    let mut file = AtomicFile::create(root, key).map_err(|e| place_error(root, key, e))?;
    set_attributes(file.file(), attributes, store)?;
    Ok(file)
}

/// Makes `file` durable under its final name; with `no_replace`, only if the name is free.
fn commit(
    mut file: AtomicFile,
    no_replace: bool,
    root: &std::path::Path,
    key: &Key,
    location: &Path,
) -> OsResult<PutResult> {
    let st = rfs::fstat(file.file())
        .map_err(|e| io_error("stat", location, &key.to_path(root), e.into()))?;
    if no_replace {
        let placed = file
            .commit_noreplace()
            .map_err(|e| place_error(root, key, e))?;
        if !placed {
            return Err(object_store::Error::AlreadyExists {
                path: location.to_string(),
                source: "an object with this key exists".into(),
            });
        }
    } else {
        file.commit().map_err(|e| place_error(root, key, e))?;
    }
    // The rename keeps the inode and the mtime, so the temp file's ETag is the object's.
    Ok(PutResult {
        e_tag: Some(etag(&st)),
        version: None,
        extensions: Default::default(),
    })
}

/// Moves `from` to `to` with one `renameat` (no copy), never following a symlink and never
/// moving anything but a regular file.
fn rename(
    root: &std::path::Path,
    (from_key, from): (&Key, &Path),
    (to_key, to): (&Key, &Path),
    no_replace: bool,
) -> OsResult<()> {
    let not_found = |detail: &str| object_store::Error::NotFound {
        path: from.to_string(),
        source: detail.to_owned().into(),
    };
    let src_dir = match local::open_parent_dir(root, from_key, false) {
        Ok(d) => d,
        Err(PlaceError::Io(e)) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_error("open", from, &from_key.to_path(root), e))
        }
        Err(_) => return Err(not_found("no such object")),
    };
    match rfs::statat(&src_dir, from_key.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
        Ok(_) | Err(Errno::NOENT) => return Err(not_found("no such object")),
        Err(e) => return Err(io_error("stat", from, &from_key.to_path(root), e.into())),
    }
    let dst_dir =
        local::open_parent_dir(root, to_key, true).map_err(|e| place_error(root, to_key, e))?;
    let flags = if no_replace {
        rfs::RenameFlags::NOREPLACE
    } else {
        rfs::RenameFlags::empty()
    };
    match rfs::renameat_with(
        &src_dir,
        from_key.file_name(),
        &dst_dir,
        to_key.file_name(),
        flags,
    ) {
        Ok(()) => {}
        Err(Errno::NOENT) => return Err(not_found("removed while being renamed")),
        Err(Errno::EXIST) if no_replace => {
            return Err(object_store::Error::AlreadyExists {
                path: to.to_string(),
                source: "an object with this key exists".into(),
            })
        }
        Err(e) => {
            let e = PlaceError::Io(e.into());
            return Err(place_error(root, to_key, e));
        }
    }
    let sync = |dir: &OwnedFd, key: &Key, loc: &Path| {
        rfs::fsync(dir).map_err(|e| io_error("fsync", loc, &key.to_path(root), e.into()))
    };
    sync(&dst_dir, to_key, to)?;
    sync(&src_dir, from_key, from)?;
    drop((src_dir, dst_dir));
    local::prune_empty_parents(root, from_key);
    Ok(())
}

/// Reads `range` of `file` (of `size` bytes) with `pread`, clamping its end like a GET.
fn read_range(
    file: &File,
    size: u64,
    range: Range<u64>,
    location: &Path,
    path: &std::path::Path,
) -> OsResult<Bytes> {
    if range.is_empty() {
        return Ok(Bytes::new());
    }
    let range = GetRange::Bounded(range)
        .as_range(size)
        .map_err(|e| generic(format!("{location}: {e}")))?;
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    file.read_exact_at(&mut buf, range.start)
        .map_err(|e| io_error("read", location, path, e))?;
    Ok(buf.into())
}

/// Quoted `"<inode>-<mtime ns>-<size>"` in hex, as [`crate::BlobStore`] reports for local
/// files: it changes whenever the object is replaced, since every write is a new inode.
// `stat` field widths differ between architectures; the casts are not all no-ops.
#[allow(clippy::unnecessary_cast)]
fn etag(st: &Stat) -> String {
    let nanos: u128 = if st.st_mtime >= 0 {
        st.st_mtime as u128 * 1_000_000_000 + st.st_mtime_nsec as u128
    } else {
        0
    };
    let (ino, size) = (st.st_ino as u64, st.st_size.max(0) as u64);
    format!("\"{ino:x}-{nanos:x}-{size:x}\"")
}

#[allow(clippy::unnecessary_cast)]
fn object_meta(location: Path, st: &Stat) -> ObjectMeta {
    let mtime = crate::walk::system_time(st.st_mtime as i64, st.st_mtime_nsec as i64);
    ObjectMeta {
        location,
        last_modified: DateTime::<Utc>::from(mtime),
        size: st.st_size.max(0) as u64,
        e_tag: Some(etag(st)),
        version: None,
    }
}

/// The extended attribute that holds `attribute`, if it has one.
fn xattr_name(attribute: &Attribute) -> Option<String> {
    let simple = |name: &str| Some(format!("{ATTR_XATTR_PREFIX}{name}"));
    match attribute {
        Attribute::ContentType => Some(CONTENT_TYPE_XATTR.to_owned()),
        Attribute::ContentDisposition => simple("content-disposition"),
        Attribute::ContentEncoding => simple("content-encoding"),
        Attribute::ContentLanguage => simple("content-language"),
        Attribute::CacheControl => simple("cache-control"),
        Attribute::StorageClass => simple("storage-class"),
        Attribute::Metadata(key) => Some(format!("{META_XATTR_PREFIX}{key}")),
        _ => None,
    }
}

/// The attribute an extended attribute name stands for (the inverse of [`xattr_name`]).
fn attribute_of(xattr: &str) -> Option<Attribute> {
    if xattr == CONTENT_TYPE_XATTR {
        return Some(Attribute::ContentType);
    }
    if let Some(key) = xattr.strip_prefix(META_XATTR_PREFIX) {
        return Some(Attribute::Metadata(key.to_owned().into()));
    }
    Some(match xattr.strip_prefix(ATTR_XATTR_PREFIX)? {
        "content-disposition" => Attribute::ContentDisposition,
        "content-encoding" => Attribute::ContentEncoding,
        "content-language" => Attribute::ContentLanguage,
        "cache-control" => Attribute::CacheControl,
        "storage-class" => Attribute::StorageClass,
        _ => return None,
    })
}

/// Stores `attributes` on the temp file. Unlike [`AtomicFile::set_content_type`], a
/// filesystem without user xattrs is an error: the caller asked for them explicitly.
fn set_attributes(file: &File, attributes: &Attributes, store: &str) -> OsResult<()> {
    for (attribute, value) in attributes {
        let Some(name) = xattr_name(attribute) else {
            return Err(object_store::Error::NotImplemented {
                operation: format!("attribute {attribute:?}"),
                implementer: store.to_owned(),
            });
        };
        match rfs::fsetxattr(
            file,
            name.as_str(),
            value.as_bytes(),
            rfs::XattrFlags::empty(),
        ) {
            Ok(()) => {}
            Err(Errno::NOTSUP | Errno::PERM) => {
                return Err(object_store::Error::NotImplemented {
                    operation: "attributes on a filesystem without user extended attributes"
                        .to_owned(),
                    implementer: store.to_owned(),
                })
            }
            Err(e) => return Err(generic(format!("set extended attribute {name}: {e}"))),
        }
    }
    Ok(())
}

/// The attributes stored with `file` ([`set_attributes`]); none where xattrs are unsupported.
fn read_attributes(file: &File) -> io::Result<Attributes> {
    let mut attributes = Attributes::new();
    let names = match read_sized(|buf| rfs::flistxattr(file, buf)) {
        Ok(names) => names,
        Err(Errno::NOTSUP) => return Ok(attributes),
        Err(e) => return Err(e.into()),
    };
    for name in names.split(|b| *b == 0) {
        let Some((name, attribute)) = std::str::from_utf8(name)
            .ok()
            .and_then(|n| Some((n, attribute_of(n)?)))
        else {
            continue;
        };
        let value = match read_sized(|buf| rfs::fgetxattr(file, name, buf)) {
            Ok(v) => v,
            Err(Errno::NODATA) => continue, // removed meanwhile
            Err(e) => return Err(e.into()),
        };
        if let Ok(value) = String::from_utf8(value) {
            attributes.insert(attribute, value.into());
        }
    }
    Ok(attributes)
}

/// Calls an xattr getter with a buffer that grows until the value fits.
fn read_sized(
    mut get: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match get(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}

/// One multipart upload: parts are written at their offsets into one [`AtomicFile`], so
/// they may finish in any order; `complete` commits it, `abort` (or dropping) removes it.
#[derive(Debug)]
struct LocalUpload {
    root: PathBuf,
    key: Key,
    location: Path,
    /// `None` once completed or aborted.
    file: Option<AtomicFile>,
    /// A second handle on the temp file, shared by the part writers (`pwrite`).
    writer: Arc<File>,
    /// Where the next part starts: parts are numbered, and placed, in `put_part` order.
    next_offset: u64,
    parts_issued: usize,
    parts_written: Arc<AtomicUsize>,
}

#[async_trait]
impl MultipartUpload for LocalUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let offset = self.next_offset;
        self.next_offset += data.content_length() as u64;
        self.parts_issued += 1;
        let (writer, written) = (Arc::clone(&self.writer), Arc::clone(&self.parts_written));
        let (location, path) = (self.location.clone(), self.key.to_path(&self.root));
        Box::pin(blocking(move || {
            let mut at = offset;
            for chunk in data.iter() {
                writer
                    .write_all_at(chunk, at)
                    .map_err(|e| io_error("write", &location, &path, e))?;
                at += chunk.len() as u64;
            }
            written.fetch_add(1, Ordering::AcqRel);
            Ok(())
        }))
    }

    async fn complete(&mut self) -> OsResult<PutResult> {
        // A part future dropped or still running would leave a hole in the object.
        let written = self.parts_written.load(Ordering::Acquire);
        if written != self.parts_issued {
            return Err(generic(format!(
                "{}: complete called with {} of {} parts written",
                self.location, written, self.parts_issued
            )));
        }
        let file = self.file.take().ok_or_else(|| {
            generic(format!(
                "{}: upload already completed or aborted",
                self.location
            ))
        })?;
        let (root, key, location) = (self.root.clone(), self.key.clone(), self.location.clone());
        blocking(move || commit(file, false, &root, &key, &location)).await
    }

    async fn abort(&mut self) -> OsResult<()> {
        if let Some(file) = self.file.take() {
            // Dropping an uncommitted AtomicFile unlinks its temp file.
            blocking(move || {
                drop(file);
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}

/// Where a `list` stream is.
enum ListState {
    Start {
        root: PathBuf,
        prefix: Option<Key>,
        offset: Option<String>,
    },
    Running(Lister),
    Done,
}

/// One entry of a directory being listed.
struct Child {
    name: String,
    is_dir: bool,
    stat: Stat,
}

/// An open directory being listed, with its sorted entries still to visit.
struct Level {
    dir: OwnedFd,
    /// Key prefix of the entries: `""` for the root, `"a/b/"` below it.
    rel: String,
    children: std::vec::IntoIter<Child>,
}

/// A sorted, no-follow walk below a prefix, yielding objects in key order.
///
/// Each directory is read whole and sorted (a directory sorts as its name plus `/`, which
/// puts every key in key order); memory is one directory's names per level.
struct Lister {
    dev: u64,
    stack: Vec<Level>,
    /// Only keys after this are yielded; directories wholly before it are not entered.
    offset: Option<String>,
}

impl Lister {
    /// `None` when the prefix names no directory (nothing to list).
    fn open(
        root: &std::path::Path,
        prefix: Option<Key>,
        offset: Option<String>,
    ) -> OsResult<Option<Lister>> {
        let Some((dir, dev)) = open_dir(root, prefix.as_ref()).map_err(list_error(root))? else {
            return Ok(None);
        };
        let rel = prefix.map(|p| format!("{p}/")).unwrap_or_default();
        let children = read_level(&dir, dev, &rel).map_err(list_error(root))?;
        Ok(Some(Lister {
            dev,
            stack: vec![Level {
                dir,
                rel,
                children: children.into_iter(),
            }],
            offset,
        }))
    }

    fn is_done(&self) -> bool {
        self.stack.is_empty()
    }

    /// Up to `max` more objects, in key order.
    fn next_page(&mut self, max: usize) -> OsResult<Vec<ObjectMeta>> {
        let mut page = Vec::new();
        while page.len() < max {
            let Some(level) = self.stack.last_mut() else {
                break;
            };
            let Some(child) = level.children.next() else {
                self.stack.pop();
                continue;
            };
            let key = format!("{}{}", level.rel, child.name);
            if !child.is_dir {
                if self.offset.as_deref().is_none_or(|o| key.as_str() > o) {
                    if let Ok(path) = Path::parse(&key) {
                        page.push(object_meta(path, &child.stat));
                    }
                }
                continue;
            }
            let rel = format!("{key}/");
            if self
                .offset
                .as_deref()
                .is_some_and(|o| rel.as_str() < o && !o.starts_with(&rel))
            {
                continue; // every key below sorts before the offset
            }
            if let Some(level) = self.enter(&child, rel)? {
                self.stack.push(level);
            }
        }
        Ok(page)
    }

    /// Opens the listed directory `child` of the top level, unless it was replaced since.
    fn enter(&self, child: &Child, rel: String) -> OsResult<Option<Level>> {
        let Some(parent) = self.stack.last() else {
            return Ok(None);
        };
        let dir = match open_subdir(&parent.dir, &child.name) {
            Ok(d) => d,
            Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(generic(format!("list {rel}: {e}"))),
        };
        match rfs::fstat(&dir) {
            Ok(st) if st.st_ino == child.stat.st_ino && st.st_dev == child.stat.st_dev => {}
            Ok(_) => return Ok(None),
            Err(e) => return Err(generic(format!("list {rel}: {e}"))),
        }
        let children =
            read_level(&dir, self.dev, &rel).map_err(|e| generic(format!("list {rel}: {e}")))?;
        Ok(Some(Level {
            dir,
            rel,
            children: children.into_iter(),
        }))
    }
}

fn open_subdir(dir: &OwnedFd, name: &str) -> rustix::io::Result<OwnedFd> {
    rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens the directory of `prefix` (the root for `None`) one component at a time, never
/// following a symlink, with the root's device number. `None` when there is no such
/// directory (missing, a file, or a symlink).
// `st_dev` is not u64 everywhere.
#[allow(clippy::unnecessary_cast)]
fn open_dir(root: &std::path::Path, prefix: Option<&Key>) -> io::Result<Option<(OwnedFd, u64)>> {
    let mut dir = rfs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let dev = rfs::fstat(&dir)?.st_dev as u64;
    for seg in prefix.iter().flat_map(|p| p.segments()) {
        dir = match open_subdir(&dir, seg) {
            Ok(d) => d,
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
    }
    Ok(Some((dir, dev)))
}

/// The objects and subdirectories of `dir`, sorted so that keys come out in order.
/// Skipped: stowage's own names, symlinks, special files, other filesystems (as the
/// walker does) and names that are not valid keys.
#[allow(clippy::unnecessary_cast)]
fn read_level(dir: &OwnedFd, dev: u64, rel: &str) -> io::Result<Vec<Child>> {
    let mut children = Vec::new();
    for entry in Dir::new(dir.try_clone()?)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if name == "." || name == ".." || name.starts_with(RESERVED_PREFIX) {
            continue;
        }
        let stat = match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue, // removed since it was read
            Err(e) => return Err(e.into()),
        };
        let is_dir = match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => false,
            FileType::Directory if stat.st_dev as u64 == dev => true,
            _ => continue,
        };
        if Key::new(format!("{rel}{name}")).is_err() {
            continue;
        }
        children.push(Child {
            name: name.to_owned(),
            is_dir,
            stat,
        });
    }
    children.sort_unstable_by(|a, b| sort_bytes(a).cmp(sort_bytes(b)));
    Ok(children)
}

/// A directory sorts as `name/`: `a-b` (0x2d) before `a/x` (0x2f) before `a0`.
fn sort_bytes(child: &Child) -> impl Iterator<Item = u8> + '_ {
    child.name.bytes().chain(child.is_dir.then_some(b'/'))
}
