//! The conformance suite: the same async test functions, each taking a `&BlobStore`, run
//! against every backend — Memory, Local (a temp dir), S3 on an in-process s3s-fs (with and
//! without a key prefix) and, when `STOWAGE_TEST_S3_ENDPOINT` is set, an external S3 server
//! (moto in CI). A backend that behaves differently from the others fails here.
//!
//! The `suite!` macro at the bottom expands every test function into one `#[tokio::test]`
//! per backend, so `cargo test --test it conformance::local::` runs one backend and
//! `cargo test --test it conformance::` `get_range` one test everywhere.
//!
//! Local-only properties (crash safety, symlinks, key clashes) are in `local_only` below.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use stowage::{BackendKind, BlobStore, Error, Key, Meta};

use crate::support::s3::TestS3;

/// Size of the "large" objects: above the multipart threshold and not a multiple of it.
const LARGE: usize = (20 << 20) + 12_345;

fn key(s: &str) -> Key {
    Key::new(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// Deterministic pseudo-random bytes (different for each seed).
fn pseudo_random(len: usize, seed: u64) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v.into()
}

/// `data` as a stream of `chunk`-byte pieces.
fn chunked(
    data: Bytes,
    chunk: usize,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let n = data.len().div_ceil(chunk);
    futures::stream::iter(
        (0..n).map(move |i| Ok(data.slice(i * chunk..((i + 1) * chunk).min(data.len())))),
    )
}

async fn list_all(store: &BlobStore, prefix: &str) -> BTreeMap<String, Meta> {
    let metas: Vec<Meta> = store
        .list(prefix)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("list {prefix:?} on {store:?}: {e}"));
    let n = metas.len();
    let map: BTreeMap<String, Meta> = metas.into_iter().map(|m| (m.key.to_string(), m)).collect();
    assert_eq!(map.len(), n, "list {prefix:?} returned a key twice");
    map
}

