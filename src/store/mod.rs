//! `BlobStore`: the backend-agnostic blob API services use.
//!
//! One cheap-to-clone handle whatever the backend, so switching a service from S3 to the
//! local disk (or back) is a configuration change. Every backend is an
//! `Arc<dyn ObjectStore>`: S3, memory, a store the caller built, and for a local directory
//! [`LocalStore`], which keeps every path under the root and writes
//! atomically (see ARCHITECTURE.md for why).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, PutPayload,
};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::s3::list::ListedObject;

mod backend;
pub mod local;

#[cfg(feature = "http")]
pub(crate) use backend::local_served_meta;
#[cfg(feature = "http")]
pub(crate) use backend::read_exactly_at;
use backend::{attributes, fill_at, normalize_prefix, read_cached_at, READ_CHUNK};
pub(crate) use backend::{file_chunks, Backend, S3Extras};
pub use local::LocalStore;

/// A stream of object bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// What the store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Meta {
    /// The object's key.
    pub key: Key,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time.
    pub last_modified: DateTime<Utc>,
    /// Entity tag (quoted, as the backend sends it). Local: inode-mtime-size, not a hash.
    pub etag: Option<String>,
    /// Content-Type, when the backend stored one.
    pub content_type: Option<String>,
}

/// An object opened for reading: its metadata and a body stream.
pub struct GetStream {
    /// Metadata of the object being read (consistent with the body).
    pub meta: Meta,
    /// The byte range of the object the body covers.
    pub range: Range<u64>,
    /// The body.
    pub body: ByteStream,
}

impl std::fmt::Debug for GetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetStream")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish()
    }
}

/// Which kind of backend a store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackendKind {
    /// A directory on local disk.
    Local,
    /// An S3 (or S3-compatible) bucket stowage configured itself ([`crate::S3Config`]).
    S3,
    /// In process memory ([`BlobStore::memory`]).
    Memory,
    /// A store the caller built and passed to [`BlobStore::from_object_store`]: stowage
    /// does not know what is behind it, so it has no download URLs and is served by proxy.
    ObjectStore,
}

/// How download URLs for a local store are formed.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LocalUrls {
    /// Scheme and authority the files are served from, e.g. `http://localhost:8000`.
    pub base_url: String,
    /// Path the file server is mounted at, e.g. `/api/files`.
    pub files_path: String,
    /// Signing secret (`STORAGE_URL_SECRET`). When set, download URLs carry an expiry and
    /// an HMAC signature ([`crate::signing`]) and the `stowage::http` router refuses
    /// requests without a valid one. Never serialized, redacted in `Debug`.
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// Lifetime of signed URLs (`STORAGE_URL_TTL`, default 1 hour).
    #[serde(
        default = "default_url_ttl",
        with = "crate::config::humantime_serde_compat"
    )]
    pub ttl: Duration,
}

fn default_url_ttl() -> Duration {
    crate::signing::DEFAULT_URL_TTL
}

impl std::fmt::Debug for LocalUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalUrls")
            .field("base_url", &self.base_url)
            .field("files_path", &self.files_path)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Default for LocalUrls {
    fn default() -> Self {
        LocalUrls {
            base_url: "http://localhost:8000".into(),
            files_path: "/api/files".into(),
            secret: None,
            ttl: default_url_ttl(),
        }
    }
}

/// Characters left unencoded in a URL path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes each segment of `key` and joins them with `/`.
pub fn encode_key_path(key: &Key) -> String {
    key.segments()
        .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// A blob store: local directory, S3 bucket or memory, behind one API.
///
/// Every backend is an `Arc<dyn ObjectStore>` ([`LocalStore`] for a
/// local directory) and every method goes through it; what only some backends have sits
/// in explicit capabilities checked where it is used: download URLs ([`LocalUrls`] or
/// S3 presigning), the root directory a local store's files can be served from, and
/// S3's hostile-key-proof lister.
///
/// Cloning is cheap (an `Arc`); clones share the backend and its connection pool.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Backend>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobStore({})", self.describe())
    }
}

