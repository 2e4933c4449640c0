//! `cargo bench --bench serve`: `stowage serve` side by side with nginx (`sendfile on`)
//! serving the same directory, loaded by `wrk` over keep-alive connections.
//!
//! Both servers run for the whole benchmark (peak RSS is the peak over every row). Each row
//! (file size x full/range x connections) runs each server once per round, the starting
//! server alternating from round to round, so both see the same background load. Per run:
//! requests/s, MB/s and p50/p99 latency from wrk (a Lua `done` hook prints them exactly),
//! server CPU (user + system from `/proc/<pid>/stat`, every nginx process summed) per GB
//! sent. Figures are shown as stowage / nginx ratios, one per round, so the spread between
//! rounds is visible.
//!
//! Files: 256 x 16 KiB `small/s<i>.jpg` and 32 x 2 MiB `clips/c<i>.mp4`, each request picks
//! one at random. Range rows ask for 64 KiB: `bytes=1048576-1114111` in a clip (a seek into
//! the middle of a video), `bytes=4096-69631` clamped to the file for small ones.
//!
//! nginx runs unprivileged (`-c CONF`, `daemon off`, temp paths and logs in the bench dir)
//! with 2 workers, `sendfile on`, `tcp_nopush on`, an access log (stowage always writes
//! one) and the same security headers stowage sends.
//!
//! Environment:
//! - `STOWAGE_BENCH_SECS=N` seconds per wrk run (default 5)
//! - `STOWAGE_BENCH_ROUNDS=N` rounds per row (default 2)
//! - `STOWAGE_BENCH_ROWS=small,clips,full,range,1,64,256` filter rows (default: all)
//! - `STOWAGE_BENCH_DIR=/path` where the files and nginx's temp files go (default: under the
//!   target directory)
//! - `STOWAGE_BENCH_OUT=/path/file.md` also write the tables there
//! - `STOWAGE_BENCH_STOWAGE=/path/to/stowage` serve with another build (e.g. to compare a
//!   change with the commit before it); default: the release binary cargo built
//!
//! nginx and wrk are installed with `apt-get install -y nginx wrk` when missing (and
//! possible); otherwise the bench stops and prints that command. This is a benchmark, not a
//! test: nothing here asserts a timing.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SMALL: (&str, usize, u64) = ("small", 256, 16 << 10);
const CLIPS: (&str, usize, u64) = ("clips", 32, 2 << 20);
const CONNECTIONS: [u32; 3] = [1, 64, 256];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Full,
    Range,
}

#[derive(Debug, Clone, Copy)]
struct Row {
    set: (&'static str, usize, u64),
    kind: Kind,
    conns: u32,
}

impl Row {
    fn label(&self) -> String {
        let size = if self.set.2 >= 1 << 20 {
            format!("{} MiB", self.set.2 >> 20)
        } else {
            format!("{} KiB", self.set.2 >> 10)
        };
        let kind = match (self.kind, self.set.2 >= 1 << 20) {
            (Kind::Full, _) => "full GET",
            (Kind::Range, true) => "Range 64 KiB at 1 MiB",
            (Kind::Range, false) => "Range 4096- (12 KiB)",
        };
        format!("{size} {kind}, {} conn", self.conns)
    }
}

/// One wrk run against one server.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    rps: f64,
    mbps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_s_per_gb: f64,
    errors: u64,
}

struct Server {
    name: &'static str,
    child: Child,
    base: String,
}

