//! `BlobStore`: the backend-agnostic blob API services use.
//!
//! One cheap-to-clone handle whatever the backend, so switching a service from S3 to the
//! local disk (or back) is a configuration change. S3 and Memory go through
//! `Arc<dyn ObjectStore>`; Local goes through [`crate::local`], which keeps every path
//! under the root and writes atomically (see ARCHITECTURE.md for why).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload,
};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::local::{self, AtomicFile, PlaceError};

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
/// Cloning is cheap (an `Arc`); clones share the backend and its connection pool.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobStore({})", self.describe())
    }
}

enum Inner {
    Local(LocalBackend),
    Object(ObjectBackend),
}

struct LocalBackend {
    root: PathBuf,
    urls: LocalUrls,
    /// The same root as an `ObjectStore`, for [`BlobStore::object_store`].
    store: Arc<crate::LocalStore>,
}

pub(crate) struct ObjectBackend {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// Key prefix inside the bucket, empty or ending in `/`.
    pub(crate) prefix: String,
    pub(crate) name: String,
    /// `S3` exactly when `s3` is set; `Memory` or `ObjectStore` otherwise.
    pub(crate) kind: BackendKind,
    pub(crate) s3: Option<S3Extras>,
}

pub(crate) struct S3Extras {
    pub(crate) signer: Arc<dyn Signer>,
    pub(crate) presign_ttl: Duration,
    pub(crate) public_base_url: Option<String>,
    pub(crate) lister: crate::s3::list::RawLister,
}

/// Objects at or above this size are uploaded in parts by `put_stream`/`put_file` on S3.
pub const MULTIPART_THRESHOLD: usize = 8 << 20;
/// Chunk size of local reads.
const READ_CHUNK: usize = 256 << 10;

impl BlobStore {
    /// A store in process memory (tests, examples).
    pub fn memory() -> BlobStore {
        BlobStore::from_backend(ObjectBackend {
            store: Arc::new(object_store::memory::InMemory::new()),
            prefix: String::new(),
            name: "memory".to_owned(),
            kind: BackendKind::Memory,
            s3: None,
        })
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
        Ok(BlobStore {
            inner: Arc::new(Inner::Local(LocalBackend { root, urls, store })),
        })
    }

    /// A store over any `object_store` backend, with keys placed under `prefix`; `name`
    /// is how messages call it. Its [`kind`](BlobStore::kind) is
    /// [`BackendKind::ObjectStore`] whatever the store is (an `InMemory`, the caller's own
    /// `AmazonS3`): it has no download URLs, and the HTTP router proxies it.
    pub fn from_object_store(store: Arc<dyn ObjectStore>, prefix: &str, name: &str) -> BlobStore {
        BlobStore::from_backend(ObjectBackend {
            store,
            prefix: prefix.to_owned(),
            name: name.to_owned(),
            kind: BackendKind::ObjectStore,
            s3: None,
        })
    }

    /// Every object-store backend is built here, so its key prefix is normalized once:
    /// empty, or ending in exactly one `/`.
    pub(crate) fn from_backend(mut b: ObjectBackend) -> BlobStore {
        b.prefix = normalize_prefix(&b.prefix);
        BlobStore {
            inner: Arc::new(Inner::Object(b)),
        }
    }

    /// Which backend this is.
    pub fn kind(&self) -> BackendKind {
        match &*self.inner {
            Inner::Local(_) => BackendKind::Local,
            Inner::Object(o) => o.kind,
        }
    }

