//! `stowage disk`: arguments, the call to [`stowage::ops::disk`], the report and the
//! monitoring exit status.

use std::path::PathBuf;
use std::time::Duration;

use stowage::ops::disk::{disk, DiskOptions, DiskReport};
use stowage::report::NoopReporter;
use stowage::size::{human_bytes, SizeSpec};

use crate::exit::Exit;

/// How full the disk is and what the store holds. Meant for monitoring checks.
///
/// Shows the filesystem holding --root (size, used, available to unprivileged users,
/// percent used as df shows it, inodes) and the store (bytes, bytes on disk as `du -sx`
/// counts them, files, oldest and newest file, largest top-level prefixes). Symbolic links
/// are not followed and other filesystems mounted inside the root are not entered.
///
/// Examples:
///   stowage disk
///   stowage disk --max-age 7d --warn-above 50GB
///   stowage disk --warn-above 80% --prometheus /var/lib/node_exporter/textfile/stowage.prom
///
/// Exit status: 0 all is well, 1 a --warn-above threshold is crossed (a WARNING line
/// says which), 2 error (root missing, part of the tree unreadable, file not written),
/// 130 interrupted.
///
/// Environment: LOCAL_STORAGE_PATH (the store root).
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub(crate) struct DiskArgs {
    /// The store root.
    #[arg(
        long,
        value_name = "DIR",
        env = "LOCAL_STORAGE_PATH",
        default_value = "/opt/meme-maker/storage"
    )]
    pub(crate) root: PathBuf,

    /// Also show what `stowage cleanup --max-age DURATION` would free now: 24h, 7d (the
    /// same rules as cleanup's: a unit, more than zero).
    #[arg(long, value_name = "DURATION", value_parser = super::parse_max_age)]
    pub(crate) max_age: Option<Duration>,

    /// Warn and exit 1 above this; give it more than once to check several things: a size
    /// (50GB, 45GiB) is compared with the store's bytes, PCT% with the filesystem's used
    /// share as df shows it (80%), PCT%inodes with its inodes in use (90%inodes).
    #[arg(long, value_name = "SIZE|PCT%|PCT%inodes", value_parser = Threshold::parse)]
    pub(crate) warn_above: Vec<Threshold>,

    /// How many of the largest top-level prefixes to show.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) top: usize,

    /// Print the report as one JSON object on stdout (also on a fatal error).
    #[arg(long)]
    pub(crate) json: bool,

    /// Also write the figures in the Prometheus text format to FILE, atomically, for
    /// node_exporter's textfile collector (name it *.prom).
    #[arg(long, value_name = "FILE")]
    pub(crate) prometheus: Option<PathBuf>,
}

/// One `--warn-above`, with the text the user wrote (echoed in the warning as written).
#[derive(Debug, Clone)]
pub(crate) struct Threshold {
    kind: ThresholdKind,
    text: String,
}

#[derive(Debug, Clone, Copy)]
enum ThresholdKind {
    StoreBytes(u64),
    FsUsedPercent(f64),
    InodesUsedPercent(f64),
}

impl Threshold {
    fn parse(s: &str) -> Result<Threshold, String> {
        let text = s.trim().to_owned();
        let kind = if let Some(p) = text.strip_suffix("%inodes") {
            ThresholdKind::InodesUsedPercent(percent(p)?)
        } else {
            match SizeSpec::parse_with_unit(&text)? {
                SizeSpec::Bytes(b) => ThresholdKind::StoreBytes(b),
                SizeSpec::Percent(p) => ThresholdKind::FsUsedPercent(p),
            }
        };
        Ok(Threshold { kind, text })
    }

    /// The warning when `r` crosses this threshold.
    fn check(&self, r: &DiskReport) -> Option<String> {
        let (f, t, root) = (&r.filesystem, &self.text, r.root.display());
        match self.kind {
            ThresholdKind::StoreBytes(limit) if r.store.apparent_bytes > limit => Some(format!(
                "store {root} holds {} ({} bytes), above the warning threshold of {t}",
                human_bytes(r.store.apparent_bytes),
                r.store.apparent_bytes
            )),
            ThresholdKind::FsUsedPercent(p) if f.used_percent > p => Some(format!(
                "filesystem holding {root} is {:.1}% used ({} available), above the warning threshold of {t}",
                f.used_percent,
                human_bytes(f.avail_bytes)
            )),
            ThresholdKind::InodesUsedPercent(p) if f.inodes_total > 0 => {
                let used = f.inodes_used as f64 * 100.0 / f.inodes_total as f64;
                (used > p).then(|| {
                    format!(
                        "filesystem holding {root} has {used:.1}% of its inodes in use ({} free), above the warning threshold of {t}",
                        f.inodes_free
                    )
                })
            }
            _ => None,
        }
    }
}

