//! `stowage serve`'s zero-copy path, as a real process over raw keep-alive connections:
//! a local file body goes out with `sendfile(2)` behind hyper's head, and must still be
//! byte-exact for whole files and ranges of every size (pipelined requests included), send
//! no body for `HEAD`, come whole from the file that was opened even if the key is
//! replaced, close the connection rather than send a short body, cut a client that stops
//! reading after `--write-timeout`, and free a connection whose client went away.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::http::ServeProcess;

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// One response read off a keep-alive connection.
#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response: the head, then exactly `Content-Length` bytes of body (none for
/// `HEAD`), leaving whatever follows on the connection.
fn read_response(s: &mut TcpStream, head_request: bool) -> Response {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert_eq!(n, 1, "connection closed inside a head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let mut r = Response {
        status,
        head,
        body: Vec::new(),
    };
    let len: usize = r.header("content-length").map_or(0, |v| v.parse().unwrap());
    if !head_request {
        r.body = vec![0u8; len];
        s.read_exact(&mut r.body).unwrap();
    }
    r
}

fn get(path: &str, range: Option<&str>) -> String {
    let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
    format!("GET /api/files/{path} HTTP/1.1\r\nHost: t\r\n{range}\r\n")
}

fn root_with(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    for (name, body) in files {
        std::fs::write(root.join(name), body).unwrap();
    }
    root
}

