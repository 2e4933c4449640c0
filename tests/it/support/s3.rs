//! Real S3 servers for tests.
//!
//! [`TestS3::start`] runs s3s + s3s-fs in-process on 127.0.0.1, on its own thread with its
//! own tokio runtime, so it outlives any one `#[tokio::test]` runtime and can serve a child
//! process. It checks SigV4, and a fault-injecting layer around its hyper service
//! ([`Faults`]) fails, truncates or corrupts responses on demand.
//!
//! [`TestS3::external`] / [`TestS3::moto`] use the server named by
//! `STOWAGE_TEST_S3_ENDPOINT` (moto in CI) with a fresh bucket per call. moto stores any key,
//! so it is the server for hostile-key tests.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsAuthorizer, AwsCredential};
use object_store::client::{HttpRequest, HttpRequestBody};
use object_store::signer::Method;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RespBody = UnsyncBoxBody<Bytes, BoxError>;

const REGION: &str = "us-east-1";
const IN_PROCESS_ACCESS_KEY: &str = "stowage-test-access";
const IN_PROCESS_SECRET_KEY: &str = "stowage-test-secret";

/// Characters of a key sent as-is in a request path: RFC 3986 unreserved, and `/`.
const KEY_PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// An S3 server for one test, with one bucket.
pub struct TestS3 {
    endpoint: String,
    bucket: String,
    access_key: String,
    secret_key: String,
    /// `Some` for the in-process server.
    faults: Option<Arc<Faults>>,
    _server: Option<InProcessServer>,
}

impl TestS3 {
    /// Starts s3s-fs in-process on 127.0.0.1 with SigV4 auth and one empty bucket.
    pub fn start() -> TestS3 {
        TestS3::start_with_credentials(IN_PROCESS_ACCESS_KEY, IN_PROCESS_SECRET_KEY)
    }

