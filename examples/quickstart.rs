//! The main job on an embedded default: migrate a bucket of clips to local disk.
//!
//! `cargo run --example quickstart` starts a throwaway S3-compatible server (s3s-fs) on
//! 127.0.0.1, fills a bucket with sample clips (one of them a multipart upload), runs the
//! real migration with progress bars, prints the summary and where the files landed, runs
//! it again to show that nothing is downloaded twice, and hands out a download URL.
//! Nothing leaves this machine.

#[allow(dead_code)]
#[path = "../tests/it/support/s3.rs"]
mod s3;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use object_store::path::Path as ObjPath;
use object_store::{Attribute, Attributes, ObjectStore, PutOptions};
use stowage::ops::migrate::{self, MigrateOptions};
use stowage::size::human_bytes;
use stowage::{BlobStore, Key, Reporter};

/// Progress bars for the example (the `stowage` binary has its own, fuller ones).
struct Bars {
    bytes: ProgressBar,
    objects: AtomicU64,
}

impl Reporter for Bars {
    fn phase(&self, name: &str, items: Option<u64>, bytes: Option<u64>) {
        self.bytes.set_message(format!(
            "{name} {}",
            items.map(|n| format!("{n} objects")).unwrap_or_default()
        ));
        self.bytes.set_length(bytes.unwrap_or(0));
        self.bytes.set_position(0);
    }
    fn bytes_done(&self, n: u64) {
        self.bytes.inc(n);
    }
    fn item_done(&self, _key: &str, _ok: bool) {
        self.objects.fetch_add(1, Ordering::Relaxed);
    }
    fn note(&self, msg: &str) {
        self.bytes.println(msg);
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error's own words (they say what to do), not its Debug form.
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    println!("1. starting a throwaway S3-compatible server (s3s-fs) on 127.0.0.1 ...");
    let server = s3::TestS3::start();
    println!(
        "   endpoint {}  bucket {}",
        server.endpoint(),
        server.bucket()
    );

    println!("2. uploading sample clips ...");
    let bucket = server.object_store();
    let clips: Vec<(String, usize, &str)> = (0..120)
        .flat_map(|i| {
            let job = format!("{:08x}-{i:04}", 0x5eed_0000u32 + i * 7919);
            [
                (
                    format!("clips/{job}/video.mp4"),
                    200_000 + (i as usize * 37_813) % 1_800_000,
                    "video/mp4",
                ),
                (
                    format!("clips/{job}/thumb.jpg"),
                    12_000 + (i as usize * 911) % 20_000,
                    "image/jpeg",
                ),
            ]
        })
        .collect();
    futures::stream::iter(clips.iter().cloned())
        .map(|(key, len, ct)| {
            let bucket = bucket.clone();
            async move {
                let body: Vec<u8> = (0..len)
                    .map(|b| (b as u32).wrapping_mul(2654435761).to_be_bytes()[0])
                    .collect();
                let mut attributes = Attributes::new();
                attributes.insert(Attribute::ContentType, ct.into());
                let opts = PutOptions {
                    attributes,
                    ..Default::default()
                };
                bucket
                    .put_opts(&ObjPath::parse(&key).unwrap(), body.into(), opts)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    // One long clip uploaded in 5 MiB parts: its ETag is a multipart ETag.
    let long: Vec<u8> = (0..13_000_000u32)
        .map(|b| (b.wrapping_mul(40503) >> 7) as u8)
        .collect();
    let mut up = object_store::buffered::BufWriter::with_capacity(
        bucket.clone(),
        ObjPath::parse("clips/long-take/video.mp4")?,
        5 << 20,
    );
    tokio::io::AsyncWriteExt::write_all(&mut up, &long).await?;
    tokio::io::AsyncWriteExt::shutdown(&mut up).await?;
    println!("   {} objects", clips.len() + 1);

    let dest = std::env::temp_dir().join("stowage-quickstart");
    let _ = std::fs::remove_dir_all(&dest);
    println!(
        "3. migrating s3://{} -> {}",
        server.bucket(),
        dest.display()
    );
    let src = server.blob_store();
    let bars = Bars {
        bytes: ProgressBar::new(0).with_style(ProgressStyle::with_template(
            "   {msg:20} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec}",
        )?),
        objects: AtomicU64::new(0),
    };
    let summary = migrate::s3_to_local(&src, &dest, &MigrateOptions::default(), &bars).await?;
    bars.bytes.finish_and_clear();
    println!(
        "   copied {} objects ({}) in {:.2} s; {} verified by ETag, {} unverified, {} failed, {} rejected",
        summary.copied,
        human_bytes(summary.bytes_copied),
        summary.elapsed_s,
        summary.copied - summary.unverified.len() as u64,
        summary.unverified.len(),
        summary.failed.len(),
        summary.rejected.len()
    );

    if let Some(kr) = summary.unverified.first() {
        println!("   e.g. {}: {}", kr.key, kr.reason);
    }
    println!("4. running it again (what a resumed or repeated migration does) ...");
    let again = migrate::s3_to_local(
        &src,
        &dest,
        &MigrateOptions::default(),
        &stowage::NoopReporter,
    )
    .await?;
    println!(
        "   copied {}, already present {}, in {:.2} s",
        again.copied, again.skipped, again.elapsed_s
    );

    println!("5. the same clips through the library's local backend:");
    let store = BlobStore::local(&dest)?;
    let key = Key::new(&clips[0].0)?;
    let meta = store.head(&key).await?;
    println!(
        "   {key}: {} bytes, modified {}, type {:?}",
        meta.size, meta.last_modified, meta.content_type
    );
    println!("   download URL: {}", store.download_url(&key).await?);
    let mut n = 0;
    let mut listing = store.list("clips/");
    while let Some(m) = listing.next().await {
        m?;
        n += 1;
    }
    println!("   {n} objects listed under clips/");
    println!(
        "\nThe files are in {} (try: ls -R {} | head).",
        dest.display(),
        dest.display()
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