    /// The store as an `object_store::ObjectStore`, for any code that takes one: the
    /// inner store for S3, Memory and a store passed to
    /// [`from_object_store`](BlobStore::from_object_store) (its whole bucket, not only
    /// the prefix), a [`LocalStore`](crate::LocalStore) over the same root for a local
    /// store (the same files, the same guarantees).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        match &*self.inner {
            Inner::Local(l) => l.store.clone(),
            Inner::Object(o) => Arc::clone(&o.store),
        }
    }

    /// The root directory of a local store.
    pub fn local_root(&self) -> Option<&Path> {
        match &*self.inner {
            Inner::Local(l) => Some(&l.root),
            Inner::Object(_) => None,
        }
    }

    /// How a local store forms its download URLs (and whether it signs them).
    pub fn local_urls(&self) -> Option<&LocalUrls> {
        match &*self.inner {
            Inner::Local(l) => Some(&l.urls),
            Inner::Object(_) => None,
        }
    }

    /// A short description for messages: `local:/srv/store`, `s3://bucket/prefix/`.
    pub fn describe(&self) -> String {
        match &*self.inner {
            Inner::Local(l) => format!("local:{}", l.root.display()),
            Inner::Object(o) => format!("{}{}", o.name, o.prefix),
        }
    }

    /// Stores `data` under `key`, replacing any previous object.
    pub async fn put(&self, key: &Key, data: Bytes) -> Result<()> {
        self.put_opts(key, data, None).await
    }

    /// Stores `data` under `key` with a Content-Type.
    pub async fn put_opts(&self, key: &Key, data: Bytes, content_type: Option<&str>) -> Result<()> {
        match &*self.inner {
            Inner::Local(l) => {
                let (root, key2, ct) =
                    (l.root.clone(), key.clone(), content_type.map(str::to_owned));
                blocking(move || {
                    let mut f =
                        AtomicFile::create(&root, &key2).map_err(|e| place_err(&root, &key2, e))?;
                    f.write_all(&data)
                        .map_err(|e| Error::io("write", f.final_path(), e))?;
                    if let Some(ct) = ct {
                        f.set_content_type(&ct)
                            .map_err(|e| Error::io("set xattr", f.final_path(), e))?;
                    }
                    f.commit().map_err(|e| place_err(&root, &key2, e))
                })
                .await
            }
            Inner::Object(o) => {
                let opts = object_store::PutOptions {
                    attributes: attributes(content_type),
                    ..Default::default()
                };
                o.store
                    .put_opts(&o.path(key)?, PutPayload::from_bytes(data), opts)
                    .await
                    .map_err(|e| o.err(key, e))?;
                Ok(())
            }
        }
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
        let mut body = std::pin::pin!(body);
        match &*self.inner {
            Inner::Local(l) => {
                let root = l.root.clone();
                let k = key.clone();
                let mut file = blocking(move || {
                    AtomicFile::create(&root, &k).map_err(|e| place_err(&root, &k, e))
                })
                .await?;
                if let Some(ct) = content_type {
                    file.set_content_type(ct)
                        .map_err(|e| Error::io("set xattr", file.final_path(), e))?;
                }
                let mut buf = Vec::with_capacity(READ_CHUNK);
                while let Some(chunk) = body.next().await {
                    let chunk =
                        chunk.map_err(|e| Error::io("read input for", file.final_path(), e))?;
                    buf.extend_from_slice(&chunk);
                    if buf.len() >= READ_CHUNK {
                        (file, buf) = write_blocking(file, buf).await?;
                    }
                }
                (file, _) = write_blocking(file, buf).await?;
                let (root, k) = (l.root.clone(), key.clone());
                blocking(move || file.commit().map_err(|e| place_err(&root, &k, e))).await
            }
            Inner::Object(o) => {
                let path = o.path(key)?;
                let mut w = object_store::buffered::BufWriter::with_capacity(
                    Arc::clone(&o.store),
                    path,
                    MULTIPART_THRESHOLD,
                )
                .with_attributes(attributes(content_type));
                let res: Result<()> = async {
                    while let Some(chunk) = body.next().await {
                        let chunk = chunk.map_err(|e| Error::backend(o.name.clone(), &e))?;
                        w.write_all(&chunk).await.map_err(|e| o.io_err(key, e))?;
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = res {
                    // Abort any multipart upload under way (parts are billed until then).
                    let _ = w.abort().await;
                    return Err(e);
                }
                // Once shut down the writer cannot be aborted (object_store panics): a failed
                // final PUT or CompleteMultipartUpload is returned as is.
                w.shutdown().await.map_err(|e| o.io_err(key, e))
            }
        }
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
        if let Inner::Local(l) = &*self.inner {
            // Open, size and read in one trip to the blocking pool, into a buffer of the
            // file's size, instead of a trip per chunk.
            let (root, k) = (l.root.clone(), key.clone());
            return blocking(move || local_read_all(&root, &k)).await;
        }
        let s = self.get_stream(key).await?;
        let mut out = Vec::with_capacity(s.meta.size as usize);
        let mut body = s.body;
        while let Some(chunk) = body.try_next().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out.into())
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
        match &*self.inner {
            Inner::Local(l) => {
                let (root, k) = (l.root.clone(), key.clone());
                let (file, meta) = blocking(move || local_open(&root, &k)).await?;
                let r = clamp(range, meta.size);
                let mut file = tokio::fs::File::from_std(file);
                if r.start > 0 {
                    use tokio::io::AsyncSeekExt;
                    file.seek(std::io::SeekFrom::Start(r.start))
                        .await
                        .map_err(|e| Error::io("seek", key.to_path(&l.root), e))?;
                }
                use tokio::io::AsyncReadExt;
                let path = key.to_path(&l.root);
                let body = tokio_util::io::ReaderStream::with_capacity(
                    file.take(r.end - r.start),
                    READ_CHUNK,
                )
                .map_err(move |e| Error::io("read", path.clone(), e))
                .boxed();
                Ok(GetStream {
                    meta,
                    range: r,
                    body,
                })
            }
            Inner::Object(o) => {
                // An HTTP range cannot be empty, and S3 answers 416 to one that starts at
                // or past the end: serve those from HEAD, clamped as on the local backend.
                if let Some(r) = range.as_ref().filter(|r| r.start >= r.end) {
                    return self.empty_range(key, r.start).await;
                }
                let opts = GetOptions {
                    range: range.clone().map(|r| GetRange::Bounded(r.start..r.end)),
                    ..Default::default()
                };
                let res = match o.store.get_opts(&o.path(key)?, opts).await {
                    Ok(res) => res,
                    Err(e @ object_store::Error::NotFound { .. }) => return Err(o.err(key, e)),
                    Err(e) => {
                        if let Some(r) = &range {
                            if self.head(key).await?.size <= r.start {
                                return self.empty_range(key, r.start).await;
                            }
                        }
                        return Err(o.err(key, e));
                    }
                };
                let meta = o.meta(key.clone(), &res.meta, &res.attributes);
                let r = res.range.clone();
                let name = o.name.clone();
                let body = res
                    .into_stream()
                    .map_err(move |e| Error::backend(name.clone(), &e))
                    .boxed();
                Ok(GetStream {
                    meta,
                    range: r,
                    body,
                })
            }
        }
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
        match &*self.inner {
            Inner::Local(l) => {
                let (root, k) = (l.root.clone(), key.clone());
                blocking(move || local_open(&root, &k).map(|(_, m)| m)).await
            }
            Inner::Object(o) => {
                let opts = GetOptions {
                    head: true,
                    ..Default::default()
                };
                let res = o
                    .store
                    .get_opts(&o.path(key)?, opts)
                    .await
                    .map_err(|e| o.err(key, e))?;
                Ok(o.meta(key.clone(), &res.meta, &res.attributes))
            }
        }
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
        match &*self.inner {
            Inner::Local(l) => {
                let (root, k) = (l.root.clone(), key.clone());
                blocking(move || {
                    local::remove(&root, &k).map_err(|e| Error::io("delete", k.to_path(&root), e))
                })
                .await
            }
            Inner::Object(o) => {
                // S3 answers 204 whether or not the key existed: ask first so the result
                // means the same as on the local backend.
                if !self.exists(key).await? {
                    return Ok(false);
                }
                match o.store.delete(&o.path(key)?).await {
                    Ok(()) => Ok(true),
                    Err(object_store::Error::NotFound { .. }) => Ok(false),
                    Err(e) => Err(o.err(key, e)),
                }
            }
        }
    }

    /// Streams the metadata of every object whose key starts with `prefix` (a plain string
    /// prefix, as on S3), page by page. A stored key that is not a valid [`Key`] yields an
    /// `Err(Error::InvalidKey)` item and the listing goes on.
    pub fn list(&self, prefix: &str) -> BoxStream<'static, Result<Meta>> {
        match &*self.inner {
            Inner::Local(l) => local_list(l.root.clone(), prefix.to_owned()),
            Inner::Object(o) => match &o.s3 {
                Some(s3) => s3
                    .lister
                    .list(&format!("{}{}", o.prefix, prefix), &o.prefix)
                    .map(|r| {
                        r.and_then(|obj| {
                            Ok(Meta {
                                key: Key::parse(&obj.key)?,
                                size: obj.size,
                                last_modified: obj.last_modified,
                                etag: obj.etag,
                                content_type: None,
                            })
                        })
                    })
                    .boxed(),
                None => {
                    let store = Arc::clone(&o.store);
                    let full = format!("{}{}", o.prefix, prefix);
                    let strip = o.prefix.clone();
                    let name = o.name.clone();
                    // List the directory part of the prefix, then filter by the rest.
                    let dir = full
                        .rsplit_once('/')
                        .map(|(d, _)| d.to_owned())
                        .unwrap_or_default();
                    let dir_path = ObjPath::parse(&dir).ok();
                    store
                        .list(dir_path.as_ref())
                        .filter_map(move |r| {
                            let res = match r {
                                Ok(m) if m.location.as_ref().starts_with(&full) => {
                                    let k = m
                                        .location
                                        .as_ref()
                                        .strip_prefix(&strip)
                                        .unwrap_or(m.location.as_ref());
                                    Some(Key::parse(k).map(|key| Meta {
                                        key,
                                        size: m.size,
                                        last_modified: m.last_modified,
                                        etag: m.e_tag.clone(),
                                        content_type: None,
                                    }))
                                }
                                Ok(_) => None,
                                Err(e) => Some(Err(Error::backend(name.clone(), &e))),
                            };
                            futures::future::ready(res)
                        })
                        .boxed()
                }
            },
        }
    }

    /// A URL a client can download the object from: `{base_url}{files_path}/{key}` on a
    /// local store (with `?expires=<unix>&sig=<hex>` appended when a signing secret is
    /// configured), a presigned GET URL on S3 (or the public base URL when configured).
    /// Memory and a store passed to [`from_object_store`](BlobStore::from_object_store)
    /// have none: an `Err`.
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
        match &*self.inner {
            Inner::Local(l) => {
                let url = format!(
                    "{}{}/{}",
                    l.urls.base_url.trim_end_matches('/'),
                    l.urls.files_path.trim_end_matches('/'),
                    encode_key_path(key)
                );
                Ok(match &l.urls.secret {
                    Some(secret) => {
                        let q = crate::signing::signed_query(
                            secret.as_bytes(),
                            key,
                            l.urls.ttl,
                            SystemTime::now(),
                        );
                        format!("{url}?{q}")
                    }
                    None => url,
                })
            }
            Inner::Object(o) => match &o.s3 {
                Some(s3) => {
                    if let Some(base) = &s3.public_base_url {
                        return Ok(format!(
                            "{}/{}",
                            base.trim_end_matches('/'),
                            encode_key_path(key)
                        ));
                    }
                    let url = s3
                        .signer
                        .signed_url(http::Method::GET, &o.path(key)?, s3.presign_ttl)
                        .await
                        .map_err(|e| o.err(key, e))?;
                    Ok(url.to_string())
                }
                None => Err(Error::Backend {
                    store: o.name.clone(),
                    source: match o.kind {
                        BackendKind::Memory => "an in-memory store has no download URLs",
                        _ => "this object store has no download URLs",
                    }
                    .into(),
                }),
            },
        }
    }

    pub(crate) fn object_backend(&self) -> Option<&ObjectBackend> {
        match &*self.inner {
            Inner::Object(o) => Some(o),
            Inner::Local(_) => None,
        }
    }
}