fn keys_of(map: &BTreeMap<String, Meta>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

fn assert_not_found<T: std::fmt::Debug>(r: stowage::Result<T>, k: &str, what: &str) {
    match r {
        Err(Error::NotFound { key }) => assert_eq!(key, k, "{what}: NotFound names the key"),
        other => panic!("{what} {k:?}: expected NotFound, got {other:?}"),
    }
}

/// True when `dir` is on a filesystem that keeps `user.*` extended attributes.
fn supports_user_xattrs(dir: &std::path::Path) -> bool {
    let probe = dir.join("xattr-probe");
    std::fs::write(&probe, b"").expect("probe file");
    let ok = rustix::fs::setxattr(
        &probe,
        "user.stowage-probe",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )
    .is_ok();
    std::fs::remove_file(&probe).expect("remove probe file");
    ok
}

// ---------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------

async fn roundtrip_empty_small_large(store: &BlobStore) {
    let cases = [
        ("empty", Bytes::new()),
        ("small.txt", Bytes::from_static(b"hello, stowage")),
        ("clips/large.mp4", pseudo_random(LARGE, 1)),
    ];
    for (k, data) in &cases {
        store
            .put(&key(k), data.clone())
            .await
            .unwrap_or_else(|e| panic!("put {k}: {e}"));
    }
    for (k, data) in &cases {
        let got = store
            .get(&key(k))
            .await
            .unwrap_or_else(|e| panic!("get {k}: {e}"));
        assert_eq!(got.len(), data.len(), "{k}: length");
        assert!(got == *data, "{k}: content differs");
        let meta = store
            .head(&key(k))
            .await
            .unwrap_or_else(|e| panic!("head {k}: {e}"));
        assert_eq!(meta.key.as_str(), *k);
        assert_eq!(meta.size, data.len() as u64, "{k}: head size");
        assert!(meta.etag.is_some(), "{k}: head has an ETag");
        assert!(store.exists(&key(k)).await.unwrap(), "{k}: exists");

        let s = store.get_stream(&key(k)).await.unwrap();
        assert_eq!(s.meta.size, data.len() as u64);
        assert_eq!(s.range, 0..data.len() as u64);
        let chunks: Vec<Bytes> = s.body.try_collect().await.unwrap();
        assert!(chunks.concat() == data[..], "{k}: streamed content differs");
    }
    let listed = list_all(store, "").await;
    assert_eq!(keys_of(&listed), ["clips/large.mp4", "empty", "small.txt"]);
    for (k, data) in &cases {
        assert_eq!(listed[*k].size, data.len() as u64, "{k}: listed size");
    }
}

async fn list_paginates_over_1000_keys(store: &BlobStore) {
    let keys: Vec<String> = (0..1100).map(|i| format!("many/{i:05}.bin")).collect();
    futures::stream::iter(&keys)
        .map(|k| {
            let store = store.clone();
            async move {
                // Sizes vary so a listing that pairs sizes with the wrong keys is caught.
                let body = Bytes::from(vec![b'x'; k.len() + (k.as_bytes()[9] - b'0') as usize]);
                store
                    .put(&key(k), body)
                    .await
                    .unwrap_or_else(|e| panic!("put {k}: {e}"));
            }
        })
        .buffer_unordered(32)
        .collect::<()>()
        .await;
    store
        .put(&key("other/a"), Bytes::from_static(b"a"))
        .await
        .unwrap();

    let listed = list_all(store, "many/").await;
    assert_eq!(listed.len(), keys.len());
    for k in &keys {
        let m = listed
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing from the listing"));
        assert_eq!(
            m.size,
            (k.len() + (k.as_bytes()[9] - b'0') as usize) as u64,
            "{k}: size"
        );
    }
    assert_eq!(list_all(store, "").await.len(), keys.len() + 1);
}

async fn list_prefix(store: &BlobStore) {
    for k in ["a/1", "a/2", "a/b/3", "ab/4", "abc", "b/5", "a-z/6"] {
        store.put(&key(k), Bytes::from(k.to_owned())).await.unwrap();
    }
    let cases: [(&str, &[&str]); 9] = [
        ("", &["a-z/6", "a/1", "a/2", "a/b/3", "ab/4", "abc", "b/5"]),
        ("a", &["a-z/6", "a/1", "a/2", "a/b/3", "ab/4", "abc"]),
        ("a/", &["a/1", "a/2", "a/b/3"]),
        ("a/b", &["a/b/3"]),
        ("a/b/", &["a/b/3"]),
        ("ab", &["ab/4", "abc"]),
        ("a/1", &["a/1"]),
        ("b/", &["b/5"]),
        ("zzz", &[]),
    ];
    for (prefix, want) in cases {
        let listed = list_all(store, prefix).await;
        assert_eq!(keys_of(&listed), want, "list({prefix:?})");
        for m in listed.values() {
            assert_eq!(m.size, m.key.as_str().len() as u64, "{}: size", m.key);
        }
    }
}

async fn delete_is_idempotent(store: &BlobStore) {
    let k = key("dir/clip.mp4");
    store.put(&k, Bytes::from_static(b"clip")).await.unwrap();
    store
        .put(&key("dir/sibling"), Bytes::from_static(b"s"))
        .await
        .unwrap();
    store
        .put(&key("only/child"), Bytes::from_static(b"c"))
        .await
        .unwrap();

    assert!(
        store.delete(&k).await.unwrap(),
        "first delete of an existing key"
    );
    assert!(!store.delete(&k).await.unwrap(), "second delete");
    assert!(!store.delete(&k).await.unwrap(), "third delete");
    assert!(!store.exists(&k).await.unwrap());
    assert!(
        !store.delete(&key("never/was")).await.unwrap(),
        "delete of a key never stored"
    );
    // A "directory" that only exists as the prefix of other keys is not an object.
    assert!(
        !store.delete(&key("only")).await.unwrap(),
        "delete of a prefix"
    );
    assert!(
        store.exists(&key("only/child")).await.unwrap(),
        "child survives"
    );
    assert!(
        store.exists(&key("dir/sibling")).await.unwrap(),
        "sibling survives"
    );
    assert_eq!(
        keys_of(&list_all(store, "").await),
        ["dir/sibling", "only/child"]
    );

    // Deleting the last key under a prefix and writing it again works.
    assert!(store.delete(&key("only/child")).await.unwrap());
    store
        .put(&key("only/child"), Bytes::from_static(b"again"))
        .await
        .unwrap();
    assert_eq!(store.get(&key("only/child")).await.unwrap(), "again");
}

async fn head_exists_missing(store: &BlobStore) {
    let missing = "no/such/key.mp4";
    assert_not_found(store.head(&key(missing)).await, missing, "head");
    assert!(!store.exists(&key(missing)).await.unwrap(), "exists");
    assert_not_found(store.get(&key(missing)).await, missing, "get");
    assert_not_found(
        store.get_range(&key(missing), 0..10).await,
        missing,
        "get_range",
    );
    assert_not_found(
        store.get_stream(&key(missing)).await.map(|s| s.meta),
        missing,
        "get_stream",
    );

    // The "directory" above an existing key is not an object either.
    store
        .put(&key("d/x"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_not_found(store.head(&key("d")).await, "d", "head of a prefix");
    assert!(
        !store.exists(&key("d")).await.unwrap(),
        "exists of a prefix"
    );
    assert!(store.exists(&key("d/x")).await.unwrap());
    assert_not_found(
        store.head(&key("d/x/y")).await,
        "d/x/y",
        "head below an object",
    );
}

async fn put_stream_and_put_file(store: &BlobStore) {
    // Large, streamed in 1 MiB chunks: a multipart upload on S3.
    let big = pseudo_random(LARGE, 2);
    store
        .put_stream(
            &key("stream/big.mp4"),
            chunked(big.clone(), 1 << 20),
            Some("video/mp4"),
        )
        .await
        .unwrap();
    let meta = store.head(&key("stream/big.mp4")).await.unwrap();
    assert_eq!(meta.size, LARGE as u64);
    assert!(
        store.get(&key("stream/big.mp4")).await.unwrap() == big,
        "streamed content differs"
    );
    if store.kind() == BackendKind::S3 {
        let etag = meta.etag.as_deref().expect("S3 ETag");
        let parts: u32 = etag
            .trim_matches('"')
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or_else(|| panic!("ETag {etag} of a {LARGE}-byte put_stream is not multipart"));
        assert!(parts >= 2, "ETag {etag}: expected several parts");
    }

    // Small, streamed in odd-sized chunks: one PUT.
    let small = pseudo_random(100_003, 3);
    store
        .put_stream(&key("stream/small"), chunked(small.clone(), 7_777), None)
        .await
        .unwrap();
    assert!(store.get(&key("stream/small")).await.unwrap() == small);
    if store.kind() == BackendKind::S3 {
        let etag = store
            .head(&key("stream/small"))
            .await
            .unwrap()
            .etag
            .unwrap();
        assert!(
            !etag.contains('-'),
            "ETag {etag} of a small object looks multipart"
        );
    }

    // Empty stream.
    store
        .put_stream(&key("stream/empty"), futures::stream::empty(), None)
        .await
        .unwrap();
    assert_eq!(store.head(&key("stream/empty")).await.unwrap().size, 0);

    // put_file, large.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upload.bin");
    let file_data = pseudo_random(LARGE, 4);
    std::fs::write(&path, &file_data).unwrap();
    store
        .put_file(
            &key("file/upload.bin"),
            &path,
            Some("application/octet-stream"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.head(&key("file/upload.bin")).await.unwrap().size,
        LARGE as u64
    );
    assert!(store.get(&key("file/upload.bin")).await.unwrap() == file_data);

    // put_file of a missing file fails and stores nothing.
    let err = store
        .put_file(&key("file/missing"), &dir.path().join("nope"), None)
        .await
        .expect_err("put_file of a missing file");
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(!store.exists(&key("file/missing")).await.unwrap());
}

async fn put_stream_error_leaves_nothing(store: &BlobStore) {
    fn failing(
        good: usize,
    ) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        chunked(pseudo_random(good, 5), 1 << 20).chain(futures::stream::once(async {
            Err(std::io::Error::other("client went away"))
        }))
    }
    // Fails after 2 MiB (one PUT on S3), and after 12 MiB (a multipart upload under way).
    for (k, good) in [("fail/small", 2 << 20), ("fail/large", 12 << 20)] {
        store
            .put_stream(&key(k), failing(good), None)
            .await
            .expect_err("put_stream of a failing body");
        assert!(
            !store.exists(&key(k)).await.unwrap(),
            "{k}: nothing under the key"
        );
    }
    // A failed overwrite keeps the old object.
    store
        .put(&key("fail/keep"), Bytes::from_static(b"old"))
        .await
        .unwrap();
    store
        .put_stream(&key("fail/keep"), failing(3 << 20), None)
        .await
        .expect_err("failing overwrite");
    assert_eq!(store.get(&key("fail/keep")).await.unwrap(), "old");
    assert_eq!(keys_of(&list_all(store, "").await), ["fail/keep"]);
}

async fn get_range(store: &BlobStore) {
    let data: Bytes = (0..1000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let k = key("range/data.bin");
    store.put(&k, data.clone()).await.unwrap();
    let cases: [(std::ops::Range<u64>, std::ops::Range<u64>); 8] = [
        (0..10, 0..10),
        (10..20, 10..20),
        (990..1000, 990..1000),
        (0..1000, 0..1000),
        (995..2000, 995..1000),   // clamped to the object's size
        (500..500, 500..500),     // empty range
        (1000..1010, 1000..1000), // starts at the end: empty
        (2000..3000, 1000..1000), // beyond the end: empty
    ];
    for (asked, want) in cases {
        let got = store
            .get_range(&k, asked.clone())
            .await
            .unwrap_or_else(|e| panic!("get_range {asked:?}: {e}"));
        assert_eq!(
            got,
            data[want.start as usize..want.end as usize],
            "get_range {asked:?}"
        );
        let s = store
            .get_stream_range(&k, Some(asked.clone()))
            .await
            .unwrap();
        assert_eq!(s.range, want, "get_stream_range {asked:?}: range");
        assert_eq!(
            s.meta.size, 1000,
            "get_stream_range {asked:?}: meta.size is the object's"
        );
        let body: Vec<Bytes> = s.body.try_collect().await.unwrap();
        assert_eq!(body.concat(), data[want.start as usize..want.end as usize]);
    }
    // Ranges of an empty object are empty.
    store.put(&key("range/empty"), Bytes::new()).await.unwrap();
    assert_eq!(
        store.get_range(&key("range/empty"), 0..10).await.unwrap(),
        ""
    );
}

async fn content_type_roundtrip(store: &BlobStore) {
    let keeps_types = match store.local_root() {
        Some(root) => supports_user_xattrs(root),
        None => true,
    };
    store
        .put_opts(
            &key("ct/clip.mp4"),
            Bytes::from_static(b"mp4"),
            Some("video/mp4"),
        )
        .await
        .unwrap();
    store
        .put_stream(
            &key("ct/streamed"),
            chunked(Bytes::from_static(b"{}"), 1),
            Some("application/json"),
        )
        .await
        .unwrap();
    store
        .put(&key("ct/none.txt"), Bytes::from_static(b"none"))
        .await
        .unwrap();
    for (k, ct) in [
        ("ct/clip.mp4", "video/mp4"),
        ("ct/streamed", "application/json"),
    ] {
        let want = keeps_types.then(|| ct.to_owned());
        assert_eq!(
            store.head(&key(k)).await.unwrap().content_type,
            want,
            "{k}: head"
        );
        assert_eq!(
            store.get_stream(&key(k)).await.unwrap().meta.content_type,
            want,
            "{k}: get"
        );
    }
    // Overwriting without a type drops the old one (S3 servers may report a default type).
    store
        .put(&key("ct/clip.mp4"), Bytes::from_static(b"plain"))
        .await
        .unwrap();
    let after = store.head(&key("ct/clip.mp4")).await.unwrap().content_type;
    assert_ne!(
        after.as_deref(),
        Some("video/mp4"),
        "old Content-Type kept after overwrite"
    );
    if store.kind() != BackendKind::S3 {
        assert_eq!(
            store.head(&key("ct/none.txt")).await.unwrap().content_type,
            None
        );
        assert_eq!(after, None);
    }
}

async fn overwrite_replaces(store: &BlobStore) {
    let k = key("over/write.txt");
    store
        .put(&k, Bytes::from_static(b"the first, longer version"))
        .await
        .unwrap();
    let first = store.head(&k).await.unwrap();
    store.put(&k, Bytes::from_static(b"v2")).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), "v2");
    let second = store.head(&k).await.unwrap();
    assert_eq!(second.size, 2);
    assert_ne!(first.etag, second.etag, "ETag changes with the content");
    store
        .put_stream(&k, chunked(Bytes::from_static(b"third"), 2), None)
        .await
        .unwrap();
    assert_eq!(store.get(&k).await.unwrap(), "third");
    let listed = list_all(store, "").await;
    assert_eq!(keys_of(&listed), ["over/write.txt"]);
    assert_eq!(listed["over/write.txt"].size, 5);
}

/// Keys that are valid everywhere but trip naive encoders: `#` (a URL fragment, and
/// object_store's local temp-file suffix), `%` (double encoding), spaces and non-ASCII,
/// and a segment that decodes to `..`.
const AWKWARD: [&str; 5] = [
    "frames/take#2",
    "50%.txt",
    "sp ace/ünï.txt",
    "%2e%2e/x",
    "a+b=c&d;e,f",
];

async fn awkward_keys(store: &BlobStore) {
    for k in AWKWARD {
        store
            .put(&key(k), Bytes::from(k.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("put {k:?}: {e}"));
    }
    for k in AWKWARD {
        assert_eq!(
            store
                .get(&key(k))
                .await
                .unwrap_or_else(|e| panic!("get {k:?}: {e}")),
            k.as_bytes()
        );
        assert_eq!(
            store.head(&key(k)).await.unwrap().size,
            k.len() as u64,
            "{k:?}: head"
        );
        assert_eq!(
            store.get_range(&key(k), 1..3).await.unwrap(),
            k.as_bytes()[1..3],
            "{k:?}: range"
        );
    }
    let mut want: Vec<&str> = AWKWARD.to_vec();
    want.sort();
    assert_eq!(keys_of(&list_all(store, "").await), want);
    assert_eq!(
        keys_of(&list_all(store, "sp ace/").await),
        ["sp ace/ünï.txt"]
    );
    assert_eq!(keys_of(&list_all(store, "%2e").await), ["%2e%2e/x"]);
    // `%2e%2e/x` is not `../x`, nor anything else: nothing was written outside the store.
    assert_not_found(store.head(&key("x")).await, "x", "head x");
    for k in AWKWARD {
        assert!(store.delete(&key(k)).await.unwrap(), "delete {k:?}");
    }
    assert!(list_all(store, "").await.is_empty());
}

async fn download_url_serves_bytes(store: &BlobStore) {
    let mut keys = vec!["clips/plain.mp4"];
    keys.extend(AWKWARD);
    for k in &keys {
        store
            .put(&key(k), Bytes::from(format!("body of {k}")))
            .await
            .unwrap();
    }
    match store.kind() {
        BackendKind::Memory | BackendKind::ObjectStore => {
            store
                .download_url(&key("clips/plain.mp4"))
                .await
                .expect_err("Memory and a caller's own store have no URLs");
        }
        BackendKind::Local => {
            let want = [
                (
                    "clips/plain.mp4",
                    "http://localhost:8000/api/files/clips/plain.mp4",
                ),
                (
                    "frames/take#2",
                    "http://localhost:8000/api/files/frames/take%232",
                ),
                ("50%.txt", "http://localhost:8000/api/files/50%25.txt"),
                (
                    "sp ace/ünï.txt",
                    "http://localhost:8000/api/files/sp%20ace/%C3%BCn%C3%AF.txt",
                ),
                ("%2e%2e/x", "http://localhost:8000/api/files/%252e%252e/x"),
                (
                    "a+b=c&d;e,f",
                    "http://localhost:8000/api/files/a%2Bb%3Dc%26d%3Be%2Cf",
                ),
            ];
            for (k, url) in want {
                assert_eq!(store.download_url(&key(k)).await.unwrap(), url, "{k:?}");
            }
        }
        BackendKind::S3 => {
            let http = reqwest::Client::new();
            for k in &keys {
                let url = store.download_url(&key(k)).await.unwrap();
                assert!(
                    url.contains("X-Amz-Expires=3600"),
                    "{url}: default expiry is 1 hour"
                );
                let resp = http
                    .get(&url)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("GET {url}: {e}"));
                assert_eq!(resp.status(), 200, "GET {url} for {k:?}");
                let body = resp.bytes().await.unwrap();
                assert_eq!(body, format!("body of {k}").as_bytes(), "{k:?} via {url}");
            }
            // A presigned URL for a missing key is made offline; fetching it is a 404.
            let url = store.download_url(&key("no/such")).await.unwrap();
            assert_eq!(http.get(&url).send().await.unwrap().status(), 404);
        }
        other => panic!("no download URL expectations for {other:?}"),
    }
}

/// `BlobStore` must stay a cheap, shareable handle.
#[test]
fn blob_store_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<BlobStore>();
}

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

/// A store under test and whatever must live as long as it (temp dir, server).
struct Backend {
    store: BlobStore,
    _dir: Option<tempfile::TempDir>,
    _s3: Option<TestS3>,
}

impl Backend {
    fn memory() -> Backend {
        Backend {
            store: BlobStore::memory(),
            _dir: None,
            _s3: None,
        }
    }

    fn local() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path().join("store")).unwrap();
        Backend {
            store,
            _dir: Some(dir),
            _s3: None,
        }
    }

    fn s3(s3: TestS3) -> Backend {
        Backend {
            store: s3.blob_store(),
            _dir: None,
            _s3: Some(s3),
        }
    }

    /// A store under `clips/v1/` in a bucket that also holds keys just outside that
    /// prefix, which must never show up or be touched.
    async fn s3_prefixed(s3: TestS3) -> Backend {
        use object_store::ObjectStoreExt;
        let raw = s3.object_store();
        for outside in [
            "clips/v1-sibling/x",
            "clips/v1x",
            "outside.txt",
            "clips/other",
        ] {
            raw.put(
                &object_store::path::Path::parse(outside).unwrap(),
                Bytes::from_static(b"outside").into(),
            )
            .await
            .unwrap();
        }
        let mut cfg = s3.config();
        cfg.prefix = "/clips/v1/".into();
        let store = stowage::StoreConfig::S3(cfg).open().unwrap();
        Backend {
            store,
            _dir: None,
            _s3: Some(s3),
        }
    }
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::$test(&super::Backend::memory().store).await;
            })*
        }
        mod local {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::$test(&super::Backend::local().store).await;
            })*
        }
        mod s3s_fs {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let b = super::Backend::s3(super::TestS3::start());
                super::$test(&b.store).await;
            })*
        }
        mod s3s_fs_prefixed {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let b = super::Backend::s3_prefixed(super::TestS3::start()).await;
                super::$test(&b.store).await;
                super::assert_outside_untouched(&b).await;
            })*
        }
        mod external_s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[ignore = "needs moto: STOWAGE_TEST_S3_ENDPOINT (.ci/run starts it)"]
            async fn $test() {
                let b = super::Backend::s3(super::TestS3::moto());
                super::$test(&b.store).await;
            })*
        }
    };
}

