//! `stowage migrate s3-to-local | local-to-s3`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use stowage::ops::migrate::{self, MigrateOptions, MigrateSummary};
use stowage::size::human_bytes;
use stowage::{S3Config, SizeSpec, StoreConfig};
use tokio_util::sync::CancellationToken;

use crate::exit::Exit;
use crate::progress::Progress;

#[derive(Debug, Subcommand)]
pub(crate) enum MigrateCommand {
    /// Copy every object of a bucket into a local directory, verified and resumable.
    ///
    /// Each object is streamed to a temp file next to its destination while it is hashed,
    /// checked against its size and ETag (MD5, or the multipart ETag recomputed), given the
    /// object's LastModified as mtime and its Content-Type as the user.mime_type xattr,
    /// fsynced and renamed into place. Run it again at any time: objects already present
    /// with the same size and mtime are skipped without being downloaded.
    ///
    /// Keys that cannot be stored safely (`..`, empty segments, control characters, a key
    /// clashing with another key's directory, ...) are skipped and reported. Before writing,
    /// the bytes to copy are checked against the free space minus --min-free.
    ///
    /// Example:
    ///   stowage migrate s3-to-local --bucket clips-prod --dest /opt/meme-maker/storage
    ///
    /// Exit codes: 0 all copied or present and verified; 1 some objects failed, were
    /// rejected or are unverified; 2 usage, configuration or fatal error (credentials,
    /// missing bucket, not enough space); 130 interrupted (temp files removed).
    #[command(name = "s3-to-local", verbatim_doc_comment)]
    S3ToLocal(S3ToLocalArgs),

    /// Copy a local store back into a bucket (the rollback path).
    ///
    /// Files are uploaded with a SHA-256 checksum the server verifies (multipart above
    /// 8 MiB) and their Content-Type; files already in the bucket with the same size and a
    /// matching ETag are skipped. Symlinks and stowage's own temp files are never uploaded.
    ///
    /// Example:
    ///   stowage migrate local-to-s3 --source /opt/meme-maker/storage --bucket clips-prod
    ///
    /// Exit codes: as for s3-to-local.
    #[command(name = "local-to-s3", verbatim_doc_comment)]
    LocalToS3(LocalToS3Args),
}