/// Waits (up to 10 s) until the server holds at most `fds` descriptors.
fn wait_for_fds(server: &ServeProcess, fds: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = server.open_fds();
        if open <= fds || Instant::now() > deadline {
            return open;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bodies_and_ranges_are_byte_exact_at_every_size() {
    // Around the placeholder frame (256 KiB) and the router's chunk (64 KiB) too.
    let sizes = [
        0usize,
        1,
        16 << 10,
        (64 << 10) + 1,
        256 << 10,
        (2 << 20) + 1,
    ];
    let files: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("f{n}.bin"), pattern(n, i as u64)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let root = root_with(dir.path(), &refs);
    let server = ServeProcess::start_with(&root, None, &[], None);

    let mut s = connect(server.addr);
    for (name, data) in &files {
        let len = data.len();
        // Twice: the second answer finds the file in the page cache, the first may not.
        for _ in 0..2 {
            s.write_all(get(name, None).as_bytes()).unwrap();
            let r = read_response(&mut s, false);
            assert_eq!(r.status, 200, "{name}: {}", r.head);
            assert!(r.body == *data, "{name}: full body differs");
        }
        if len == 0 {
            continue;
        }
        let ranges = [
            (format!("bytes=0-{}", len - 1), 0..len),
            ("bytes=0-0".to_owned(), 0..1),
            ("bytes=-1".to_owned(), len - 1..len),
            (format!("bytes={}-", len / 2), len / 2..len),
            (
                format!("bytes={}-{}", len / 3, (len / 3 + 70_000).min(len - 1)),
                len / 3..(len / 3 + 70_001).min(len),
            ),
        ];
        for (spec, want) in &ranges {
            s.write_all(get(name, Some(spec)).as_bytes()).unwrap();
            let r = read_response(&mut s, false);
            assert_eq!(r.status, 206, "{name} {spec}: {}", r.head);
            let cr = format!("bytes {}-{}/{len}", want.start, want.end - 1);
            assert_eq!(
                r.header("content-range"),
                Some(cr.as_str()),
                "{name} {spec}"
            );
            assert!(r.body == data[want.clone()], "{name} {spec}: body differs");
        }
    }

    // A file whose pages were dropped from the page cache: frames not cached are read on
    // the blocking pool and sent as bytes, between frames sent with sendfile.
    let (name, data) = &files[5];
    for _ in 0..3 {
        let f = std::fs::File::open(root.join(name)).unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        s.write_all(get(name, None).as_bytes()).unwrap();
        let r = read_response(&mut s, false);
        assert!(
            r.body == *data,
            "{name} from a cold page cache: body differs"
        );
    }

    // Pipelined: three requests in one write, answered in order, each body exact.
    let (big, small) = (&files[5], &files[2]);
    let burst = [
        get(&big.0, None),
        get(&small.0, Some("bytes=100-199")),
        get(&big.0, Some("bytes=300000-")),
    ]
    .concat();
    s.write_all(burst.as_bytes()).unwrap();
    assert!(read_response(&mut s, false).body == big.1);
    assert!(read_response(&mut s, false).body == small.1[100..200]);
    assert!(read_response(&mut s, false).body == big.1[300_000..]);
}

#[test]
fn head_sends_the_headers_of_get_and_no_body() {
    let data = pattern((2 << 20) + 1, 3);
    let dir = tempfile::tempdir().unwrap();
    let root = root_with(dir.path(), &[("clip.mp4", &data)]);
    let server = ServeProcess::start_with(&root, None, &[], None);

    let mut s = connect(server.addr);
    let head = "HEAD /api/files/clip.mp4 HTTP/1.1\r\nHost: t\r\n\r\n";
    let ranged = "HEAD /api/files/clip.mp4 HTTP/1.1\r\nHost: t\r\nRange: bytes=5-9\r\n\r\n";
    // HEAD, ranged HEAD and GET back to back: any body after a HEAD would be read as the
    // next response's head.
    s.write_all([head, ranged, &get("clip.mp4", None)].concat().as_bytes())
        .unwrap();
    let h = read_response(&mut s, true);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some("2097153"));
    let hr = read_response(&mut s, true);
    assert_eq!(hr.status, 206);
    assert_eq!(hr.header("content-range"), Some("bytes 5-9/2097153"));
    let g = read_response(&mut s, false);
    assert_eq!(g.status, 200);
    assert!(g.body == data);
    let without_date = |r: &Response| {
        r.head
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(without_date(&h), without_date(&g), "HEAD's head is GET's");
}

#[test]
fn a_file_replaced_during_the_send_comes_whole_from_the_opened_file() {
    let old = vec![b'a'; 32 << 20];
    let dir = tempfile::tempdir().unwrap();
    let root = root_with(dir.path(), &[("swap.bin", &old)]);
    let server = ServeProcess::start_with(&root, None, &[], None);

    let mut s = connect(server.addr);
    s.write_all(get("swap.bin", None).as_bytes()).unwrap();
    let mut first = [0u8; 1 << 20];
    // The head and the first MiB, then the key is replaced (atomically, as stowage writes).
    let mut head_and_some = Vec::new();
    while head_and_some.len() < 1 << 20 {
        let n = s.read(&mut first).unwrap();
        assert!(n > 0);
        head_and_some.extend_from_slice(&first[..n]);
    }
    std::fs::write(root.join(".swap.tmp"), vec![b'b'; 3 << 20]).unwrap();
    std::fs::rename(root.join(".swap.tmp"), root.join("swap.bin")).unwrap();
    let split = head_and_some
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap()
        + 4;
    let mut body = head_and_some.split_off(split);
    let want = old.len() - body.len();
    let mut rest = vec![0u8; want];
    s.read_exact(&mut rest).unwrap();
    body.extend_from_slice(&rest);
    assert_eq!(body.len(), old.len());
    assert!(body.iter().all(|&b| b == b'a'), "the old content, whole");

    // The same connection then gets the new file, whole.
    s.write_all(get("swap.bin", None).as_bytes()).unwrap();
    let r = read_response(&mut s, false);
    assert_eq!(r.body.len(), 3 << 20);
    assert!(r.body.iter().all(|&b| b == b'b'), "the new content, whole");
}

#[test]
fn a_file_that_shrinks_during_the_send_closes_the_connection_short() {
    let data = pattern(32 << 20, 9);
    let dir = tempfile::tempdir().unwrap();
    let root = root_with(dir.path(), &[("shrink.bin", &data)]);
    let server = ServeProcess::start_with(&root, None, &[], None);

    let mut s = connect(server.addr);
    s.write_all(get("shrink.bin", None).as_bytes()).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = Vec::new();
    while got.len() < 1 << 20 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    // Truncated in place (not stowage's way of writing, but a hand or another tool's).
    std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("shrink.bin"))
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = &got[split..];
    assert!(
        body.len() < data.len(),
        "the connection ends short of the announced length"
    );
    // Whatever arrived is the file's own bytes, never padding.
    assert!(body == &data[..body.len()], "a prefix of the file");
}

#[test]
fn a_client_that_stops_reading_mid_body_is_cut_by_the_write_timeout() {
    let data = pattern(64 << 20, 4);
    let dir = tempfile::tempdir().unwrap();
    let root = root_with(dir.path(), &[("big.bin", &data)]);
    let server = ServeProcess::start_with(&root, None, &["--write-timeout", "1s"], None);

    let mut s = connect(server.addr);
    s.write_all(get("big.bin", None).as_bytes()).unwrap();
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0;
    while got < 1 << 20 {
        got += s.read(&mut buf).unwrap();
    }
    // Stop reading for well past the timeout: the socket buffers fill and the server's
    // sendfile can make no progress.
    std::thread::sleep(Duration::from_secs(4));
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(
        got < data.len(),
        "a stalled reader was still sent the whole file ({got} bytes)"
    );
    let log = server.log();
    assert!(log.contains("GET /api/files/big.bin"), "{log}");
}

#[test]
fn clients_that_disconnect_mid_body_free_their_connection() {
    let data = pattern(32 << 20, 5);
    let small = pattern(1000, 6);
    let dir = tempfile::tempdir().unwrap();
    let root = root_with(dir.path(), &[("big.bin", &data), ("small.bin", &small)]);
    let server = ServeProcess::start_with(&root, None, &["--max-connections", "2"], None);
    // Warm up: one request so the runtime has opened what it keeps open.
    let mut s = connect(server.addr);
    s.write_all(get("small.bin", None).as_bytes()).unwrap();
    assert!(read_response(&mut s, false).body == small);
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let idle = server.open_fds();

    for _ in 0..6 {
        let mut s = connect(server.addr);
        s.write_all(get("big.bin", None).as_bytes()).unwrap();
        let mut buf = [0u8; 64 << 10];
        let mut got = 0;
        while got < 256 << 10 {
            got += s.read(&mut buf).unwrap();
        }
        drop(s);
    }
    // Every aborted download's socket and file are closed again.
    let open = wait_for_fds(&server, idle);
    assert!(open <= idle, "{open} descriptors open, {idle} when idle");
    // And both slots of the cap serve two clients at once.
    let mut a = connect(server.addr);
    let mut b = connect(server.addr);
    for s in [&mut a, &mut b] {
        s.write_all(get("small.bin", None).as_bytes()).unwrap();
    }
    for s in [&mut a, &mut b] {
        assert!(read_response(s, false).body == small);
    }
}
