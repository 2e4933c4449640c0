//! `stowage serve`: the `stowage::http` router as a standalone file server for a local
//! store, with an access log on stderr and a graceful stop on SIGTERM / Ctrl-C.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::Router;
use clap::Args;
use http::{HeaderValue, Method, Uri};
use stowage::http::{Disposition, ServeOptions, DEFAULT_CACHE_CONTROL};
use stowage::{BlobStore, StoreConfig};

use crate::exit::Exit;

/// Serve a local store's files over HTTP, where download URLs point.
///
/// GET and HEAD for /<base-path>/<key>: byte ranges, ETag/Last-Modified and conditional
/// requests, Content-Type from the stored type or the extension. Paths that are not valid
/// keys are 404 and symlinks are never followed. When STORAGE_URL_SECRET is set, every
/// request needs the expires/sig query that download URLs carry (else 403).
///
/// One access-log line per request goes to stderr: client, method, path, status, bytes
/// sent, duration. SIGTERM or Ctrl-C stops accepting connections and lets in-flight
/// downloads finish; a second signal exits at once.
///
/// Slow or stalled clients cannot exhaust file descriptors: connections are capped
/// (--max-connections, lowered to what the open-file limit allows, which is raised to its
/// hard limit at start), a client that accepts no bytes for --write-timeout or sends no
/// request for --idle-timeout is dropped, and when the cap is reached the connection that
/// has made no progress for longest is closed to make room for a new one.
///
/// Example:
///   stowage serve --root /opt/meme-maker/storage --listen 127.0.0.1:8000
///
/// Environment: LOCAL_STORAGE_PATH (--root), FILES_PATH (--base-path), STORAGE_URL_SECRET
/// (signed URLs required when set), STORAGE_URL_TTL, BASE_URL.
///
/// Exit codes: 0 stopped by a signal after finishing in-flight requests; 2 configuration
/// error or the address cannot be bound.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct ServeArgs {
    /// Store root to serve.
    #[arg(long, env = "LOCAL_STORAGE_PATH", default_value = stowage::config::DEFAULT_LOCAL_PATH, value_name = "DIR")]
    root: PathBuf,
    /// Address to listen on: IP:PORT or HOST:PORT such as localhost:8000 (port 0 picks a
    /// free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "ADDR", value_parser = parse_listen)]
    listen: SocketAddr,
    /// URL path the files are served under (where download URLs point).
    #[arg(
        long,
        env = "FILES_PATH",
        default_value = "/api/files",
        value_name = "PATH"
    )]
    base_path: String,
    /// Cache-Control sent with files; an empty value sends none.
    #[arg(long, default_value = DEFAULT_CACHE_CONTROL, value_name = "VALUE")]
    cache_control: String,
    /// Send files with `Content-Disposition: attachment` (download) instead of inline.
    #[arg(long)]
    attachment: bool,
    /// Most connections open at once (each holds a socket and, while downloading, a file);
    /// lowered to fit the open-file limit.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_connections: usize,
    /// Drop a client that accepts no bytes of a response for this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    write_timeout: Duration,
    /// Drop a connection that makes no progress (e.g. an idle keep-alive) for this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    idle_timeout: Duration,
    /// Drop a client that has not sent a whole request header within this time.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    header_timeout: Duration,
    /// Read through to this store when a key is not under --root (s3://bucket/prefix, with
    /// region, endpoint and credentials from the AWS_* variables): a hit is served and
    /// copied into the root. /metrics counts fallback hits.
    #[arg(long, value_name = "URL")]
    fallback: Option<String>,
    /// With --fallback: serve fallback hits without copying them into the root.
    #[arg(long, requires = "fallback")]
    no_copy_on_read: bool,
}

