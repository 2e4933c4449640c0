//! `stowage::http` and `stowage serve` over real HTTP on 127.0.0.1: ranges, validators,
//! traversal and symlinks, header injection, signed URLs, S3 redirect and proxy, memory
//! under concurrent ranges, and a graceful SIGTERM.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use stowage::http::{router, S3Delivery, ServeOptions};
use stowage::{BlobStore, Key, LocalUrls, StoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::s3::TestS3;

const SECRET: &str = "test-secret-0123456789abcdef";

/// The router nested at `/api/files` on a fresh 127.0.0.1 port.
struct Server {
    addr: SocketAddr,
}

impl Server {
    async fn start(store: BlobStore, opts: ServeOptions) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Server::on(listener, store, opts)
    }

    fn on(listener: tokio::net::TcpListener, store: BlobStore, opts: ServeOptions) -> Server {
        let addr = listener.local_addr().unwrap();
        let app: Router = Router::new().nest("/api/files", router(store, opts).unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server { addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/api/files/{path}", self.addr)
    }

    /// Sends `path` byte for byte (no client-side normalisation of `..` or `%2e`) and
    /// returns the status, lower-cased header block and body.
    async fn raw_get(&self, path: &str) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        (status, head.to_ascii_lowercase(), body.to_owned())
    }
}

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

fn local_store(dir: &Path) -> BlobStore {
    BlobStore::local(dir.join("root")).unwrap()
}

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
    get_with(&client(), reqwest::Method::GET, url, headers).await
}

async fn get_with(
    c: &Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = c.request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let (status, h) = (resp.status(), resp.headers().clone());
    (status, h, resp.bytes().await.unwrap())
}

