//! `stowage cleanup`: arguments, the call to [`stowage::ops::cleanup`], the cron-mail summary.

use std::path::PathBuf;
use std::time::Duration;

use stowage::ops::cleanup::{cleanup, CleanupOptions, CleanupSummary};
use stowage::report::Reporter;
use stowage::size::{human_bytes, SizeSpec};

use crate::exit::Exit;

/// The `after_help`: what stowage offers for the rclone / aws-cli flags an operator
/// reaches for.
const FROM_RCLONE: &str = "\
Coming from rclone / aws s3 rm:
  rclone delete --min-age 7d   is `stowage cleanup --max-age 7d` (deletes files OLDER than 7d)
  --dryrun                     accepted: the same as --dry-run
  --max-delete N               the same
  --include/--exclude          not offered: cleanup works on the whole store under --root";

/// Most errors listed in the human summary; `--json` lists them all.
const ERRORS_SHOWN: usize = 20;

/// Delete old clips from a local store. Meant for cron.
///
/// Deletes regular files under --root not modified for --max-age, then, with --max-used,
/// the oldest remaining files until the store fits. Safe on a live server: symbolic links
/// are never followed or deleted, other filesystems mounted inside the root are not
/// entered, the root itself is never deleted, and stowage's own files (writes in progress
/// `.stowage-tmp.*`, the lock `.stowage.lock`) are skipped. Directories left empty are
/// removed. A run that finds another (cleanup or migrate) holding the store lock waits
/// up to --wait for it, then exits 3 naming the holder (pid, since when, command).
///
/// Refuses a --root that is not marked as a stowage store (a `.stowage` file; see
/// --init-store), and `/`. A run that would delete more than half of the store's files is
/// refused, before deleting anything, unless --force.
///
/// Examples:
///   stowage cleanup --max-age 7d
///   stowage cleanup --max-age 30d --max-used 50GB --json
///   stowage cleanup --max-age 24h --dry-run
///
/// Exit status: 0 done, 1 some files could not be deleted (listed) or --max-delete was
/// reached, 2 the run could not be done (root missing or unmarked, bad option, more than
/// half the store without --force), 3 another run held the lock for all of --wait,
/// 130 interrupted, 141 the reader of the output went away.
///
/// Environment: LOCAL_STORAGE_PATH (the store root).
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment, after_help = FROM_RCLONE)]
pub(crate) struct CleanupArgs {
    /// Delete files not modified for this long: 90min, 24h, 7d, 2weeks (a unit is
    /// required; `m`/`M` are refused as ambiguous).
    #[arg(long, value_name = "DURATION", value_parser = super::parse_max_age)]
    pub(crate) max_age: Duration,

    /// The store root.
    #[arg(
        long,
        value_name = "DIR",
        env = "LOCAL_STORAGE_PATH",
        default_value = "/opt/meme-maker/storage"
    )]
    pub(crate) root: PathBuf,

    /// Then delete the oldest files until the store (sum of file sizes) is at most SIZE:
    /// 50GB, 45GiB, or a share of the filesystem such as 80% (a unit is required).
    #[arg(long, value_name = "SIZE", value_parser = MaxUsed::parse)]
    pub(crate) max_used: Option<MaxUsed>,

    /// --max-used never deletes a file modified less than this long ago.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = super::parse_age)]
    pub(crate) min_age: Duration,

    /// Go ahead even if the run deletes more than half of the store's files (refused
    /// otherwise, before anything is deleted, with what it would delete).
    #[arg(long)]
    pub(crate) force: bool,

    /// Delete at most N files in this run, then stop and exit 1 saying so. No limit by
    /// default.
    #[arg(long, value_name = "N")]
    pub(crate) max_delete: Option<u64>,

    /// Mark --root as a stowage store (create its `.stowage` file) if it is not yet.
    /// cleanup refuses an unmarked directory; stores written by this version of stowage
    /// are marked already.
    #[arg(long)]
    pub(crate) init_store: bool,

    /// Print what would be deleted and the bytes it would free; delete nothing.
    #[arg(long, visible_alias = "dryrun")]
    pub(crate) dry_run: bool,

    /// If another run (cleanup or migrate) holds the store lock, wait this long for it,
    /// then give up with exit status 3, naming the holder.
    #[arg(long, value_name = "DURATION", default_value = "5min", value_parser = super::parse_age)]
    pub(crate) wait: Duration,

    /// Print the summary as one JSON object on stdout (the files deleted, bytes_freed,
    /// errors, ...), also on a fatal error or a held lock.
    #[arg(long)]
    pub(crate) json: bool,
}

impl CleanupArgs {
    fn to_options(&self, root: &std::path::Path) -> CleanupOptions {
        let mut o = CleanupOptions::new(root, self.max_age);
        o.max_used = self.max_used.as_ref().map(|m| m.spec);
        o.min_age = self.min_age;
        o.dry_run = self.dry_run;
        o.force = self.force;
        o.max_delete = self.max_delete;
        o.init_store = self.init_store;
        o.wait = self.wait;
        o
    }
}

/// Prints the dry run's "would delete" lines (to stderr under `--json`, so stdout stays
/// one JSON document) and other notes to stderr.
struct NotePrinter {
    json: bool,
    quiet: bool,
}

impl Reporter for NotePrinter {
    fn note(&self, msg: &str) {
        if msg.starts_with("would delete") {
            // The summary lists them too (`deleted`); printed live unless quiet or JSON.
            if !self.json && !self.quiet {
                outln!("{msg}");
            }
        } else {
            errln!("{msg}");
        }
    }
}