/// `--listen`: an IP address and port, or a host name (`localhost:8000`) resolved to its
/// first address.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    if !s.contains(':') {
        return Err(format!(
            "{s:?} has no port: write HOST:PORT, e.g. 127.0.0.1:8000 or localhost:8000"
        ));
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{s:?} resolves to no address")),
        Err(e) => Err(format!(
            "cannot resolve {s:?} ({e}): write HOST:PORT, e.g. 127.0.0.1:8000 or localhost:8000"
        )),
    }
}

/// What `ServeArgs` resolve to before anything is bound.
struct Plan {
    store: BlobStore,
    /// `--fallback`: the read-through store `store` is made of.
    read_through: Option<stowage::ReadThrough>,
    root: PathBuf,
    options: ServeOptions,
    base_path: String,
}

impl ServeArgs {
    fn plan(&self) -> stowage::Result<Plan> {
        let config_err = |name: &str, reason: String| stowage::Error::Config {
            name: name.into(),
            reason,
        };
        let root = super::absolute("--root", &self.root)?;
        if !root.is_dir() {
            return Err(config_err(
                "--root",
                format!(
                    "{} is not a directory; --root (or LOCAL_STORAGE_PATH) must name the store directory",
                    root.display()
                ),
            ));
        }
        let base_path = self.base_path.trim_end_matches('/');
        if !self.base_path.starts_with('/') {
            return Err(config_err(
                "--base-path",
                format!(
                    "{:?}: expected a path starting with '/', like /api/files",
                    self.base_path
                ),
            ));
        }
        // The signing secret, its lifetime and BASE_URL come from the same environment the
        // service reads, with the root and path from the flags.
        let mut vars: HashMap<String, String> = std::env::vars().collect();
        vars.insert("STORAGE_TYPE".into(), "local".into());
        vars.insert(
            "LOCAL_STORAGE_PATH".into(),
            root.to_string_lossy().into_owned(),
        );
        vars.insert("FILES_PATH".into(), self.base_path.clone());
        let store = StoreConfig::from_env_map(&vars)?.open()?;
        let read_through = self.read_through(&vars)?;
        let secret = store.local_urls().and_then(|u| u.secret.clone());
        let (store, read_through) = match read_through {
            Some((s, rt)) => (s, Some(rt)),
            None => (store, None),
        };
        let cache_control = match self.cache_control.trim() {
            "" => None,
            v => Some(HeaderValue::from_str(v).map_err(|_| {
                config_err(
                    "--cache-control",
                    format!("{v:?} is not a valid header value"),
                )
            })?),
        };
        let options = ServeOptions {
            cache_control,
            disposition: if self.attachment {
                Disposition::Attachment
            } else {
                Disposition::Inline
            },
            // A read-through store has no local URLs of its own: sign with the root's secret.
            secret,
            ..ServeOptions::default()
        };
        Ok(Plan {
            store,
            read_through,
            root,
            options,
            base_path: base_path.to_owned(),
        })
    }
}

impl ServeArgs {
    /// `--fallback`: the root read through to the fallback store.
    fn read_through(
        &self,
        vars: &HashMap<String, String>,
    ) -> stowage::Result<Option<(BlobStore, stowage::ReadThrough)>> {
        let Some(url) = &self.fallback else {
            return Ok(None);
        };
        let fallback = StoreConfig::from_url(url).map_err(|e| stowage::Error::Config {
            name: "--fallback".into(),
            reason: e.to_string(),
        })?;
        let options = stowage::ReadThroughOptions::default()
            .with_copy_on_read(!self.no_copy_on_read)
            .with_dual_write(false);
        let config =
            stowage::ReadThroughConfig::new(StoreConfig::from_env_map(vars)?, fallback, options);
        config.open().map(Some)
    }
}

