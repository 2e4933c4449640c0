//! `cargo bench --bench migrate`: `stowage migrate s3-to-local` side by side with rclone and
//! the AWS CLI, against one loopback S3 server (s3s-fs, in this process, on its own thread),
//! reached directly (the `loopback` profile) or through a link model (the `wan` profile).
//!
//! The `wan` profile puts a TCP relay (`wan/relay.rs`, in this process on a thread of its
//! own) between the tools and the server, meant to resemble S3 as seen from an EC2 or
//! colocated host in the same region: each connection gets a 20-40 ms round trip (its setup
//! costs one, every request another before the first byte), 16 MB/s downstream per
//! connection, and all connections together at most 3,500 new requests/s (counted by
//! parsing the HTTP/1.1 request heads, not by connections). Loopback measures CPU and the
//! client's own overheads; the WAN profile measures what concurrency and request count cost
//! when every request waits on the network, which is where real migrations spend their time.
//!
//! Every tool runs as a child process, so its wall time, CPU time (user + system) and peak
//! RSS come from `wait4`'s rusage and nothing of the server is counted. The tools alternate
//! within each round (the starting tool rotates), `sync(2)` runs before each timed run so
//! one tool's dirty pages are not flushed during the next one's, and each run's copy is
//! counted afterwards: a run that did not copy everything is reported as failed.
//!
//! The "ceiling" is this same binary re-run as a child that lists the bucket and GETs every
//! object with object_store, discarding the bytes: the fastest reader we could make, so
//! the rate the loopback server can serve.
//!
//! Environment:
//! - `STOWAGE_BENCH_PROFILE=loopback|wan|both` (default `both`: each dataset is run under
//!   each profile, loopback first)
//! - `STOWAGE_BENCH_DATASETS=small,clips,large,rerun,mixed` (default: all five; `mixed` is
//!   1,500 objects of log-uniform sizes from 1 KiB to 8 MiB, fixed seed, about 1.4 GB)
//! - `STOWAGE_BENCH_TOOLS=stowage,rclone,rclone64,aws,ceiling` (default: all that are
//!   installed; `rclone` is rclone with its defaults)
//! - `STOWAGE_BENCH_ROUNDS=N` timed rounds per dataset (default 2; figures are the best run)
//! - `STOWAGE_BENCH_DIR=/path` where the server's data and the copies live (default: under
//!   the target directory); seeded buckets are kept there and reused by the next run.
//! - `STOWAGE_BENCH_OUT=/path/file.md` also write the tables there.
//!
//! `<bench binary> --serve <dir>/server [wan]` serves seeded buckets for profiling a tool by
//! hand (it prints the endpoint, and with `wan` a second one through the relay; keys as in
//! this file). `STOWAGE_BENCH_WAN=rtt=20-40,mbps=16,rps=3500` changes the link model
//! (`rtt=0,mbps=0,rps=0`: a relay that adds nothing).
//!
//! rclone is installed with `apt-get install -y rclone` when missing (and possible); a peer
//! that cannot be had is skipped with a message. This is a benchmark, not a test: nothing
//! here asserts a timing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

#[path = "wan/relay.rs"]
mod relay;

const ACCESS_KEY: &str = "stowage-bench-access";
const SECRET_KEY: &str = "stowage-bench-secret";
const REGION: &str = "us-east-1";
const MIB: u64 = 1 << 20;

/// One bucket of the benchmark.
#[derive(Debug, Clone, Copy)]
struct Dataset {
    name: &'static str,
    bucket: &'static str,
    objects: u64,
    sizes: Sizes,
    prefixes: u64,
    /// Copy into a finished copy of `bucket`: nothing to transfer.
    rerun: bool,
}

/// How big a dataset's objects are.
#[derive(Debug, Clone, Copy)]
enum Sizes {
    Fixed(u64),
    /// Log-uniform between the two bounds, drawn per object from a fixed seed.
    LogUniform(u64, u64),
}

