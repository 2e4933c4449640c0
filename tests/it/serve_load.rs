//! `stowage serve` under hostile and heavy load, as a real process: clients that request a
//! large file and never read it cannot exhaust file descriptors or lock out a normal
//! client, and 500 well-behaved clients beside 100 slow readers all get correct answers
//! with bounded descriptors and memory.
//!
//! The load test runs `STOWAGE_LOAD_SECS` seconds (default 5); set it to 30 for the long run.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::ServeProcess;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Connects with a tiny receive buffer and asks for `path`; the caller decides how (and
/// whether) to read, so the server soon has a response it cannot send.
async fn request_with_small_window(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

fn seed_root(dir: &Path) -> (std::path::PathBuf, Vec<u8>, Vec<u8>) {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("clips")).unwrap();
    let big = pattern(16 << 20, 11);
    let small = pattern(256 << 10, 12);
    std::fs::write(root.join("clips/big.mp4"), &big).unwrap();
    std::fs::write(root.join("clips/small.mp4"), &small).unwrap();
    (root, big, small)
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_readers_cannot_exhaust_fds_or_lock_out_a_normal_client() {
    const NOFILE: u64 = 256;
    let dir = tempfile::tempdir().unwrap();
    let (root, _, small) = seed_root(dir.path());
    let server = ServeProcess::start_with(&root, None, &["--write-timeout", "4s"], Some(NOFILE));
    let log = server.log();
    assert!(log.contains("at most 96 connections"), "{log}");

    // More stalled clients than the cap: each asks for 16 MiB and reads nothing.
    let mut stalled = Vec::new();
    for _ in 0..150 {
        stalled.push(request_with_small_window(server.addr, "/api/files/clips/big.mp4").await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fds = server.open_fds();
    assert!(fds < NOFILE as usize - 16, "{fds} fds open");

    // A normal client still gets its file, whole, while they hang on.
    let c = client();
    for _ in 0..5 {
        let resp = c
            .get(server.url("clips/small.mp4"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
        assert_eq!(resp.status(), 200, "{}", server.log());
        assert!(resp.bytes().await.unwrap()[..] == small[..]);
    }
    assert!(!server.log().contains("\" 500 "), "{}", server.log());

    // Clients that accept no bytes for the write timeout are dropped.
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.open_fds() > 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fds = server.open_fds();
    assert!(fds <= 40, "{fds} fds still open after the write timeout");
    drop(stalled);
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    errors: AtomicU64,
    slow_bytes: AtomicU64,
}

/// One well-behaved client: full GETs, range GETs and conditional GETs (304), in turn,
/// checking every status and body.
async fn well_behaved(
    c: reqwest::Client,
    url: String,
    small: Arc<Vec<u8>>,
    etag: String,
    seed: u64,
    until: Instant,
    tally: Arc<Tally>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while Instant::now() < until {
        let kind = rng.u8(..3);
        let (req, start, end) = match kind {
            0 => (c.get(&url), 0, small.len()),
            1 => {
                let start = rng.usize(..small.len());
                let end = (start + rng.usize(1..=64 << 10)).min(small.len());
                let range = format!("bytes={start}-{}", end - 1);
                (c.get(&url).header("range", range), start, end)
            }
            _ => (c.get(&url).header("if-none-match", &etag), 0, 0),
        };
        let ok = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.bytes().await {
                    Ok(body) => match kind {
                        0 => status == 200 && body[..] == small[..],
                        1 => status == 206 && body[..] == small[start..end],
                        _ => status == 304 && body.is_empty(),
                    },
                    Err(e) => {
                        eprintln!("body: {e}");
                        false
                    }
                }
            }
            Err(e) => {
                eprintln!("request: {e}");
                false
            }
        };
        tally.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            tally.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A slow reader: asks for the big file and reads 4 KiB every 100 ms until `until`.
async fn slow_reader(addr: std::net::SocketAddr, until: Instant, tally: Arc<Tally>) {
    let mut s = request_with_small_window(addr, "/api/files/clips/big.mp4").await;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < until {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => tally.slow_bytes.fetch_add(n as u64, Ordering::Relaxed),
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_clients_and_a_hundred_slow_readers() {
    const CLIENTS: usize = 500;
    const SLOW: usize = 100;
    const MAX_RSS: u64 = 256 << 20;
    let secs: u64 = std::env::var("STOWAGE_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let (root, _, small) = seed_root(dir.path());
    let server = ServeProcess::start_with(&root, None, &[], None);
    let url = server.url("clips/small.mp4");
    let first = client().get(&url).send().await.unwrap();
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();

    let small = Arc::new(small);
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..SLOW {
        tasks.push(tokio::spawn(slow_reader(
            server.addr,
            until,
            Arc::clone(&tally),
        )));
    }
    // Ten clients with 50 connections each: 500 connections in all.
    let clients: Vec<reqwest::Client> = (0..10).map(|_| client()).collect();
    for i in 0..CLIENTS {
        tasks.push(tokio::spawn(well_behaved(
            clients[i % clients.len()].clone(),
            url.clone(),
            Arc::clone(&small),
            etag.clone(),
            i as u64,
            until,
            Arc::clone(&tally),
        )));
    }
    let peak_fds = Arc::new(AtomicUsize::new(0));
    let peak_sockets = Arc::new(AtomicUsize::new(0));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let pid = server.child.id();
    let sampler = {
        let (peak_fds, peak_sockets, peak_rss) = (
            Arc::clone(&peak_fds),
            Arc::clone(&peak_sockets),
            Arc::clone(&peak_rss),
        );
        let fd_dir = format!("/proc/{pid}/fd");
        tokio::spawn(async move {
            while Instant::now() < until {
                let (mut fds, mut sockets) = (0, 0);
                for e in std::fs::read_dir(&fd_dir).into_iter().flatten().flatten() {
                    fds += 1;
                    let target = std::fs::read_link(e.path()).unwrap_or_default();
                    if target.to_string_lossy().starts_with("socket:") {
                        sockets += 1;
                    }
                }
                peak_fds.fetch_max(fds, Ordering::Relaxed);
                peak_sockets.fetch_max(sockets, Ordering::Relaxed);
                peak_rss.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    sampler.await.unwrap();
    let (requests, errors) = (
        tally.requests.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    let (peak_fds, peak_sockets, peak_rss) = (
        peak_fds.load(Ordering::Relaxed),
        peak_sockets.load(Ordering::Relaxed),
        peak_rss.load(Ordering::Relaxed).max(server.peak_rss()),
    );
    eprintln!(
        "load {secs}s: {requests} requests, {errors} errors, slow readers got {} KiB, \
         peak {peak_fds} fds ({peak_sockets} sockets), peak RSS {} MiB",
        tally.slow_bytes.load(Ordering::Relaxed) >> 10,
        peak_rss >> 20
    );
    assert_eq!(errors, 0, "{requests} requests");
    assert!(requests >= CLIENTS as u64, "{requests} requests");
    assert!(tally.slow_bytes.load(Ordering::Relaxed) > 0);
    // A socket per connection and at most one open file each, plus the runtime's own;
    // the connection cap (default 1024) bounds the sockets whatever the clients do.
    assert!(
        peak_sockets <= 1024 + 8,
        "{peak_sockets} sockets for {} clients",
        CLIENTS + SLOW
    );
    assert!(
        peak_fds <= 2 * peak_sockets + 64,
        "{peak_fds} fds for {peak_sockets} sockets"
    );
    assert!(peak_rss < MAX_RSS, "peak RSS {} MiB", peak_rss >> 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_slow_header_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _, _) = seed_root(dir.path());
    let server = ServeProcess::start_with(
        &root,
        None,
        &["--idle-timeout", "1s", "--header-timeout", "1s"],
        None,
    );
    let silent = TcpStream::connect(server.addr).await.unwrap();
    let mut slowloris = TcpStream::connect(server.addr).await.unwrap();
    slowloris
        .write_all(b"GET /api/files/clips/small.mp4 HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    // A keep-alive connection that finished its request and then says nothing.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"HEAD /api/files/clips/small.mp4 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    for (name, mut s) in [("silent", silent), ("slowloris", slowloris), ("idle", idle)] {
        let start = Instant::now();
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "{name}: still open after 8 s");
        assert!(start.elapsed() < Duration::from_secs(8), "{name}");
    }
}