pub(crate) async fn run(args: ServeArgs) -> Exit {
    let plan = match args.plan() {
        Ok(p) => p,
        Err(e) => return crate::fatal(&e),
    };
    let signed = plan.options.secret.is_some();
    let probes =
        stowage::read_through::health_and_metrics(Some(plan.root.clone()), plan.read_through);
    let described = plan.store.describe();
    let files = match stowage::http::router(plan.store, plan.options) {
        Ok(f) => f,
        Err(e) => return crate::fatal(&e),
    };
    let app = if plan.base_path.is_empty() {
        files
    } else {
        Router::new().nest(&plan.base_path, files)
    }
    .merge(probes);

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            errln!("error: cannot listen on {}: {e}", args.listen);
            return Exit::Error;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    let limits = conn::Limits {
        max_connections: conn::fit_to_fd_limit(args.max_connections),
        write_timeout: args.write_timeout,
        idle_timeout: args.idle_timeout,
        header_timeout: args.header_timeout,
    };
    let workers = match conn::Workers::start() {
        Ok(w) => w,
        Err(e) => {
            errln!("error: cannot start the threads that serve connections: {e}");
            return Exit::Error;
        }
    };
    errln!(
        "stowage serve: {described} listening on http://{addr}{}/ (signed URLs {}, at most {} connections)",
        plan.base_path,
        if signed { "required" } else { "off" },
        limits.max_connections,
    );
    let cancel = crate::interrupt::cancel_on_signals("finishing the downloads in flight");
    conn::serve(listener, app, limits, workers, cancel).await;
    errln!("stowage serve: stopped");
    Exit::Success
}

/// An access-log line, written to stderr when the response body is dropped (sent or
/// abandoned): `client "METHOD path" status bytes duration`. The query string is left
/// out: it carries the URL signature. Formatted only then, so a request costs no string
/// work before its answer is on the way.
struct LogLine {
    client: SocketAddr,
    method: Method,
    uri: Uri,
    status: u16,
    error: Option<String>,
    bytes: u64,
    start: Instant,
}

impl LogLine {
    fn start(client: SocketAddr, method: Method, uri: Uri) -> LogLine {
        LogLine {
            client,
            method,
            uri,
            status: 0,
            error: None,
            bytes: 0,
            start: Instant::now(),
        }
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        use std::fmt::Write as _;
        let tenths_ms = (self.start.elapsed().as_micros() + 50) / 100;
        // The path is written with bidi and other format characters spelled out, so a key
        // cannot reorder or hide what the log line shows.
        let path = stowage::key::display_safe(self.uri.path());
        let mut line = String::with_capacity(80 + path.len());
        let _ = write!(
            line,
            "{} \"{} {path}\" {} {} {}.{}ms",
            self.client,
            self.method,
            self.status,
            self.bytes,
            tenths_ms / 10,
            tenths_ms % 10
        );
        if let Some(e) = &self.error {
            let _ = write!(line, " error: {e}");
        }
        line.push('\n');
        // One write(2) per line: formatting into unbuffered stderr cost a write per piece
        // of the format (about ten per request, 15% of the server's CPU on small files).
        // A failed write drops the line.
        crate::output::log_line(line.as_bytes());
    }
}

