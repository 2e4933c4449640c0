//! `s3::RawLister` against real S3 servers: pagination, prefixes, awkward and hostile keys,
//! retries and error mapping. Also checks the test server's own fault injection.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::ObjectStoreExt;
use stowage::s3::{ListedObject, RawLister};
use stowage::Error;

use crate::support::s3::{CannedEntry, TestS3};

fn lister(s3: &TestS3) -> RawLister {
    lister_for(s3, s3.object_store(), s3.bucket())
}

fn lister_for(s3: &TestS3, store: Arc<AmazonS3>, bucket: &str) -> RawLister {
    RawLister::new(store, s3.endpoint(), bucket.to_owned()).unwrap()
}

/// PUTs `key -> key bytes` for every key, 32 at a time.
async fn seed(s3: &TestS3, keys: &[String]) {
    let store = s3.object_store();
    futures::stream::iter(keys)
        .map(|k| {
            let store = store.clone();
            async move {
                let path = Path::parse(k).unwrap_or_else(|e| panic!("{k:?}: {e}"));
                store
                    .put(&path, k.clone().into_bytes().into())
                    .await
                    .unwrap_or_else(|e| panic!("put {k:?}: {e}"));
            }
        })
        .buffer_unordered(32)
        .collect::<()>()
        .await;
}

async fn list_all(lister: &RawLister, prefix: &str, strip: &str) -> Vec<ListedObject> {
    lister
        .list(prefix, strip)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("list {prefix:?}: {e}"))
}

fn keys(objects: &[ListedObject]) -> Vec<&str> {
    objects.iter().map(|o| o.key.as_str()).collect()
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:05}")).collect()
}

#[tokio::test]
async fn lists_past_one_page_in_order_and_starts_before_the_end() {
    let s3 = TestS3::start();
    let mut want = numbered("page/", 1234);
    want.push("z-after".to_owned());
    seed(&s3, &want).await;
    want.sort();

    let lister = lister(&s3);
    let before = s3.faults().requests();
    let mut stream = lister.list("", "");
    let first = stream.next().await.expect("an entry").expect("no error");
    assert_eq!(first.key, want[0]);
    assert_eq!(
        s3.faults().requests() - before,
        1,
        "only the first page is fetched before the first entry is yielded"
    );

    let rest: Vec<ListedObject> = stream.try_collect().await.unwrap();
    let mut got = vec![first];
    got.extend(rest);
    assert_eq!(keys(&got), want);
    assert_eq!(
        s3.faults().requests() - before,
        2,
        "1235 keys take two pages"
    );
    for o in &got {
        assert_eq!(o.size, o.key.len() as u64, "{}", o.key);
    }
}

#[tokio::test]
async fn a_503_burst_between_pages_is_retried_without_duplicates_or_gaps() {
    let s3 = TestS3::start();
    let mut want = numbered("", 1100);
    seed(&s3, &want).await;
    want.sort();

    let lister = lister(&s3);
    let mut stream = lister.list("", "");
    let mut got = Vec::new();
    for _ in 0..1000 {
        got.push(stream.next().await.unwrap().unwrap());
    }
    // The first page is used up and the second not yet requested: fail it three times.
    let before = s3.faults().requests();
    s3.faults().fail_next(3, 503);
    while let Some(o) = stream.next().await {
        got.push(o.unwrap());
    }
    assert_eq!(
        s3.faults().requests() - before,
        4,
        "three failures, then the page"
    );
    assert_eq!(keys(&got), want);
}

#[tokio::test]
async fn transient_failures_that_outlast_the_retries_end_the_listing_with_backend() {
    let s3 = TestS3::start();
    seed(&s3, &["a".to_owned()]).await;
    let lister = lister(&s3).with_retry(3, Duration::from_millis(1), Duration::from_millis(4));

    let before = s3.faults().requests();
    s3.faults().fail_next(3, 500);
    let err = lister
        .list("", "")
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
    assert_eq!(s3.faults().requests() - before, 3);

    assert_eq!(
        keys(&list_all(&lister, "", "").await),
        ["a"],
        "the server is fine again"
    );
}