    /// [`TestS3::start`] accepting these credentials instead of the fixed test ones (a
    /// session token, if sent, is signed over but not checked).
    pub fn start_with_credentials(access_key: &str, secret_key: &str) -> TestS3 {
        let root = tempfile::tempdir().expect("temp dir");
        let bucket = "stowage-test".to_owned();
        // For s3s-fs a bucket is a top-level directory.
        std::fs::create_dir(root.path().join(&bucket)).expect("bucket dir");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs root");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret_key));
        let service = builder.build();

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let faults = Arc::new(Faults::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread_faults = faults.clone();
        let data_root = root.path().to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("test-s3-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("server runtime");
                rt.block_on(serve(listener, service, thread_faults, data_root, stop_rx));
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("server thread");

        TestS3 {
            endpoint: format!("http://{addr}"),
            bucket,
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            faults: Some(faults),
            _server: Some(InProcessServer {
                stop: Some(stop_tx),
                thread: Some(thread),
                _root: root,
            }),
        }
    }

    /// The server named by `STOWAGE_TEST_S3_ENDPOINT`, with a fresh bucket; `None` when unset.
    /// Credentials come from `STOWAGE_TEST_S3_ACCESS_KEY` / `_SECRET_KEY` (default `test`).
    pub fn external() -> Option<TestS3> {
        let endpoint = std::env::var("STOWAGE_TEST_S3_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())?;
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| "test".to_owned());
        let s3 = TestS3 {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            bucket: format!(
                "stowage-test-{}-{:08x}",
                std::process::id(),
                fastrand::u32(..)
            ),
            access_key: var("STOWAGE_TEST_S3_ACCESS_KEY"),
            secret_key: var("STOWAGE_TEST_S3_SECRET_KEY"),
            faults: None,
            _server: None,
        };
        let (status, body) = s3
            .raw_request("PUT", &format!("/{}", s3.bucket), b"")
            .expect("CreateBucket request");
        assert!(
            (200..300).contains(&status),
            "CreateBucket {} at {endpoint}: {status} {}",
            s3.bucket,
            String::from_utf8_lossy(&body)
        );
        Some(s3)
    }

    /// [`TestS3::external`] for tests marked `#[ignore = "needs moto ..."]`: they run with
    /// `--ignored` where `.ci/run` has started moto, and fail loudly anywhere else.
    pub fn moto() -> TestS3 {
        TestS3::external().expect(
            "this test needs an S3 server that stores any key: start moto_server and set \
             STOWAGE_TEST_S3_ENDPOINT (as .ci/run does)",
        )
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The test's bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Access key id the server accepts.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// Secret key the server accepts.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The signing region.
    pub fn region(&self) -> &str {
        REGION
    }

    /// Environment for a child process (`stowage ...`) that should use this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("S3_BUCKET_NAME", self.bucket.clone()),
            // s3s-fs claims `encoding-type=url` without applying it.
            (
                "S3_URL_ENCODED_LISTING",
                self.url_encoded_listing().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Whether this server really URL-encodes listed keys (moto does, s3s-fs does not).
    pub fn url_encoded_listing(&self) -> bool {
        self.faults.is_none()
    }

    /// The library configuration for this server's bucket.
    pub fn config(&self) -> stowage::S3Config {
        stowage::S3Config {
            bucket: self.bucket.clone(),
            prefix: String::new(),
            region: REGION.to_owned(),
            endpoint: Some(self.endpoint.clone()),
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(self.secret_key.clone()),
            session_token: None,
            public_base_url: None,
            presign_ttl: std::time::Duration::from_secs(3600),
            url_encoded_listing: self.url_encoded_listing(),
        }
    }

    /// A `BlobStore` on this server's bucket.
    pub fn blob_store(&self) -> stowage::BlobStore {
        stowage::StoreConfig::S3(self.config())
            .open()
            .expect("open test bucket")
    }

    /// An object_store client for the bucket (path-style, plain HTTP), for seeding and checks.
    pub fn object_store(&self) -> Arc<AmazonS3> {
        self.object_store_with_secret(&self.secret_key)
    }

    /// Like [`TestS3::object_store`] but signing with another secret key (to provoke 403).
    pub fn object_store_with_secret(&self, secret_key: &str) -> Arc<AmazonS3> {
        self.object_store_for_bucket(&self.bucket, secret_key)
    }

    /// An object_store client for any bucket name on this server (which need not exist).
    pub fn object_store_for_bucket(&self, bucket: &str, secret_key: &str) -> Arc<AmazonS3> {
        let s3 = AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(bucket)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(secret_key)
            .with_region(REGION)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()
            .expect("AmazonS3 client");
        Arc::new(s3)
    }

    /// Multipart uploads holding parts, neither completed nor aborted, on the in-process
    /// server. s3s-fs has no ListMultipartUploads; it keeps each uploaded part as
    /// `.upload_id-<id>.part-<n>` in its root until the upload completes or is aborted
    /// (its `.upload-<id>.json` records stay even then), so this counts distinct ids of
    /// part files. An upload started but without a part yet is not counted.
    pub fn open_multipart_uploads(&self) -> usize {
        let server = self
            ._server
            .as_ref()
            .expect("counting uploads needs the in-process server (TestS3::start)");
        let ids: std::collections::HashSet<String> = std::fs::read_dir(server._root.path())
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                let rest = name.strip_prefix(".upload_id-")?;
                Some(rest.split(".part-").next()?.to_owned())
            })
            .collect();
        ids.len()
    }

    /// Fault injection for the in-process server. Panics for an external server, whose
    /// responses we cannot touch.
    pub fn faults(&self) -> &Faults {
        self.faults
            .as_deref()
            .expect("fault injection needs the in-process server (TestS3::start)")
    }

    /// PUTs `body` under exactly `key`, bypassing object_store's `Path` (which refuses keys
    /// such as `../x` or `a//b`). The request goes over a plain TCP socket so no URL parser
    /// normalises `..` or `.` segments away. moto stores any key; s3s-fs refuses some: the
    /// error says what the server answered. The signature covers the URL as the `url` crate
    /// normalises it, so s3s-fs also answers 403 for keys with `.`/`..` segments.
    pub fn put_raw(&self, key: &str, body: &[u8]) -> Result<(), String> {
        let path = format!(
            "/{}/{}",
            self.bucket,
            percent_encoding::utf8_percent_encode(key, KEY_PATH)
        );
        let (status, resp) = self.raw_request("PUT", &path, body)?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!(
                "PUT {key:?}: {status} {}",
                String::from_utf8_lossy(&resp)
            ))
        }
    }

