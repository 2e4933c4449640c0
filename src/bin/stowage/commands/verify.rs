//! `stowage verify s3-to-local`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use stowage::ops::verify::{self, VerifyOptions, VerifySummary};
use stowage::ops::KeyReason;
use stowage::size::human_bytes;

use super::migrate::S3Args;
use crate::exit::Exit;
use crate::progress::Progress;

#[derive(Debug, Subcommand)]
pub(crate) enum VerifyCommand {
    /// Prove that a local copy matches its bucket, without downloading anything.
    ///
    /// Lists the bucket and compares every object with its local file: missing locally,
    /// extra locally, size differs, content differs (the file's MD5 against a single-part
    /// ETag; the multipart ETag recomputed for the likely part sizes). Objects whose ETag
    /// cannot be checked are reported as unverifiable, never as identical. Local files are
    /// hashed in parallel.
    ///
    /// Example:
    ///   stowage verify s3-to-local --bucket clips-prod --dest /opt/meme-maker/storage
    ///
    /// Exit codes: 0 identical; 1 differences or unverifiable objects (each listed with
    /// key and reason); 2 errors; 130 interrupted.
    ///
    /// Environment: as for `stowage migrate s3-to-local`.
    #[command(name = "s3-to-local", verbatim_doc_comment)]
    S3ToLocal(VerifyArgs),

    /// The rollback check: prove that a bucket matches the local store it was restored from.
    ///
    /// The same comparison as s3-to-local, named for `migrate local-to-s3`: the bucket
    /// listing against the files under --source, downloading nothing. Files only on disk
    /// are reported as missing from the bucket; objects only in the bucket as extra in it.
    /// (In --json the lists keep s3-to-local's names: `extra` is what the bucket lacks,
    /// `missing` what only the bucket has.)
    ///
    /// Example:
    ///   stowage verify local-to-s3 --source /opt/meme-maker/storage --bucket clips-prod
    ///
    /// Exit codes: 0 identical; 1 differences or unverifiable objects; 2 errors;
    /// 130 interrupted.
    ///
    /// Environment: as for `stowage migrate local-to-s3`.
    #[command(name = "local-to-s3", verbatim_doc_comment)]
    LocalToS3(VerifyRollbackArgs),
}

#[derive(Debug, Args)]
pub(crate) struct VerifyRollbackArgs {
    /// The local store the bucket was restored from (the store root).
    #[arg(long, env = "LOCAL_STORAGE_PATH", default_value = stowage::config::DEFAULT_LOCAL_PATH, value_name = "DIR")]
    source: PathBuf,
    #[command(flatten)]
    s3: S3Args,
    /// Print the findings as one JSON object on stdout (also on a fatal error).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    s3: S3Args,
    /// The local copy (the store root).
    #[arg(long, env = "LOCAL_STORAGE_PATH", default_value = stowage::config::DEFAULT_LOCAL_PATH, value_name = "DIR")]
    dest: PathBuf,
    /// Print the findings as one JSON object on stdout (also on a fatal error).
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(cmd: VerifyCommand, quiet: bool) -> Exit {
    let (a, rollback) = match cmd {
        VerifyCommand::S3ToLocal(a) => (a, false),
        VerifyCommand::LocalToS3(r) => (
            VerifyArgs {
                s3: r.s3,
                dest: r.source,
                json: r.json,
            },
            true,
        ),
    };
    let name = if rollback {
        "verify local-to-s3"
    } else {
        "verify s3-to-local"
    };
    let envelope = super::Envelope::start(name, a.json);
    let cancel = crate::interrupt::cancel_on_signals("reporting what was compared");
    let progress = Progress::new(quiet);
    let result = async {
        let src = a.s3.config()?.open()?;
        let dest = super::absolute(if rollback { "--source" } else { "--dest" }, &a.dest)?;
        let mut opts = VerifyOptions::default();
        opts.prefix = a.s3.prefix()?;
        opts.cancel = cancel;
        verify::s3_to_local(&src, &dest, &opts, &progress).await
    }
    .await;
    progress.finish();
    let s = match result {
        Ok(s) => s,
        Err(e) => {
            let hint = super::migrate::credentials_hint(&e);
            return envelope.fatal(&e, hint);
        }
    };
    if a.json {
        envelope.summary(&s, None);
    } else if !quiet || s.interrupted || s.has_differences() {
        print_human(&s, rollback);
    }
    if s.interrupted {
        Exit::Interrupted
    } else {
        Exit::from_problems(s.has_differences())
    }
}

fn print_human(s: &VerifySummary, rollback: bool) {
    if rollback {
        outln!("verify: {} (restored from {})", s.source, s.destination);
    } else {
        outln!("verify: {} vs {}", s.source, s.destination);
    }
    outln!(
        "  listed {} objects; {} identical ({} hashed in {:.1} s)",
        s.listed,
        s.identical,
        human_bytes(s.bytes_hashed),
        s.elapsed_s
    );
    let proven = s.proofs.describe();
    if !proven.is_empty() {
        outln!("  proven by {proven}");
    }
    let list = |title: &str, items: &[KeyReason]| {
        if !items.is_empty() {
            outln!("  {title}: {}", items.len());
            super::print_key_reasons(items);
        }
    };
    if rollback {
        list("missing from the bucket", &s.extra);
        list("only in the bucket", &s.missing);
    } else {
        list("missing locally", &s.missing);
        list("extra locally", &s.extra);
    }
    list("size differs", &s.size_differs);
    list("content differs", &s.content_differs);
    list("unverifiable", &s.unverifiable);
    list("rejected (unsafe keys, never copied)", &s.rejected);
    if s.interrupted {
        outln!("  INTERRUPTED: the lists above are incomplete");
    } else if !s.has_differences() {
        outln!(
            "  OK: {}",
            if rollback {
                "the bucket is identical to the local store"
            } else {
                "the local copy is identical to the bucket"
            }
        );
    }
}