impl ObjectBackend {
    pub(crate) fn path(&self, key: &Key) -> Result<ObjPath> {
        let full = format!("{}{}", self.prefix, key.as_str());
        ObjPath::parse(&full).map_err(|e| Error::backend(self.name.clone(), &e))
    }

    fn meta(&self, key: Key, m: &object_store::ObjectMeta, attrs: &Attributes) -> Meta {
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

    fn io_err(&self, key: &Key, e: std::io::Error) -> Error {
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
        e => Error::backend(store, &e),
    }
}

fn attributes(content_type: Option<&str>) -> Attributes {
    let mut a = Attributes::new();
    if let Some(ct) = content_type {
        a.insert(Attribute::ContentType, ct.to_owned().into());
    }
    a
}

fn normalize_prefix(p: &str) -> String {
    let p = p.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

fn clamp(range: Option<Range<u64>>, size: u64) -> Range<u64> {
    match range {
        None => 0..size,
        Some(r) => r.start.min(size)..r.end.min(size).max(r.start.min(size)),
    }
}

fn place_err(root: &Path, key: &Key, e: PlaceError) -> Error {
    e.into_error(key.to_path(root))
}

fn local_open(root: &Path, key: &Key) -> Result<(std::fs::File, Meta)> {
    let file = local::open_beneath(root, key).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound {
            key: key.to_string(),
        },
        _ => Error::io("open", key.to_path(root), e),
    })?;
    let md = file
        .metadata()
        .map_err(|e| Error::io("stat", key.to_path(root), e))?;
    let meta = local_meta(key.clone(), &md, local::read_content_type(&file));
    Ok((file, meta))
}

