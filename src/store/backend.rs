//! The glue between [`BlobStore`](super::BlobStore) and `object_store`: the one backend
//! type with its capabilities, key-to-path mapping, error and metadata conversion, and the
//! one reader of a local file's range.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::signer::Signer;
use object_store::{Attribute, Attributes, ObjectStore};

use super::{BackendKind, ByteStream, LocalUrls, Meta, MULTIPART_THRESHOLD};
use crate::error::{Error, Result};
use crate::key::Key;

/// The one backend type: an object store, where keys go in it, and its capabilities.
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

/// The one local range reader: `range` of an open file as a stream of chunks, each read
/// at its offset on the blocking pool from the handle that was opened (a file replaced
/// meanwhile is read whole, old or new). Ends early, without error, if the file shrank.
pub(crate) fn file_body(file: std::fs::File, range: Range<u64>, path: PathBuf) -> ByteStream {
    let state = (Arc::new(file), range.start, Arc::new(path));
    futures::stream::try_unfold(state, move |(file, at, path)| {
        let end = range.end;
        async move {
            if at >= end {
                return Ok(None);
            }
            let len = (end - at).min(READ_CHUNK as u64);
            let (f, p) = (Arc::clone(&file), Arc::clone(&path));
            let chunk =
                crate::blocking::try_run(move || read_file_range(&f, at..at + len, &p)).await?;
            if chunk.is_empty() {
                return Ok(None);
            }
            let next = at + chunk.len() as u64;
            Ok(Some((chunk, (file, next, path))))
        }
    })
    .boxed()
}

/// `range` of an open file, read with positioned reads into one buffer; shorter when the
/// file ends first.
pub(crate) fn read_file_range(
    file: &std::fs::File,
    range: Range<u64>,
    path: &Path,
) -> Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let len = usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], range.start + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", path, e)),
        }
    }
    buf.truncate(filled);
    Ok(buf.into())
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
    md: &std::fs::Metadata,
    content_type: Option<String>,
) -> Meta {
    use chrono::{DateTime, Utc};
    use std::os::unix::fs::MetadataExt;
    use std::time::SystemTime;
    let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let ctime = crate::walk::system_time(md.ctime(), md.ctime_nsec());
    let changed = mtime.max(ctime);
    let ns = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    };
    let (ino, size) = (md.ino(), md.len());
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
