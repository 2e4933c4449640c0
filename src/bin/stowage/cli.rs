//! The command line: clap definitions only. Each command's arguments live next to the
//! code that runs it in `commands/`.

use clap::{Parser, Subcommand};

use crate::commands;

/// stowage: move a clip store from S3 to local disk, prove the copy, and keep the disk healthy.
///
/// Configuration comes from the same environment the clip service uses (LOCAL_STORAGE_PATH,
/// S3_BUCKET_NAME, S3_REGION/AWS_REGION/AWS_DEFAULT_REGION,
/// AWS_ENDPOINT_URL_S3/AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
/// AWS_SESSION_TOKEN or ~/.aws/credentials; serve also STORAGE_URL_SECRET, STORAGE_URL_TTL,
/// BASE_URL, FILES_PATH); flags override it. Each command's --help lists what it reads.
///
/// -q/--quiet on any command: print nothing on success (cron mails only problems).
///
/// Exit codes: 0 success; 1 finished with problems (failed, rejected, unverified or
/// different objects; files that could not be deleted; a threshold crossed);
/// 2 usage, configuration or fatal error; 3 the store lock was held (cleanup);
/// 130 interrupted; 141 the reader of the output went away.
#[derive(Debug, Parser)]
#[command(
    name = "stowage",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub(crate) struct Cli {
    /// Print nothing on success (for cron: only problems get mailed). Errors, warnings and
    /// the findings of a run with problems still print; `--json` still prints its document.
    #[arg(long, short, global = true)]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Copy a whole bucket to local disk (or back), verified and resumable.
    #[command(subcommand)]
    Migrate(commands::migrate::MigrateCommand),
    /// Serve a local store's files over HTTP (ranges, validators, signed URLs).
    Serve(commands::serve::ServeArgs),
    /// Prove a local copy matches its bucket, or a restored bucket its local store (sizes
    /// and ETags), downloading nothing.
    #[command(subcommand)]
    Verify(commands::verify::VerifyCommand),
    Cleanup(commands::cleanup::CleanupArgs),
    Disk(commands::disk::DiskArgs),
    /// Print the download URL the library hands out for a key (signed when a secret is set).
    Url(commands::url::UrlArgs),
}