/// Objects at or above this size are uploaded in parts by `put_stream`/`put_file` on S3.
pub const MULTIPART_THRESHOLD: usize = 8 << 20;

impl BlobStore {
    /// A store in process memory (tests, examples).
    pub fn memory() -> BlobStore {
        BlobStore::from_backend(Backend::new(
            Arc::new(object_store::memory::InMemory::new()),
            "memory",
            BackendKind::Memory,
        ))
    }

    /// A store in the directory `root`, which is created if missing. URLs use
    /// [`LocalUrls::default`] unless set with [`BlobStore::local_with_urls`].
    pub fn local(root: impl Into<PathBuf>) -> Result<BlobStore> {
        BlobStore::local_with_urls(root, LocalUrls::default())
    }

    /// A local store whose download URLs follow `urls`.
    pub fn local_with_urls(root: impl Into<PathBuf>, urls: LocalUrls) -> Result<BlobStore> {
        let root = root.into();
        if !root.is_absolute() {
            return Err(Error::config(
                "LOCAL_STORAGE_PATH",
                format!("{} is relative; give an absolute directory", root.display()),
            ));
        }
        std::fs::create_dir_all(&root).map_err(|e| Error::io("create directory", &root, e))?;
        // Best effort: a read-only user (serve) may open a store it cannot mark.
        let _ = crate::local::mark_store(&root);
        let store = Arc::new(crate::LocalStore::new(&root)?);
        let mut b = Backend::new(
            store,
            &format!("local:{}", root.display()),
            BackendKind::Local,
        );
        b.part_size = READ_CHUNK;
        b.urls = Some(urls);
        b.local_root = Some(root);
        Ok(BlobStore::from_backend(b))
    }

