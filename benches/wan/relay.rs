//! The WAN profile's link model: a TCP relay in front of the loopback S3 server that makes
//! it behave like S3 seen from an EC2 or colocated host in the same region.
//!
//! - **Latency**: each connection draws a round-trip time from `rtt_ms` (uniform, so
//!   connections differ); its setup costs one round trip (the TCP handshake), and every
//!   chunk is released half a round trip after it was read, in each direction, plus up to
//!   `jitter_ms` more (never out of order). A request and its first response byte are
//!   therefore one round trip apart, on top of the server's own time.
//! - **Bandwidth per connection**: server-to-client bytes leave each connection at most
//!   `conn_bytes_per_s` (S3 gives a single connection some tens of MB/s at most; parallel
//!   connections are how clients go faster). The client-to-server side is not capped: a
//!   migration only sends request heads.
//! - **Request rate**: one token bucket shared by all connections, `requests_per_s` with a
//!   burst of `request_burst`. Requests, not connections, are counted: the client-to-server
//!   side is parsed as HTTP/1.1 (head up to the blank line, then `Content-Length` body
//!   bytes) and the chunk holding the start of a request waits for a token. Chunked request
//!   bodies are not followed (no tool here sends one through the relay); a stream the
//!   parser does not understand is passed on uncounted from then on.
//! - **In flight**: a connection holds at most `window` bytes read but not yet delivered
//!   per direction, so a reader that stops reading stalls the server, as TCP would.
//!
//! It runs on its own thread with its own runtime, like the server, so the tools under test
//! get no help from it; the bench's ceiling reader measures what the relay lets through.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The numbers of the link model (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct LinkModel {
    /// Round-trip time range, drawn per connection.
    pub rtt_ms: (u64, u64),
    /// Extra delay per chunk and direction, 0 to this.
    pub jitter_ms: u64,
    /// Server-to-client rate cap per connection.
    pub conn_bytes_per_s: f64,
    /// New requests per second, all connections together.
    pub requests_per_s: f64,
    /// Requests that may start at once after an idle spell.
    pub request_burst: f64,
    /// Bytes in flight per connection and direction.
    pub window: usize,
}

impl LinkModel {
    /// S3 from the same region: 20-40 ms round trips, 16 MB/s per connection, 3,500
    /// requests/s (S3 documents 5,500 GET/HEAD per second per prefix; a fresh bucket
    /// starts lower), 1 MiB in flight per connection.
    pub const S3_SAME_REGION: LinkModel = LinkModel {
        rtt_ms: (20, 40),
        jitter_ms: 2,
        conn_bytes_per_s: 16e6,
        requests_per_s: 3_500.0,
        request_burst: 100.0,
        window: 1 << 20,
    };

    /// `S3_SAME_REGION`, with any of `rtt=20-40,jitter=2,mbps=16,rps=3500,burst=100,window_kib=1024`
    /// from `STOWAGE_BENCH_WAN` (`rtt=0,mbps=0,rps=0`: a relay that adds nothing, for
    /// telling the relay's own cost from the model's; 0 turns a cap off).
    pub fn from_env() -> LinkModel {
        let mut m = LinkModel::S3_SAME_REGION;
        let Ok(spec) = std::env::var("STOWAGE_BENCH_WAN") else {
            return m;
        };
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').expect("STOWAGE_BENCH_WAN: key=value");
            let num = |v: &str| v.parse::<f64>().expect("STOWAGE_BENCH_WAN: a number");
            match k {
                "rtt" => {
                    let (lo, hi) = v.split_once('-').unwrap_or((v, v));
                    m.rtt_ms = (num(lo) as u64, num(hi) as u64);
                }
                "jitter" => m.jitter_ms = num(v) as u64,
                "mbps" => m.conn_bytes_per_s = num(v) * 1e6,
                "rps" => m.requests_per_s = num(v),
                "burst" => m.request_burst = num(v),
                "window_kib" => m.window = num(v) as usize * 1024,
                _ => panic!("STOWAGE_BENCH_WAN: unknown key {k}"),
            }
        }
        m
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        format!(
            "round trip {}-{} ms per connection (+0-{} ms jitter per chunk), {:.0} MB/s per connection downstream, {:.0} requests/s (burst {:.0}), {} KiB in flight per connection",
            self.rtt_ms.0,
            self.rtt_ms.1,
            self.jitter_ms,
            self.conn_bytes_per_s / 1e6,
            self.requests_per_s,
            self.request_burst,
            self.window >> 10
        )
    }
}

