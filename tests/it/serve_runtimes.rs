//! `stowage serve` runs its connections on one single-threaded runtime per core, handed
//! out in turn by one accept loop. What serve promises must hold across them: the
//! connection cap is one cap for the process, and SIGTERM lets the downloads on every
//! runtime finish before the process exits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::http::ServeProcess;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn seed_root(dir: &Path, len: usize) -> (PathBuf, Vec<u8>) {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(root.join("big.bin"), &data).unwrap();
    std::fs::write(root.join("small.txt"), "small").unwrap();
    (root, data)
}

/// Sends a keep-alive GET for `path` on `s`.
fn send_get(s: &mut TcpStream, path: &str) {
    write!(s, "GET /api/files/{path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
}

/// Reads one response head from `s`: its status and Content-Length.
fn read_head(s: &mut TcpStream) -> (u16, usize) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    (status, len)
}

/// Reads one whole response from `s`: its status and body.
fn read_response(s: &mut TcpStream) -> (u16, Vec<u8>) {
    let (status, len) = read_head(s);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, body)
}

#[test]
fn connections_are_served_by_one_runtime_per_core() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = seed_root(dir.path(), 1);
    let server = ServeProcess::start_with(&root, None, &[], None);
    let runtimes = || {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", server.child.id())).unwrap();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
            .filter(|comm| comm.starts_with("serve-"))
            .count()
    };
    // A thread takes its name once it runs, which may be a moment after the server says
    // it listens (on a loaded machine).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while runtimes() < cores() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(runtimes(), cores());
}

/// With a cap of two connections and two (or more) runtimes, a third client waits
/// while the first two are busy: the cap is not one per runtime.
#[test]
fn the_connection_cap_is_one_for_every_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = seed_root(dir.path(), 1);
    let server = ServeProcess::start_with(&root, None, &["--max-connections", "2"], None);
    // Two keep-alive connections, each on its own runtime, each just served (so neither
    // has been stalled long enough to be shed).
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            send_get(&mut s, "small.txt");
            assert_eq!(read_response(&mut s), (200, b"small".to_vec()));
            s
        })
        .collect();
    let mut third = TcpStream::connect(server.addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    send_get(&mut third, "small.txt");
    let mut byte = [0u8; 1];
    let early = third.read(&mut byte);
    assert!(
        early.is_err(),
        "a third connection was served beside two at a cap of two: {early:?}"
    );
    // One of the two closes: the third is served.
    held.pop();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(read_response(&mut third), (200, b"small".to_vec()));
    // The one still open is served too.
    send_get(&mut held[0], "small.txt");
    assert_eq!(read_response(&mut held[0]), (200, b"small".to_vec()));
}

/// SIGTERM while a download is in flight on every runtime: each finishes whole, then the
/// process exits 0.
#[test]
fn sigterm_lets_the_downloads_on_every_runtime_finish() {
    const LEN: usize = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (root, data) = seed_root(dir.path(), LEN);
    let server = ServeProcess::start_with(&root, None, &[], None);
    let n = cores().max(2) * 2;
    let mut downloads: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            send_get(&mut s, "big.bin");
            assert_eq!(read_head(&mut s), (200, LEN));
            s
        })
        .collect();
    // A first chunk of each, so every download is under way before the signal.
    let mut got: Vec<Vec<u8>> = downloads
        .iter_mut()
        .map(|s| {
            let mut first = vec![0u8; 64 << 10];
            s.read_exact(&mut first).unwrap();
            first
        })
        .collect();
    server.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    for (s, got) in downloads.iter_mut().zip(&mut got) {
        s.read_to_end(got).unwrap();
        assert_eq!(got.len(), LEN);
        assert!(got[..] == data[..], "the whole file after SIGTERM");
    }
    let (status, log) = server.wait_exit();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("stowage serve: stopped"), "{log}");
    assert_eq!(
        log.matches(&format!("\"GET /api/files/big.bin\" 200 {LEN} "))
            .count(),
        n,
        "every download finished and was logged:\n{log}"
    );
}