/// Runs the command; returns how it ended (0, 1, 2 or 3).
pub(crate) fn run(args: CleanupArgs, quiet: bool) -> Exit {
    let envelope = super::Envelope::start("cleanup", args.json);
    let notes = NotePrinter {
        json: args.json,
        quiet,
    };
    let root = match super::absolute("--root", &args.root) {
        Ok(r) => r,
        Err(e) => return envelope.fatal(&e, None),
    };
    let summary = match cleanup(&args.to_options(&root), &notes) {
        Ok(s) => s,
        Err(e) if matches!(&e, stowage::Error::Config { name, .. } if name == "init_store") => {
            let hint = format!(
                "mark it once, then run cleanup as before: stowage cleanup --init-store --root {} ...",
                root.display()
            );
            return envelope.fatal(&e, Some(hint));
        }
        Err(e) => return envelope.root_fatal("--root", &root, &e),
    };
    if summary.locked {
        // The note above named the holder; stdout gets only the JSON (for scripts).
        let message = format!(
            "gave up after waiting {} for the store lock",
            humantime::format_duration(args.wait)
        );
        let hint = "if that run is stuck, stop it (--wait sets how long to wait)";
        if args.json {
            let error = super::JsonError {
                kind: "locked",
                message: message.clone(),
                hint: Some(hint.into()),
            };
            envelope.summary(&summary, Some(error));
        }
        errln!("stowage cleanup: {message}; {hint}");
        return Exit::Locked;
    }
    let problems = !summary.errors.is_empty() || summary.max_delete_reached;
    if args.json {
        envelope.summary(&summary, None);
    } else if !quiet || problems {
        out!(
            "{}",
            human_summary(&summary, args.max_used.as_ref().map(|m| m.text.as_str()))
        );
    }
    Exit::from_problems(problems)
}

/// `--max-used` and the text the user wrote, echoed as written (`50GB`, not `46.6 GiB`).
#[derive(Debug, Clone)]
pub(crate) struct MaxUsed {
    spec: SizeSpec,
    text: String,
}

impl MaxUsed {
    fn parse(s: &str) -> Result<MaxUsed, String> {
        Ok(MaxUsed {
            spec: SizeSpec::parse_with_unit(s)?,
            text: s.trim().to_owned(),
        })
    }
}

fn human_summary(s: &CleanupSummary, max_used_text: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let root = s.root.display();
    let age = humantime::format_duration(Duration::from_secs(s.max_age_s));
    let _ = write!(
        out,
        "stowage cleanup {root}: max age {age} (files modified before {})",
        s.modified_before
    );
    if let Some(m) = s.max_used_bytes {
        match &max_used_text {
            Some(t) => {
                let _ = write!(out, ", max used {t} ({})", human_bytes(m));
            }
            None => {
                let _ = write!(out, ", max used {}", human_bytes(m));
            }
        }
    }
    let _ = writeln!(
        out,
        "{}",
        if s.dry_run {
            " (dry run: nothing deleted)"
        } else {
            ""
        }
    );
    let verb = if s.dry_run { "would delete" } else { "deleted" };
    let _ = write!(
        out,
        "  {verb} {} files ({} for age, {} for size), {} {}",
        s.deleted_count,
        s.deleted_for_age,
        s.deleted_for_size,
        if s.dry_run { "would free" } else { "freed" },
        human_bytes(s.bytes_freed)
    );
    if s.dirs_removed > 0 {
        let _ = write!(out, ", removed {} empty directories", s.dirs_removed);
    }
    let _ = writeln!(out, ", in {:.1} s", s.elapsed_s);
    if let (Some(after), Some(max)) = (s.store_bytes_after, s.max_used_bytes) {
        let _ = writeln!(
            out,
            "  store {} {} (max used {})",
            if s.dry_run { "would be" } else { "now" },
            human_bytes(after),
            human_bytes(max)
        );
    }
    if s.leftovers_removed > 0 {
        let _ = writeln!(
            out,
            "  removed {} .stowage-del.* files left by an interrupted run",
            s.leftovers_removed
        );
    }
    if s.max_delete_reached {
        let _ = writeln!(
            out,
            "  stopped at --max-delete ({} files): run again to go on",
            s.deleted_count
        );
    }
    let mut skipped = Vec::new();
    if s.symlinks_skipped > 0 {
        skipped.push(format!("{} symlinks (never followed)", s.symlinks_skipped));
    }
    if !s.mounts_skipped.is_empty() {
        let m: Vec<_> = s.mounts_skipped.iter().map(|m| m.key.as_str()).collect();
        skipped.push(format!("other filesystems at {}", m.join(", ")));
    }
    if s.vanished > 0 {
        skipped.push(format!("{} already gone", s.vanished));
    }
    if s.changed > 0 {
        skipped.push(format!("{} modified or replaced meanwhile", s.changed));
    }
    if !skipped.is_empty() {
        let _ = writeln!(out, "  left alone: {}", skipped.join("; "));
    }
    if !s.errors.is_empty() {
        let _ = writeln!(out, "  {} errors:", s.errors.len());
        for e in s.errors.iter().take(ERRORS_SHOWN) {
            let _ = writeln!(out, "    {}: {}", e.key, e.reason);
        }
        if s.errors.len() > ERRORS_SHOWN {
            let _ = writeln!(
                out,
                "    ... and {} more (--json lists them all)",
                s.errors.len() - ERRORS_SHOWN
            );
        }
    }
    out
}
