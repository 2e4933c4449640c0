//! `stowage migrate s3-to-local | local-to-s3`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use stowage::ops::migrate::{self, MigrateOptions, MigrateSummary};
use stowage::size::human_bytes;
use stowage::{S3Config, SizeSpec, StoreConfig};
use tokio_util::sync::CancellationToken;

use crate::exit::Exit;
use crate::progress::Progress;

/// The `after_help` of both migrate directions: what stowage offers for the flags of
/// rclone and aws-cli an operator reaches for.
const FROM_RCLONE: &str = "\
Coming from rclone / aws s3 sync:
  --transfers N, --dryrun   accepted: the same as --concurrency N, --dry-run
  --checksum                the same: an already present file is told by its content, not by
                            size and mtime (every copy is checked against its ETag or checksum anyway)
  --size-only               reruns skip a file with the same size and mtime; no flag needed
  --delete                  not offered: a rerun never deletes; `stowage verify` lists extras
  --include/--exclude       not offered; --prefix (or --bucket s3://NAME/PREFIX) narrows the keys
  --max-age AGE             the same: s3-to-local copies only objects modified within AGE
  --min-age                 not offered for migrate (see `stowage cleanup --max-age`)";

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
    ///
    /// Environment: S3_BUCKET_NAME, S3_REGION / AWS_REGION / AWS_DEFAULT_REGION,
    /// AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_SESSION_TOKEN (or AWS_SHARED_CREDENTIALS_FILE / ~/.aws/credentials under
    /// AWS_PROFILE), S3_URL_ENCODED_LISTING, LOCAL_STORAGE_PATH. S3_PREFIX is ignored: the
    /// CLI addresses whole buckets (use --prefix).
    #[command(name = "s3-to-local", verbatim_doc_comment, after_help = FROM_RCLONE)]
    S3ToLocal(S3ToLocalArgs),

    /// Copy a local store back into a bucket (the rollback path).
    ///
    /// Files are uploaded with a SHA-256 checksum the server verifies (multipart above
    /// 8 MiB) and their Content-Type; a file already in the bucket is skipped when its
    /// content is proven the object's (the ETag, else the checksum the bucket stored), or,
    /// where nothing can prove it (an SSE-KMS ETag, no checksum), when its size and mtime
    /// equal the object's. Symlinks and stowage's own temp files are never uploaded.
    ///
    /// Example:
    ///   stowage migrate local-to-s3 --source /opt/meme-maker/storage --bucket clips-prod
    ///
    /// Exit codes: 0 all uploaded or present and verified; 1 some files failed, were
    /// rejected or are unverified; 2 usage, configuration or fatal error; 130 interrupted.
    ///
    /// Environment: as for s3-to-local (LOCAL_STORAGE_PATH is the source).
    #[command(name = "local-to-s3", verbatim_doc_comment, after_help = FROM_RCLONE)]
    LocalToS3(LocalToS3Args),
}

#[derive(Debug, Args)]
pub(crate) struct S3Args {
    /// Bucket to copy from / to: a name, or s3://NAME[/PREFIX] (the same as --bucket NAME
    /// --prefix PREFIX).
    #[arg(long, env = "S3_BUCKET_NAME", value_name = "NAME")]
    bucket: String,
    /// Only keys starting with this prefix (keys keep their full name on disk).
    #[arg(long, default_value = "", value_name = "P", hide_default_value = true)]
    prefix: String,
    /// S3-compatible endpoint with its scheme, e.g. http://127.0.0.1:9000
    /// [env: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL]
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Region [env: S3_REGION, AWS_REGION, AWS_DEFAULT_REGION; default: us-east-1]
    #[arg(long, value_name = "R")]
    region: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Objects copied at once (at least 1). Many in flight hide S3's per-request latency
    /// on small objects; at most 32 objects over 256 KiB stream at once whatever this says.
    /// Lower it if the bucket answers 503 SlowDown (retried, but slower).
    #[arg(long, visible_alias = "transfers", default_value_t = migrate::DEFAULT_CONCURRENCY, value_name = "N", value_parser = parse_concurrency)]
    concurrency: usize,
    /// List what would be copied, skipped and rejected; write nothing.
    #[arg(long, visible_alias = "dryrun")]
    dry_run: bool,
    /// Print the summary as one JSON object on stdout (also on a fatal error).
    #[arg(long)]
    json: bool,
}

