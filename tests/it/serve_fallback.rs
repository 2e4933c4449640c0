//! `stowage serve --fallback`: a root read through to the in-process S3 server, as the
//! service's server runs it during the cutover, with `/healthz` and `/metrics`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use crate::support::cli::stowage;
use crate::support::s3::TestS3;

struct Serving {
    child: Child,
    addr: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(s3: &TestS3, root: &std::path::Path, extra: &[&str]) -> Serving {
    serve_with_env(s3, root, extra, &[])
}

fn serve_with_env(
    s3: &TestS3,
    root: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Serving {
    let mut cmd = stowage(Some(s3), &["serve", "--listen", "127.0.0.1:0", "--root"]);
    cmd.arg(root)
        .envs(env.iter().copied())
        .args(extra)
        .env_remove("STORAGE_URL_SECRET")
        .env_remove("FILES_PATH")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_once("listening on http://")
                .map(|(_, rest)| rest.split('/').next().unwrap().to_owned())
        })
        .expect("serve printed its address");
    // Keep draining stderr (the access log) so serve never blocks on a full pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    Serving { child, addr }
}

/// GETs `url`: its status and body. A client timeout far above any bound under test, so
/// a hang fails the test instead of stalling it.
async fn get(url: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    let r = client.get(url).send().await.expect("answered");
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_through_to_the_bucket_copies_the_hit_and_counts_it() {
    let s3 = TestS3::start();
    s3.put_raw("clips/7/video.mp4", b"seven").unwrap();
    s3.put_raw("clips/8/video.mp4", b"eight").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fallback = format!("s3://{}", s3.bucket());
    let srv = serve(&s3, dir.path(), &["--fallback", &fallback]);
    let base = format!("http://{}", srv.addr);

    assert_eq!(get(&format!("{base}/healthz")).await, (200, "ok\n".into()));
    assert_eq!(
        get(&format!("{base}/api/files/clips/7/video.mp4")).await,
        (200, "seven".into())
    );
    assert_eq!(
        get(&format!("{base}/api/files/clips/none.mp4")).await.0,
        404
    );
    // The copy runs in the background: wait for it to land.
    let copied = dir.path().join("clips/7/video.mp4");
    for _ in 0..100 {
        if copied.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(std::fs::read(&copied).unwrap(), b"seven");

    let (status, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("\nstowage_read_through_copies_total 1\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("stowage_read_through_fallback_hits_total 0\n"),
        "{metrics}"
    );

    // Without copy on read the hit is served and nothing lands on disk.
    drop(srv);
    let srv = serve(
        &s3,
        dir.path(),
        &["--fallback", &fallback, "--no-copy-on-read"],
    );
    let base = format!("http://{}", srv.addr);
    assert_eq!(
        get(&format!("{base}/api/files/clips/8/video.mp4")).await,
        (200, "eight".into())
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!dir.path().join("clips/8/video.mp4").exists());
}

#[tokio::test]
async fn a_fallback_that_is_not_a_store_url_is_an_error_naming_the_flag() {
    let s3 = TestS3::start();
    let dir = tempfile::tempdir().unwrap();
    let out = stowage(
        Some(&s3),
        &["serve", "--listen", "127.0.0.1:0", "--fallback", "bucket"],
    )
    .arg("--root")
    .arg(dir.path())
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--fallback"), "{err}");
}

/// A TCP listener on 127.0.0.1 that accepts every connection and never answers: a
/// fallback endpoint that hangs. The connections stay open until the process ends.
fn black_hole() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    format!("http://{addr}")
}

/// `/healthz` through the library's router, with a fallback that never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_503_in_bounded_time_when_the_fallback_never_answers() {
    let s3 = TestS3::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = s3.config();
    config.endpoint = Some(black_hole());
    let fallback = std::sync::Arc::new(stowage::s3::object_store(&config).unwrap());
    let primary = std::sync::Arc::new(stowage::LocalStore::new(dir.path()).unwrap());
    let rt = stowage::ReadThrough::new(
        primary,
        fallback,
        stowage::ReadThroughOptions::default()
            .with_health_timeout(std::time::Duration::from_millis(300)),
    );
    let app: axum::Router =
        stowage::read_through::health_and_metrics(Some(dir.path().to_owned()), Some(rt));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    for _ in 0..2 {
        assert_eq!(
            get(&format!("http://{addr}/healthz")).await,
            (
                503,
                "unhealthy: fallback did not answer a HEAD within 300 ms\n".into()
            )
        );
    }

    // The same router over a fallback that answers is healthy.
    let fallback = std::sync::Arc::new(stowage::s3::object_store(&s3.config()).unwrap());
    let primary = std::sync::Arc::new(stowage::LocalStore::new(dir.path()).unwrap());
    let rt = stowage::ReadThrough::new(primary, fallback, Default::default());
    let app: axum::Router =
        stowage::read_through::health_and_metrics(Some(dir.path().to_owned()), Some(rt));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    // Probes from several load balancers at once are each answered on their own.
    let url = format!("http://{addr}/healthz");
    let probes = (0..8).map(|_| get(&url));
    for (status, _) in futures::future::join_all(probes).await {
        assert_eq!(status, 200);
    }
}

/// `stowage serve --fallback` with the default bound, against a fallback that never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_healthz_answers_503_when_the_fallback_never_answers() {
    let s3 = TestS3::start();
    let dir = tempfile::tempdir().unwrap();
    let hole = black_hole();
    let fallback = format!("s3://{}", s3.bucket());
    let srv = serve_with_env(
        &s3,
        dir.path(),
        &["--fallback", &fallback],
        &[("AWS_ENDPOINT_URL", hole.as_str())],
    );
    assert_eq!(
        get(&format!("http://{}/healthz", srv.addr)).await,
        (
            503,
            "unhealthy: fallback did not answer a HEAD within 3 s\n".into()
        )
    );
}