/// The objects `Backend::s3_prefixed` put outside the store's prefix are all still there.
async fn assert_outside_untouched(b: &Backend) {
    use object_store::ObjectStore;
    let s3 = b._s3.as_ref().expect("S3 backend");
    let mut outside: Vec<String> = s3
        .object_store()
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_filter(|k| futures::future::ready(!k.starts_with("clips/v1/")))
        .try_collect()
        .await
        .unwrap();
    outside.sort();
    assert_eq!(
        outside,
        [
            "clips/other",
            "clips/v1-sibling/x",
            "clips/v1x",
            "outside.txt"
        ]
    );
}

suite!(
    roundtrip_empty_small_large,
    list_paginates_over_1000_keys,
    list_prefix,
    delete_is_idempotent,
    head_exists_missing,
    put_stream_and_put_file,
    put_stream_error_leaves_nothing,
    get_range,
    content_type_roundtrip,
    overwrite_replaces,
    awkward_keys,
    download_url_serves_bytes,
);

/// What only the local backend promises: crash-safe writes, no symlink following, clean
/// errors for keys that clash with another key's file or directory.
mod local_only {
    use std::path::{Path, PathBuf};

    use bytes::Bytes;
    use futures::{StreamExt, TryStreamExt};
    use stowage::{BlobStore, Error, Meta};

