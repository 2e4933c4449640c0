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
    #[command(name = "s3-to-local", verbatim_doc_comment)]
    S3ToLocal(VerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    s3: S3Args,
    /// The local copy (the store root).
    #[arg(long, env = "LOCAL_STORAGE_PATH", default_value = stowage::config::DEFAULT_LOCAL_PATH, value_name = "DIR")]
    dest: PathBuf,
    /// Print the findings as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Print only the findings, no progress.
    #[arg(long, short)]
    quiet: bool,
}

pub(crate) async fn run(cmd: VerifyCommand) -> Exit {
    let VerifyCommand::S3ToLocal(a) = cmd;
    let cancel = crate::interrupt::cancel_on_signals();
    let progress = Progress::new(a.quiet);
    let result = async {
        let src = a.s3.config()?.open()?;
        let dest = super::absolute("--dest", &a.dest)?;
        let opts = VerifyOptions {
            prefix: a.s3.prefix.clone(),
            cancel,
            ..Default::default()
        };
        verify::s3_to_local(&src, &dest, &opts, &progress).await
    }
    .await;
    progress.finish();
    let s = match result {
        Ok(s) => s,
        Err(e) => return crate::fatal(&e),
    };
    if a.json {
        super::print_json(&s).expect("summary serializes");
    } else {
        print_human(&s);
    }
    if s.interrupted {
        Exit::Interrupted
    } else {
        Exit::from_problems(s.has_differences())
    }
}

fn print_human(s: &VerifySummary) {
    outln!("verify: {} vs {}", s.source, s.destination);
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
    list("missing locally", &s.missing);
    list("extra locally", &s.extra);
    list("size differs", &s.size_differs);
    list("content differs", &s.content_differs);
    list("unverifiable", &s.unverifiable);
    list("rejected (unsafe keys, never copied)", &s.rejected);
    if s.interrupted {
        outln!("  INTERRUPTED: the lists above are incomplete");
    } else if !s.has_differences() {
        outln!("  OK: the local copy is identical to the bucket");
    }
}