impl Server {
    /// Every process of the server: nginx's master and its workers.
    fn pids(&self) -> Vec<u32> {
        let pid = self.child.id();
        let mut pids = vec![pid];
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        pids.extend(
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
        pids
    }

    /// User + system CPU seconds of every process.
    fn cpu_seconds(&self) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        self.pids()
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
            .map(|stat| {
                // Fields after the `(comm)`, which may contain spaces.
                let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state.
                (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / hz
            })
            .sum()
    }

    /// Peak RSS in MiB, summed over the processes (nginx: master + workers).
    fn peak_rss_mib(&self) -> f64 {
        self.pids()
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .sum::<f64>()
            / 1024.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: a killed nginx master leaves its workers running.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs: u64 = env_num("STOWAGE_BENCH_SECS", 5);
    let rounds: usize = env_num("STOWAGE_BENCH_ROUNDS", 2).max(1);
    let filter: Vec<String> = std::env::var("STOWAGE_BENCH_ROWS")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let work = std::env::var_os("STOWAGE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("stowage-bench-serve"));
    let root = work.join("root");
    for tool in ["nginx", "wrk"] {
        ensure_installed(tool);
    }
    seed(&root);
    let paths = |set: (&str, usize, u64)| -> Vec<String> {
        (0..set.1)
            .map(|i| match set.0 {
                "small" => format!("/api/files/small/s{i}.jpg"),
                _ => format!("/api/files/clips/c{i}.mp4"),
            })
            .collect()
    };

    let stowage = start_stowage(&root, &work);
    let nginx = start_nginx(&root, &work);
    let servers = [stowage, nginx];
    for s in &servers {
        wait_ready(&s.base, &paths(SMALL)[0]);
    }

    let mut rows = Vec::new();
    for set in [SMALL, CLIPS] {
        for kind in [Kind::Full, Kind::Range] {
            for conns in CONNECTIONS {
                rows.push(Row { set, kind, conns });
            }
        }
    }
    let wanted = |r: &Row| {
        let kind = if r.kind == Kind::Full {
            "full"
        } else {
            "range"
        };
        let tags = [r.set.0.to_owned(), kind.to_owned(), r.conns.to_string()];
        // Every given tag of a group (set, kind, connections) must match.
        let groups: [&[&str]; 3] = [&["small", "clips"], &["full", "range"], &["1", "64", "256"]];
        groups.iter().zip(&tags).all(|(g, t)| {
            let given: Vec<&String> = filter.iter().filter(|f| g.contains(&f.as_str())).collect();
            given.is_empty() || given.contains(&t)
        })
    };
    let rows: Vec<Row> = rows.into_iter().filter(wanted).collect();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "wrk {secs} s per run, {rounds} rounds, servers alternating (round 1: stowage first)\n"
    );
    let _ = writeln!(
        out,
        "| row | stowage req/s | nginx req/s | req/s ratio (per round) | MB/s stowage / nginx | p50 ms stowage / nginx | p99 ms stowage / nginx | p99 ratio (per round) | CPU s/GB stowage / nginx | CPU ratio |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|---:|---:|---:|---|---:|---:|");
    for row in &rows {
        let script = write_script(&work, &paths(row.set), row);
        let mut runs: [Vec<Run>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let r = load(&servers[i], &script, row.conns, secs);
                eprintln!(
                    "{:<32} {:<7} {:>8.0} req/s {:>7.1} MB/s p50 {:>6.2} ms p99 {:>7.2} ms {:>6.2} CPU s/GB{}",
                    row.label(),
                    servers[i].name,
                    r.rps,
                    r.mbps,
                    r.p50_ms,
                    r.p99_ms,
                    r.cpu_s_per_gb,
                    if r.errors > 0 { format!(" ({} errors)", r.errors) } else { String::new() }
                );
                runs[i].push(r);
            }
        }
        let mean = |v: &[Run], f: fn(&Run) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
        let ratios = |f: fn(&Run) -> f64| {
            runs[0]
                .iter()
                .zip(&runs[1])
                .map(|(s, n)| format!("{:.2}", f(s) / f(n)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (s, n) = (&runs[0], &runs[1]);
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {} | {:.0} / {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {} | {:.2} / {:.2} | {:.2} |",
            row.label(),
            mean(s, |r| r.rps),
            mean(n, |r| r.rps),
            ratios(|r| r.rps),
            mean(s, |r| r.mbps),
            mean(n, |r| r.mbps),
            mean(s, |r| r.p50_ms),
            mean(n, |r| r.p50_ms),
            mean(s, |r| r.p99_ms),
            mean(n, |r| r.p99_ms),
            ratios(|r| r.p99_ms),
            mean(s, |r| r.cpu_s_per_gb),
            mean(n, |r| r.cpu_s_per_gb),
            mean(s, |r| r.cpu_s_per_gb) / mean(n, |r| r.cpu_s_per_gb),
        );
    }
    let (s_rss, n_rss) = (servers[0].peak_rss_mib(), servers[1].peak_rss_mib());
    let _ = writeln!(
        out,
        "\nPeak RSS over the whole run (VmHWM; nginx: master + 2 workers summed): stowage {s_rss:.1} MiB, nginx {n_rss:.1} MiB ({:.2}x)",
        s_rss / n_rss
    );
    println!("\n{out}");
    if let Some(path) = std::env::var_os("STOWAGE_BENCH_OUT") {
        std::fs::write(path, &out).expect("write STOWAGE_BENCH_OUT");
    }
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs wrk against `server` and reads the server's CPU time around it.
fn load(server: &Server, script: &Path, conns: u32, secs: u64) -> Run {
    let threads = conns.min(2);
    let cpu0 = server.cpu_seconds();
    let out = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(&server.base)
        .stderr(Stdio::inherit())
        .output()
        .expect("run wrk");
    let cpu = server.cpu_seconds() - cpu0;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("STOWAGE-BENCH "))
        .unwrap_or_else(|| panic!("wrk printed no summary:\n{text}"));
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse().expect("number"))
        .collect();
    let (requests, bytes, micros, p50, p99, errors) = (f[0], f[1], f[2], f[3], f[4], f[5]);
    let secs = micros / 1e6;
    Run {
        rps: requests / secs,
        mbps: bytes / secs / 1e6,
        p50_ms: p50 / 1e3,
        p99_ms: p99 / 1e3,
        cpu_s_per_gb: cpu / (bytes / 1e9),
        errors: errors as u64,
    }
}

/// A wrk script that requests a random file of the row's set (with a Range header on
/// range rows) and prints the exact figures in its `done` hook.
fn write_script(work: &Path, paths: &[String], row: &Row) -> PathBuf {
    let list = paths
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(",");
    let range = match (row.kind, row.set.2 >= 1 << 20) {
        (Kind::Full, _) => String::new(),
        (Kind::Range, true) => "bytes=1048576-1114111".into(),
        (Kind::Range, false) => "bytes=4096-69631".into(),
    };
    let script = format!(
        r#"local paths = {{{list}}}
local headers = {{}}
if "{range}" ~= "" then headers["Range"] = "{range}" end
math.randomseed(os.time())
request = function()
  return wrk.format("GET", paths[math.random(#paths)], headers)
end
done = function(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format("STOWAGE-BENCH %d %d %d %d %d %d\n", summary.requests,
    summary.bytes, summary.duration, latency:percentile(50), latency:percentile(99), errors))
end
"#
    );
    let path = work.join(format!(
        "{}-{}.lua",
        row.set.0,
        if row.kind == Kind::Full {
            "full"
        } else {
            "range"
        }
    ));
    std::fs::write(&path, script).expect("write wrk script");
    path
}

/// Writes the files once; a later run reuses them.
fn seed(root: &Path) {
    for (set, n, size) in [SMALL, CLIPS] {
        let dir = root.join(set);
        std::fs::create_dir_all(&dir).expect("bench dir");
        for i in 0..n {
            let name = match set {
                "small" => format!("s{i}.jpg"),
                _ => format!("c{i}.mp4"),
            };
            let path = dir.join(name);
            if std::fs::metadata(&path).is_ok_and(|m| m.len() == size) {
                continue;
            }
            let body: Vec<u8> = (0..size).map(|b| (b as usize * 31 + i) as u8).collect();
            std::fs::write(&path, body).expect("seed file");
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn start_stowage(root: &Path, work: &Path) -> Server {
    let port = free_port();
    let log = std::fs::File::create(work.join("stowage-access.log")).expect("log file");
    let bin = std::env::var_os("STOWAGE_BENCH_STOWAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_stowage")));
    let child = Command::new(bin)
        .args(["serve", "--root"])
        .arg(root)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("STORAGE_URL_SECRET")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start stowage serve");
    Server {
        name: "stowage",
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

fn start_nginx(root: &Path, work: &Path) -> Server {
    let port = free_port();
    let dir = work.join("nginx");
    std::fs::create_dir_all(dir.join("tmp")).expect("nginx dir");
    let d = dir.display();
    let conf = format!(
        r#"worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    types {{ video/mp4 mp4; image/jpeg jpg; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 60s;
    keepalive_requests 100000000;
    server {{
        listen 127.0.0.1:{port};
        location /api/files/ {{
            alias {root}/;
            add_header Cache-Control "public, max-age=86400";
            add_header Content-Security-Policy "default-src 'none'; sandbox";
            add_header X-Content-Type-Options nosniff;
        }}
    }}
}}
"#,
        root = root.display()
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    Server {
        name: "nginx",
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

/// Waits until `base` answers `path` with 200.
fn wait_ready(base: &str, path: &str) {
    let addr = base.trim_start_matches("http://").to_owned();
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            use std::io::{Read, Write};
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).is_ok() && &head[9..12] == b"200" {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{base}{path} did not answer 200");
}

/// Installs `tool` from apt when missing and possible; otherwise stops with the command.
fn ensure_installed(tool: &str) {
    let have = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have(tool) {
        return;
    }
    let package = tool;
    eprintln!("{tool} is missing: apt-get install -y {package}");
    let _ = Command::new("apt-get")
        .args(["install", "-y", package])
        .status();
    if !have(tool) {
        panic!("{tool} is required: install it with `sudo apt-get install -y {package}`");
    }
}