    /// One SigV4-signed HTTP/1.1 request over a blocking socket; returns status and body.
    fn raw_request(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        self.raw_request_with(method, path, &[], body)
            .map(|(status, _, body)| (status, body))
    }

    /// PUTs `body` under `key` with extra request headers (signed along with the rest), e.g.
    /// `x-amz-checksum-sha256` + `x-amz-sdk-checksum-algorithm` to have the server store an
    /// additional checksum.
    pub fn put_raw_with_headers(
        &self,
        key: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(), String> {
        let path = format!(
            "/{}/{}",
            self.bucket,
            percent_encoding::utf8_percent_encode(key, KEY_PATH)
        );
        let (status, _, resp) = self.raw_request_with("PUT", &path, headers, body)?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!(
                "PUT {key:?}: {status} {}",
                String::from_utf8_lossy(&resp)
            ))
        }
    }

    /// One signed request with extra headers; returns status, response head and body.
    pub fn raw_request_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, String, Vec<u8>), String> {
        let url = format!("{}{path}", self.endpoint);
        let mut req = HttpRequest::new(HttpRequestBody::from(body.to_vec()));
        *req.method_mut() = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        *req.uri_mut() = url.parse().map_err(|e| format!("{url}: {e}"))?;
        for (name, value) in headers {
            req.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| e.to_string())?,
                value.parse().map_err(|e| format!("{name}: {e}"))?,
            );
        }
        let credential = AwsCredential {
            key_id: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            token: None,
        };
        AwsAuthorizer::new(&credential, "s3", REGION)
            .try_authorize(&mut req, None)
            .map_err(|e| e.to_string())?;

        let host = self.endpoint.trim_start_matches("http://");
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in req.headers() {
            if name != "host" {
                head.push_str(&format!(
                    "{name}: {}\r\n",
                    value.to_str().map_err(|e| e.to_string())?
                ));
            }
        }
        head.push_str("\r\n");

        let mut conn =
            std::net::TcpStream::connect(host).map_err(|e| format!("connect {host}: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        conn.write_all(head.as_bytes())
            .and_then(|()| conn.write_all(body))
            .map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        conn.read_to_end(&mut resp)
            .map_err(|e| format!("reading the response: {e}"))?;
        let text = String::from_utf8_lossy(&resp);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| {
                format!(
                    "no HTTP status in {:?}",
                    text.chars().take(100).collect::<String>()
                )
            })?;
        let (head, body) = match text.find("\r\n\r\n") {
            Some(i) => (text[..i].to_string(), resp[i + 4..].to_vec()),
            None => (text.to_string(), Vec::new()),
        };
        Ok((status, head, body))
    }
}

/// The in-process server's thread; stopped and joined on drop.
struct InProcessServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _root: tempfile::TempDir,
}

impl Drop for InProcessServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    service: s3s::service::S3Service,
    faults: Arc<Faults>,
    data_root: std::path::PathBuf,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let data_root = Arc::new(data_root);
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(_) => continue,
            },
            _ = &mut stop => return,
        };
        let service = service.clone();
        let faults = faults.clone();
        let data_root = data_root.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let service = service.clone();
                let faults = faults.clone();
                let data_root = data_root.clone();
                async move { with_faults(req, &service, &faults, &data_root).await }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), svc)
                .await;
        });
    }
}