fn hdr<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} in {h:?}"))
        .to_str()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_range_form_and_416() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let data = pattern(1000, 1);
    store
        .put(&key("clips/r.mp4"), data.clone().into())
        .await
        .unwrap();
    let srv = Server::start(store, ServeOptions::default()).await;
    let url = srv.url("clips/r.mp4");

    let (s, h, body) = get(&url, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(body, data);
    assert_eq!(hdr(&h, "accept-ranges"), "bytes");
    assert_eq!(hdr(&h, "content-length"), "1000");
    assert_eq!(hdr(&h, "content-type"), "video/mp4");
    assert_eq!(hdr(&h, "x-content-type-options"), "nosniff");
    assert_eq!(hdr(&h, "cache-control"), "public, max-age=86400");

    for (range, want, content_range) in [
        ("bytes=0-0", 0..1, "bytes 0-0/1000"),
        ("bytes=-500", 500..1000, "bytes 500-999/1000"),
        ("bytes=100-", 100..1000, "bytes 100-999/1000"),
        ("bytes=10-19", 10..20, "bytes 10-19/1000"),
        ("bytes=990-5000", 990..1000, "bytes 990-999/1000"),
        ("bytes=-5000", 0..1000, "bytes 0-999/1000"),
    ] {
        let (s, h, body) = get(&url, &[("range", range), ("accept-encoding", "gzip")]).await;
        assert_eq!(s, 206, "{range}");
        assert_eq!(hdr(&h, "content-range"), content_range, "{range}");
        assert_eq!(
            hdr(&h, "content-length"),
            (want.end - want.start).to_string()
        );
        assert_eq!(&body[..], &data[want], "{range}");
        assert!(h.get("content-encoding").is_none(), "{range}");
    }
    for range in ["bytes=1000-", "bytes=5000-6000", "bytes=-0"] {
        let (s, h, body) = get(&url, &[("range", range)]).await;
        assert_eq!(s, 416, "{range}");
        assert_eq!(hdr(&h, "content-range"), "bytes */1000", "{range}");
        assert!(body.is_empty());
    }
    // Several ranges, or a range we cannot read: the whole file.
    for range in ["bytes=0-1,5-6", "bytes=5-2", "lines=1-2", "bytes=abc"] {
        let (s, h, body) = get(&url, &[("range", range)]).await;
        assert_eq!(s, 200, "{range}");
        assert!(h.get("content-range").is_none());
        assert_eq!(body, data);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conditionals_in_rfc_9110_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let data = pattern(100, 2);
    store.put(&key("c.bin"), data.clone().into()).await.unwrap();
    let srv = Server::start(store, ServeOptions::default()).await;
    let url = srv.url("c.bin");
    let (_, h, _) = get(&url, &[]).await;
    let etag = hdr(&h, "etag").to_owned();
    let lm = hdr(&h, "last-modified").to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong: {etag}"
    );
    let modified = httpdate::parse_http_date(&lm).unwrap();
    let before = httpdate::fmt_http_date(modified - Duration::from_secs(60));
    let after = httpdate::fmt_http_date(modified + Duration::from_secs(60));
    let weak = format!("W/{etag}");
    let other = "\"not-it\"";

    let cases: &[(&[(&str, &str)], u16)] = &[
        // If-None-Match (weak comparison) -> 304, else 200.
        (&[("if-none-match", &etag)], 304),
        (&[("if-none-match", &weak)], 304),
        (&[("if-none-match", "*")], 304),
        (&[("if-none-match", &format!("{other}, {etag}"))], 304),
        (&[("if-none-match", other)], 200),
        // If-Modified-Since -> 304 unless modified after it.
        (&[("if-modified-since", &lm)], 304),
        (&[("if-modified-since", &after)], 304),
        (&[("if-modified-since", &before)], 200),
        (&[("if-modified-since", "not a date")], 200),
        // If-None-Match takes precedence over If-Modified-Since.
        (
            &[("if-none-match", other), ("if-modified-since", &after)],
            200,
        ),
        // If-Match (strong comparison) -> 412 unless it matches.
        (&[("if-match", &etag)], 200),
        (&[("if-match", "*")], 200),
        (&[("if-match", other)], 412),
        (&[("if-match", &weak)], 412),
        // If-Unmodified-Since -> 412 when modified after it.
        (&[("if-unmodified-since", &before)], 412),
        (&[("if-unmodified-since", &lm)], 200),
        // If-Match takes precedence over If-Unmodified-Since.
        (
            &[("if-match", &etag), ("if-unmodified-since", &before)],
            200,
        ),
        // A failed If-Match wins over a matching If-None-Match (step 1 before step 3).
        (&[("if-match", other), ("if-none-match", &etag)], 412),
        // Preconditions come before Range.
        (&[("if-none-match", &etag), ("range", "bytes=0-1")], 304),
        (&[("if-match", other), ("range", "bytes=0-1")], 412),
        // If-Range: only a matching strong ETag keeps the range; a date, even the exact
        // Last-Modified, is too coarse to tell two versions apart ...
        (&[("if-range", &etag), ("range", "bytes=0-1")], 206),
        (&[("if-range", &lm), ("range", "bytes=0-1")], 200),
        // ... anything else gets the whole file.
        (&[("if-range", other), ("range", "bytes=0-1")], 200),
        (&[("if-range", &weak), ("range", "bytes=0-1")], 200),
        (&[("if-range", &before), ("range", "bytes=0-1")], 200),
    ];
    for (headers, want) in cases {
        let (s, h, body) = get(&url, headers).await;
        assert_eq!(s.as_u16(), *want, "{headers:?}");
        match want {
            200 => assert_eq!(body, data, "{headers:?}"),
            206 => assert_eq!(&body[..], &data[..2], "{headers:?}"),
            304 => {
                assert!(body.is_empty());
                assert_eq!(hdr(&h, "etag"), etag);
                assert_eq!(hdr(&h, "cache-control"), "public, max-age=86400");
            }
            _ => assert!(body.is_empty()),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn head_has_gets_headers_and_no_body() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    store
        .put(&key("v/clip one.mp4"), pattern(5000, 3).into())
        .await
        .unwrap();
    let srv = Server::start(store, ServeOptions::default()).await;
    let url = srv.url("v/clip%20one.mp4");
    let (_, h0, _) = get(&url, &[]).await;
    let etag = hdr(&h0, "etag").to_owned();
    let c = client();
    for headers in [
        vec![],
        vec![("range", "bytes=10-20")],
        vec![("range", "bytes=9000-")],
        vec![("if-none-match", etag.as_str())],
        vec![("if-match", "\"other\"")],
    ] {
        let (gs, gh, _) = get_with(&c, reqwest::Method::GET, &url, &headers).await;
        let (hs, hh, hbody) = get_with(&c, reqwest::Method::HEAD, &url, &headers).await;
        assert_eq!(gs, hs, "{headers:?}");
        assert!(hbody.is_empty());
        let strip = |h: &HeaderMap| {
            let mut m: Vec<(String, String)> = h
                .iter()
                .filter(|(k, _)| *k != "date")
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                .collect();
            m.sort();
            m
        };
        assert_eq!(strip(&gh), strip(&hh), "{headers:?}");
    }
    let (s, h, _) = get_with(&c, reqwest::Method::POST, &url, &[]).await;
    assert_eq!(s, 405);
    assert_eq!(hdr(&h, "allow"), "GET, HEAD");
}

#[tokio::test(flavor = "multi_thread")]
async fn traversal_in_any_encoding_and_symlinks_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "TOP-SECRET").unwrap();
    store
        .put(&key("a/b"), Bytes::from_static(b"a-b"))
        .await
        .unwrap();
    store
        .put(&key("clips/r.mp4"), Bytes::from_static(b"clip"))
        .await
        .unwrap();
    let root = store.local_root().unwrap().to_path_buf();
    std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("dirlink")).unwrap();
    // Even a symlink to a file inside the root is not followed.
    std::os::unix::fs::symlink(root.join("clips/r.mp4"), root.join("alias.mp4")).unwrap();
    let srv = Server::start(store, ServeOptions::default()).await;

    let (s, _, body) = srv.raw_get("/api/files/a/b").await;
    assert_eq!((s, body.as_str()), (200, "a-b"));
    for path in [
        "/api/files/../outside/secret.txt",
        "/api/files/../../etc/passwd",
        "/api/files/%2e%2e/outside/secret.txt",
        "/api/files/%2E%2E/%2E%2E/etc/passwd",
        "/api/files/..%2foutside%2fsecret.txt",
        "/api/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/files/..%5coutside%5csecret.txt",
        "/api/files/%2fetc%2fpasswd",
        "/api/files//etc/passwd",
        "/api/files/clips//r.mp4",
        "/api/files/clips/./r.mp4",
        "/api/files/clips/r.mp4%00.txt",
        "/api/files/a%2fb",
        "/api/files/a%2Fb",
        "/api/files/",
        "/api/files",
        "/api/files/link.txt",
        "/api/files/dirlink/secret.txt",
        "/api/files/alias.mp4",
        "/api/files/.stowage.lock",
    ] {
        let (s, head, body) = srv.raw_get(path).await;
        // hyper may refuse a malformed request line itself (400); we answer 404.
        assert!(s == 404 || s == 400, "{path}: {s}");
        assert!(
            !body.contains("TOP-SECRET") && !body.contains("root:"),
            "{path}"
        );
        assert!(!body.contains(dir.path().to_str().unwrap()), "{path}");
        assert!(!head.contains("content-disposition"), "{path}");
    }
    // A raw backslash is not even a valid request target; hyper or we refuse it.
    let (s, _, body) = srv.raw_get("/api/files/..\\outside\\secret.txt").await;
    assert!(s == 404 || s == 400, "{s}");
    assert!(!body.contains("TOP-SECRET"));
}