/// The number of `PCT%inodes`: 0 to 100.
fn percent(p: &str) -> Result<f64, String> {
    match p.trim().parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{p:?} is not a percentage from 0 to 100, as in 90%inodes"
        )),
    }
}

/// Runs the command; returns how it ended (0, 1 or 2).
pub(crate) fn run(args: DiskArgs, quiet: bool) -> Exit {
    let envelope = super::Envelope::start("disk", args.json);
    let root = match super::absolute("--root", &args.root) {
        Ok(r) => r,
        Err(e) => return envelope.fatal(&e, None),
    };
    let mut o = DiskOptions::new(&root);
    o.max_age = args.max_age;
    o.top_prefixes = args.top;
    let mut report = match disk(&o, &NoopReporter) {
        Ok(r) => r,
        Err(e) => return envelope.root_fatal("--root", &root, &e),
    };
    let crossed: Vec<String> = args
        .warn_above
        .iter()
        .filter_map(|t| t.check(&report))
        .collect();
    report.warnings.extend(crossed);
    let mut status = if !report.errors.is_empty() {
        Exit::Error
    } else if !report.warnings.is_empty() {
        Exit::Problems
    } else {
        Exit::Success
    };
    if let Some(path) = &args.prometheus {
        if let Err(e) = report.write_prometheus(path) {
            errln!("stowage disk: {}", super::error_text(&e));
            status = Exit::Error;
        }
    }
    // Warnings first: they are the point of a monitoring run, whatever happens to stdout.
    for w in &report.warnings {
        errln!("WARNING: {w}");
    }
    if args.json {
        envelope.summary(&report, None);
    } else if !quiet || status != Exit::Success {
        out!("{}", human_report(&report));
    }
    status
}

fn human_report(r: &DiskReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let f = &r.filesystem;
    let s = &r.store;
    let _ = writeln!(out, "filesystem holding {}", r.root.display());
    let _ = writeln!(
        out,
        "  size {}, used {} ({:.1}%), available {}; inodes {} used, {} free",
        human_bytes(f.size_bytes),
        human_bytes(f.used_bytes),
        f.used_percent,
        human_bytes(f.avail_bytes),
        f.inodes_used,
        f.inodes_free
    );
    let _ = writeln!(out, "store");
    let _ = writeln!(
        out,
        "  {} in {} files ({} on disk), {} directories, {} symlinks",
        human_bytes(s.apparent_bytes),
        s.files,
        human_bytes(s.allocated_bytes),
        s.dirs,
        s.symlinks
    );
    if let (Some(o), Some(n)) = (&s.oldest, &s.newest) {
        let _ = writeln!(
            out,
            "  oldest {} ({}), newest {} ({})",
            o.path.display(),
            o.mtime,
            n.path.display(),
            n.mtime
        );
    }
    if !s.top_prefixes.is_empty() {
        let _ = writeln!(out, "  largest prefixes:");
        for p in &s.top_prefixes {
            let name = if p.prefix.is_empty() {
                "(files in the root)"
            } else {
                p.prefix.as_str()
            };
            let _ = writeln!(
                out,
                "    {:>10}  {:>9} files  {}",
                human_bytes(p.bytes),
                p.files,
                name.escape_debug()
            );
        }
    }
    for m in &s.mounts_skipped {
        let _ = writeln!(out, "  not entered (another filesystem): {}", m.key);
    }
    if let Some(c) = &r.cleanup {
        let _ = writeln!(
            out,
            "  cleanup --max-age {} would free {} ({} files)",
            humantime::format_duration(Duration::from_secs(c.max_age_s)),
            human_bytes(c.bytes),
            c.files
        );
    }
    if !r.errors.is_empty() {
        let _ = writeln!(
            out,
            "  {} parts of the tree could not be read (figures are too low):",
            r.errors.len()
        );
        for e in r.errors.iter().take(20) {
            let _ = writeln!(out, "    {}", e.reason);
        }
    }
    let _ = writeln!(out, "  walked in {:.2} s", r.elapsed_s);
    out
}