const DATASETS: [Dataset; 5] = [
    Dataset {
        name: "small",
        bucket: "small",
        objects: 5_000,
        sizes: Sizes::Fixed(16 << 10),
        prefixes: 50,
        rerun: false,
    },
    Dataset {
        name: "clips",
        bucket: "clips",
        objects: 200,
        sizes: Sizes::Fixed(2 * MIB),
        prefixes: 1,
        rerun: false,
    },
    Dataset {
        name: "large",
        bucket: "large",
        objects: 8,
        sizes: Sizes::Fixed(64 * MIB),
        prefixes: 1,
        rerun: false,
    },
    Dataset {
        name: "rerun",
        bucket: "small",
        objects: 5_000,
        sizes: Sizes::Fixed(16 << 10),
        prefixes: 50,
        rerun: true,
    },
    Dataset {
        name: "mixed",
        bucket: "mixed",
        objects: 1_500,
        sizes: Sizes::LogUniform(1 << 10, 8 * MIB),
        prefixes: 15,
        rerun: false,
    },
];

impl Dataset {
    fn key(&self, i: u64) -> String {
        if self.prefixes > 1 {
            format!("p{:02}/obj-{i:05}.bin", i % self.prefixes)
        } else {
            format!("clip-{i:04}.mp4")
        }
    }
    fn size(&self, i: u64) -> u64 {
        match self.sizes {
            Sizes::Fixed(n) => n,
            Sizes::LogUniform(lo, hi) => {
                let u = fastrand::Rng::with_seed(0x5707_a6e0 ^ i).f64();
                let (lo, hi) = ((lo as f64).ln(), (hi as f64).ln());
                (lo + u * (hi - lo)).exp().round() as u64
            }
        }
    }
    fn bytes(&self) -> u64 {
        (0..self.objects).map(|i| self.size(i)).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Stowage,
    RcloneDefault,
    Rclone64,
    AwsSync,
    Ceiling,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Stowage => "stowage (defaults)",
            Tool::RcloneDefault => "rclone copy (defaults)",
            Tool::Rclone64 => "rclone copy --transfers 64 --checkers 64",
            Tool::AwsSync => "aws s3 sync",
            Tool::Ceiling => "ceiling: list + GET, discard",
        }
    }
    fn slug(self) -> &'static str {
        match self {
            Tool::Stowage => "stowage",
            Tool::RcloneDefault => "rclone",
            Tool::Rclone64 => "rclone64",
            Tool::AwsSync => "aws",
            Tool::Ceiling => "ceiling",
        }
    }
}

/// What one child process cost.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// HTTP requests the tool sent (WAN profile only: the relay counts them).
    requests: Option<u64>,
    wall: f64,
    cpu: f64,
    max_rss_kib: u64,
}