/// The accept loop: hyper HTTP/1 connections over sockets that time out when stalled, a
/// cap on open connections, and shedding of the stalest connection when the cap is hit.
mod conn {
    use std::collections::HashMap;
    use std::io;
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};

    use axum::Router;
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Semaphore;
    use tokio::time::Sleep;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    use super::zero_copy::{self, PendingFiles};
    use super::LogLine;

    /// File descriptors kept free for everything but connections (stdio, the listener,
    /// the runtime, the blocking pool's files).
    const FD_RESERVE: u64 = 64;
    /// A connection that made no progress for this long may be closed to make room.
    const SHED_AFTER: Duration = Duration::from_secs(1);

    pub(super) struct Limits {
        pub(super) max_connections: usize,
        pub(super) write_timeout: Duration,
        pub(super) idle_timeout: Duration,
        pub(super) header_timeout: Duration,
    }

    /// Raises the soft open-file limit to the hard one and returns `wanted`, lowered so that
    /// every connection can hold its socket and one open file.
    pub(super) fn fit_to_fd_limit(wanted: usize) -> usize {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut lim = getrlimit(Resource::Nofile);
        // An unlimited hard limit still stops at the kernel's nr_open (2^20 by default).
        let target = lim.maximum.unwrap_or(1 << 20);
        if lim.current.is_some_and(|c| c < target) {
            lim.current = Some(target);
            let _ = setrlimit(Resource::Nofile, lim);
        }
        let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
        let budget = soft.saturating_sub(FD_RESERVE) / 2;
        wanted
            .min(budget.max(1).try_into().unwrap_or(usize::MAX))
            .max(1)
    }

    /// What the accept loop knows about one open connection.
    struct Tracked {
        /// Milliseconds since the server started at the last byte read or written.
        last_progress: AtomicU64,
        /// Cancelled to close the connection at once.
        shed: CancellationToken,
    }

    #[derive(Default)]
    struct Registry {
        next: AtomicU64,
        open: Mutex<HashMap<u64, Arc<Tracked>>>,
    }

    impl Registry {
        /// Closes the connection that has made no progress for longest, if it has been
        /// stalled for at least [`SHED_AFTER`]. Returns whether one was closed.
        fn shed_stalest(&self, now_ms: u64) -> bool {
            let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let stalest = open
                .values()
                .filter(|t| !t.shed.is_cancelled())
                .min_by_key(|t| t.last_progress.load(Ordering::Relaxed));
            match stalest {
                Some(t)
                    if now_ms.saturating_sub(t.last_progress.load(Ordering::Relaxed))
                        >= SHED_AFTER.as_millis() as u64 =>
                {
                    t.shed.cancel();
                    true
                }
                _ => false,
            }
        }
    }

    pub(super) async fn serve(
        listener: TcpListener,
        app: Router,
        limits: Limits,
        workers: Workers,
        cancel: CancellationToken,
    ) {
        let limits = Arc::new(limits);
        let epoch = Instant::now();
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let registry = Arc::new(Registry::default());
        loop {
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: wait for connections to close, keep serving.
                        logln!("stowage serve: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let permit = match Arc::clone(&permits).try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    // At the cap: make room by closing the stalest connection; if every
                    // connection is busy, this client waits in the accept queue.
                    registry.shed_stalest(epoch.elapsed().as_millis() as u64);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        p = Arc::clone(&permits).acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            // Out of this runtime's epoll, into the serving runtime's.
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    logln!("stowage serve: cannot hand over a connection: {e}");
                    continue;
                }
            };
            let id = registry.next.fetch_add(1, Ordering::Relaxed);
            let tracked = Arc::new(Tracked {
                last_progress: AtomicU64::new(epoch.elapsed().as_millis() as u64),
                shed: CancellationToken::new(),
            });
            registry
                .open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, Arc::clone(&tracked));
            let (app, limits, registry, cancel) = (
                app.clone(),
                Arc::clone(&limits),
                Arc::clone(&registry),
                cancel.clone(),
            );
            workers.spawn(async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => {
                        let io = Watched::new(stream, Arc::clone(&tracked), epoch, &limits);
                        connection(io, peer, app, &limits, &tracked.shed, &cancel).await;
                    }
                    Err(e) => logln!("stowage serve: cannot take over a connection: {e}"),
                }
                registry
                    .open
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                drop(permit);
            });
        }
        drop(listener);
        logln!("stowage serve: no longer accepting connections; finishing in-flight requests");
        // Every permit back means every connection has finished, on every runtime.
        let _ = permits.acquire_many(limits.max_connections as u32).await;
        workers.stop().await;
    }

    /// One single-threaded runtime per core, each on its own thread and owning the
    /// connections handed to it (round robin), as nginx's workers do: a request is served
    /// start to end on one thread, with no cross-thread wake-ups or work stealing. The
    /// cap, shedding and draining stay global (the accept loop's semaphore and registry).
    pub(super) struct Workers {
        handles: Vec<tokio::runtime::Handle>,
        threads: Vec<std::thread::JoinHandle<()>>,
        stop: tokio_util::sync::CancellationToken,
        next: std::sync::atomic::AtomicUsize,
    }

    impl Drop for Workers {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    impl Workers {
        pub(super) fn start() -> io::Result<Workers> {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            let stop = CancellationToken::new();
            let mut workers = Workers {
                handles: Vec::with_capacity(n),
                threads: Vec::with_capacity(n),
                stop: stop.clone(),
                next: Default::default(),
            };
            for i in 0..n {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    // As many blocking threads in all as one runtime would have (512).
                    .max_blocking_threads((512 / n).max(1))
                    .build()?;
                workers.handles.push(rt.handle().clone());
                let stop = stop.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("serve-{i}"))
                    .spawn(move || rt.block_on(stop.cancelled()))?;
                workers.threads.push(thread);
            }
            Ok(workers)
        }

        /// Runs `conn` on the next runtime in turn.
        fn spawn(&self, conn: impl Future<Output = ()> + Send + 'static) {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
            self.handles[i].spawn(conn);
        }

        /// Stops the runtimes (their connections have finished) and waits for their threads.
        async fn stop(mut self) {
            self.stop.cancel();
            let threads = std::mem::take(&mut self.threads);
            let _ = tokio::task::spawn_blocking(move || {
                for t in threads {
                    let _ = t.join();
                }
            })
            .await;
        }
    }

    async fn connection(
        io: Watched,
        peer: SocketAddr,
        app: Router,
        limits: &Limits,
        shed: &CancellationToken,
        cancel: &CancellationToken,
    ) {
        let files = Arc::clone(&io.files);
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let line = LogLine::start(peer, req.method().clone(), req.uri().clone());
            let answer = app.clone().oneshot(req.map(axum::body::Body::new));
            let files = Arc::clone(&files);
            async move {
                let Ok(resp) = answer.await;
                Ok::<_, std::convert::Infallible>(zero_copy::outgoing(resp, line, files))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            // Queue body buffers rather than copy them into one: `Watched` must see the
            // placeholder bytes of a file body where `zero_copy` put them.
            .writev(true)
            .serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = shed.cancelled() => return,
            _ = cancel.cancelled() => conn.as_mut().graceful_shutdown(),
        }
        // Stopping: the request in flight finishes (or the client stalls and is dropped).
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = shed.cancelled() => {}
        }
    }

    /// A socket whose reads and writes fail with `TimedOut` when stalled: a write that
    /// cannot proceed for `write_timeout`, or no progress at all for `idle_timeout` while
    /// waiting to read. Every byte moved is recorded for [`Registry::shed_stalest`].
    struct Watched {
        inner: TcpStream,
        /// The file bytes that placeholder bytes in the write buffers stand for.
        files: Arc<PendingFiles>,
        tracked: Arc<Tracked>,
        epoch: Instant,
        write_timeout: Duration,
        idle_timeout: Duration,
        write_stalled_since: Option<Instant>,
        read_timer: Pin<Box<Sleep>>,
        write_timer: Pin<Box<Sleep>>,
    }

    impl Watched {
        fn new(inner: TcpStream, tracked: Arc<Tracked>, epoch: Instant, limits: &Limits) -> Self {
            let far = tokio::time::Instant::now() + limits.idle_timeout;
            Watched {
                inner,
                files: Arc::new(PendingFiles::default()),
                tracked,
                epoch,
                write_timeout: limits.write_timeout,
                idle_timeout: limits.idle_timeout,
                write_stalled_since: None,
                read_timer: Box::pin(tokio::time::sleep_until(far)),
                write_timer: Box::pin(tokio::time::sleep_until(far)),
            }
        }

        fn progress(&mut self) {
            self.tracked
                .last_progress
                .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }

        fn last_progress(&self) -> Instant {
            self.epoch + Duration::from_millis(self.tracked.last_progress.load(Ordering::Relaxed))
        }

        /// `Pending`, or `TimedOut` once `deadline` has passed (the timer wakes us then).
        fn wait(
            timer: &mut Pin<Box<Sleep>>,
            deadline: Instant,
            cx: &mut Context<'_>,
        ) -> Poll<io::Error> {
            let deadline = tokio::time::Instant::from_std(deadline);
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "client made no progress",
                )),
                Poll::Pending => Poll::Pending,
            }
        }

        fn write_result<T>(
            &mut self,
            r: Poll<io::Result<T>>,
            cx: &mut Context<'_>,
        ) -> Poll<io::Result<T>> {
            match r {
                Poll::Ready(r) => {
                    self.write_stalled_since = None;
                    self.progress();
                    Poll::Ready(r)
                }
                Poll::Pending => {
                    let since = *self.write_stalled_since.get_or_insert_with(Instant::now);
                    Self::wait(&mut self.write_timer, since + self.write_timeout, cx).map(Err)
                }
            }
        }
    }

    use std::future::Future;

    impl AsyncRead for Watched {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(r) => {
                    this.progress();
                    Poll::Ready(r)
                }
                Poll::Pending => {
                    let deadline = this.last_progress() + this.idle_timeout;
                    Self::wait(&mut this.read_timer, deadline, cx).map(Err)
                }
            }
        }
    }

    impl AsyncWrite for Watched {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let r = if zero_copy::is_placeholder(buf) {
                zero_copy::poll_send_file(&this.inner, &this.files, buf.len(), cx)
            } else {
                Pin::new(&mut this.inner).poll_write(cx, buf)
            };
            this.write_result(r, cx)
        }

        /// hyper hands over a response head and body buffers together. Placeholder bytes
        /// (a file body, see `zero_copy`) are sent with `sendfile` from the file they stand
        /// for; what precedes them goes out first, corked (`MSG_MORE`) so that the head and
        /// the file's first bytes leave in one segment.
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let r = match bufs.iter().position(|b| zero_copy::is_placeholder(b)) {
                None => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
                Some(0) => zero_copy::poll_send_file(&this.inner, &this.files, bufs[0].len(), cx),
                Some(k) => zero_copy::poll_send_corked(&this.inner, &bufs[..k], cx),
            };
            this.write_result(r, cx)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let r = Pin::new(&mut this.inner).poll_flush(cx);
            this.write_result(r, cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let r = Pin::new(&mut this.inner).poll_shutdown(cx);
            this.write_result(r, cx)
        }
    }
}