/// Space limits on the local destination (s3-to-local only: a bucket has no free space).
#[derive(Debug, Args)]
pub(crate) struct SpaceArgs {
    /// Space to leave free on the destination filesystem (size like 10GB or a % of it).
    #[arg(long, default_value = "5%", value_name = "SIZE")]
    min_free: SizeSpec,
    /// Refuse to let the destination store grow beyond this (e.g. 50GB).
    #[arg(long, value_name = "SIZE")]
    max_used: Option<SizeSpec>,
}

#[derive(Debug, Args)]
pub(crate) struct S3ToLocalArgs {
    #[command(flatten)]
    s3: S3Args,
    /// Destination directory (the local store root); created if missing, but its parent
    /// must exist (a typo is not turned into a new tree). A relative path is resolved
    /// against the working directory and shown absolute.
    #[arg(long, env = "LOCAL_STORAGE_PATH", default_value = stowage::config::DEFAULT_LOCAL_PATH, value_name = "DIR")]
    dest: PathBuf,
    #[command(flatten)]
    space: SpaceArgs,
    /// Tell an already present file by its content (the proof recorded when it was copied,
    /// or its hash against the ETag) instead of size and mtime, and fetch again what
    /// differs. Reads every present file. (local-to-s3 always compares content.)
    #[arg(long)]
    checksum: bool,
    /// Copy only objects modified within this age (e.g. 24h, the retention `cleanup
    /// --max-age` keeps): a catch-up run skips what cleanup would delete, counted as too old.
    #[arg(long, value_parser = super::parse_max_age, value_name = "AGE")]
    max_age: Option<std::time::Duration>,
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

/// Refuses a `--dest` whose parent directory does not exist: migrate creates the
/// destination itself, never a chain of mistyped parents.
fn parent_exists(dest: &std::path::Path) -> stowage::Result<()> {
    if dest.exists() {
        return Ok(());
    }
    match dest.parent() {
        Some(parent) if !parent.is_dir() => Err(stowage::Error::Config {
            name: "--dest".into(),
            reason: format!(
                "{} does not exist and neither does its parent {}: stowage creates only the \
                 destination directory itself; check for a typo, or create {} first",
                dest.display(),
                parent.display(),
                parent.display()
            ),
        }),
        _ => Ok(()),
    }
}

/// For access denied with no credentials in sight: where stowage looked and what to set,
/// instead of leaving the operator with "check the bucket policy".
pub(crate) fn credentials_hint(e: &stowage::Error) -> Option<String> {
    if !matches!(e, stowage::Error::AccessDenied { .. }) {
        return None;
    }
    let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
    if set("AWS_ACCESS_KEY_ID") {
        return None;
    }
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")));
    if file.as_ref().is_some_and(|f| f.is_file()) {
        return None;
    }
    Some(format!(
        "no credentials were found: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set, {} \
         does not exist, and the machine (instance metadata) provided none. Set \
         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary \
         ones), or write them to ~/.aws/credentials (profile AWS_PROFILE, else default)",
        file.map_or_else(
            || "~/.aws/credentials".to_owned(),
            |f| f.display().to_string()
        )
    ))
}

/// `--concurrency`: a whole number, at least 1.
fn parse_concurrency(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err(format!(
            "0 would copy nothing: give how many objects to copy at once, at least 1 (default {})",
            migrate::DEFAULT_CONCURRENCY
        )),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number, e.g. 16")),
    }
}

impl S3Args {
    /// The bucket name and key prefix: `--bucket s3://NAME/PREFIX` is split here, and may
    /// not be combined with a different `--prefix`.
    fn bucket_and_prefix(&self) -> stowage::Result<(String, String)> {
        let Some(rest) = self.bucket.strip_prefix("s3://") else {
            return Ok((self.bucket.clone(), self.prefix.clone()));
        };
        let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if !prefix.is_empty() && !self.prefix.is_empty() && prefix != self.prefix {
            return Err(stowage::Error::Config {
                name: "--bucket".into(),
                reason: format!(
                    "{:?} names the prefix {prefix:?} and --prefix says {:?}: give the prefix once",
                    self.bucket, self.prefix
                ),
            });
        }
        let prefix = if prefix.is_empty() {
            &self.prefix
        } else {
            prefix
        };
        Ok((name.to_owned(), prefix.to_owned()))
    }

    /// Only keys starting with this (from `--prefix` or `--bucket s3://NAME/PREFIX`).
    pub(crate) fn prefix(&self) -> stowage::Result<String> {
        Ok(self.bucket_and_prefix()?.1)
    }