#[tokio::test(flavor = "multi_thread")]
async fn filenames_cannot_inject_headers() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    for k in ["q\"uote;semi.mp4", "ünï code.mp4", "a,b%c.mp4"] {
        store.put(&key(k), Bytes::from_static(b"x")).await.unwrap();
    }
    let srv = Server::start(store.clone(), ServeOptions::default()).await;
    for (k, want) in [
        (
            "q\"uote;semi.mp4",
            "inline; filename=\"q_uote_semi.mp4\"; filename*=UTF-8''q%22uote%3Bsemi.mp4",
        ),
        (
            "ünï code.mp4",
            "inline; filename=\"_n_ code.mp4\"; filename*=UTF-8''%C3%BCn%C3%AF%20code.mp4",
        ),
        (
            "a,b%c.mp4",
            "inline; filename=\"a_b_c.mp4\"; filename*=UTF-8''a%2Cb%25c.mp4",
        ),
    ] {
        let url = store.download_url(&key(k)).await.unwrap();
        let path = url.split_once("/api/files/").unwrap().1;
        let (s, h, body) = get(&srv.url(path), &[]).await;
        assert_eq!(s, 200, "{k}");
        assert_eq!(&body[..], b"x");
        assert_eq!(h.get_all("content-disposition").iter().count(), 1);
        assert_eq!(hdr(&h, "content-disposition"), want);
    }
    // CR/LF smuggled in percent-encoded form never reaches a header: the key is invalid.
    let (s, head, _) = srv
        .raw_get("/api/files/x%0d%0aSet-Cookie:%20a=b%0d%0a.mp4")
        .await;
    assert_eq!(s, 404);
    assert!(!head.contains("set-cookie"));
}

#[tokio::test(flavor = "multi_thread")]
async fn content_type_from_stored_metadata_else_extension() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    store
        .put_opts(
            &key("typed.mp4"),
            Bytes::from_static(b"x"),
            Some("video/webm"),
        )
        .await
        .unwrap();
    store
        .put_opts(
            &key("evil.mp4"),
            Bytes::from_static(b"x"),
            Some("text/html\r\nX-Evil: 1"),
        )
        .await
        .unwrap();
    store
        .put(&key("plain.noext"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    // Whether the filesystem kept the xattr decides what "stored" means here.
    let file = std::fs::File::open(store.local_root().unwrap().join("typed.mp4")).unwrap();
    let xattrs = stowage::local::read_content_type(&file).is_some();
    let srv = Server::start(store, ServeOptions::default()).await;
    let ct = |k: &'static str| {
        let url = srv.url(k);
        async move { hdr(&get(&url, &[]).await.1, "content-type").to_owned() }
    };
    assert_eq!(
        ct("typed.mp4").await,
        if xattrs { "video/webm" } else { "video/mp4" }
    );
    assert_eq!(ct("evil.mp4").await, "video/mp4");
    assert_eq!(ct("plain.noext").await, "application/octet-stream");
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_urls_accepted_expired_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let urls = LocalUrls {
        base_url: format!("http://{addr}"),
        secret: Some(SECRET.into()),
        ..LocalUrls::default()
    };
    assert!(!format!("{urls:?}").contains(SECRET), "secret redacted");
    assert!(!serde_json::to_string(&urls).unwrap().contains(SECRET));
    let store = BlobStore::local_with_urls(dir.path().join("root"), urls).unwrap();
    let k = key("clips/s 1.mp4");
    store.put(&k, Bytes::from_static(b"signed")).await.unwrap();
    let _srv = Server::on(listener, store.clone(), ServeOptions::default());

    let url = store.download_url(&k).await.unwrap();
    let (base, query) = url.split_once('?').unwrap();
    assert_eq!(base, format!("http://{addr}/api/files/clips/s%201.mp4"));
    assert!(
        query.starts_with("expires=") && query.contains("&sig="),
        "{url}"
    );
    let (s, h, body) = get(&url, &[]).await;
    assert_eq!((s.as_u16(), &body[..]), (200, &b"signed"[..]));
    // Cacheable privately, and only until the signature expires (default lifetime 1 h).
    let cc = h.get("cache-control").unwrap().to_str().unwrap().to_owned();
    let left: u64 = cc
        .strip_prefix("private, max-age=")
        .unwrap_or_else(|| panic!("{cc}"))
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&left), "{cc}");
    let (s, _, _) = get(&url, &[("range", "bytes=0-1")]).await;
    assert_eq!(s, 206);
    let (s, _, _) = get_with(&client(), reqwest::Method::HEAD, &url, &[]).await;
    assert_eq!(s, 200);

    let expires: u64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("expires="))
        .unwrap()
        .parse()
        .unwrap();
    let sig = query.split_once("&sig=").unwrap().1;
    let mut flipped = sig.to_owned().into_bytes();
    flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    let past = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 10;
    let past_sig = stowage::signing::signature(SECRET.as_bytes(), &k, past);
    let other_key_sig = stowage::signing::signature(SECRET.as_bytes(), &key("clips/x"), expires);
    for (q, reason) in [
        (String::new(), "must be signed"),
        (format!("?expires={expires}"), "must be signed"),
        (format!("?expires={expires}&sig={flipped}"), "invalid"),
        (format!("?expires={}&sig={sig}", expires + 3600), "invalid"),
        (format!("?expires={expires}&sig={other_key_sig}"), "invalid"),
        (format!("?expires={past}&sig={past_sig}"), "expired"),
    ] {
        let (s, h, body) = get(&format!("{base}{q}"), &[]).await;
        assert_eq!(s, 403, "{q}");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains(reason), "{q}: {body}");
        assert!(h.get("etag").is_none(), "nothing about the file leaks: {q}");
    }
    // A signed URL for a key that does not exist is a 404; an unsigned one a 403, so
    // unsigned requests learn nothing about which keys exist.
    let missing = key("clips/none.mp4");
    let (s, _, _) = get(&store.download_url(&missing).await.unwrap(), &[]).await;
    assert_eq!(s, 404);
    let (s, _, _) = get(&format!("http://{addr}/api/files/clips/none.mp4"), &[]).await;
    assert_eq!(s, 403);
}