/// Zero-copy file bodies under hyper.
///
/// hyper owns the socket: it frames the response and writes every byte through the
/// connection's `Watched` wrapper. A file body (the router's [`FileBody`]) is therefore
/// given to hyper as *placeholder* bytes: slices of one static, never-written buffer,
/// pushed in order with the file range each stands for. `Watched` recognises a placeholder
/// by its address and, instead of writing it, sends the same number of bytes of the file
/// with `sendfile(2)`. hyper keeps doing everything else exactly as for any body —
/// `Content-Length` framing, keep-alive and pipelining, `HEAD`, aborting the connection on
/// an error — and the wrapper's write timeout and progress tracking see every `sendfile`
/// like any write. A placeholder with no file behind it is an error, never zeros sent.
mod zero_copy {
    use std::collections::VecDeque;
    use std::fs::File;
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::sync::{Arc, LazyLock, Mutex};
    use std::task::{ready, Context, Poll};

    use axum::response::Response;
    use bytes::Bytes;
    use hyper::body::{Frame, SizeHint};
    use stowage::http::{FileBody, ServeError};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use super::LogLine;

    /// Bytes of a file one placeholder frame stands for. `sendfile` is only asked for
    /// frames whose last page was in the page cache a moment before, and a frame is
    /// small, so a runtime thread does not wait for the disk.
    const FRAME: usize = 256 << 10;
    /// Bytes read per trip to the blocking pool when a frame is not in the page cache.
    const READ_CHUNK: usize = 64 << 10;