/// Faults the in-process server injects, and counters of what it saw. Every `*_next`
/// setting is consumed by the matching requests; settings made while earlier ones are
/// pending queue behind them.
#[derive(Debug, Default)]
pub struct Faults {
    requests: AtomicU64,
    gets: AtomicU64,
    fail: Mutex<VecDeque<u16>>,
    get_faults: Mutex<VecDeque<GetFault>>,
    canned_listing: Mutex<Option<Arc<Vec<CannedEntry>>>>,
    oversize_lists: Mutex<VecDeque<usize>>,
    lists: AtomicU64,
    list_delays: Mutex<VecDeque<Duration>>,
    failing_keys: Mutex<std::collections::HashMap<String, (u16, Duration)>>,
    slow_keys: Mutex<std::collections::HashMap<String, Duration>>,
    kms_keys: Mutex<std::collections::HashMap<String, KmsChecksum>>,
    gets_by_key: Mutex<std::collections::HashMap<String, u64>>,
}

/// One entry of a crafted listing ([`Faults::answer_lists_with`]).
#[derive(Debug, Clone)]
pub struct CannedEntry {
    /// The key as bytes: it need not be UTF-8 (it is sent URL-encoded).
    pub key: Vec<u8>,
    /// `<Size>`, sent as given (so it may be unreadable).
    pub size: String,
    /// `<LastModified>`, sent as given (so it may be unreadable).
    pub last_modified: String,
}

impl CannedEntry {
    /// An entry with a sound `LastModified`.
    pub fn new(key: impl Into<Vec<u8>>, size: u64) -> CannedEntry {
        CannedEntry {
            key: key.into(),
            size: size.to_string(),
            last_modified: "2024-05-01T10:20:30.000Z".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum GetFault {
    Truncate { after_bytes: usize },
    Corrupt,
}

impl Faults {
    /// Answers the next `n` requests of any kind with `status` and an S3 XML error body
    /// (503 → `SlowDown`, 500 → `InternalError`, 403 → `AccessDenied`, ...).
    pub fn fail_next(&self, n: usize, status: u16) {
        self.fail
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n(status, n));
    }

    /// Cuts off the bodies of the next `n` successful GET-object responses after
    /// `after_bytes`: headers keep the full Content-Length, then the connection ends.
    pub fn truncate_next_gets(&self, n: usize, after_bytes: usize) {
        self.get_faults
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n(GetFault::Truncate { after_bytes }, n));
    }

    /// Flips one byte in the bodies of the next `n` successful non-empty GET-object
    /// responses; the length stays the same.
    pub fn corrupt_next_gets(&self, n: usize) {
        self.get_faults
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n(GetFault::Corrupt, n));
    }

    /// From now on answers every ListObjectsV2 request from `entries` instead of the bucket
    /// (`prefix` and `delimiter` honoured, keys URL-encoded when `encoding-type=url` was asked,
    /// no ETags, as s3s-fs; everything in one page). Objects themselves are still served from the bucket.
    pub fn answer_lists_with(&self, entries: Vec<CannedEntry>) {
        *self.canned_listing.lock().unwrap() = Some(Arc::new(entries));
    }