#[tokio::test]
async fn prefix_selects_and_strip_removes_the_store_prefix() {
    let s3 = TestS3::start();
    let all: Vec<String> = ["store/a/1", "store/a/2", "store/b/1", "storex", "other/x"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    seed(&s3, &all).await;
    let lister = lister(&s3);

    assert_eq!(
        keys(&list_all(&lister, "store/a/", "store/").await),
        ["a/1", "a/2"]
    );
    assert_eq!(
        keys(&list_all(&lister, "store/", "store/").await),
        ["a/1", "a/2", "b/1"]
    );
    assert_eq!(
        keys(&list_all(&lister, "store", "").await),
        ["store/a/1", "store/a/2", "store/b/1", "storex"]
    );
    assert_eq!(
        keys(&list_all(&lister, "", "").await),
        ["other/x", "store/a/1", "store/a/2", "store/b/1", "storex"]
    );
    assert!(list_all(&lister, "nothing/", "").await.is_empty());

    let err = lister
        .list("other/", "store/")
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Backend { .. }),
        "a key outside the strip prefix is an error: {err:?}"
    );
}

/// Keys that are valid object_store paths but need care in URLs and XML.
fn awkward_keys() -> Vec<String> {
    [
        "sp ace/file name.txt",
        "plus+sign.txt",
        "a+b c",
        "50%.txt",
        "%2e%2e/x",
        "frames/take#2",
        "sp ace/\u{fc}n\u{ef}.txt",
        "\u{65e5}\u{672c}/\u{8a9e}",
        "q?x=1&y=2",
        "amp&lt;.txt",
        "tilde~/star*",
        " lead",
        "trail ",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn check_awkward_keys(s3: &TestS3, lister: &RawLister) {
    let want = awkward_keys();
    seed(s3, &want).await;
    assert_lists_exactly(lister, want).await;
}

/// The whole listing is `want` in byte order, each object holding its own key as body
/// (as `seed` and the hostile-key test store them).
async fn assert_lists_exactly<S: AsRef<str>>(lister: &RawLister, mut want: Vec<S>) {
    want.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    let got = list_all(lister, "", "").await;
    let want: Vec<&str> = want.iter().map(|k| k.as_ref()).collect();
    assert_eq!(keys(&got), want);
    for o in &got {
        assert_eq!(o.size, o.key.len() as u64, "{:?}", o.key);
    }
}

#[tokio::test]
async fn awkward_keys_come_back_exactly_from_s3s_fs() {
    let s3 = TestS3::start();
    // s3s-fs 0.14.1 echoes <EncodingType>url</EncodingType> but sends keys unencoded.
    let lister = lister(&s3).with_url_encoding(false);
    check_awkward_keys(&s3, &lister).await;
    // s3s-fs sends no ETag in listings (see NOTES-object_store.md).
    assert!(list_all(&lister, "", "")
        .await
        .iter()
        .all(|o| o.etag.is_none()));
}

#[tokio::test]
#[ignore = "needs moto: STOWAGE_TEST_S3_ENDPOINT (.ci/run starts it)"]
async fn awkward_keys_come_back_exactly_from_moto() {
    let s3 = TestS3::moto();
    check_awkward_keys(&s3, &lister(&s3)).await;
    let got = list_all(&lister(&s3), "plus", "").await;
    let etag = got[0].etag.as_deref().expect("moto sends ETags");
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "ETag as sent, quotes included: {etag}"
    );
}

#[tokio::test]
#[ignore = "needs moto: STOWAGE_TEST_S3_ENDPOINT (.ci/run starts it)"]
async fn hostile_keys_do_not_hide_the_keys_after_them() {
    let s3 = TestS3::moto();
    let hostile = [
        "../escape.txt",
        "a//b",
        "./x",
        "a/../../x",
        "a\u{1}b",
        "b/ok",
        "0-first",
        "z-last",
    ];
    for k in hostile {
        s3.put_raw(k, k.as_bytes())
            .unwrap_or_else(|e| panic!("{k:?}: {e}"));
    }
    assert_lists_exactly(&lister(&s3), hostile.to_vec()).await;
}

#[tokio::test]
async fn wrong_credentials_are_access_denied() {
    let s3 = TestS3::start();
    let lister = lister_for(
        &s3,
        s3.object_store_with_secret("not-the-secret"),
        s3.bucket(),
    );
    let err = lister
        .list("", "")
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AccessDenied { .. }), "{err:?}");
}

#[tokio::test]
async fn a_missing_bucket_is_no_such_bucket() {
    let s3 = TestS3::start();
    let store = s3.object_store_for_bucket("no-such-bucket", s3.secret_key());
    let err = lister_for(&s3, store, "no-such-bucket")
        .list("", "")
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    match err {
        Error::NoSuchBucket { bucket, endpoint } => {
            assert_eq!(bucket, "no-such-bucket");
            assert_eq!(endpoint, s3.endpoint());
        }
        other => panic!("{other:?}"),
    }
}

