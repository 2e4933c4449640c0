//! The glue between [`BlobStore`](super::BlobStore) and `object_store`: the one backend
//! type with its capabilities, key-to-path mapping, error and metadata conversion, and the
//! one reader of a local file's range.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::signer::Signer;
use object_store::{Attribute, Attributes, ObjectStore};

use super::{BackendKind, LocalUrls, Meta, MULTIPART_THRESHOLD};
use crate::error::{Error, Result};
use crate::key::Key;

/// The one backend type: an object store, where keys go in it, and its capabilities.
#[derive(Clone)]
pub(crate) struct Backend {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// Key prefix inside the store, empty or ending in `/`.
    pub(crate) prefix: String,
    /// How messages name the store (`s3://bucket/`, `local:/srv/store`).
    pub(crate) name: String,
    pub(crate) kind: BackendKind,
    /// Bytes `put_stream` buffers before it starts a multipart upload, and the part size.
    pub(crate) part_size: usize,
    /// Download URLs to a `stowage::http` router serving this store.
    pub(crate) urls: Option<LocalUrls>,
    /// The directory a local store's files live in, for serving them from their handles.
    pub(crate) local_root: Option<PathBuf>,
    /// S3 only: presigning and the raw lister.
    pub(crate) s3: Option<S3Extras>,
}

#[derive(Clone)]
pub(crate) struct S3Extras {
    pub(crate) signer: Arc<dyn Signer>,
    pub(crate) presign_ttl: Duration,
    pub(crate) public_base_url: Option<String>,
    pub(crate) lister: crate::s3::list::RawLister,
}

/// Chunk size of local reads, and the part size of a local `put_stream` (a local
/// multipart part is one positioned write into the temp file: no minimum size).
pub(crate) const READ_CHUNK: usize = 256 << 10;

impl Backend {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, name: &str, kind: BackendKind) -> Backend {
        Backend {
            store,
            prefix: String::new(),
            name: name.to_owned(),
            kind,
            part_size: MULTIPART_THRESHOLD,
            urls: None,
            local_root: None,
            s3: None,
        }
    }

    /// An S3 backend with its presigning and listing capabilities.
    pub(crate) fn s3(
        store: Arc<dyn ObjectStore>,
        name: &str,
        prefix: &str,
        s3: S3Extras,
    ) -> Backend {
        let mut b = Backend::new(store, name, BackendKind::S3);
        b.prefix = prefix.to_owned();
        b.s3 = Some(s3);
        b
    }

    pub(crate) fn path(&self, key: &Key) -> Result<ObjPath> {
        let full = format!("{}{}", self.prefix, key.as_str());
        ObjPath::parse(&full).map_err(|e| Error::backend(self.name.clone(), &e))
    }

    pub(crate) fn meta(&self, key: Key, m: &object_store::ObjectMeta, attrs: &Attributes) -> Meta {
        Meta {
            key,
            size: m.size,
            last_modified: m.last_modified,
            etag: m.e_tag.clone(),
            content_type: attrs
                .get(&Attribute::ContentType)
                .map(|v| v.as_ref().to_owned()),
        }
    }

    pub(crate) fn err(&self, key: &Key, e: object_store::Error) -> Error {
        map_object_error(&self.name, Some(key), e)
    }

    pub(crate) fn io_err(&self, key: &Key, e: std::io::Error) -> Error {
        match e.into_inner() {
            Some(inner) => match inner.downcast::<object_store::Error>() {
                Ok(oe) => self.err(key, *oe),
                Err(other) => Error::backend(self.name.clone(), &*other),
            },
            None => Error::Backend {
                store: self.name.clone(),
                source: "I/O error".into(),
            },
        }
    }
}

/// The one local range reader: `range` of an open file in `chunk`-byte pieces, read from
/// the handle that was opened (a file replaced meanwhile is read whole, old or new). What
/// the page cache holds is copied on the calling thread; only a piece that needs the disk
/// goes to the blocking pool. The file is never read past `range`, and one that shrank
/// under us ends the stream with an error, never a short body.
pub(crate) fn file_chunks(
    file: Arc<File>,
    range: Range<u64>,
    chunk: usize,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold(range.start, move |pos| {
        let file = Arc::clone(&file);
        let end = range.end;
        async move {
            if pos >= end {
                return Ok(None);
            }
            let n = (end - pos).min(chunk as u64) as usize;
            let mut buf = vec![0u8; n];
            // What the page cache holds is copied here, without a trip to the blocking
            // pool; only a chunk that needs the disk goes there.
            let cached = read_cached_at(&file, &mut buf, pos);
            let chunk = if cached == n {
                Bytes::from(buf)
            } else {
                crate::blocking::try_run(move || fill_at(&file, buf, cached, pos)).await?
            };
            Ok(Some((chunk, pos + n as u64)))
        }
    })
}