struct Env {
    endpoint: String,
    work: PathBuf,
    stowage: PathBuf,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--ceiling-reader") {
        ceiling_reader(&args[2], &args[3], args[4].parse().expect("concurrency"));
        return;
    }
    if args.get(1).map(String::as_str) == Some("--serve") {
        // For profiling a tool by hand against the seeded buckets.
        let server = Server::start(Path::new(&args[2]));
        println!("{}", server.endpoint);
        if args.get(3).map(String::as_str) == Some("wan") {
            let relay = relay::Relay::start(server.addr, relay::LinkModel::from_env());
            println!(
                "{} (wan: {})",
                relay.endpoint,
                relay::LinkModel::from_env().describe()
            );
            std::thread::park();
        }
        std::thread::park();
        return;
    }
    if args.get(1).map(String::as_str) == Some("--measure") {
        measure_child(&args[2], &args[3], &args[4..]);
    }
    let wanted = env_list("STOWAGE_BENCH_DATASETS", "small,clips,large,rerun,mixed");
    let profiles: Vec<Profile> = match std::env::var("STOWAGE_BENCH_PROFILE").as_deref() {
        Ok("loopback") => vec![Profile::Loopback],
        Ok("wan") => vec![Profile::Wan],
        Ok("both") | Err(_) => vec![Profile::Loopback, Profile::Wan],
        Ok(other) => panic!("STOWAGE_BENCH_PROFILE={other}: expected loopback, wan or both"),
    };
    let wanted_tools = env_list("STOWAGE_BENCH_TOOLS", "stowage,rclone,rclone64,aws,ceiling");
    let datasets: Vec<Dataset> = DATASETS
        .iter()
        .copied()
        .filter(|d| wanted.iter().any(|w| w == d.name))
        .collect();
    let rounds: usize = std::env::var("STOWAGE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2)
        .max(1);
    let work = std::env::var_os("STOWAGE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("stowage-bench"));
    let server_root = work.join("server");
    std::fs::create_dir_all(&server_root).expect("bench dir");

    let mut tools = vec![Tool::Stowage];
    match have_rclone() {
        Ok(v) => {
            eprintln!("rclone: {v}");
            tools.extend([Tool::RcloneDefault, Tool::Rclone64]);
        }
        Err(why) => eprintln!("skipping rclone: {why}"),
    }
    match version_of("aws", &["--version"]) {
        Some(v) => {
            eprintln!("aws: {v}");
            tools.push(Tool::AwsSync);
        }
        None => eprintln!("skipping aws s3 sync: `aws` is not installed (pip install awscli)"),
    }
    tools.push(Tool::Ceiling);
    tools.retain(|t| wanted_tools.iter().any(|w| w == t.slug()));

    let server = Server::start(&server_root);
    let link = relay::LinkModel::from_env();
    let relay = profiles
        .contains(&Profile::Wan)
        .then(|| relay::Relay::start(server.addr, link));
    let server_endpoint = server.endpoint.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for d in &datasets {
        if !d.rerun {
            rt.block_on(seed(&server_endpoint, &server_root, d));
        }
    }
    drop(rt);

    let mut report = String::new();
    let _ = writeln!(report, "{}", machine_line());
    if relay.is_some() {
        let _ = writeln!(report, "\nWAN profile: {}.", link.describe());
    }
    for (profile, d) in profiles
        .iter()
        .flat_map(|p| datasets.iter().map(move |d| (*p, d)))
    {
        let env = Env {
            endpoint: match (profile, &relay) {
                (Profile::Wan, Some(r)) => r.endpoint.clone(),
                _ => server_endpoint.clone(),
            },
            work: work.join(profile.name()),
            stowage: PathBuf::from(env!("CARGO_BIN_EXE_stowage")),
        };
        let tools: Vec<Tool> = tools
            .iter()
            .copied()
            .filter(|t| !(d.rerun && *t == Tool::Ceiling))
            .collect();
        let mut results: Vec<(Tool, Vec<Sample>, Vec<String>)> =
            tools.iter().map(|t| (*t, Vec::new(), Vec::new())).collect();
        for round in 0..rounds {
            for i in 0..tools.len() {
                let idx = (i + round) % tools.len();
                let tool = tools[idx];
                let dest = env.work.join("dest").join(d.name).join(tool.slug());
                prepare_dest(&env, d, tool, &dest);
                rustix_sync();
                let before = relay.as_ref().map(|r| r.requests());
                let (mut sample, problem) = run_tool(&env, d, tool, &dest);
                if profile == Profile::Wan {
                    sample.requests = relay.as_ref().zip(before).map(|(r, b)| r.requests() - b);
                }
                if !d.rerun {
                    // Big datasets times five tools do not fit every disk.
                    let _ = std::fs::remove_dir_all(&dest);
                }
                eprintln!(
                    "{:8} {:6} round {} {:42} {:7.2} s  cpu {:6.2} s  rss {:6.1} MiB  requests {}{}",
                    profile.name(),
                    d.name,
                    round + 1,
                    tool.label(),
                    sample.wall,
                    sample.cpu,
                    sample.max_rss_kib as f64 / 1024.0,
                    sample.requests.map_or("-".into(), |n| n.to_string()),
                    problem
                        .as_deref()
                        .map(|p| format!("  PROBLEM: {p}"))
                        .unwrap_or_default()
                );
                results[idx].1.push(sample);
                if let Some(p) = problem {
                    results[idx].2.push(p);
                }
            }
        }
        report.push_str(&table(profile, d, &results, rounds));
    }
    println!("{report}");
    if let Some(out) = std::env::var_os("STOWAGE_BENCH_OUT") {
        std::fs::write(&out, &report).expect("write STOWAGE_BENCH_OUT");
    }
    drop(relay);
    drop(server);
}

/// Where the tools reach the server from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    /// Directly, over loopback.
    Loopback,
    /// Through the relay's link model (see `wan/relay.rs`).
    Wan,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Profile::Loopback => "loopback",
            Profile::Wan => "wan",
        }
    }
}