// The test server's own faults: a fault layer that silently did nothing would make the
// tests above pass for the wrong reason.

#[tokio::test]
async fn test_server_truncates_and_corrupts_get_bodies_only() {
    let s3 = TestS3::start();
    let store = s3.object_store();
    let path = Path::parse("blob.bin").unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    store.put(&path, data.clone().into()).await.unwrap();
    let url = store
        .signed_url(Method::GET, &path, Duration::from_secs(60))
        .await
        .unwrap();
    let http = reqwest::Client::new();

    s3.faults().truncate_next_gets(1, 1000);
    s3.faults().corrupt_next_gets(1);
    // A listing is not a GET-object: it must not use up the faults.
    assert_eq!(keys(&list_all(&lister(&s3), "", "").await), ["blob.bin"]);
    let gets_before = s3.faults().gets();

    let resp = http.get(url.clone()).send().await.unwrap();
    assert_eq!(
        resp.content_length(),
        Some(data.len() as u64),
        "headers promise the full length"
    );
    assert!(resp.bytes().await.is_err(), "the body ends early");

    let corrupted = http
        .get(url.clone())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(corrupted.len(), data.len());
    assert_ne!(corrupted.as_ref(), data.as_slice());

    let intact = http.get(url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(intact.as_ref(), data.as_slice());
    assert_eq!(s3.faults().gets() - gets_before, 3);
}

#[tokio::test]
async fn test_server_env_and_put_raw_reach_the_same_bucket() {
    let s3 = TestS3::start();
    s3.put_raw("raw key+plus", b"raw").unwrap();

    // The variables a child process gets, read the way stowage reads them.
    let mut vars: std::collections::HashMap<String, String> = s3.env().into_iter().collect();
    vars.insert("STORAGE_TYPE".into(), "s3".into());
    let store = stowage::StoreConfig::from_env_map(&vars)
        .unwrap()
        .open()
        .unwrap();
    let got = store
        .get(&stowage::Key::new("raw key+plus").unwrap())
        .await
        .unwrap();
    assert_eq!(got.as_ref(), b"raw");
    assert_eq!(
        (s3.access_key(), s3.region()),
        ("stowage-test-access", "us-east-1")
    );
}

#[tokio::test]
async fn connection_errors_are_retried_then_reported_as_unreachable() {
    // A port that was just free: nothing listens there, so every attempt is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_bucket_name("b")
        .with_access_key_id("k")
        .with_secret_access_key("s")
        .with_region("us-east-1")
        .with_allow_http(true)
        .build()
        .unwrap();
    let lister = RawLister::new(Arc::new(store), format!("127.0.0.1:{port}"), "b".into())
        .unwrap()
        .with_retry(2, Duration::from_millis(1), Duration::from_millis(1));
    let err = lister
        .list("", "")
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    match &err {
        Error::Unreachable {
            endpoint, cause, ..
        } => {
            assert_eq!(endpoint, &format!("http://127.0.0.1:{port}"));
            assert_eq!(cause, "connection refused");
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "cannot reach http://127.0.0.1:{port} (connection refused"
        )) && text.contains("after 2 attempts")
            && text.contains("AWS_ENDPOINT_URL"),
        "{text}"
    );
    for leak in ["?", "X-Amz", "list-type"] {
        assert!(!text.contains(leak), "{leak:?} in {text}");
        assert!(!format!("{err:?}").contains(leak), "{leak:?} in {err:?}");
    }
}

#[tokio::test]
async fn an_https_endpoint_that_speaks_plain_http_is_a_tls_failure() {
    let s3 = TestS3::start();
    let endpoint = s3.endpoint().replace("http://", "https://");
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_bucket_name(s3.bucket())
        .with_access_key_id(s3.access_key())
        .with_secret_access_key(s3.secret_key())
        .with_region(s3.region())
        .build()
        .unwrap();
    let err = RawLister::new(Arc::new(store), endpoint.clone(), s3.bucket().into())
        .unwrap()
        .with_retry(1, Duration::from_millis(1), Duration::from_millis(1))
        .list("", "")
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("cannot reach {endpoint} (TLS failure")),
        "{err}"
    );
}