/// Reads into `buf` from `pos` only what is already in the page cache (`preadv2` with
/// `RWF_NOWAIT`, which never waits for the disk), stopping at the first short read. Returns
/// how many bytes were read: 0 when nothing was cached or the kernel lacks the flag.
pub(crate) fn read_cached_at(file: &File, buf: &mut [u8], pos: u64) -> usize {
    use rustix::io::{preadv2, ReadWriteFlags};
    let mut filled = 0;
    while filled < buf.len() {
        let mut slice = [io::IoSliceMut::new(&mut buf[filled..])];
        match preadv2(
            file,
            &mut slice,
            pos + filled as u64,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) | Err(_) => break,
            Ok(k) => filled += k,
        }
    }
    filled
}

/// `n` bytes of `file` from `pos` (`pread`, repeated while short); a file that ends
/// before them shrank while being served.
#[cfg(feature = "http")]
pub(crate) fn read_exactly_at(file: &File, n: usize, pos: u64) -> io::Result<Bytes> {
    fill_at(file, vec![0u8; n], 0, pos)
}

/// Fills `buf`, whose first `filled` bytes are already read, from `file` at `pos`.
pub(crate) fn fill_at(
    file: &File,
    mut buf: Vec<u8>,
    mut filled: usize,
    pos: u64,
) -> io::Result<Bytes> {
    let n = buf.len();
    while filled < n {
        match file.read_at(&mut buf[filled..], pos + filled as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being served",
                ))
            }
            Ok(k) => filled += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Bytes::from(buf))
}

/// Maps an object_store error to ours, keeping the semantic cases. Its text goes through
/// [`crate::error::redact`] like every backend error (object_store names request URLs).
pub(crate) fn map_object_error(store: &str, key: Option<&Key>, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } if key.is_some() => Error::NotFound {
            key: key.map(|k| k.to_string()).unwrap_or_default(),
        },
        object_store::Error::PermissionDenied { source, .. }
        | object_store::Error::Unauthenticated { source, .. } => Error::AccessDenied {
            store: store.to_owned(),
            detail: crate::error::redact(&source.to_string()),
        },
        // A LocalStore (or ReadThrough over one) wraps stowage's own error, which already
        // says what happened and where (a full disk, a directory in the way): keep it.
        object_store::Error::Generic { store: s, source } => match source.downcast::<Error>() {
            Ok(own) => *own,
            Err(source) => {
                Error::backend(store, &object_store::Error::Generic { store: s, source })
            }
        },
        e => Error::backend(store, &e),
    }
}

pub(crate) fn attributes(content_type: Option<&str>) -> Attributes {
    let mut a = Attributes::new();
    if let Some(ct) = content_type {
        a.insert(Attribute::ContentType, ct.to_owned().into());
    }
    a
}

pub(crate) fn normalize_prefix(p: &str) -> String {
    let p = p.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// Metadata of a local file as the HTTP router sends it, with validators that move
/// whenever the content may have changed, even when the mtime was set back (migrate gives
/// each file its S3 LastModified) or the file was rewritten in place:
///
/// - `last_modified` is the later of mtime and ctime; ctime cannot be set by a user, and
///   writes, renames and `utimes` all bump it, so Last-Modified never goes backwards;
/// - the ETag is `"<inode>-<mtime ns>-<ctime ns>-<size>"` in hex.
///
/// Listing and [`BlobStore::head`] keep the mtime, which migrate compares with S3.
#[cfg(feature = "http")]
pub(crate) fn local_served_meta(
    key: Key,
    st: &rustix::fs::Stat,
    content_type: Option<String>,
) -> Meta {
    use chrono::{DateTime, Utc};
    use std::time::SystemTime;
    // `time_t` is not 64 bits on every target.
    #[allow(clippy::unnecessary_cast)]
    let (mtime, ctime) = (st.st_mtime as i64, st.st_ctime as i64);
    let mtime = crate::walk::system_time(mtime, st.st_mtime_nsec as i64);
    let ctime = crate::walk::system_time(ctime, st.st_ctime_nsec as i64);
    let changed = mtime.max(ctime);
    let ns = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    };
    let (ino, size) = (st.st_ino, st.st_size as u64);
    Meta {
        key,
        size,
        last_modified: DateTime::<Utc>::from(changed),
        etag: Some(format!(
            "\"{ino:x}-{:x}-{:x}-{size:x}\"",
            ns(mtime),
            ns(ctime)
        )),
        content_type,
    }
}