    /// Answers the next `n` ListObjectsV2 requests with 200 and a well-formed but `bytes`
    /// long body, streamed without Content-Length.
    pub fn oversize_next_lists(&self, n: usize, bytes: usize) {
        self.oversize_lists
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n(bytes, n));
    }

    /// Holds the next `n` bucket listings (ListObjects) for `delay` before answering, to
    /// catch what a client does while a long listing runs.
    pub fn delay_next_lists(&self, n: usize, delay: Duration) {
        self.list_delays
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n(delay, n));
    }

    /// Answers every request for the object `key` with `status` from now on, each after
    /// `delay` (so other requests are under way when it fails).
    pub fn fail_key(&self, key: &str, status: u16, delay: Duration) {
        self.failing_keys
            .lock()
            .unwrap()
            .insert(key.to_owned(), (status, delay));
    }

    /// Holds the answer to every request for the object `key` (each part of a multipart
    /// upload too) for `delay` after the server has handled it.
    pub fn slow_key(&self, key: &str, delay: Duration) {
        self.slow_keys.lock().unwrap().insert(key.to_owned(), delay);
    }

    /// Bucket listings seen so far (counted when they arrive, before any delay).
    pub fn lists(&self) -> u64 {
        self.lists.load(Ordering::SeqCst)
    }

    /// Requests seen so far, of any kind (failed ones included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// GET-object requests seen so far (listings and other bucket-level GETs excluded).
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }

    /// GET-object requests seen so far for `key`.
    pub fn gets_of(&self, key: &str) -> u64 {
        self.gets_by_key
            .lock()
            .unwrap()
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Makes `key` present like an SSE-KMS object on every GET and HEAD: the ETag becomes
    /// a 32-hex value that is not the content's MD5 (the same for every request, as real
    /// ETags are), `x-amz-server-side-encryption: aws:kms` is added, and, when given, the
    /// full-object checksum `(alg, base64)` as `x-amz-checksum-<alg>`.
    pub fn present_as_kms(&self, key: &str, checksum: Option<(&str, String)>) {
        let checksum = match checksum {
            Some((a, v)) => KmsChecksum::Fixed(a.to_owned(), v),
            None => KmsChecksum::Strip,
        };
        self.kms_keys
            .lock()
            .unwrap()
            .insert(key.to_owned(), checksum);
    }

    /// Like [`Faults::present_as_kms`], but the checksums the server stored with the
    /// object's latest upload are kept, as an SSE-KMS bucket keeps the checksum each
    /// upload sent.
    pub fn present_as_kms_keeping_checksums(&self, key: &str) {
        self.kms_keys
            .lock()
            .unwrap()
            .insert(key.to_owned(), KmsChecksum::Stored);
    }
}

/// The checksum a key presented as SSE-KMS carries ([`Faults::present_as_kms`]).
#[derive(Debug, Clone)]
enum KmsChecksum {
    /// None: every stored checksum is removed.
    Strip,
    /// This `(alg, base64)`, whatever was stored.
    Fixed(String, String),
    /// The ones the server stored.
    Stored,
}

/// True for `GET /bucket/key` (path-style): a GetObject, not a listing of the bucket.
fn is_get_object<B>(req: &Request<B>) -> bool {
    req.method() == hyper::Method::GET && object_path(req).is_some()
}

/// `(bucket, key)` of a path-style object request, the key percent-decoded.
fn object_path<B>(req: &Request<B>) -> Option<(String, String)> {
    let (bucket, key) = req.uri().path().trim_start_matches('/').split_once('/')?;
    let key = percent_encoding::percent_decode_str(key)
        .decode_utf8()
        .ok()?;
    (!key.is_empty()).then(|| (bucket.to_owned(), key.into_owned()))
}

/// True for a GET or HEAD of a key that s3s-fs holds as a directory (`d` when `d/x` is
/// stored). s3s-fs answers those with 500; S3 and moto say 404 NoSuchKey, as we do here, so
/// the suite checks stowage rather than this server's quirk.
fn is_directory_object<B>(req: &Request<B>, data_root: &std::path::Path) -> bool {
    matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD)
        && object_path(req).is_some_and(|(bucket, key)| {
            !key.split('/').any(|s| s == ".." || s == ".")
                && data_root.join(bucket).join(key).is_dir()
        })
}