#[test]
fn signing_settings_come_from_the_environment() {
    let vars = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let local = |c: StoreConfig| match c {
        StoreConfig::Local(l) => l,
        other => panic!("{other:?}"),
    };
    let base = [("STORAGE_TYPE", "local"), ("LOCAL_STORAGE_PATH", "/srv/x")];
    let plain = local(StoreConfig::from_env_map(&vars(&base)).unwrap());
    assert_eq!(plain.urls.secret, None);
    assert_eq!(plain.urls.ttl, Duration::from_secs(3600));

    let mut v = base.to_vec();
    v.extend([("STORAGE_URL_SECRET", SECRET), ("STORAGE_URL_TTL", "15m")]);
    let signed = local(StoreConfig::from_env_map(&vars(&v)).unwrap());
    assert_eq!(signed.urls.secret.as_deref(), Some(SECRET));
    assert_eq!(signed.urls.ttl, Duration::from_secs(900));
    assert!(!format!("{signed:?}").contains(SECRET));

    let mut short = base.to_vec();
    short.push(("STORAGE_URL_SECRET", "short"));
    let e = StoreConfig::from_env_map(&vars(&short)).unwrap_err();
    assert!(e.to_string().contains("STORAGE_URL_SECRET"), "{e}");
    let mut bad_ttl = base.to_vec();
    bad_ttl.push(("STORAGE_URL_TTL", "soon"));
    let e = StoreConfig::from_env_map(&vars(&bad_ttl)).unwrap_err();
    assert!(e.to_string().contains("STORAGE_URL_TTL"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_replaced_while_served_is_served_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let k = key("swap.bin");
    let old = vec![b'a'; 8 << 20];
    store.put(&k, old.clone().into()).await.unwrap();
    let srv = Server::start(store.clone(), ServeOptions::default()).await;

    let mut resp = client().get(srv.url("swap.bin")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = resp.chunk().await.unwrap().unwrap().to_vec();
    // Replaced (atomically, as every stowage write is) while the download is under way.
    store.put(&k, vec![b'b'; 3 << 20].into()).await.unwrap();
    while let Some(c) = resp.chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert_eq!(got.len(), old.len());
    assert!(got == old, "the old content, whole");

    let (_, _, now) = get(&srv.url("swap.bin"), &[]).await;
    assert_eq!(now.len(), 3 << 20);
    assert!(now.iter().all(|&b| b == b'b'), "the new content, whole");
}

/// The router holds its root directory open; a root path made to name another directory
/// (a deploy switching a symlink, a directory moved into place) is served from the new
/// directory within about a second, and a root that is gone is a 404, not the old files.
#[tokio::test(flavor = "multi_thread")]
async fn a_root_replaced_under_the_router_is_followed_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(a.join("clips")).unwrap();
    std::fs::create_dir_all(b.join("clips")).unwrap();
    std::fs::write(a.join("clips/x.mp4"), "from a").unwrap();
    std::fs::write(b.join("clips/x.mp4"), "from b").unwrap();
    let root = dir.path().join("root");
    std::os::unix::fs::symlink(&a, &root).unwrap();
    let srv = Server::start(BlobStore::local(&root).unwrap(), ServeOptions::default()).await;
    let body = || async { get(&srv.url("clips/x.mp4"), &[]).await };
    let settle = || tokio::time::sleep(Duration::from_millis(1300));
    assert_eq!(&body().await.2[..], b"from a");

    let next = dir.path().join("root.next");
    std::os::unix::fs::symlink(&b, &next).unwrap();
    std::fs::rename(&next, &root).unwrap();
    settle().await;
    assert_eq!(&body().await.2[..], b"from b");

    std::fs::remove_file(&root).unwrap();
    settle().await;
    assert_eq!(body().await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_redirects_to_a_presigned_url_or_proxies() {
    let s3 = TestS3::start();
    let store = s3.blob_store();
    let data = pattern(3000, 4);
    store
        .put_opts(&key("clips/s3.mp4"), data.clone().into(), Some("video/mp4"))
        .await
        .unwrap();

    let public = ServeOptions {
        public_s3_without_signatures: true,
        ..ServeOptions::default()
    };
    let redirect = Server::start(store.clone(), public.clone()).await;
    let (s, h, _) = get(&redirect.url("clips/s3.mp4"), &[("range", "bytes=0-9")]).await;
    assert_eq!(s, 302);
    assert_eq!(hdr(&h, "cache-control"), "no-store");
    let location = hdr(&h, "location").to_owned();
    assert!(
        location.starts_with(&s3.config().endpoint.unwrap()),
        "{location}"
    );
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let (s, _, body) = get(&location, &[("range", "bytes=0-9")]).await;
    assert_eq!(s, 206);
    assert_eq!(&body[..], &data[..10]);

    let proxy = Server::start(
        store,
        ServeOptions {
            s3: S3Delivery::Proxy,
            ..public
        },
    )
    .await;
    let url = proxy.url("clips/s3.mp4");
    let (s, h, body) = get(&url, &[("range", "bytes=-100")]).await;
    assert_eq!(s, 206);
    assert_eq!(hdr(&h, "content-range"), "bytes 2900-2999/3000");
    assert_eq!(hdr(&h, "content-type"), "video/mp4");
    assert_eq!(&body[..], &data[2900..]);
    let etag = hdr(&h, "etag").to_owned();
    let (s, _, _) = get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(s, 304);
    let (s, _, body) = get(&url, &[]).await;
    assert_eq!((s.as_u16(), body.len()), (200, 3000));
    let (s, _, _) = get(&proxy.url("clips/missing.mp4"), &[]).await;
    assert_eq!(s, 404);
}

/// `stowage serve` as a child process, its stderr collected line by line.
pub(crate) struct ServeProcess {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ServeProcess {
    fn start(root: &Path, secret: Option<&str>) -> ServeProcess {
        ServeProcess::start_with(root, secret, &[], None)
    }

    /// `stowage serve` with `extra` arguments and, when given, its open-file limit
    /// (soft and hard) lowered to `nofile` before it starts.
    pub(crate) fn start_with(
        root: &Path,
        secret: Option<&str>,
        extra: &[&str],
        nofile: Option<u64>,
    ) -> ServeProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stowage"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--root"])
            .arg(root)
            .args(extra)
            .env_remove("STORAGE_URL_SECRET")
            .env_remove("FILES_PATH");
        if let Some(s) = secret {
            cmd.env("STORAGE_URL_SECRET", s);
        }
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = rustix::process::Rlimit {
                        current: Some(n),
                        maximum: Some(n),
                    };
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, lim)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let collected = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let addr = line
                    .split_once("listening on http://")
                    .map(|(_, rest)| rest.split('/').next().unwrap().to_owned());
                // Collected before the address is handed over, so the log has the line.
                collected.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv()
            .unwrap_or_else(|_| panic!("serve did not start: {:?}", stderr.lock().unwrap()))
            .parse()
            .unwrap();
        ServeProcess {
            child,
            addr,
            stderr,
            reader: Some(reader),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}/api/files/{path}", self.addr)
    }

    /// Open file descriptors of the server process.
    pub(crate) fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Peak resident memory of the server process (VmHWM), in bytes.
    pub(crate) fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kb * 1024
    }

    pub(crate) fn sigterm(&self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        )
        .unwrap();
    }

    pub(crate) fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits for the process to exit; its exit status and every line of its stderr.
    pub(crate) fn wait_exit(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        // The child is gone, so its stderr is at EOF: every line is collected after this.
        self.reader.take().unwrap().join().unwrap();
        (status, self.log())
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_process_200_concurrent_ranges_in_bounded_memory_then_sigterm() {
    const LEN: usize = 100 << 20;
    const MAX_RSS: u64 = 100 << 20;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let data = Arc::new(pattern(LEN, 5));
    std::fs::write(root.join("big.bin"), &*data).unwrap();
    let server = ServeProcess::start(&root, None);
    let c = client();

    let mut rng = fastrand::Rng::with_seed(6);
    let ranges: Vec<(usize, usize)> = (0..200)
        .map(|_| {
            let start = rng.usize(..LEN);
            (start, (start + rng.usize(1..=2 << 20)).min(LEN))
        })
        .collect();
    let results = futures::stream::iter(ranges)
        .map(|(start, end)| {
            let (c, url, data) = (c.clone(), server.url("big.bin"), Arc::clone(&data));
            async move {
                let resp = c
                    .get(url)
                    .header("range", format!("bytes={start}-{}", end - 1))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 206);
                let body = resp.bytes().await.unwrap();
                assert!(body[..] == data[start..end], "bytes {start}-{end}");
            }
        })
        .buffer_unordered(200)
        .collect::<Vec<()>>()
        .await;
    assert_eq!(results.len(), 200);
    let peak = server.peak_rss();
    eprintln!("server peak RSS: {} MiB", peak >> 20);
    assert!(
        peak < MAX_RSS,
        "server peak RSS {} MiB for 200 concurrent ranges of a 100 MiB file",
        peak >> 20
    );

    // An in-flight download survives SIGTERM; the server then exits 0.
    let mut resp = c.get(server.url("big.bin")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = resp.chunk().await.unwrap().unwrap().to_vec();
    server.sigterm();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got.len(), LEN);
    assert!(got[..] == data[..], "the whole file after SIGTERM");
    let mut server = server;
    let (status, server) = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        // The child is gone, so its stderr is at EOF: every line is collected after this.
        server.reader.take().unwrap().join().unwrap();
        (status, server)
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}\n{}", server.log());
    let log = server.log();
    assert!(log.contains("stowage serve: stopped"), "{log}");
    assert!(
        log.contains(&format!("\"GET /api/files/big.bin\" 200 {LEN} ")),
        "access log has the finished download:\n{log}"
    );
    assert_eq!(
        log.matches("\"GET /api/files/big.bin\" 206 ").count(),
        200,
        "one access-log line per range request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_process_requires_signatures_when_a_secret_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("clips")).unwrap();
    std::fs::write(root.join("clips/a.mp4"), b"clip").unwrap();
    let server = ServeProcess::start(&root, Some(SECRET));
    let k = key("clips/a.mp4");
    let q = stowage::signing::signed_query(
        SECRET.as_bytes(),
        &k,
        Duration::from_secs(60),
        SystemTime::now(),
    );
    let (s, _, body) = get(&format!("{}?{q}", server.url("clips/a.mp4")), &[]).await;
    assert_eq!((s.as_u16(), &body[..]), (200, &b"clip"[..]));
    let (s, _, _) = get(&server.url("clips/a.mp4"), &[]).await;
    assert_eq!(s, 403);
    assert!(
        server.log().contains("signed URLs required"),
        "{}",
        server.log()
    );
}