/// The fanned-out listing yields exactly what the sequential one does, in the same order:
/// objects at the top level interleaved with the contents of each prefix.
#[tokio::test]
async fn the_parallel_listing_matches_the_sequential_one() {
    let s3 = TestS3::start();
    let mut all: Vec<String> = Vec::new();
    for p in ["a", "a-b", "b", "c.d", "zz"] {
        all.extend(numbered(&format!("{p}/"), 30));
    }
    // Top-level objects that sort between, before and after the prefixes.
    all.extend(["a0", "a-a", "a.0", "b0", "0first", "~last"].map(String::from));
    all.extend(numbered("deep/er/still/", 5));
    seed(&s3, &all).await;
    let l = lister(&s3);
    let sequential = list_all(&l, "", "").await;
    let parallel: Vec<ListedObject> = l.list_parallel("", "").try_collect().await.unwrap();
    assert_eq!(sequential.len(), all.len());
    assert_eq!(keys(&parallel), keys(&sequential));
    // Under a prefix, and with a prefix stripped.
    let seq = list_all(&l, "a", "a").await;
    let par: Vec<ListedObject> = l.list_parallel("a", "a").try_collect().await.unwrap();
    assert_eq!(keys(&par), keys(&seq));
    // A level with a single prefix falls back to the plain listing.
    let par: Vec<ListedObject> = l.list_parallel("deep/", "").try_collect().await.unwrap();
    assert_eq!(par.len(), 5);
}

/// The fanned-out listing asks for every prefix's first page at once, not one prefix after
/// the consumer has taken the previous one: with 10 prefixes, the delimited listing and one
/// per prefix (up to `LIST_FANOUT`) have reached the server by the time the first object
/// comes back, each held a moment by the server.
#[tokio::test]
async fn the_parallel_listing_lists_its_prefixes_at_once() {
    let s3 = TestS3::start();
    let mut all: Vec<String> = Vec::new();
    for p in 0..10 {
        all.extend(numbered(&format!("p{p}/"), 3));
    }
    seed(&s3, &all).await;
    s3.faults().delay_next_lists(11, Duration::from_millis(500));
    let l = lister(&s3);
    let before = s3.faults().lists();
    let mut listing = l.list_parallel("", "");
    let first = listing.next().await.unwrap().unwrap();
    assert_eq!(first.key, "p0/00000");
    assert_eq!(
        s3.faults().lists() - before,
        1 + 10.min(stowage::s3::list::LIST_FANOUT as u64),
        "listings under way when the first object arrived"
    );
    let rest: Vec<ListedObject> = listing.try_collect().await.unwrap();
    assert_eq!(rest.len(), all.len() - 1);
}

/// `list_after` starts after the given full key (not listed itself), under the prefix,
/// with the store prefix stripped.
#[tokio::test]
async fn a_listing_can_start_after_a_key() {
    let s3 = TestS3::start();
    let all = numbered("st/a/", 6);
    seed(&s3, &all).await;
    seed(&s3, &["st/b".to_owned()]).await;
    let l = lister(&s3);
    let got: Vec<ListedObject> = l
        .list_after("st/a/", Some("st/a/00002"), "st/")
        .try_collect()
        .await
        .unwrap();
    assert_eq!(keys(&got), ["a/00003", "a/00004", "a/00005"]);
    // Between two keys: a key that is not there.
    let got: Vec<ListedObject> = l
        .list_after("st/", Some("st/a/00004x"), "st/")
        .try_collect()
        .await
        .unwrap();
    assert_eq!(keys(&got), ["a/00005", "b"]);
}

// Untrusted listings: what a hostile or broken endpoint sends must not stop the run, hide
// objects or fill memory.

/// A sound object `a/1`, then `b/<0xFF>` whose key is not UTF-8, `c` with an unreadable
/// LastModified, and a sound `d`.
fn listing_with_bad_entries() -> Vec<CannedEntry> {
    vec![
        CannedEntry::new("a/1", 3),
        CannedEntry::new(b"b/\xff".to_vec(), 4),
        CannedEntry {
            last_modified: "yesterday".into(),
            ..CannedEntry::new("c", 1)
        },
        CannedEntry::new("d", 1),
    ]
}

fn problems(objects: &[ListedObject]) -> Vec<(&str, Option<&str>)> {
    objects
        .iter()
        .map(|o| (o.key.as_str(), o.problem.as_deref()))
        .collect()
}