/// A running relay; dropping it stops it.
pub struct Relay {
    pub endpoint: String,
    /// Requests seen so far (with the request-rate ceiling off too).
    requests: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Listens on 127.0.0.1 and relays every connection to `upstream` through `model`.
    pub fn start(upstream: SocketAddr, model: LinkModel) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let requests = Arc::new(AtomicU64::new(0));
        let counted = requests.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("relay runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let bucket = Arc::new(Mutex::new(TokenBucket::new(
                    model.requests_per_s,
                    model.request_burst,
                )));
                loop {
                    let client = tokio::select! {
                        a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
                        _ = &mut stop_rx => return,
                    };
                    let (bucket, counted) = (bucket.clone(), counted.clone());
                    tokio::spawn(relay_connection(client, upstream, model, bucket, counted));
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        Relay {
            endpoint: format!("http://{addr}"),
            requests,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Relay {
    /// HTTP requests relayed so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn relay_connection(
    client: TcpStream,
    upstream: SocketAddr,
    model: LinkModel,
    bucket: Arc<Mutex<TokenBucket>>,
    counted: Arc<AtomicU64>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let rtt = Duration::from_millis(fastrand::u64(model.rtt_ms.0..=model.rtt_ms.1));
    // The handshake's round trip.
    if !rtt.is_zero() {
        tokio::time::sleep(rtt).await;
    }
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = Direction {
        half_rtt: rtt / 2,
        model,
        rate: None,
        requests: Some(Requests {
            parser: RequestParser::default(),
            bucket: (model.requests_per_s > 0.0).then_some(bucket),
            counted,
        }),
    };
    let down = Direction {
        half_rtt: rtt / 2,
        model,
        rate: (model.conn_bytes_per_s > 0.0).then_some(model.conn_bytes_per_s),
        requests: None,
    };
    tokio::join!(up.pump(cr, sw), down.pump(sr, cw));
}

/// One direction of a relayed connection.
struct Direction {
    half_rtt: Duration,
    model: LinkModel,
    /// Bytes per second, if capped.
    rate: Option<f64>,
    /// Client-to-server only: where requests start, and the shared request budget.
    requests: Option<Requests>,
}

struct Requests {
    parser: RequestParser,
    bucket: Option<Arc<Mutex<TokenBucket>>>,
    counted: Arc<AtomicU64>,
}

impl Direction {
    /// Reads `src` and hands each chunk to a writer that releases it when due, so reading
    /// goes on while earlier chunks wait out their delay (up to `window` bytes).
    async fn pump(
        mut self,
        mut src: tokio::net::tcp::OwnedReadHalf,
        mut dst: tokio::net::tcp::OwnedWriteHalf,
    ) {
        const READ: usize = 64 << 10;
        let slots = (self.model.window / READ).max(1);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, bytes::Bytes)>(slots);
        let rate = self.rate;
        let writer = async move {
            let mut next_free = Instant::now();
            while let Some((due, data)) = rx.recv().await {
                let at = due.max(next_free);
                if at > Instant::now() {
                    tokio::time::sleep_until(at).await;
                }
                if dst.write_all(&data).await.is_err() {
                    return;
                }
                if let Some(rate) = rate {
                    let cost = Duration::from_secs_f64(data.len() as f64 / rate);
                    next_free = next_free.max(Instant::now()) + cost;
                }
            }
            let _ = dst.shutdown().await;
        };
        let reader = async move {
            let mut last_due = Instant::now();
            loop {
                let mut buf = BytesMut::with_capacity(READ);
                match src.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if let Some(r) = &mut self.requests {
                    let starts = r.parser.feed(&buf);
                    r.counted.fetch_add(starts as u64, Ordering::Relaxed);
                    if let (Some(bucket), true) = (&r.bucket, starts > 0) {
                        let wait = bucket.lock().expect("bucket").take(starts as f64);
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
                let delay =
                    self.half_rtt + Duration::from_millis(fastrand::u64(0..=self.model.jitter_ms));
                last_due = last_due.max(Instant::now() + delay);
                if tx.send((last_due, buf.freeze())).await.is_err() {
                    break;
                }
            }
        };
        tokio::join!(reader, writer);
    }
}

/// Requests per second with a burst; `take` books the tokens and says how long to wait
/// until they exist (callers queue in booking order).
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: std::time::Instant::now(),
        }
    }

    fn take(&mut self, n: f64) -> Duration {
        let now = std::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Finds where HTTP/1.1 requests start in a client-to-server byte stream.
#[derive(Default)]
struct RequestParser {
    /// The head read so far of the current request (empty: the next byte starts one).
    head: Vec<u8>,
    in_head: bool,
    /// Body bytes still to skip.
    body_left: u64,
    /// Set when the stream stopped making sense; nothing is counted after that.
    lost: bool,
}

impl RequestParser {
    /// Consumes `data`; returns how many requests start in it.
    fn feed(&mut self, mut data: &[u8]) -> usize {
        let mut starts = 0;
        while !data.is_empty() && !self.lost {
            if self.body_left > 0 {
                let n = (self.body_left as usize).min(data.len());
                self.body_left -= n as u64;
                data = &data[n..];
                continue;
            }
            if !self.in_head {
                self.in_head = true;
                self.head.clear();
                starts += 1;
            }
            // Look for the blank line, which may straddle two chunks.
            let before = self.head.len();
            self.head.extend_from_slice(data);
            match find(&self.head, b"\r\n\r\n") {
                Some(end) => {
                    let used = end + 4 - before;
                    data = &data[used..];
                    self.head.truncate(end + 4);
                    self.in_head = false;
                    match content_length(&self.head) {
                        Ok(n) => self.body_left = n,
                        Err(()) => self.lost = true,
                    }
                }
                None => {
                    data = &[];
                    if self.head.len() > 64 << 10 {
                        self.lost = true;
                    }
                }
            }
        }
        starts
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The head's body length; `Err` for a chunked body, which this parser does not follow.
fn content_length(head: &[u8]) -> Result<u64, ()> {
    let text = String::from_utf8_lossy(head);
    let mut len = 0;
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            len = value.trim().parse().map_err(|_| ())?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(());
        }
    }
    Ok(len)
}