/// Keys whose stored or guessed type a browser would run as a page (HTML, SVG, XML), or
/// that a wrong xattr declares as one, next to the media the service really serves.
async fn put_active_and_passive(store: &BlobStore) {
    for (k, ct) in [
        ("clips/evil.html", None),
        ("clips/evil.htm", None),
        ("clips/evil.svg", None),
        ("clips/evil.xml", None),
        ("clips/typed-html.mp4", Some("text/html")),
        ("clips/typed-svg.png", Some("image/svg+xml")),
        ("clips/ok.mp4", None),
        ("clips/ok.webm", Some("video/webm")),
        ("clips/ok.mp3", None),
        ("clips/ok.png", None),
        ("clips/ok.jpg", None),
        ("clips/ok.gif", None),
        ("clips/ok.webp", None),
    ] {
        store
            .put_opts(
                &key(k),
                Bytes::from_static(b"<script>alert(1)</script>"),
                ct,
            )
            .await
            .unwrap();
    }
}

/// Checks that only passive media is inline, everything else an octet-stream attachment,
/// and that every response (errors included) carries the sandboxing CSP and nosniff.
async fn assert_only_media_is_inline(srv: &Server, xattrs: bool) {
    let csp = "default-src 'none'; sandbox";
    for k in [
        "clips/evil.html",
        "clips/evil.htm",
        "clips/evil.svg",
        "clips/evil.xml",
        "clips/typed-html.mp4",
        "clips/typed-svg.png",
    ] {
        let (s, h, _) = get(&srv.url(k), &[]).await;
        assert_eq!(s, 200, "{k}");
        let ct = hdr(&h, "content-type");
        if k.ends_with(".mp4") && !xattrs {
            // Without xattrs the stored type is lost and the extension decides.
            assert_eq!(ct, "video/mp4", "{k}");
            continue;
        }
        assert_eq!(ct, "application/octet-stream", "{k}");
        let name = k.rsplit('/').next().unwrap();
        assert_eq!(
            hdr(&h, "content-disposition"),
            format!("attachment; filename=\"{name}\""),
            "{k}"
        );
        assert_eq!(hdr(&h, "content-security-policy"), csp, "{k}");
        assert_eq!(hdr(&h, "x-content-type-options"), "nosniff", "{k}");
    }
    for (k, want) in [
        ("clips/ok.mp4", "video/mp4"),
        ("clips/ok.webm", "video/webm"),
        ("clips/ok.mp3", "audio/mpeg"),
        ("clips/ok.png", "image/png"),
        ("clips/ok.jpg", "image/jpeg"),
        ("clips/ok.gif", "image/gif"),
        ("clips/ok.webp", "image/webp"),
    ] {
        let (s, h, _) = get(&srv.url(k), &[("range", "bytes=0-3")]).await;
        assert_eq!(s, 206, "{k}");
        assert_eq!(hdr(&h, "content-type"), want, "{k}");
        assert!(
            hdr(&h, "content-disposition").starts_with("inline; "),
            "{k}"
        );
        assert_eq!(hdr(&h, "content-security-policy"), csp, "{k}");
    }
    for (path, want) in [("clips/missing.html", 404), ("clips/ok.mp4", 405)] {
        let method = if want == 405 {
            reqwest::Method::DELETE
        } else {
            reqwest::Method::GET
        };
        let (s, h, _) = get_with(&client(), method, &srv.url(path), &[]).await;
        assert_eq!(s.as_u16(), want, "{path}");
        assert_eq!(hdr(&h, "content-security-policy"), csp, "{path}");
        assert_eq!(hdr(&h, "x-content-type-options"), "nosniff", "{path}");
    }
    let etag_req = get(&srv.url("clips/ok.mp4"), &[]).await;
    let etag = hdr(&etag_req.1, "etag").to_owned();
    let (s, h, _) = get(&srv.url("clips/ok.mp4"), &[("if-none-match", &etag)]).await;
    assert_eq!(s, 304);
    assert_eq!(hdr(&h, "content-security-policy"), csp);
}