async fn with_faults(
    req: Request<Incoming>,
    service: &s3s::service::S3Service,
    faults: &Faults,
    data_root: &std::path::Path,
) -> Result<Response<RespBody>, std::io::Error> {
    faults.requests.fetch_add(1, Ordering::SeqCst);
    let get_object = is_get_object(&req);
    if get_object {
        faults.gets.fetch_add(1, Ordering::SeqCst);
        if let Some((_, key)) = object_path(&req) {
            *faults.gets_by_key.lock().unwrap().entry(key).or_default() += 1;
        }
    }
    let kms = match *req.method() {
        hyper::Method::GET | hyper::Method::HEAD => object_path(&req).and_then(|(_, key)| {
            let found = faults.kms_keys.lock().unwrap().get(&key).cloned();
            found.map(|c| (key, c))
        }),
        _ => None,
    };
    if req.method() == hyper::Method::GET && object_path(&req).is_none() {
        faults.lists.fetch_add(1, Ordering::SeqCst);
        let delay = faults.list_delays.lock().unwrap().pop_front();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
    }
    let failing_key = object_path(&req)
        .and_then(|(_, key)| faults.failing_keys.lock().unwrap().get(&key).copied());
    let slow =
        object_path(&req).and_then(|(_, key)| faults.slow_keys.lock().unwrap().get(&key).copied());
    if let Some((status, delay)) = failing_key {
        tokio::time::sleep(delay).await;
        return Ok(error_response(status));
    }
    if let Some(status) = faults.fail.lock().unwrap().pop_front() {
        return Ok(error_response(status));
    }
    if is_directory_object(&req, data_root) {
        return Ok(error_response(404));
    }
    if let Some(query) = list_query(&req) {
        if let Some(bytes) = faults.oversize_lists.lock().unwrap().pop_front() {
            return Ok(oversize_list_response(bytes));
        }
        let canned = faults.canned_listing.lock().unwrap().clone();
        if let Some(entries) = canned {
            return Ok(canned_list_response(&entries, &query));
        }
    }

    let resp = service
        .call(req.map(s3s::Body::from))
        .await
        .map_err(|e| std::io::Error::other(s3s::StdError::from(e)))?;
    if let Some(delay) = slow {
        tokio::time::sleep(delay).await;
    }
    let resp = match kms {
        Some((key, checksum)) if resp.status().is_success() => as_kms(resp, &key, checksum),
        _ => resp,
    };
    let fault = if get_object && resp.status().is_success() {
        faults.get_faults.lock().unwrap().pop_front()
    } else {
        None
    };
    let Some(fault) = fault else {
        return Ok(resp.map(|b| b.boxed_unsync()));
    };

    let (mut parts, body) = resp.into_parts();
    let bytes = match BodyExt::collect(body).await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    parts
        .headers
        .insert(hyper::header::CONTENT_LENGTH, bytes.len().into());
    let body = match fault {
        GetFault::Corrupt => {
            let mut v = bytes.to_vec();
            if let Some(b) = v.get_mut(bytes.len() / 2) {
                *b ^= 0x5a;
            }
            Full::new(Bytes::from(v))
                .map_err(|never| match never {})
                .boxed_unsync()
        }
        GetFault::Truncate { after_bytes } => {
            let head = bytes.slice(..after_bytes.min(bytes.len()));
            let frames = futures::stream::iter([Ok::<_, BoxError>(Frame::data(head))]).chain(
                futures::stream::once(async {
                    // Let hyper flush the first part before the error aborts the connection.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<Frame<Bytes>, BoxError>("body truncated by fault injection".into())
                }),
            );
            StreamBody::new(frames).boxed_unsync()
        }
    };
    Ok(Response::from_parts(parts, body))
}

/// Rewrites a GET/HEAD answer to look like an SSE-KMS object's (see
/// [`Faults::present_as_kms`]).
fn as_kms<B>(mut resp: Response<B>, key: &str, checksum: KmsChecksum) -> Response<B> {
    use md5::Digest;
    let fake = format!(
        "\"{}\"",
        hex::encode(md5::Md5::digest(format!("kms:{key}")))
    );
    let h = resp.headers_mut();
    h.insert(hyper::header::ETAG, fake.parse().unwrap());
    h.insert("x-amz-server-side-encryption", "aws:kms".parse().unwrap());
    if matches!(checksum, KmsChecksum::Stored) {
        return resp;
    }
    for alg in ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"] {
        h.remove(format!("x-amz-checksum-{alg}").as_str());
    }
    if let KmsChecksum::Fixed(alg, value) = checksum {
        h.insert(
            hyper::header::HeaderName::from_bytes(format!("x-amz-checksum-{alg}").as_bytes())
                .unwrap(),
            value.parse().unwrap(),
        );
        h.insert("x-amz-checksum-type", "FULL_OBJECT".parse().unwrap());
    }
    resp
}