#[derive(Debug, Args)]
pub(crate) struct S3Args {
    /// Bucket to copy from / to.
    #[arg(long, env = "S3_BUCKET_NAME", value_name = "NAME")]
    bucket: String,
    /// Only keys starting with this prefix (keys keep their full name on disk).
    #[arg(long, default_value = "", value_name = "P", hide_default_value = true)]
    pub(crate) prefix: String,
    /// S3-compatible endpoint, e.g. http://127.0.0.1:9000 [env: AWS_ENDPOINT_URL]
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Region [env: S3_REGION, AWS_REGION; default: us-east-1]
    #[arg(long, value_name = "R")]
    region: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Objects copied at once.
    #[arg(long, default_value_t = migrate::DEFAULT_CONCURRENCY, value_name = "N")]
    concurrency: usize,
    /// Space to leave free on the destination filesystem (size like 10GB or a % of it).
    #[arg(long, default_value = "5%", value_name = "SIZE")]
    min_free: SizeSpec,
    /// Refuse to let the destination store grow beyond this (e.g. 50GB).
    #[arg(long, value_name = "SIZE")]
    max_used: Option<SizeSpec>,
    /// List what would be copied, skipped and rejected, and the space needed; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// s3-to-local: copy only objects modified within this age (e.g. 24h, the retention
    /// `cleanup --max-age` keeps); older ones are counted as too old.
    #[arg(long, value_parser = super::parse_age, value_name = "AGE")]
    max_age: Option<std::time::Duration>,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Print only errors.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct S3ToLocalArgs {
    #[command(flatten)]
    s3: S3Args,
    /// Destination directory (the local store root).
    #[arg(long, env = "LOCAL_STORAGE_PATH", default_value = stowage::config::DEFAULT_LOCAL_PATH, value_name = "DIR")]
    dest: PathBuf,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
pub(crate) struct LocalToS3Args {
    /// Source directory (the local store root).
    #[arg(long, env = "LOCAL_STORAGE_PATH", default_value = stowage::config::DEFAULT_LOCAL_PATH, value_name = "DIR")]
    source: PathBuf,
    #[command(flatten)]
    s3: S3Args,
    #[command(flatten)]
    run: RunArgs,
}

impl S3Args {
    /// The bucket's configuration: the environment, overridden by these flags.
    pub(crate) fn config(&self) -> stowage::Result<StoreConfig> {
        let mut c = S3Config::from_env_for_bucket(&self.bucket)?;
        if let Some(e) = &self.endpoint {
            c.endpoint = Some(e.clone());
        }
        if let Some(r) = &self.region {
            c.region = r.clone();
        }
        // The CLI addresses whole buckets; --prefix filters keys instead.
        c.prefix = String::new();
        Ok(StoreConfig::S3(c))
    }
}

impl RunArgs {
    fn options(&self, prefix: &str, cancel: CancellationToken) -> MigrateOptions {
        MigrateOptions {
            prefix: prefix.to_owned(),
            concurrency: self.concurrency,
            min_free: self.min_free,
            max_used: self.max_used,
            dry_run: self.dry_run,
            cancel,
            max_age: self.max_age,
        }
    }
}

pub(crate) async fn run(cmd: MigrateCommand) -> Exit {
    let cancel = crate::interrupt::cancel_on_signals();
    let run = match &cmd {
        MigrateCommand::S3ToLocal(a) => &a.run,
        MigrateCommand::LocalToS3(a) => &a.run,
    };
    let progress = Progress::new(run.quiet);
    let result = async {
        match &cmd {
            MigrateCommand::S3ToLocal(a) => {
                let src = a.s3.config()?.open()?;
                let opts = a.run.options(&a.s3.prefix, cancel.clone());
                migrate::s3_to_local(&src, &super::absolute("--dest", &a.dest)?, &opts, &progress)
                    .await
            }
            MigrateCommand::LocalToS3(a) => {
                let dst = a.s3.config()?.open()?;
                let opts = a.run.options(&a.s3.prefix, cancel.clone());
                migrate::local_to_s3(
                    &super::absolute("--source", &a.source)?,
                    &dst,
                    &opts,
                    &progress,
                )
                .await
            }
        }
    }
    .await;
    progress.finish();
    let summary = match result {
        Ok(s) => s,
        Err(e) => return crate::fatal(&e),
    };
    if run.json {
        super::print_json(&summary).expect("summary serializes");
    } else if !run.quiet || summary.has_problems() || summary.aborted.is_some() {
        print_human(&summary);
    }
    if summary.interrupted {
        Exit::Interrupted
    } else if summary.aborted.is_some() {
        Exit::Error
    } else {
        Exit::from_problems(summary.has_problems())
    }
}

fn print_human(s: &MigrateSummary) {
    let secs = s.elapsed_s.max(0.001);
    let verb = if s.dry_run { "would copy" } else { "copied" };
    outln!(
        "migrate {}: {} -> {}{}",
        s.direction,
        s.source,
        s.destination,
        if s.dry_run { " (dry run)" } else { "" }
    );
    outln!("  listed      {:>8} objects", s.listed);
    if s.dry_run {
        outln!(
            "  {verb:<10}  {:>8} objects, {} (space needed)",
            s.would_copy.len(),
            human_bytes(s.bytes_planned)
        );
        for k in s.would_copy.iter().take(50) {
            outln!("      {k}");
        }
        if s.would_copy.len() > 50 {
            outln!(
                "      ... and {} more (--json lists all)",
                s.would_copy.len() - 50
            );
        }
    } else {
        outln!(
            "  {verb:<10}  {:>8} objects, {} in {:.1} s ({:.0} objects/s, {}/s)",
            s.copied,
            human_bytes(s.bytes_copied),
            s.elapsed_s,
            s.copied as f64 / secs,
            human_bytes((s.bytes_copied as f64 / secs) as u64)
        );
    }
    outln!("  skipped     {:>8} already present", s.skipped);
    if s.too_old > 0 {
        outln!("  too old     {:>8} older than --max-age", s.too_old);
    }
    if s.folders > 0 {
        outln!("  folders     {:>8} folder markers", s.folders);
    }
    for (title, items) in [
        ("rejected", &s.rejected),
        ("failed", &s.failed),
        ("unverified", &s.unverified_reasons),
    ] {
        outln!("  {title:<10}  {:>8}", items.len());
        super::print_key_reasons(items);
    }
    if let Some(a) = &s.aborted {
        outln!("  STOPPED: {a}");
    }
    if s.interrupted {
        outln!("  INTERRUPTED: run the same command again to resume");
    }
}