/// A comma-separated list from the environment, or `default`.
fn env_list(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Empties the destination, or for a rerun makes sure it holds a finished copy.
fn prepare_dest(env: &Env, d: &Dataset, tool: Tool, dest: &Path) {
    if tool == Tool::Ceiling {
        return;
    }
    // stowage creates the destination directory but not its parents (a typo in `--dest`
    // must not grow a tree somewhere): the bench makes them.
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).expect("create the destination's parent");
    }
    if !d.rerun {
        let _ = std::fs::remove_dir_all(dest);
        return;
    }
    if count_files(dest).0 == d.objects {
        return;
    }
    // The first copy is not timed; rclone makes it with many transfers to save time (the
    // tree is the same either way).
    let _ = std::fs::remove_dir_all(dest);
    let setup_tool = if tool == Tool::RcloneDefault {
        Tool::Rclone64
    } else {
        tool
    };
    let first = Dataset { rerun: false, ..*d };
    let (_, problem) = run_tool(env, &first, setup_tool, dest);
    if let Some(p) = problem {
        panic!("setting up the rerun copy for {}: {p}", tool.label());
    }
}

fn run_tool(env: &Env, d: &Dataset, tool: Tool, dest: &Path) -> (Sample, Option<String>) {
    let mut cmd;
    match tool {
        Tool::Stowage => {
            cmd = Command::new(&env.stowage);
            cmd.args(["migrate", "s3-to-local", "--bucket", d.bucket, "--json"])
                .arg("--dest")
                .arg(dest)
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .env("AWS_REGION", REGION)
                .env("AWS_ENDPOINT_URL", &env.endpoint)
                // s3s-fs claims `encoding-type=url` without applying it.
                .env("S3_URL_ENCODED_LISTING", "false");
        }
        Tool::RcloneDefault | Tool::Rclone64 => {
            cmd = Command::new("rclone");
            cmd.arg("copy")
                .arg(format!("src:{}", d.bucket))
                .arg(dest)
                .env("RCLONE_CONFIG_SRC_TYPE", "s3")
                .env("RCLONE_CONFIG_SRC_PROVIDER", "Other")
                .env("RCLONE_CONFIG_SRC_ENDPOINT", &env.endpoint)
                .env("RCLONE_CONFIG_SRC_ACCESS_KEY_ID", ACCESS_KEY)
                .env("RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY", SECRET_KEY)
                .env("RCLONE_CONFIG_SRC_REGION", REGION)
                .env("RCLONE_CONFIG_SRC_FORCE_PATH_STYLE", "true")
                .env("RCLONE_CONFIG", "/dev/null")
                .env_remove("AWS_CA_BUNDLE");
            if tool == Tool::Rclone64 {
                cmd.args(["--transfers", "64", "--checkers", "64"]);
            }
        }
        Tool::AwsSync => {
            cmd = Command::new("aws");
            cmd.args(["s3", "sync", "--no-progress", "--only-show-errors"])
                .arg(format!("s3://{}", d.bucket))
                .arg(dest)
                .args(["--endpoint-url", &env.endpoint])
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .env("AWS_DEFAULT_REGION", REGION)
                .env_remove("AWS_CA_BUNDLE")
                .env_remove("AWS_PROFILE");
        }
        Tool::Ceiling => {
            cmd = Command::new(std::env::current_exe().expect("own path"));
            cmd.args(["--ceiling-reader", &env.endpoint, d.bucket])
                .arg(d.objects.min(64).to_string());
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (sample, status, stdout, stderr) = measure(cmd);
    let mut problem = None;
    if !status.success() {
        problem = Some(format!("exit {status}: {}{}", tail(&stdout), tail(&stderr)));
    } else if tool == Tool::Ceiling {
        let got: u64 = String::from_utf8_lossy(&stdout).trim().parse().unwrap_or(0);
        if got != d.bytes() {
            problem = Some(format!("read {got} bytes, expected {}", d.bytes()));
        }
    } else {
        let (files, bytes) = count_files(dest);
        if files != d.objects || bytes != d.bytes() {
            problem = Some(format!(
                "{files} files / {bytes} bytes in the destination, expected {} / {}",
                d.objects,
                d.bytes()
            ));
        }
        if tool == Tool::Stowage {
            let v: serde_json::Value = serde_json::from_slice(&stdout).unwrap_or_default();
            let copied = v["copied"].as_u64().unwrap_or(u64::MAX);
            let expected = if d.rerun { 0 } else { d.objects };
            if copied != expected {
                problem = Some(format!("stowage copied {copied}, expected {expected}"));
            }
        }
    }
    (sample, problem)
}

fn tail(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = s.trim();
    s[s.len().saturating_sub(400)..].to_owned()
}

/// Runs `cmd` to completion through a fresh copy of this binary (`--measure`), which
/// spawns it and reports wall time, and CPU time and peak RSS from `wait4`.
///
/// Why the detour: Linux carries a process's peak RSS across `exec`, and a child spawned
/// directly from this process (which holds the server and the seeding buffers) would
/// start with this process's peak. The small helper gives the tool a small starting point.
fn measure(cmd: Command) -> (Sample, std::process::ExitStatus, Vec<u8>, Vec<u8>) {
    let report = std::env::temp_dir().join(format!(
        "stowage-bench-rusage-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let mut wrapper = Command::new(std::env::current_exe().expect("own path"));
    wrapper
        .arg("--measure")
        .arg(&report)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapper.env(k, v),
            None => wrapper.env_remove(k),
        };
    }
    let out = wrapper
        .stdin(Stdio::null())
        .output()
        .expect("spawn the measuring helper");
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let _ = std::fs::remove_file(&report);
    let f: Vec<f64> = text
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let sample = match f[..] {
        [wall, cpu, rss] => Sample {
            requests: None,
            wall,
            cpu,
            max_rss_kib: rss as u64,
        },
        _ => panic!(
            "measuring helper failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    };
    (sample, out.status, out.stdout, out.stderr)
}

/// `--measure <report> <program> <args...>`: runs the program with this process's stdio
/// and writes `wall_s cpu_s max_rss_kib` to `<report>`; exits with the program's status.
fn measure_child(report: &str, program: &str, args: &[String]) -> ! {
    let started = Instant::now();
    let child = Command::new(program)
        .args(args)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals; `pid` is our unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "wait4: {e}");
    }
    let wall = started.elapsed().as_secs_f64();
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
    std::fs::write(report, format!("{wall} {cpu} {}\n", ru.ru_maxrss)).expect("write report");
    // The child is reaped: keep std from waiting on it again.
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    std::process::exit(code)
}

/// Regular files and their bytes under `root`, stowage's temp files and rclone's partials
/// included (a finished copy has none), its lock and store marker not.
fn count_files(root: &Path) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for de in rd.flatten() {
            match de.file_type() {
                Ok(t) if t.is_dir() => stack.push(de.path()),
                Ok(t) if t.is_file() => {
                    // The lock and the store marker are stowage's own, not copies.
                    if de.file_name() == ".stowage.lock" || de.file_name() == ".stowage" {
                        continue;
                    }
                    files += 1;
                    bytes += de.metadata().map(|m| m.len()).unwrap_or(0);
                }
                _ => {}
            }
        }
    }
    (files, bytes)
}