fn error_response(status: u16) -> Response<RespBody> {
    let code = match status {
        503 => "SlowDown",
        500 => "InternalError",
        403 => "AccessDenied",
        404 => "NoSuchKey",
        _ => "InjectedFault",
    };
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test server</Message><RequestId>fault</RequestId></Error>"
    );
    let mut resp = Response::new(
        Full::new(Bytes::from(xml))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = StatusCode::from_u16(status).expect("valid status");
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    resp
}

/// The query parameters of a ListObjectsV2 request (`GET /bucket?list-type=2...`), values
/// percent-decoded to bytes; `None` for any other request.
fn list_query<B>(req: &Request<B>) -> Option<Vec<(String, Vec<u8>)>> {
    if req.method() != hyper::Method::GET || object_path(req).is_some() {
        return None;
    }
    let params: Vec<(String, Vec<u8>)> = req
        .uri()
        .query()?
        .split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = v.replace('+', " ");
            (
                k.to_owned(),
                percent_encoding::percent_decode_str(&v).collect(),
            )
        })
        .collect();
    params
        .iter()
        .any(|(k, v)| k == "list-type" && v == b"2")
        .then_some(params)
}

fn xml_response(body: RespBody) -> Response<RespBody> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    resp
}

/// A ListObjectsV2 page over `entries`, as S3 would answer `query`.
fn canned_list_response(
    entries: &[CannedEntry],
    query: &[(String, Vec<u8>)],
) -> Response<RespBody> {
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let prefix = param("prefix").unwrap_or_default();
    let delimiter = param("delimiter").filter(|d| !d.is_empty());
    let url = param("encoding-type").as_deref() == Some(b"url".as_slice());
    let show = |k: &[u8]| -> String {
        if url {
            percent_encoding::percent_encode(k, KEY_PATH).to_string()
        } else {
            String::from_utf8_lossy(k)
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        }
    };
    let mut sorted: Vec<&CannedEntry> = entries
        .iter()
        .filter(|e| e.key.starts_with(&prefix))
        .collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut contents = String::new();
    let mut prefixes: Vec<Vec<u8>> = Vec::new();
    for e in sorted {
        let rest = &e.key[prefix.len()..];
        if let Some(d) = &delimiter {
            if let Some(i) = rest.windows(d.len()).position(|w| w == d.as_slice()) {
                let p = e.key[..prefix.len() + i + d.len()].to_vec();
                if prefixes.last() != Some(&p) {
                    prefixes.push(p);
                }
                continue;
            }
        }
        contents.push_str(&format!(
            "<Contents><Key>{}</Key><LastModified>{}</LastModified><Size>{}</Size></Contents>",
            show(&e.key),
            e.last_modified,
            e.size
        ));
    }
    let common: String = prefixes
        .iter()
        .map(|p| {
            format!(
                "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
                show(p)
            )
        })
        .collect();
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult><Name>canned</Name><Prefix>{}</Prefix>{}<IsTruncated>false</IsTruncated>{contents}{common}</ListBucketResult>",
        show(&prefix),
        if url { "<EncodingType>url</EncodingType>" } else { "" },
    );
    xml_response(
        Full::new(Bytes::from(xml))
            .map_err(|never| match never {})
            .boxed_unsync(),
    )
}

/// 200 with a `bytes`-long empty listing (most of it one XML comment), in 64 KiB chunks and
/// without Content-Length, so only a reader that counts can tell its size.
fn oversize_list_response(bytes: usize) -> Response<RespBody> {
    const CHUNK: usize = 64 << 10;
    let head = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult><IsTruncated>false</IsTruncated><!--";
    let tail = "--></ListBucketResult>";
    let filler = bytes.saturating_sub(head.len() + tail.len());
    let chunks = std::iter::once(Bytes::from_static(head.as_bytes()))
        .chain(
            (0..filler.div_ceil(CHUNK))
                .map(move |i| Bytes::from(vec![b'x'; CHUNK.min(filler - i * CHUNK)])),
        )
        .chain(std::iter::once(Bytes::from_static(tail.as_bytes())))
        .map(|b| Ok::<_, BoxError>(Frame::data(b)));
    xml_response(StreamBody::new(futures::stream::iter(chunks)).boxed_unsync())
}