/// The whole content of a local file, read from the descriptor it was opened with (a file
/// replaced meanwhile is read whole, old or new). Reads at most the size `fstat` gave, as
/// the streaming read does.
fn local_read_all(root: &Path, key: &Key) -> Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let file = local::open_beneath(root, key).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound {
            key: key.to_string(),
        },
        _ => Error::io("open", key.to_path(root), e),
    })?;
    let size = file
        .metadata()
        .map_err(|e| Error::io("stat", key.to_path(root), e))?
        .len();
    let mut buf = vec![0u8; usize::try_from(size).unwrap_or(usize::MAX)];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", key.to_path(root), e)),
        }
    }
    buf.truncate(filled);
    Ok(buf.into())
}

/// Metadata of a local file. The ETag is `"<inode>-<mtime ns>-<size>"` in hex: it changes
/// whenever the file is replaced or modified, but it is not a content hash.
pub(crate) fn local_meta(key: Key, md: &std::fs::Metadata, content_type: Option<String>) -> Meta {
    use std::os::unix::fs::MetadataExt;
    let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    meta_from_stat(key, md.len(), mtime, md.ino(), content_type)
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
    use std::os::unix::fs::MetadataExt;
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

fn meta_from_stat(
    key: Key,
    size: u64,
    mtime: SystemTime,
    ino: u64,
    content_type: Option<String>,
) -> Meta {
    let nanos = mtime
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Meta {
        key,
        size,
        last_modified: DateTime::<Utc>::from(mtime),
        etag: Some(format!("\"{ino:x}-{nanos:x}-{size:x}\"")),
        content_type,
    }
}

async fn write_blocking(mut file: AtomicFile, buf: Vec<u8>) -> Result<(AtomicFile, Vec<u8>)> {
    blocking(move || {
        file.write_all(&buf)
            .map_err(|e| Error::io("write", file.final_path(), e))?;
        let mut buf = buf;
        buf.clear();
        Ok((file, buf))
    })
    .await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    crate::blocking::try_run(f).await
}

/// Lists a local store through the shared walk ([`crate::walk::files_stream`]).
fn local_list(root: PathBuf, prefix: String) -> BoxStream<'static, Result<Meta>> {
    // The whole tree is walked and filtered by the key prefix: starting below the root
    // would mean resolving the prefix's directories by path.
    crate::walk::files_stream(root, prefix)
        .map(|entry| {
            let e = entry?;
            let key = Key::from_relative_path(e.path())?;
            Ok(meta_from_stat(key, e.size(), e.mtime(), e.ino(), None))
        })
        .boxed()
}