#[tokio::test]
async fn a_bad_entry_is_reported_on_its_own_and_the_listing_goes_on() {
    let s3 = TestS3::start();
    let mut entries = listing_with_bad_entries();
    // At the top level, where the parallel listing orders objects among the prefixes.
    entries.push(CannedEntry::new(b"\xfe-top".to_vec(), 1));
    entries.push(CannedEntry {
        size: "1e3".into(),
        ..CannedEntry::new("e", 1)
    });
    s3.faults().answer_lists_with(entries);
    let l = lister(&s3);
    for parallel in [false, true] {
        let got: Vec<ListedObject> = match parallel {
            false => l.list("", "").try_collect().await,
            true => l.list_parallel("", "").try_collect().await,
        }
        .unwrap_or_else(|e| panic!("parallel {parallel}: {e}"));
        assert_eq!(
            problems(&got),
            [
                ("a/1", None),
                (
                    "b/\u{fffd}",
                    Some("the key is not UTF-8 once URL-decoded (listed as \"b/%FF\")")
                ),
                ("c", Some("unreadable LastModified \"yesterday\"")),
                ("d", None),
                ("e", Some("unreadable Size \"1e3\"")),
                (
                    "\u{fffd}-top",
                    Some("the key is not UTF-8 once URL-decoded (listed as \"%FE-top\")")
                ),
            ],
            "parallel {parallel}"
        );
    }
}

#[tokio::test]
async fn an_undecodable_common_prefix_loses_no_objects_in_the_parallel_listing() {
    let s3 = TestS3::start();
    let mut entries = vec![
        CannedEntry::new("a/1", 1),
        CannedEntry::new("a/2", 1),
        CannedEntry::new("z/1", 1),
    ];
    entries.extend([b"\xff/1".to_vec(), b"\xff/2".to_vec()].map(|k| CannedEntry::new(k, 1)));
    s3.faults().answer_lists_with(entries);
    let l = lister(&s3);
    let sequential = list_all(&l, "", "").await;
    let parallel: Vec<ListedObject> = l.list_parallel("", "").try_collect().await.unwrap();
    assert_eq!(sequential.len(), 5);
    assert_eq!(problems(&parallel), problems(&sequential));
    assert_eq!(
        parallel.iter().filter(|o| o.problem.is_some()).count(),
        2,
        "{parallel:?}"
    );
}

#[tokio::test]
async fn a_page_body_over_the_cap_ends_the_listing_with_a_clear_error() {
    let s3 = TestS3::start();
    seed(&s3, &["a".to_owned()]).await;
    s3.faults()
        .oversize_next_lists(1, stowage::s3::list::MAX_PAGE_BYTES + (4 << 20));
    let err = lister(&s3)
        .list("", "")
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("larger than 16 MiB"), "{err}");

    // A smaller cap, and a page under it, for the boundary.
    s3.faults().oversize_next_lists(1, 60 << 10);
    let got = lister(&s3)
        .with_max_page_bytes(64 << 10)
        .list("", "")
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert!(got.is_empty(), "the padded page holds no entries: {got:?}");
    s3.faults().oversize_next_lists(1, 70 << 10);
    let err = lister(&s3)
        .with_max_page_bytes(64 << 10)
        .list("", "")
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
}

/// migrate and verify report the bad entries as rejected and deal with the rest, where
/// one bad entry used to abort both.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_and_verify_reject_bad_listing_entries_and_go_on() {
    let s3 = TestS3::start();
    let sound = ["a/1", "d"];
    for k in sound {
        s3.put_raw(k, k.as_bytes()).unwrap();
    }
    s3.faults().answer_lists_with(listing_with_bad_entries());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("store");
    let dest = dest.to_str().unwrap();
    let with_url_listing = |args: &[&str]| {
        let mut cmd = crate::support::cli::stowage(Some(&s3), args);
        // The crafted listing encodes its keys, as AWS and moto do.
        cmd.env("S3_URL_ENCODED_LISTING", "true");
        crate::support::cli::output(cmd.output().unwrap())
    };

    let r = with_url_listing(&["migrate", "s3-to-local", "--dest", dest, "--json"]);
    assert_eq!(
        r.code, 1,
        "rejected entries are problems, not a failed run: {r:?}"
    );
    let j = r.json();
    assert!(j["aborted"].is_null(), "{r:?}");
    let rejected: Vec<&str> = j["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kr| kr["key"].as_str().unwrap())
        .collect();
    assert_eq!(rejected, ["b/\u{fffd}", "c"], "{r:?}");
    assert_eq!(
        crate::support::cli::tree(std::path::Path::new(dest))
            .keys()
            .collect::<Vec<_>>(),
        ["a/1", "d"]
    );

    let r = with_url_listing(&["verify", "s3-to-local", "--dest", dest, "--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    assert_eq!(j["rejected"].as_array().unwrap().len(), 2, "{r:?}");
    assert!(
        r.stderr.contains("not UTF-8") || r.stdout.contains("not UTF-8"),
        "{r:?}"
    );
}
