//! `cargo bench --bench store`: the library's local hot paths, [`BlobStore`] put/get/list on
//! a local store, against object_store's `LocalFileSystem` with fsync on (the same
//! durability: each file and its directory are fsynced before a put returns).
//!
//! Datasets: 3,000 x 16 KiB and 300 x 2 MiB objects (the 2 MiB set is smaller so that a
//! round writes 630 MB, not 6 GB), in 30 prefixes, 64 operations at once. Each round runs
//! stowage and object_store once per operation, the one going first alternating, puts into
//! a fresh directory (after `sync(2)`, so one run's dirty pages are not flushed during the
//! other's), gets and lists of what that put wrote (page cache warm). Figures: objects/s
//! per run, and stowage / object_store per round (> 1: stowage faster).
//!
//! Environment: `STOWAGE_BENCH_ROUNDS=N` (default 3), `STOWAGE_BENCH_DIR=/path` (default:
//! under the target directory), `STOWAGE_BENCH_OUT=/path/file.md` (also write the table),
//! `STOWAGE_BENCH_LIB=stowage` or `object_store` (run one library only, for `strace -c` or
//! `perf record` of it; the table then has no ratios).
//! This is a benchmark, not a test: nothing here asserts a timing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use stowage::{BlobStore, Key};

const CONCURRENCY: usize = 64;
const PREFIXES: usize = 30;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
    List,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::List => "list",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lib {
    Stowage,
    ObjectStore,
}

fn key(i: usize) -> String {
    format!("p{:02}/obj-{i:05}.bin", i % PREFIXES)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let rounds: usize = std::env::var("STOWAGE_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let work = std::env::var_os("STOWAGE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("stowage-bench-store"));
    let only = match std::env::var("STOWAGE_BENCH_LIB").as_deref() {
        Ok("stowage") => Some(Lib::Stowage),
        Ok("object_store") => Some(Lib::ObjectStore),
        Ok(other) => panic!("STOWAGE_BENCH_LIB={other}: expected stowage or object_store"),
        Err(_) => None,
    };
    let mut out = String::from(
        "| dataset | op | stowage obj/s (per round) | object_store obj/s (per round) | ratio per round | CPU µs per object, stowage / object_store | CPU ratio per round |\n|---|---|---|---|---|---|---|\n",
    );
    for (name, objects, size) in [("16 KiB", 3_000, 16 << 10), ("2 MiB", 300, 2 << 20)] {
        let data = Bytes::from((0..size).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
        let mut rates: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()]; 3];
        // CPU microseconds per object (this process: user + system), each run.
        let mut cpu: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()]; 3];
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [Lib::Stowage, Lib::ObjectStore]
            } else {
                [Lib::ObjectStore, Lib::Stowage]
            };
            for (o, op) in [Op::Put, Op::Get, Op::List].into_iter().enumerate() {
                if op == Op::Put {
                    // Both libraries' previous files go before either puts: removed just
                    // before each library's own run, the second run of a round found the
                    // filesystem done with the first's removal and the first did not
                    // (seen: whichever went first was slower, 0.64x vs 1.91x).
                    for d in ["stowage", "object_store"] {
                        let _ = std::fs::remove_dir_all(work.join(d));
                    }
                    rustix::fs::sync();
                }
                for lib in order {
                    if only.is_some_and(|only| only != lib) {
                        continue;
                    }
                    let dir = work.join(match lib {
                        Lib::Stowage => "stowage",
                        Lib::ObjectStore => "object_store",
                    });
                    if op == Op::Put {
                        std::fs::create_dir_all(&dir)?;
                        rustix::fs::sync();
                    }
                    let (t, cpu0) = (Instant::now(), cpu_seconds());
                    match lib {
                        Lib::Stowage => stowage_op(&dir, op, objects, &data).await?,
                        Lib::ObjectStore => object_store_op(&dir, op, objects, &data).await?,
                    }
                    let rate = objects as f64 / t.elapsed().as_secs_f64();
                    let us = (cpu_seconds() - cpu0) * 1e6 / objects as f64;
                    eprintln!(
                        "{name:>6} {:<4} {:<12} {rate:>9.0} obj/s",
                        op.name(),
                        match lib {
                            Lib::Stowage => "stowage",
                            Lib::ObjectStore => "object_store",
                        }
                    );
                    rates[o][(lib == Lib::ObjectStore) as usize].push(rate);
                    cpu[o][(lib == Lib::ObjectStore) as usize].push(us);
                }
            }
        }
        for (o, op) in [Op::Put, Op::Get, Op::List].into_iter().enumerate() {
            let [s, n] = &rates[o];
            let join = |v: &[f64], prec: usize| {
                v.iter()
                    .map(|x| format!("{x:.prec$}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let ratios: Vec<f64> = s.iter().zip(n).map(|(a, b)| a / b).collect();
            let [cs, cn] = &cpu[o];
            let cpu_ratios: Vec<f64> = cs.iter().zip(cn).map(|(a, b)| a / b).collect();
            let _ = writeln!(
                out,
                "| {objects} x {name} | {} | {} | {} | {} | {} / {} | {} |",
                op.name(),
                join(s, 0),
                join(n, 0),
                join(&ratios, 2),
                join(cs, 1),
                join(cn, 1),
                join(&cpu_ratios, 2)
            );
        }
    }
    println!("\n{out}");
    if let Some(path) = std::env::var_os("STOWAGE_BENCH_OUT") {
        std::fs::write(path, &out)?;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// User + system CPU seconds of this process so far (every thread).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

async fn stowage_op(
    dir: &Path,
    op: Op,
    objects: usize,
    data: &Bytes,
) -> Result<(), Box<dyn std::error::Error>> {
    let store = BlobStore::local(dir)?;
    match op {
        Op::Put | Op::Get => {
            futures::stream::iter(0..objects)
                .map(|i| {
                    let store = store.clone();
                    let data = data.clone();
                    async move {
                        let k = Key::new(key(i)).expect("a valid key");
                        match op {
                            Op::Put => store.put(&k, data).await,
                            _ => store.get(&k).await.map(|b| assert_eq!(b.len(), data.len())),
                        }
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
        }
        Op::List => {
            let n = store.list("").try_collect::<Vec<_>>().await?.len();
            assert_eq!(n, objects);
        }
    }
    Ok(())
}

async fn object_store_op(
    dir: &Path,
    op: Op,
    objects: usize,
    data: &Bytes,
) -> Result<(), Box<dyn std::error::Error>> {
    let store: Arc<dyn ObjectStore> = Arc::new(
        LocalFileSystem::new_with_prefix(dir)?
            .with_automatic_cleanup(false)
            .with_fsync(true),
    );
    match op {
        Op::Put | Op::Get => {
            futures::stream::iter(0..objects)
                .map(|i| {
                    let store = Arc::clone(&store);
                    let data = data.clone();
                    async move {
                        let p = ObjPath::parse(key(i))?;
                        match op {
                            Op::Put => store
                                .put(&p, PutPayload::from_bytes(data))
                                .await
                                .map(|_| ()),
                            _ => {
                                let b = store.get(&p).await?.bytes().await?;
                                assert_eq!(b.len(), data.len());
                                Ok(())
                            }
                        }
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
        }
        Op::List => {
            let n = store.list(None).try_collect::<Vec<_>>().await?.len();
            assert_eq!(n, objects);
        }
    }
    Ok(())
}
