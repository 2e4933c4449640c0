//! Memory of listing and planning a big bucket: 100,000 objects (`clips/<job>/video.mp4`
//! and a thumbnail per job) listed and planned by `migrate` — once as a dry run (which keeps
//! every key it would copy, for its report) and once for real into an empty directory
//! (the copy pass that follows a plan of more than `PLAN_BUFFER_LIMIT` objects lists again
//! instead of keeping the plan). Peak RSS is read from /proc/self/status (VmHWM) after
//! each phase. The objects are empty so that the bucket itself (in memory) stays small and
//! the figure is the plan's.
//!
//! `cargo bench --bench plan`

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use stowage::ops::migrate::{self, MigrateOptions};
use stowage::BlobStore;

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const OBJECTS: usize = 100_000;
    let mem = Arc::new(InMemory::new());
    futures::stream::iter(0..OBJECTS / 2)
        .map(|i| {
            let mem = Arc::clone(&mem);
            async move {
                let job = format!("{:08x}-{i:06}", i.wrapping_mul(2_654_435_761));
                for name in ["video.mp4", "thumb.jpg"] {
                    let path = Path::parse(format!("clips/{job}/{name}")).unwrap();
                    mem.put(&path, Vec::new().into()).await.unwrap();
                }
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let seeded = vm_hwm_mib();
    println!("bucket of {OBJECTS} objects in memory: peak RSS {seeded:.1} MiB");
    let src = BlobStore::from_object_store(mem, "", "memory://bench");
    let dest = tempfile::tempdir()?;

    let t = Instant::now();
    let mut opts = MigrateOptions::default();
    opts.dry_run = true;
    let s = migrate::s3_to_local(&src, dest.path(), &opts, &stowage::NoopReporter).await?;
    println!(
        "dry run: listed {} and planned {} in {:.2} s; peak RSS {:.1} MiB (+{:.1} over the bucket)",
        s.listed,
        s.would_copy.len(),
        t.elapsed().as_secs_f64(),
        vm_hwm_mib(),
        vm_hwm_mib() - seeded
    );
    drop(s);

    let t = Instant::now();
    let s = migrate::s3_to_local(
        &src,
        dest.path(),
        &MigrateOptions::default(),
        &stowage::NoopReporter,
    )
    .await?;
    println!(
        "copy: listed {}, copied {} in {:.2} s; peak RSS {:.1} MiB (+{:.1} over the bucket)",
        s.listed,
        s.copied,
        t.elapsed().as_secs_f64(),
        vm_hwm_mib(),
        vm_hwm_mib() - seeded
    );
    Ok(())
}