    /// The placeholder buffer: zeroed memory from the allocator that nothing ever reads or
    /// writes (fresh zero pages, so it costs address space rather than memory).
    static PLACEHOLDER: LazyLock<&'static [u8]> = LazyLock::new(|| Vec::leak(vec![0u8; FRAME]));

    /// Whether `buf` lies in the placeholder buffer.
    pub(super) fn is_placeholder(buf: &[u8]) -> bool {
        let base = PLACEHOLDER.as_ptr() as usize;
        let p = buf.as_ptr() as usize;
        !buf.is_empty() && p >= base && p + buf.len() <= base + FRAME
    }

    /// One connection's file bytes behind the placeholders it has handed to hyper, in
    /// the order hyper writes them.
    #[derive(Default)]
    pub(super) struct PendingFiles(Mutex<VecDeque<Segment>>);

    struct Segment {
        file: Arc<File>,
        pos: u64,
        left: usize,
    }

    impl PendingFiles {
        fn push(&self, seg: Segment) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(seg);
        }
    }

    /// Sends up to `max` bytes of the file the next placeholder bytes stand for.
    pub(super) fn poll_send_file(
        sock: &TcpStream,
        files: &PendingFiles,
        max: usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(sock.poll_write_ready(cx))?;
            let mut queue = files.0.lock().unwrap_or_else(|e| e.into_inner());
            let Some(seg) = queue.front_mut() else {
                return Poll::Ready(Err(io::Error::other(
                    "placeholder bytes with no file behind them",
                )));
            };
            let mut offset = seg.pos;
            let n = max.min(seg.left);
            let sent = sock.try_io(Interest::WRITABLE, || {
                Ok(rustix::fs::sendfile(
                    sock,
                    &*seg.file,
                    Some(&mut offset),
                    n,
                )?)
            });
            return Poll::Ready(match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => Err(e),
                // The file ends before the range its headers announced: it shrank.
                Ok(0) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being served",
                )),
                Ok(k) => {
                    seg.pos += k as u64;
                    seg.left -= k;
                    if seg.left == 0 {
                        queue.pop_front();
                    }
                    Ok(k)
                }
            });
        }
    }

    /// Writes `bufs` (a response head, before a file body) with `MSG_MORE`, so that the
    /// kernel holds them for the `sendfile` that follows.
    pub(super) fn poll_send_corked(
        sock: &TcpStream,
        bufs: &[io::IoSlice<'_>],
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendFlags};
        loop {
            ready!(sock.poll_write_ready(cx))?;
            let sent = sock.try_io(Interest::WRITABLE, || {
                let flags = SendFlags::MORE | SendFlags::NOSIGNAL;
                Ok(sendmsg(
                    sock,
                    bufs,
                    &mut SendAncillaryBuffer::default(),
                    flags,
                )?)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    /// A response as hyper sends it: the router's response with its body replaced by the
    /// zero-copy one when it is a local file, counted for the access log.
    pub(super) fn outgoing(
        resp: Response,
        mut line: LogLine,
        files: Arc<PendingFiles>,
    ) -> hyper::Response<Outgoing> {
        let (mut parts, body) = resp.into_parts();
        line.status = parts.status.as_u16();
        line.error = parts
            .extensions
            .get::<ServeError>()
            .map(|e| e.0.to_string());
        let kind = match parts.extensions.remove::<FileBody>() {
            // The router's own body (a lazy stream of the same bytes) is dropped unread.
            Some(f) => Kind::File(FileSend {
                file: Arc::clone(f.file()),
                first: f.first().clone(),
                pos: f.range().start + f.first().len() as u64,
                end: f.range().end,
                files,
                reading: None,
            }),
            None => Kind::Stream(body),
        };
        hyper::Response::from_parts(parts, Outgoing { kind, line })
    }

    /// A response body; its access-log line is written when it is dropped.
    pub(super) struct Outgoing {
        kind: Kind,
        line: LogLine,
    }

    enum Kind {
        Stream(axum::body::Body),
        File(FileSend),
    }

    /// The bytes `pos..end` of `file` (after `first`), as placeholder frames when they are
    /// in the page cache, else as bytes read on the blocking pool.
    struct FileSend {
        file: Arc<File>,
        first: Bytes,
        pos: u64,
        end: u64,
        files: Arc<PendingFiles>,
        reading: Option<tokio::task::JoinHandle<io::Result<Bytes>>>,
    }

    impl FileSend {
        fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
            if !self.first.is_empty() {
                return Poll::Ready(Some(Ok(std::mem::take(&mut self.first))));
            }
            if let Some(reading) = &mut self.reading {
                let read = ready!(Pin::new(reading).poll(cx));
                self.reading = None;
                let chunk = match read {
                    Ok(Ok(chunk)) => chunk,
                    Ok(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Err(e) => return Poll::Ready(Some(Err(io::Error::other(e)))),
                };
                self.pos += chunk.len() as u64;
                return Poll::Ready(Some(Ok(chunk)));
            }
            if self.pos >= self.end {
                return Poll::Ready(None);
            }
            let n = (self.end - self.pos).min(FRAME as u64) as usize;
            // Readahead fills the page cache from the front: with the frame's last byte
            // cached, the rest of it almost surely is.
            if cached(&self.file, self.pos + n as u64 - 1) {
                self.files.push(Segment {
                    file: Arc::clone(&self.file),
                    pos: self.pos,
                    left: n,
                });
                self.pos += n as u64;
                return Poll::Ready(Some(Ok(Bytes::from_static(&PLACEHOLDER[..n]))));
            }
            let (file, pos, len) = (Arc::clone(&self.file), self.pos, n.min(READ_CHUNK));
            self.reading = Some(tokio::task::spawn_blocking(move || {
                read_exactly_at(&file, pos, len)
            }));
            self.poll_next(cx)
        }

        fn remaining(&self) -> u64 {
            self.first.len() as u64 + self.end.saturating_sub(self.pos)
        }
    }

    /// Whether the byte at `pos` is in the page cache (`preadv2` with `RWF_NOWAIT`).
    fn cached(file: &File, pos: u64) -> bool {
        use rustix::io::{preadv2, ReadWriteFlags};
        let mut byte = [0u8; 1];
        let mut buf = [io::IoSliceMut::new(&mut byte)];
        matches!(preadv2(file, &mut buf, pos, ReadWriteFlags::NOWAIT), Ok(1))
    }

    fn read_exactly_at(file: &File, pos: u64, len: usize) -> io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, pos)?;
        Ok(Bytes::from(buf))
    }

    impl hyper::body::Body for Outgoing {
        type Data = Bytes;
        type Error = Box<dyn std::error::Error + Send + Sync>;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let this = self.get_mut();
            let frame = match &mut this.kind {
                Kind::Stream(b) => {
                    ready!(Pin::new(b).poll_frame(cx)).map(|r| r.map_err(Into::into))
                }
                Kind::File(f) => {
                    ready!(f.poll_next(cx)).map(|r| r.map(Frame::data).map_err(Into::into))
                }
            };
            if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
                this.line.bytes += data.map_or(0, |d| d.len() as u64);
            }
            Poll::Ready(frame)
        }

        fn is_end_stream(&self) -> bool {
            match &self.kind {
                Kind::Stream(b) => b.is_end_stream(),
                Kind::File(f) => f.reading.is_none() && f.remaining() == 0,
            }
        }

        fn size_hint(&self) -> SizeHint {
            match &self.kind {
                Kind::Stream(b) => b.size_hint(),
                Kind::File(f) => SizeHint::with_exact(f.remaining()),
            }
        }
    }
}