    use super::{assert_not_found, chunked, key, pseudo_random};

    /// A local store in a fresh temp dir, and that dir (the store is its `store/`).
    fn local() -> (tempfile::TempDir, BlobStore, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = BlobStore::local(&root).unwrap();
        (dir, store, root)
    }

    /// Every entry under `dir` (files, directories, symlinks), relative, never following links.
    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for de in std::fs::read_dir(&d).unwrap() {
                let de = de.unwrap();
                let rel = de
                    .path()
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if rel == ".stowage" {
                    continue; // the store marker BlobStore::local writes
                }
                if de.file_type().unwrap().is_dir() {
                    stack.push(de.path());
                }
                out.push(rel);
            }
        }
        out.sort();
        out
    }

    fn temp_files(root: &Path) -> Vec<String> {
        tree(root)
            .into_iter()
            .filter(|p| {
                p.rsplit('/')
                    .next()
                    .unwrap()
                    .starts_with(stowage::local::TEMP_PREFIX)
            })
            .collect()
    }

    async fn list_keys(store: &BlobStore) -> Vec<String> {
        let metas: Vec<Meta> = store.list("").try_collect().await.unwrap();
        let mut keys: Vec<String> = metas.into_iter().map(|m| m.key.to_string()).collect();
        keys.sort();
        keys
    }

    fn failing_after(
        good: usize,
    ) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        chunked(pseudo_random(good, 9), 1 << 20).chain(futures::stream::once(async {
            Err(std::io::Error::other("upload aborted"))
        }))
    }

    #[tokio::test]
    async fn failing_put_stream_leaves_no_file_and_no_temp_file() {
        let (_dir, store, root) = local();
        let err = store
            .put_stream(
                &key("deep/dir/clip.mp4"),
                failing_after(3 << 20),
                Some("video/mp4"),
            )
            .await
            .expect_err("a failing body fails the put");
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert!(!root.join("deep/dir/clip.mp4").exists());
        assert_eq!(temp_files(&root), Vec::<String>::new());
        assert_eq!(list_keys(&store).await, Vec::<String>::new());

        // A failed overwrite keeps the old file, and leaves no temp file either.
        store
            .put(&key("deep/dir/clip.mp4"), Bytes::from_static(b"old"))
            .await
            .unwrap();
        store
            .put_stream(&key("deep/dir/clip.mp4"), failing_after(5 << 20), None)
            .await
            .expect_err("failing overwrite");
        assert_eq!(
            std::fs::read(root.join("deep/dir/clip.mp4")).unwrap(),
            b"old"
        );
        assert_eq!(temp_files(&root), Vec::<String>::new());
    }

    #[tokio::test]
    async fn cancelled_put_stream_leaves_no_temp_file() {
        let (_dir, store, root) = local();
        let (reached_tx, reached_rx) = tokio::sync::oneshot::channel::<()>();
        // 2 MiB, then a body that never ends; the put is dropped while waiting on it.
        let body =
            chunked(pseudo_random(2 << 20, 10), 1 << 20).chain(futures::stream::once(async move {
                let _ = reached_tx.send(());
                futures::future::pending::<std::io::Result<Bytes>>().await
            }));
        let k = key("cancel/me.bin");
        let put = store.put_stream(&k, body, None);
        tokio::select! {
            r = put => panic!("put of an endless body finished: {r:?}"),
            _ = reached_rx => {}
        }
        // The put future is dropped here, in the middle of the body.
        assert!(!root.join("cancel/me.bin").exists());
        assert_eq!(temp_files(&root), Vec::<String>::new());
    }

    /// Pauses a 20 MiB write half-way and looks at the store from outside: the final name
    /// holds nothing (or the previous version) until the write is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_never_see_a_partial_file() {
        let (_dir, store, root) = local();
        let k = key("clips/big.mp4");
        let old = Bytes::from_static(b"the previous version");
        for (round, previous) in [(0u64, None), (1, Some(old.clone()))] {
            if let Some(p) = &previous {
                store.put(&k, p.clone()).await.unwrap();
            }
            let data = pseudo_random(20 << 20, 20 + round);
            let half = data.len() / 2;
            let (paused_tx, paused_rx) = tokio::sync::oneshot::channel::<()>();
            let (resume_tx, resume_rx) = tokio::sync::oneshot::channel::<()>();
            let body = chunked(data.slice(..half), 1 << 20)
                .chain(futures::stream::once(async move {
                    let _ = paused_tx.send(());
                    let _ = resume_rx.await;
                    Ok(Bytes::new())
                }))
                .chain(chunked(data.slice(half..), 1 << 20));
            let writer = {
                let (store, k) = (store.clone(), k.clone());
                tokio::spawn(async move { store.put_stream(&k, body, Some("video/mp4")).await })
            };
            paused_rx.await.expect("writer reached the middle");

            let temps = temp_files(&root);
            assert_eq!(temps.len(), 1, "one temp file while writing: {temps:?}");
            // The parts already handed over are written by the upload's own tasks.
            let temp = root.join(&temps[0]);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::metadata(&temp).unwrap().len() < half as u64
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let temp_len = std::fs::metadata(&temp).unwrap().len();
            assert_eq!(temp_len, half as u64, "the first half is in the temp file");
            match &previous {
                None => {
                    assert_not_found(store.get(&k).await, k.as_str(), "get while writing");
                    assert!(!root.join("clips/big.mp4").exists());
                    assert_eq!(list_keys(&store).await, Vec::<String>::new());
                }
                Some(p) => {
                    assert_eq!(store.get(&k).await.unwrap(), p, "old version while writing");
                    assert_eq!(store.head(&k).await.unwrap().size, p.len() as u64);
                    assert_eq!(list_keys(&store).await, ["clips/big.mp4"]);
                }
            }

            resume_tx.send(()).unwrap();
            writer.await.unwrap().unwrap();
            assert!(
                store.get(&k).await.unwrap() == data,
                "round {round}: full content"
            );
            assert_eq!(temp_files(&root), Vec::<String>::new());
        }
    }

    #[tokio::test]
    async fn symlinks_inside_the_root_are_not_followed() {
        let (dir, store, root) = local();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("linkdir")).unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::os::unix::fs::symlink("../../outside/secret.txt", root.join("real/rel.txt")).unwrap();
        store
            .put(&key("real/file.txt"), Bytes::from_static(b"mine"))
            .await
            .unwrap();

        for k in ["link.txt", "linkdir/secret.txt", "real/rel.txt"] {
            assert_not_found(store.get(&key(k)).await, k, "get through a symlink");
            assert_not_found(store.head(&key(k)).await, k, "head through a symlink");
            assert_not_found(
                store.get_range(&key(k), 0..3).await,
                k,
                "get_range through a symlink",
            );
            assert!(!store.exists(&key(k)).await.unwrap(), "{k}: exists");
            assert!(!store.delete(&key(k)).await.unwrap(), "{k}: delete");
        }
        assert_eq!(list_keys(&store).await, ["real/file.txt"]);
        assert_eq!(
            std::fs::read(outside.join("secret.txt")).unwrap(),
            b"secret"
        );

        // Writing below a symlinked directory fails and writes nothing outside.
        store
            .put(&key("linkdir/planted.txt"), Bytes::from_static(b"x"))
            .await
            .expect_err("put below a symlinked directory");
        assert!(!outside.join("planted.txt").exists());
        // Writing to a symlink's name replaces the link, never its target.
        store
            .put(&key("link.txt"), Bytes::from_static(b"new"))
            .await
            .unwrap();
        assert_eq!(store.get(&key("link.txt")).await.unwrap(), "new");
        assert!(!std::fs::symlink_metadata(root.join("link.txt"))
            .unwrap()
            .is_symlink());
        assert_eq!(
            std::fs::read(outside.join("secret.txt")).unwrap(),
            b"secret"
        );
        assert_eq!(tree(&outside), ["secret.txt"]);
    }

    #[tokio::test]
    async fn a_key_below_a_file_or_over_a_directory_errors_cleanly() {
        let (_dir, store, root) = local();
        store
            .put(&key("x"), Bytes::from_static(b"file x"))
            .await
            .unwrap();
        let err = store
            .put(&key("x/y"), Bytes::from_static(b"y"))
            .await
            .expect_err("x/y below file x");
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        store
            .put_stream(
                &key("x/y/z"),
                chunked(pseudo_random(3 << 20, 11), 1 << 20),
                None,
            )
            .await
            .expect_err("put_stream below file x");
        assert_eq!(store.get(&key("x")).await.unwrap(), "file x");
        assert_not_found(store.head(&key("x/y")).await, "x/y", "head x/y");
        assert!(!store.delete(&key("x/y")).await.unwrap());

        store
            .put(&key("a/b"), Bytes::from_static(b"b"))
            .await
            .unwrap();
        let err = store
            .put(&key("a"), Bytes::from_static(b"a"))
            .await
            .expect_err("a over directory a/");
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
        assert_not_found(store.head(&key("a")).await, "a", "head of a directory");
        assert_eq!(store.get(&key("a/b")).await.unwrap(), "b");

        assert_eq!(list_keys(&store).await, ["a/b", "x"]);
        assert_eq!(temp_files(&root), Vec::<String>::new());
        assert_eq!(tree(&root), ["a", "a/b", "x"]);
    }
}