    /// A store over any `object_store` backend, with keys placed under `prefix`; `name`
    /// is how messages call it. Its [`kind`](BlobStore::kind) is
    /// [`BackendKind::ObjectStore`] whatever the store is (an `InMemory`, the caller's own
    /// `AmazonS3`): stowage does not know how to reach it from outside, so it has no
    /// download URLs unless given some with [`with_download_urls`](Self::with_download_urls),
    /// and the HTTP router proxies it.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use stowage::{BackendKind, BlobStore, Key};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> stowage::Result<()> {
    /// let mine = Arc::new(object_store::memory::InMemory::new());
    /// let store = BlobStore::from_object_store(mine, "tenant-a/", "my store");
    /// assert_eq!(store.kind(), BackendKind::ObjectStore);
    /// store.put(&Key::parse("clips/1.mp4")?, "x".into()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_object_store(store: Arc<dyn ObjectStore>, prefix: &str, name: &str) -> BlobStore {
        let mut b = Backend::new(store, name, BackendKind::ObjectStore);
        b.prefix = prefix.to_owned();
        BlobStore::from_backend(b)
    }

    /// The same store, handing out download URLs formed by `urls`: for a store that a
    /// `stowage::http` router (or `stowage serve`) serves at `urls.base_url`, such as a
    /// read-through store over a local directory.
    pub fn with_download_urls(self, urls: LocalUrls) -> BlobStore {
        let mut next = (*self.inner).clone();
        next.urls = Some(urls);
        BlobStore::from_backend(next)
    }

    /// Every backend is built here, so its key prefix is normalized once: empty, or
    /// ending in exactly one `/`.
    pub(crate) fn from_backend(mut b: Backend) -> BlobStore {
        b.prefix = normalize_prefix(&b.prefix);
        BlobStore { inner: Arc::new(b) }
    }

    /// The backend, for the operations (`migrate`, `verify`) that use its parts directly.
    pub(crate) fn backend(&self) -> &Backend {
        &self.inner
    }

    /// The backend when it is not a local directory: the source of `s3-to-local` and the
    /// destination of `local-to-s3`.
    pub(crate) fn object_backend(&self) -> Option<&Backend> {
        self.inner.local_root.is_none().then_some(&*self.inner)
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        self.inner.kind
    }

    /// The store as an `object_store::ObjectStore`, for any code that takes one: the
    /// inner store for S3, Memory and a store passed to
    /// [`from_object_store`](BlobStore::from_object_store) (its whole bucket, not only
    /// the prefix), a [`LocalStore`] over the same root for a local
    /// store (the same files, the same guarantees).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.inner.store)
    }

    /// The root directory of a local store.
    pub fn local_root(&self) -> Option<&Path> {
        self.inner.local_root.as_deref()
    }

    /// How this store's download URLs are formed (and whether they are signed), when they
    /// point at a `stowage::http` router: a local store, or one given
    /// [`with_download_urls`](Self::with_download_urls).
    pub fn local_urls(&self) -> Option<&LocalUrls> {
        self.inner.urls.as_ref()
    }

    /// A short description for messages: `local:/srv/store`, `s3://bucket/prefix/`.
    pub fn describe(&self) -> String {
        format!("{}{}", self.inner.name, self.inner.prefix)
    }

    /// Stores `data` under `key`, replacing any previous object.
    pub async fn put(&self, key: &Key, data: Bytes) -> Result<()> {
        self.put_opts(key, data, None).await
    }

    /// Stores `data` under `key` with a Content-Type.
    pub async fn put_opts(&self, key: &Key, data: Bytes, content_type: Option<&str>) -> Result<()> {
        let b = &*self.inner;
        let opts = object_store::PutOptions {
            attributes: attributes(content_type),
            ..Default::default()
        };
        b.store
            .put_opts(&b.path(key)?, PutPayload::from_bytes(data), opts)
            .await
            .map_err(|e| b.err(key, e))?;
        Ok(())
    }

    /// Stores the bytes of `body` under `key` without holding the object in memory.
    /// On S3, bodies of [`MULTIPART_THRESHOLD`] bytes or more go up as a multipart upload.
    /// Nothing appears under `key` unless the whole stream was stored.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use stowage::{BlobStore, Key};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> stowage::Result<()> {
    /// let store = BlobStore::memory();
    /// let key = Key::parse("clips/cat.mp4")?;
    /// let chunks = ["not ", "really ", "a video"].map(|s| Ok(Bytes::from(s)));
    /// store.put_stream(&key, futures::stream::iter(chunks), Some("video/mp4")).await?;
    /// assert_eq!(store.get(&key).await?, "not really a video");
    ///
    /// // A body that fails leaves nothing behind.
    /// let broken = futures::stream::iter([Ok(Bytes::from("half")), Err(std::io::Error::other("cut"))]);
    /// let other = Key::parse("clips/dog.mp4")?;
    /// assert!(store.put_stream(&other, broken, None).await.is_err());
    /// assert!(!store.exists(&other).await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put_stream<S>(&self, key: &Key, body: S, content_type: Option<&str>) -> Result<()>
    where
        S: futures::Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let b = &*self.inner;
        let mut body = std::pin::pin!(body);
        let mut w = object_store::buffered::BufWriter::with_capacity(
            Arc::clone(&b.store),
            b.path(key)?,
            b.part_size,
        )
        .with_attributes(attributes(content_type));
        let res: Result<()> = async {
            while let Some(chunk) = body.next().await {
                // The caller's body failed, not the store: an I/O error naming the key.
                let chunk = chunk.map_err(|e| Error::io("read the body for", key.as_str(), e))?;
                w.write_all(&chunk).await.map_err(|e| b.io_err(key, e))?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = res {
            // Abort any multipart upload under way (parts are billed until then; a local
            // upload's temp file is removed).
            let _ = w.abort().await;
            return Err(e);
        }
        // Once shut down the writer cannot be aborted (object_store panics): a failed
        // final PUT or CompleteMultipartUpload is returned as is.
        w.shutdown().await.map_err(|e| b.io_err(key, e))
    }

    /// Stores the file at `path` under `key`, streaming it.
    pub async fn put_file(&self, key: &Key, path: &Path, content_type: Option<&str>) -> Result<()> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io("open", path, e))?;
        self.put_open_file(key, file.into_std().await, content_type)
            .await
    }

    /// Stores what `file` holds from its current offset under `key`, streaming it. For
    /// callers that opened (and checked) the file themselves: no path is resolved again.
    pub async fn put_open_file(
        &self,
        key: &Key,
        file: std::fs::File,
        content_type: Option<&str>,
    ) -> Result<()> {
        let file = tokio::fs::File::from_std(file);
        let stream = tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK);
        self.put_stream(key, stream, content_type).await
    }

    /// Reads the whole object.
    pub async fn get(&self, key: &Key) -> Result<Bytes> {
        let b = &*self.inner;
        let res = b
            .store
            .get_opts(&b.path(key)?, GetOptions::default())
            .await
            .map_err(|e| b.err(key, e))?;
        let range = res.range.clone();
        match res.payload {
            // Into a buffer of the file's size: a small file the page cache holds is copied
            // on this thread, anything else in one trip to the blocking pool.
            GetResultPayload::File(file, path) => {
                let len = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
                let mut buf = vec![0; len];
                let cached = if len <= READ_CHUNK {
                    read_cached_at(&file, &mut buf, range.start)
                } else {
                    0
                };
                if cached == len {
                    return Ok(buf.into());
                }
                crate::blocking::try_run(move || {
                    fill_at(&file, buf, cached, range.start).map_err(|e| Error::io("read", path, e))
                })
                .await
            }
            GetResultPayload::Stream(s) => {
                let mut out = Vec::with_capacity((range.end - range.start) as usize);
                let mut s = s.map_err(|e| b.err(key, e));
                while let Some(chunk) = s.try_next().await? {
                    out.extend_from_slice(&chunk);
                }
                Ok(out.into())
            }
        }
    }

    /// Opens the object for streaming; memory use does not depend on its size.
    pub async fn get_stream(&self, key: &Key) -> Result<GetStream> {
        self.get_stream_range(key, None).await
    }

    /// Reads `range` of the object (end exclusive; clamped to the object's size).
    pub async fn get_range(&self, key: &Key, range: Range<u64>) -> Result<Bytes> {
        let s = self.get_stream_range(key, Some(range)).await?;
        let mut out = Vec::with_capacity((s.range.end - s.range.start) as usize);
        let mut body = s.body;
        while let Some(chunk) = body.try_next().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out.into())
    }

    /// Opens `range` of the object (or all of it) for streaming. On a local store the body
    /// comes from the file opened for the metadata, so a concurrent replacement is never mixed in.
    pub async fn get_stream_range(
        &self,
        key: &Key,
        range: Option<Range<u64>>,
    ) -> Result<GetStream> {
        let b = &*self.inner;
        // An HTTP range cannot be empty, and S3 answers 416 to one that starts at or past
        // the end: serve those from HEAD, clamped to the object's size.
        if let Some(r) = range.as_ref().filter(|r| r.start >= r.end) {
            return self.empty_range(key, r.start).await;
        }
        let opts = GetOptions {
            range: range.clone().map(|r| GetRange::Bounded(r.start..r.end)),
            ..Default::default()
        };
        let res = match b.store.get_opts(&b.path(key)?, opts).await {
            Ok(res) => res,
            Err(e @ object_store::Error::NotFound { .. }) => return Err(b.err(key, e)),
            Err(e) => {
                if let Some(r) = &range {
                    if self.head(key).await?.size <= r.start {
                        return self.empty_range(key, r.start).await;
                    }
                }
                return Err(b.err(key, e));
            }
        };
        let meta = b.meta(key.clone(), &res.meta, &res.attributes);
        let range = res.range.clone();
        let body = match res.payload {
            GetResultPayload::File(file, path) => {
                file_chunks(Arc::new(file), range.clone(), READ_CHUNK)
                    .map_err(move |e| Error::io("read", path.clone(), e))
                    .boxed()
            }
            GetResultPayload::Stream(s) => {
                let name = b.name.clone();
                s.map_err(move |e| Error::backend(name.clone(), &e)).boxed()
            }
        };
        Ok(GetStream { meta, range, body })
    }

    /// An empty body at `start` (clamped to the object's size), with the object's metadata.
    async fn empty_range(&self, key: &Key, start: u64) -> Result<GetStream> {
        let meta = self.head(key).await?;
        let at = start.min(meta.size);
        Ok(GetStream {
            meta,
            range: at..at,
            body: futures::stream::empty().boxed(),
        })
    }

    /// Metadata of the object.
    pub async fn head(&self, key: &Key) -> Result<Meta> {
        let b = &*self.inner;
        let opts = GetOptions {
            head: true,
            ..Default::default()
        };
        let res = b
            .store
            .get_opts(&b.path(key)?, opts)
            .await
            .map_err(|e| b.err(key, e))?;
        Ok(b.meta(key.clone(), &res.meta, &res.attributes))
    }

    /// Whether the object exists.
    pub async fn exists(&self, key: &Key) -> Result<bool> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the object. `Ok(false)` when it did not exist — the same on every backend.
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        let b = &*self.inner;
        // S3 (and object_store's contract) answers a delete the same whether or not the
        // key existed: ask first so the result means something.
        if !self.exists(key).await? {
            return Ok(false);
        }
        match b.store.delete(&b.path(key)?).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(b.err(key, e)),
        }
    }

    /// Streams the metadata of every object whose key starts with `prefix` (a plain string
    /// prefix, as on S3), page by page. A stored key that is not a valid [`Key`] yields an
    /// `Err(Error::InvalidKey)` item and the listing goes on (a local store does not list a
    /// file whose name is not a key at all: see [`LocalStore`]).
    pub fn list(&self, prefix: &str) -> BoxStream<'static, Result<Meta>> {
        self.listing(prefix, false)
            .map(|r| r.and_then(Meta::try_from))
            .boxed()
    }

    /// The listing as raw entries, keys not yet checked: S3 through the hostile-key-proof
    /// [`crate::s3::RawLister`] (several pages at once when `parallel`), every other
    /// backend through `ObjectStore::list` from the prefix's directory.
    pub(crate) fn listing(
        &self,
        prefix: &str,
        parallel: bool,
    ) -> BoxStream<'static, Result<ListedObject>> {
        let b = &*self.inner;
        let full = format!("{}{}", b.prefix, prefix);
        if let Some(s3) = &b.s3 {
            return if parallel {
                s3.lister.list_parallel(&full, &b.prefix)
            } else {
                s3.lister.list(&full, &b.prefix)
            };
        }
        let strip = b.prefix.clone();
        let name = b.name.clone();
        // List the directory part of the prefix, then filter by the rest.
        let dir = full
            .rsplit_once('/')
            .map(|(d, _)| d.to_owned())
            .unwrap_or_default();
        let dir_path = ObjPath::parse(&dir).ok();
        b.store
            .list(dir_path.as_ref())
            .filter_map(move |r| {
                let res = match r {
                    Ok(m) if m.location.as_ref().starts_with(&full) => {
                        let k = m.location.as_ref();
                        Some(Ok(ListedObject {
                            key: k.strip_prefix(&strip).unwrap_or(k).to_owned(),
                            size: m.size,
                            last_modified: m.last_modified,
                            etag: m.e_tag,
                            problem: None,
                        }))
                    }
                    Ok(_) => None,
                    Err(e) => Some(Err(Error::backend(name.clone(), &e))),
                };
                futures::future::ready(res)
            })
            .boxed()
    }

    /// The listing of `prefix` from the first key after `start_after` (relative to the
    /// store's prefix, like `prefix`; `None`: all of it): S3's `StartAfter`, in key order;
    /// any other backend lists the prefix, in its own order, and skips the keys up to it.
    pub(crate) fn listing_after(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> BoxStream<'static, Result<ListedObject>> {
        let b = &*self.inner;
        if let Some(s3) = &b.s3 {
            let full = format!("{}{}", b.prefix, prefix);
            let after = start_after.map(|a| format!("{}{}", b.prefix, a));
            return s3.lister.list_after(&full, after.as_deref(), &b.prefix);
        }
        let Some(after) = start_after.map(str::to_owned) else {
            return self.listing(prefix, false);
        };
        self.listing(prefix, false)
            .filter(move |r| futures::future::ready(!matches!(r, Ok(o) if o.key <= after)))
            .boxed()
    }

    /// The object's ETag: the one a listing carried, or, when the listing had none (some
    /// servers, s3s-fs among them, list without ETags), the one a HEAD answers.
    pub(crate) async fn etag_or_head(
        &self,
        key: &Key,
        listed: Option<String>,
    ) -> Result<Option<String>> {
        match listed {
            Some(e) => Ok(Some(e)),
            None => Ok(self.head(key).await?.etag),
        }
    }

    /// A URL a client can download the object from: `{base_url}{files_path}/{key}` on a
    /// local store (with `?expires=<unix>&sig=<hex>` appended when a signing secret is
    /// configured), a presigned GET URL on S3 (or the public base URL when configured).
    /// Memory and a store passed to [`from_object_store`](BlobStore::from_object_store)
    /// have none unless given [`with_download_urls`](Self::with_download_urls): an `Err`.
    ///
    /// ```
    /// use stowage::{BlobStore, Key, LocalUrls};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> stowage::Result<()> {
    /// let urls = LocalUrls {
    ///     base_url: "https://clips.example.com".into(),
    ///     ..LocalUrls::default()
    /// };
    /// let store = BlobStore::local_with_urls(std::env::temp_dir().join("stowage-url-doc"), urls)?;
    /// let url = store.download_url(&Key::parse("takes/take#2.mp4")?).await?;
    /// assert_eq!(url, "https://clips.example.com/api/files/takes/take%232.mp4");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn download_url(&self, key: &Key) -> Result<String> {
        let b = &*self.inner;
        if let Some(urls) = &b.urls {
            return Ok(urls.url_for(key, SystemTime::now()));
        }
        if let Some(s3) = &b.s3 {
            if let Some(base) = &s3.public_base_url {
                return Ok(format!(
                    "{}/{}",
                    base.trim_end_matches('/'),
                    encode_key_path(key)
                ));
            }
            let url = s3
                .signer
                .signed_url(http::Method::GET, &b.path(key)?, s3.presign_ttl)
                .await
                .map_err(|e| b.err(key, e))?;
            return Ok(url.to_string());
        }
        Err(Error::Backend {
            store: b.name.clone(),
            source: match b.kind {
                BackendKind::Memory => "an in-memory store has no download URLs".into(),
                _ => "this store has no download URLs: give it some with \
                      BlobStore::with_download_urls, or serve it with stowage::http::router"
                    .into(),
            },
        })
    }
}

impl LocalUrls {
    /// `{base_url}{files_path}/{key}`, signed with an expiry `ttl` after `now` when a
    /// secret is set.
    fn url_for(&self, key: &Key, now: SystemTime) -> String {
        let url = format!(
            "{}{}/{}",
            self.base_url.trim_end_matches('/'),
            self.files_path.trim_end_matches('/'),
            encode_key_path(key)
        );
        match &self.secret {
            Some(secret) => {
                let q = crate::signing::signed_query(secret.as_bytes(), key, self.ttl, now);
                format!("{url}?{q}")
            }
            None => url,
        }
    }
}

impl TryFrom<ListedObject> for Meta {
    type Error = Error;

    /// The one conversion from a listed object to [`Meta`]: the key is checked here.
    fn try_from(o: ListedObject) -> Result<Meta> {
        Ok(Meta {
            key: Key::parse(&o.key)?,
            size: o.size,
            last_modified: o.last_modified,
            etag: o.etag,
            content_type: None,
        })
    }
}