    /// The bucket's configuration: the environment, overridden by these flags.
    pub(crate) fn config(&self) -> stowage::Result<StoreConfig> {
        let (bucket, _) = self.bucket_and_prefix()?;
        let mut c = S3Config::from_env_for_bucket(&bucket)?;
        if let Some(e) = &self.endpoint {
            c.endpoint = Some(e.clone());
        }
        if let Some(e) = &c.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                let name = if self.endpoint.is_some() {
                    "--endpoint"
                } else {
                    "AWS_ENDPOINT_URL"
                };
                return Err(stowage::Error::Config {
                    name: name.into(),
                    reason: format!(
                        "{e:?} has no scheme: write http://{e} (or https://{e} for TLS)"
                    ),
                });
            }
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
    fn options(&self, prefix: String, cancel: CancellationToken) -> MigrateOptions {
        let mut o = MigrateOptions::default();
        o.prefix = prefix;
        o.concurrency = self.concurrency;
        o.dry_run = self.dry_run;
        o.cancel = cancel;
        o
    }
}

pub(crate) async fn run(cmd: MigrateCommand, quiet: bool) -> Exit {
    let cancel = crate::interrupt::cancel_on_signals("removing temp files");
    let (run, name) = match &cmd {
        MigrateCommand::S3ToLocal(a) => (&a.run, "migrate s3-to-local"),
        MigrateCommand::LocalToS3(a) => (&a.run, "migrate local-to-s3"),
    };
    let envelope = super::Envelope::start(name, run.json);
    let progress = Progress::new(quiet);
    let result = async {
        match &cmd {
            MigrateCommand::S3ToLocal(a) => {
                let src = a.s3.config()?.open()?;
                let mut opts = a.run.options(a.s3.prefix()?, cancel.clone());
                opts.min_free = a.space.min_free;
                opts.max_used = a.space.max_used;
                opts.checksum = a.checksum;
                opts.max_age = a.max_age;
                let dest = super::absolute("--dest", &a.dest)?;
                parent_exists(&dest)?;
                migrate::s3_to_local(&src, &dest, &opts, &progress).await
            }
            MigrateCommand::LocalToS3(a) => {
                let dst = a.s3.config()?.open()?;
                let opts = a.run.options(a.s3.prefix()?, cancel.clone());
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
        Err(e) => {
            let hint = credentials_hint(&e);
            return envelope.fatal(&e, hint);
        }
    };
    if run.json {
        let error = summary.aborted.as_ref().map(|a| super::JsonError {
            kind: "aborted",
            message: a.clone(),
            hint: Some("fix the cause, then run the same command again to resume".into()),
        });
        envelope.summary(&summary, error);
    } else if !quiet || summary.has_problems() || summary.aborted.is_some() {
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
            "  {verb:<10}  {:>8} objects, {}{}",
            s.would_copy.len(),
            human_bytes(s.bytes_planned),
            if s.direction == "s3-to-local" {
                " (space needed)"
            } else {
                ""
            }
        );
        for k in s.would_copy.iter().take(50) {
            outln!("      {}", k.key);
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
    if s.copied > 0 {
        outln!("  proven by   {}", s.proofs.describe());
    }
    if s.skipped_proofs.is_empty() {
        outln!("  skipped     {:>8} already present", s.skipped);
    } else {
        // local-to-s3 says how each skip was proven (size_only: by size and mtime).
        outln!(
            "  skipped     {:>8} already present ({})",
            s.skipped,
            s.skipped_proofs.describe()
        );
    }
    if s.too_old > 0 {
        outln!("  too old     {:>8} older than --max-age", s.too_old);
    }
    if s.folders > 0 {
        outln!("  folders     {:>8} folder markers", s.folders);
    }
    for (title, items) in [
        ("rejected", &s.rejected),
        ("failed", &s.failed),
        ("unverified", &s.unverified),
    ] {
        outln!("  {title:<10}  {:>8}", items.len());
        super::print_key_reasons(items);
    }
    // Shown only when there are some: most runs have none.
    for (title, items) in [("conflicts", &s.conflicts), ("vanished", &s.vanished)] {
        if !items.is_empty() {
            outln!("  {title:<10}  {:>8}", items.len());
            super::print_key_reasons(items);
        }
    }
    if let Some(a) = &s.aborted {
        outln!("  STOPPED: {a}");
    }
    if s.interrupted {
        outln!("  INTERRUPTED: run the same command again to resume");
    }
}