#[tokio::test(flavor = "multi_thread")]
async fn active_content_is_an_attachment_never_a_page_local() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    put_active_and_passive(&store).await;
    let file = std::fs::File::open(store.local_root().unwrap().join("clips/ok.webm")).unwrap();
    let xattrs = stowage::local::read_content_type(&file).is_some();
    let srv = Server::start(store, ServeOptions::default()).await;
    assert_only_media_is_inline(&srv, xattrs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn active_content_is_an_attachment_never_a_page_proxied() {
    let store = BlobStore::memory();
    put_active_and_passive(&store).await;
    let srv = Server::start(store, ServeOptions::default()).await;
    assert_only_media_is_inline(&srv, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_respelled_expires_cannot_make_a_signed_url_publicly_cacheable() {
    let dir = tempfile::tempdir().unwrap();
    let urls = LocalUrls {
        secret: Some(SECRET.into()),
        ..LocalUrls::default()
    };
    let store = BlobStore::local_with_urls(dir.path().join("root"), urls).unwrap();
    let k = key("clips/c.mp4");
    store.put(&k, Bytes::from_static(b"clip")).await.unwrap();
    let srv = Server::start(store, ServeOptions::default()).await;
    let q = stowage::signing::signed_query(
        SECRET.as_bytes(),
        &k,
        Duration::from_secs(60),
        SystemTime::now(),
    );
    for query in [
        q.clone(),
        q.replacen("expires=", "%65xpires=", 1),
        q.replacen("expires=", "%65%78pires=", 1),
    ] {
        let (s, h, _) = get(&format!("{}?{query}", srv.url("clips/c.mp4")), &[]).await;
        assert_eq!(s, 200, "{query}");
        let cc = hdr(&h, "cache-control");
        let left: u64 = cc
            .strip_prefix("private, max-age=")
            .unwrap_or_else(|| panic!("{query}: {cc}"))
            .parse()
            .unwrap();
        assert!(left <= 60, "{query}: {cc}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_date_if_range_never_resumes_a_download() {
    // Two versions of the same size within one second share a Last-Modified: a resume
    // validated by date would splice them. Only a strong ETag may keep the range.
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let k = key("clips/v.mp4");
    store.put(&k, vec![b'a'; 100].into()).await.unwrap();
    let srv = Server::start(store.clone(), ServeOptions::default()).await;
    let url = srv.url("clips/v.mp4");
    let (_, h, _) = get(&url, &[]).await;
    let (lm, etag) = (
        hdr(&h, "last-modified").to_owned(),
        hdr(&h, "etag").to_owned(),
    );
    store.put(&k, vec![b'b'; 100].into()).await.unwrap();
    let (s, _, body) = get(&url, &[("range", "bytes=50-"), ("if-range", &lm)]).await;
    assert_eq!(s, 200, "a date If-Range gets the whole new file");
    assert!(body.iter().all(|&b| b == b'b') && body.len() == 100);
    let (s, _, _) = get(&url, &[("range", "bytes=50-"), ("if-range", &etag)]).await;
    assert_eq!(s, 200, "the old ETag no longer matches");
    let (_, h, _) = get(&url, &[]).await;
    let etag = hdr(&h, "etag").to_owned();
    let (s, _, body) = get(&url, &[("range", "bytes=50-"), ("if-range", &etag)]).await;
    assert_eq!((s.as_u16(), body.len()), (206, 50));
}

/// Sets a file's mtime the way migrate does (to the S3 object's LastModified).
fn backdate(path: &Path, to: SystemTime) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(to).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn validators_move_when_content_is_replaced_with_an_older_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let k = key("clips/m.mp4");
    let path = store.local_root().unwrap().join("clips/m.mp4");
    let old_time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let older_time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    store.put(&k, vec![b'a'; 100].into()).await.unwrap();
    backdate(&path, old_time);
    let srv = Server::start(store.clone(), ServeOptions::default()).await;
    let url = srv.url("clips/m.mp4");
    let (_, h, _) = get(&url, &[]).await;
    let (lm1, etag1) = (
        hdr(&h, "last-modified").to_owned(),
        hdr(&h, "etag").to_owned(),
    );
    assert!(
        !hdr(&h, "cache-control").contains("immutable"),
        "keys are rewritten in place: nothing is immutable by default"
    );

    // Replaced (as migrate does): new content, an mtime further in the past. A second
    // later: HTTP dates have one-second resolution, which is why If-Range ignores them.
    std::thread::sleep(Duration::from_millis(1100));
    store.put(&k, vec![b'b'; 100].into()).await.unwrap();
    backdate(&path, older_time);
    let (s, h, body) = get(&url, &[("if-modified-since", &lm1)]).await;
    assert_eq!(s, 200, "changed content is not 'not modified'");
    assert_eq!(&body[..], &[b'b'; 100][..]);
    let lm2 = httpdate::parse_http_date(hdr(&h, "last-modified")).unwrap();
    assert!(
        lm2 > httpdate::parse_http_date(&lm1).unwrap(),
        "Last-Modified never goes back"
    );
    assert_ne!(hdr(&h, "etag"), etag1);

    // Rewritten in place (same inode, same size) with the mtime put back exactly:
    // only the change time tells the versions apart.
    let (_, h, _) = get(&url, &[]).await;
    let etag2 = hdr(&h, "etag").to_owned();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&path, [b'c'; 100]).unwrap();
    backdate(&path, older_time);
    let (s, h, _) = get(&url, &[("if-none-match", &etag2)]).await;
    assert_eq!(s, 200, "rewritten content is not 'not modified'");
    assert_ne!(hdr(&h, "etag"), etag2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bidi_and_format_characters_never_reach_a_filename() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    // Displays as "clipexe.mp4" reversed: the classic RLO extension spoof.
    let k = key("clips/clip\u{202E}4pm.exe");
    store.put(&k, Bytes::from_static(b"x")).await.unwrap();
    let srv = Server::start(store.clone(), ServeOptions::default()).await;
    let (s, h, _) = get(&srv.url("clips/clip%E2%80%AE4pm.exe"), &[]).await;
    assert_eq!(s, 200);
    let cd = hdr(&h, "content-disposition").to_owned();
    assert!(!cd.contains("%E2%80%AE"), "{cd}");
    assert!(cd.contains("U+202E"), "{cd}");
}

#[test]
fn serve_refuses_an_empty_url_secret() {
    let dir = tempfile::tempdir().unwrap();
    for secret in ["", "short"] {
        let mut child =
            crate::support::cli::stowage(None, &["serve", "--listen", "127.0.0.1:0", "--root"])
                .arg(dir.path())
                .env("STORAGE_URL_SECRET", secret)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
        // A server that started anyway would run forever: give it a moment, then stop it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let run = crate::support::cli::output(child.wait_with_output().unwrap());
        assert_eq!(run.code, 2, "{secret:?}: {run:?}");
        assert!(run.stderr.contains("STORAGE_URL_SECRET"), "{run:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_router_needs_a_secret_or_an_explicit_public_opt_in() {
    let s3 = TestS3::start();
    let store = s3.blob_store();
    let k = key("clips/private.mp4");
    store.put(&k, Bytes::from_static(b"private")).await.unwrap();

    // Neither: refused when the router is built, naming what to set.
    for s3 in [S3Delivery::Redirect, S3Delivery::Proxy] {
        let opts = ServeOptions {
            s3,
            ..ServeOptions::default()
        };
        match router::<()>(store.clone(), opts) {
            Err(stowage::Error::Config { name, reason }) => {
                assert_eq!(name, "ServeOptions::secret");
                assert!(reason.contains("public_s3_without_signatures"), "{reason}");
            }
            other => panic!(
                "{s3:?}: expected a config error, got {:?}",
                other.map(|_| ())
            ),
        }
    }
    let short = ServeOptions {
        secret: Some("short".into()),
        ..ServeOptions::default()
    };
    assert!(router::<()>(store.clone(), short).is_err());

    // With a secret: every request must be signed, redirect and proxy alike.
    for delivery in [S3Delivery::Redirect, S3Delivery::Proxy] {
        let opts = ServeOptions {
            s3: delivery,
            secret: Some(SECRET.into()),
            ..ServeOptions::default()
        };
        assert!(!format!("{opts:?}").contains(SECRET), "secret redacted");
        let srv = Server::start(store.clone(), opts).await;
        let (s, h, body) = get(&srv.url("clips/private.mp4"), &[]).await;
        assert_eq!(s, 403, "{delivery:?}: unsigned");
        assert!(h.get("location").is_none());
        assert!(!body.starts_with(b"private"));
        let (s, _, _) = get(&srv.url("clips/missing.mp4"), &[]).await;
        assert_eq!(s, 403, "{delivery:?}: unsigned requests learn nothing");
        let q = stowage::signing::signed_query(
            SECRET.as_bytes(),
            &k,
            Duration::from_secs(60),
            SystemTime::now(),
        );
        let (s, _, body) = get(&format!("{}?{q}", srv.url("clips/private.mp4")), &[]).await;
        match delivery {
            S3Delivery::Redirect => assert_eq!(s, 302),
            S3Delivery::Proxy => assert_eq!((s.as_u16(), &body[..]), (200, &b"private"[..])),
        }
    }

    // The explicit opt-in: public, as asked.
    let opts = ServeOptions {
        public_s3_without_signatures: true,
        ..ServeOptions::default()
    };
    let srv = Server::start(store, opts).await;
    let (s, _, _) = get(&srv.url("clips/private.mp4"), &[]).await;
    assert_eq!(s, 302);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_never_carries_bidi_characters_from_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("clips")).unwrap();
    std::fs::write(root.join("clips/clip\u{202E}4pm.exe"), b"x").unwrap();
    let server = ServeProcess::start(&root, None);
    // Raw UTF-8 in the request line, as a hostile client may send it.
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        "GET /api/files/clips/clip\u{202E}4pm.exe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let (st, _, _) = get(&server.url("clips/clip%E2%80%AE4pm.exe"), &[]).await;
    assert_eq!(st, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !server.log().contains("4pm.exe\" 200") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.log();
    assert!(log.contains("4pm.exe\" 200"), "{log}");
    assert!(!log.contains('\u{202E}'), "{log}");
    assert!(log.contains("clips/clip[U+202E]4pm.exe\" 200"), "{log}");
}