fn rustix_sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn table(
    profile: Profile,
    d: &Dataset,
    results: &[(Tool, Vec<Sample>, Vec<String>)],
    rounds: usize,
) -> String {
    let gb = d.bytes() as f64 / 1e9;
    let kobj = d.objects as f64 / 1e3;
    let mut s = String::new();
    let what = if d.rerun {
        format!(
            "re-run over a finished copy of `small` ({} objects, nothing to copy)",
            d.objects
        )
    } else {
        let each = match d.sizes {
            Sizes::Fixed(n) => human(n),
            Sizes::LogUniform(lo, hi) => format!("{}-{} (log-uniform)", human(lo), human(hi)),
        };
        format!("{} x {each} = {:.0} MB", d.objects, d.bytes() as f64 / 1e6)
    };
    let _ = writeln!(
        s,
        "\n### {}, `{}`: {what}\n\nBest of {rounds} alternating rounds (wall time; all runs: {}); CPU and RSS of the best run.\n",
        profile.name(),
        d.name,
        spread(results)
    );
    let _ = writeln!(
        s,
        "| tool | wall s | objects/s | MB/s | CPU s | CPU s/GB | CPU s/1k obj | peak RSS MiB | requests |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let best = |v: &Vec<Sample>| v.iter().copied().min_by(|a, b| a.wall.total_cmp(&b.wall));
    for (tool, samples, problems) in results {
        let Some(b) = best(samples) else { continue };
        let mbs = if d.rerun {
            "-".to_owned()
        } else {
            format!("{:.0}", d.bytes() as f64 / 1e6 / b.wall)
        };
        let cpu_gb = if d.rerun {
            "-".to_owned()
        } else {
            format!("{:.2}", b.cpu / gb)
        };
        let _ = writeln!(
            s,
            "| {}{} | {:.2} | {:.0} | {mbs} | {:.2} | {cpu_gb} | {:.3} | {:.1} | {} |",
            tool.label(),
            if problems.is_empty() {
                String::new()
            } else {
                format!(" (**{} failed run(s)**: {})", problems.len(), problems[0])
            },
            b.wall,
            d.objects as f64 / b.wall,
            b.cpu,
            b.cpu / kobj,
            b.max_rss_kib as f64 / 1024.0,
            b.requests.map_or("-".into(), |n| n.to_string())
        );
    }
    let Some(st) = results
        .iter()
        .find(|r| r.0 == Tool::Stowage)
        .and_then(|r| best(&r.1))
    else {
        return s;
    };
    let _ = writeln!(
        s,
        "\nstowage relative to each peer (same run): speed = peer time / stowage time (> 1: stowage faster); CPU and RSS = stowage / peer (< 1: stowage leaner).\n"
    );
    let _ = writeln!(s, "| peer | speed | CPU | peak RSS |");
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for (tool, samples, _) in results {
        if *tool == Tool::Stowage {
            continue;
        }
        let Some(b) = best(samples) else { continue };
        let _ = writeln!(
            s,
            "| {} | {:.2}x | {:.2}x | {:.2}x |",
            tool.label(),
            b.wall / st.wall,
            st.cpu / b.cpu,
            st.max_rss_kib as f64 / b.max_rss_kib as f64
        );
    }
    s
}

/// Every run's wall time per tool, to show the noise behind the best-of figures.
fn spread(results: &[(Tool, Vec<Sample>, Vec<String>)]) -> String {
    results
        .iter()
        .map(|(tool, samples, _)| {
            let walls: Vec<String> = samples.iter().map(|s| format!("{:.1}", s.wall)).collect();
            format!("{} {} s", tool.slug(), walls.join("/"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn human(n: u64) -> String {
    if n >= MIB {
        format!("{} MiB", n / MIB)
    } else {
        format!("{} KiB", n >> 10)
    }
}

fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = version_of("uname", &["-r"]).unwrap_or_default();
    format!("Machine: {cores} cores ({cpu}), Linux {kernel}")
}

fn version_of(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| {
        let s = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        s.lines().next().unwrap_or("").trim().to_owned()
    })
}

/// rclone's version, installing it from the system package manager when missing.
fn have_rclone() -> Result<String, String> {
    if let Some(v) = version_of("rclone", &["version"]) {
        return Ok(v);
    }
    eprintln!("rclone is missing: trying `apt-get install -y rclone` ...");
    let ok = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Err(
            "not installed, and `apt-get install rclone` failed (not root? offline?)".into(),
        );
    }
    version_of("rclone", &["version"]).ok_or_else(|| "installed but does not run".into())
}

// --- the loopback server --------------------------------------------------------------

/// s3s-fs on 127.0.0.1 with SigV4 auth, on its own thread with its own 2-thread runtime
/// (the client under test gets no help from it). A top-level directory is a bucket.
struct Server {
    endpoint: String,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(root: &Path) -> Server {
        let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let socket = tokio::select! {
                        a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
                        _ = &mut stop_rx => return,
                    };
                    let service = service.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let service = service.clone();
                                async move {
                                    service
                                        .call(req.map(s3s::Body::from))
                                        .await
                                        .map_err(|e| std::io::Error::other(s3s::StdError::from(e)))
                                }
                            },
                        );
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(socket), svc)
                        .await;
                    });
                }
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        Server {
            endpoint: format!("http://{addr}"),
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn client(endpoint: &str, bucket: &str) -> Arc<AmazonS3> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_bucket_name(bucket)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region(REGION)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_allow_http(true)
                    .with_timeout_disabled()
                    .with_pool_max_idle_per_host(256),
            )
            .build()
            .expect("client"),
    )
}

/// Fills the dataset's bucket unless a previous run left it complete.
async fn seed(endpoint: &str, server_root: &Path, d: &Dataset) {
    let dir = server_root.join(d.bucket);
    if count_files(&dir) == (d.objects, d.bytes()) {
        eprintln!("{}: reusing the seeded bucket in {}", d.name, dir.display());
        return;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bucket dir");
    let started = Instant::now();
    let store = client(endpoint, d.bucket);
    let d = *d;
    futures::stream::iter(0..d.objects)
        .map(|i| {
            let store = store.clone();
            async move {
                // Distinct content per object, cheap to make.
                let size = d.size(i);
                let mut rng = fastrand::Rng::with_seed(i ^ (size << 20));
                let mut body = vec![0u8; size as usize];
                rng.fill(&mut body);
                store
                    .put(
                        &ObjPath::parse(d.key(i)).expect("key"),
                        PutPayload::from(body),
                    )
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<()>()
        .await
        .expect("seeding");
    eprintln!(
        "{}: seeded {} objects in {:.1} s",
        d.name,
        d.objects,
        started.elapsed().as_secs_f64()
    );
}

/// The ceiling: list the bucket and GET every object `concurrency` at a time, discarding
/// the bytes. Prints the bytes read.
fn ceiling_reader(endpoint: &str, bucket: &str, concurrency: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let total = rt.block_on(async {
        let store = client(endpoint, bucket);
        let metas: Vec<_> = store.list(None).try_collect().await.expect("list");
        futures::stream::iter(metas)
            .map(|m| {
                let store = store.clone();
                async move {
                    let mut body = store.get(&m.location).await.expect("get").into_stream();
                    let mut n = 0u64;
                    while let Some(c) = body.next().await {
                        n += c.expect("body").len() as u64;
                    }
                    n
                }
            })
            .buffer_unordered(concurrency)
            .fold(0u64, |a, n| async move { a + n })
            .await
    });
    println!("{total}");
}
