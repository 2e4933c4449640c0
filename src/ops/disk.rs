//! `disk`: how full the disk is and what the store holds, for people, scripts and
//! Prometheus.
//!
//! The store lives on a 60 GB disk and must stay under 50 GB, so a cron or monitoring
//! check needs one call that answers "how much room is left, what is using it, and what
//! would a cleanup free". Filesystem figures come from `fstatvfs` on the root's own
//! handle; store figures from one pass of the no-follow walker (`walk::Walker`) (no-follow, one
//! filesystem), which makes the same `fstatat` calls as `du` and so costs about the same.
//!
//! Memory is O(depth + `top_prefixes`): the walk is depth-first, so each top-level prefix
//! is finished before the next begins and only the largest `top_prefixes` are kept.
//!
//! Definitions (the same everywhere in stowage):
//! - *store bytes* (`apparent_bytes`): sum of `st_size` of the store's regular files —
//!   what `--warn-above <SIZE>` and `cleanup --max-used` compare against. stowage's own
//!   `.stowage*` files are not store content.
//! - *allocated bytes*: `st_blocks * 512` of everything under the root, directories and
//!   stowage's own files included, hard links counted once, other filesystems excluded:
//!   exactly what `du -sx --block-size=1 <root>` prints.
//! - *percent used*: `used / (used + avail)`, as `df` computes it (the blocks reserved for
//!   root count as unavailable, since the service does not run as root).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::key::Key;
use crate::local::AtomicFile;
use crate::ops::cleanup::{age_cutoff, lossy_path};
use crate::ops::KeyReason;
use crate::report::Reporter;
use crate::size::{human_bytes, SizeSpec};
use crate::walk::{EntryKind, WalkOptions, Walker};
use crate::{Error, Result};

/// What to measure.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DiskOptions {
    /// The store root.
    pub root: PathBuf,
    /// Also compute what `cleanup --max-age <this>` would free now.
    pub max_age: Option<Duration>,
    /// Warn when crossed: a byte size is compared with the store bytes, a percentage with
    /// the filesystem's use.
    pub warn_above: Option<SizeSpec>,
    /// How many of the largest top-level prefixes to report.
    pub top_prefixes: usize,
}

impl DiskOptions {
    /// Options measuring `root`, reporting the 10 largest prefixes, no threshold.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DiskOptions {
            root: root.into(),
            max_age: None,
            warn_above: None,
            top_prefixes: 10,
        }
    }
}

/// Figures of the filesystem holding the root.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FsFigures {
    /// Total size (`f_blocks * f_frsize`).
    pub size_bytes: u64,
    /// Used (`(f_blocks - f_bfree) * f_frsize`).
    pub used_bytes: u64,
    /// Available to unprivileged users (`f_bavail * f_frsize`).
    pub avail_bytes: u64,
    /// `used / (used + avail) * 100`, as `df` shows it.
    pub used_percent: f64,
    /// Inodes in total (`f_files`).
    pub inodes_total: u64,
    /// Inodes in use (`f_files - f_ffree`).
    pub inodes_used: u64,
    /// Inodes free (`f_ffree`).
    pub inodes_free: u64,
}

/// A file and when it was last modified.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileStamp {
    /// Path relative to the root (`key` in JSON, as in every summary).
    #[serde(rename = "key", serialize_with = "lossy_path")]
    pub path: PathBuf,
    /// Modification time, RFC 3339 UTC.
    pub mtime: String,
    /// Modification time, seconds since the Unix epoch.
    pub mtime_unix_s: i64,
}

/// Store bytes under one top-level prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct PrefixUsage {
    /// `clips/` for a top-level directory; the empty string for files directly in the root.
    pub prefix: String,
    /// Sum of file sizes.
    pub bytes: u64,
    /// Number of files.
    pub files: u64,
}

/// What the store holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreFigures {
    /// Sum of the store files' sizes ("store bytes").
    pub apparent_bytes: u64,
    /// Disk space used under the root, as `du -sx --block-size=1` counts it.
    pub allocated_bytes: u64,
    /// Regular files of the store.
    pub files: u64,
    /// Directories under the root (the root not included).
    pub dirs: u64,
    /// Symbolic links (not followed).
    pub symlinks: u64,
    /// stowage's own files: temp files of writes in progress and the lock file.
    pub own_files: u64,
    /// The least recently modified store file.
    pub oldest: Option<FileStamp>,
    /// The most recently modified store file.
    pub newest: Option<FileStamp>,
    /// The largest top-level prefixes, largest first.
    pub top_prefixes: Vec<PrefixUsage>,
    /// Other filesystems mounted inside the root, not entered (keys relative to the root).
    pub mounts_skipped: Vec<KeyReason>,
}

/// What a cleanup with a given age would free now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CleanupEstimate {
    /// The age, in seconds.
    pub max_age_s: u64,
    /// Files it would delete.
    pub files: u64,
    /// Bytes it would free.
    pub bytes: u64,
}

/// Everything `disk` measured.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct DiskReport {
    /// The store root.
    #[serde(serialize_with = "lossy_path")]
    pub root: PathBuf,
    /// When the figures were taken, seconds since the Unix epoch.
    pub timestamp_s: f64,
    /// The filesystem holding the root.
    pub filesystem: FsFigures,
    /// The store.
    pub store: StoreFigures,
    /// With `max_age`: what a cleanup would free now.
    pub cleanup: Option<CleanupEstimate>,
    /// One line per crossed threshold; empty when all is well.
    pub warnings: Vec<String>,
    /// Parts of the tree that could not be read: the store figures are then too low.
    pub errors: Vec<KeyReason>,
    /// How long the walk took.
    pub elapsed_s: f64,
}

/// Measures the filesystem holding `opts.root` and walks the store. Blocking.
///
/// `Err` only when the root cannot be opened or `statvfs` fails; unreadable parts of the
/// tree are listed in [`DiskReport::errors`].
pub fn disk(opts: &DiskOptions, reporter: &dyn Reporter) -> Result<DiskReport> {
    let started = Instant::now();
    let now = SystemTime::now();
    let walker = Walker::new(
        &opts.root,
        WalkOptions::default()
            .include_reserved(true)
            .dirs_post_order(true),
    )?;
    let vfs = rustix::fs::fstatvfs(&*walker.root_fd())
        .map_err(|e| Error::io("statvfs", &opts.root, e.into()))?;
    let frsize = vfs.f_frsize;
    let used = vfs
        .f_blocks
        .saturating_sub(vfs.f_bfree)
        .saturating_mul(frsize);
    let avail = vfs.f_bavail.saturating_mul(frsize);
    let filesystem = FsFigures {
        size_bytes: vfs.f_blocks.saturating_mul(frsize),
        used_bytes: used,
        avail_bytes: avail,
        used_percent: if used + avail == 0 {
            0.0
        } else {
            used as f64 * 100.0 / (used + avail) as f64
        },
        inodes_total: vfs.f_files,
        inodes_used: vfs.f_files.saturating_sub(vfs.f_ffree),
        inodes_free: vfs.f_ffree,
    };

    reporter.phase("walking the store", None, None);
    let root_stat = *walker.root_stat();
    let mut store = StoreFigures {
        apparent_bytes: 0,
        allocated_bytes: (root_stat.st_blocks as u64).saturating_mul(512),
        files: 0,
        dirs: 0,
        symlinks: 0,
        own_files: 0,
        oldest: None,
        newest: None,
        top_prefixes: Vec::new(),
        mounts_skipped: Vec::new(),
    };
    let cutoff = opts.max_age.map(|age| age_cutoff(now, age));
    let mut estimate = opts.max_age.map(|age| CleanupEstimate {
        max_age_s: age.as_secs(),
        files: 0,
        bytes: 0,
    });
    let mut errors = Vec::new();
    let mut oldest: Option<(SystemTime, PathBuf)> = None;
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    // Hard links are counted once, as du does; only multiply-linked files are remembered.
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    let mut prefixes = TopPrefixes::new(opts.top_prefixes);

    for item in walker {
        let entry = match item {
            Ok(entry) => entry,
            Err(e) => {
                errors.push(KeyReason::at(&opts.root, &e.path, e.to_string()));
                continue;
            }
        };
        if entry.kind() == EntryKind::MountPoint {
            store.mounts_skipped.push(KeyReason::at(
                Path::new(""),
                entry.path(),
                "another filesystem is mounted there: not entered",
            ));
            continue;
        }
        if entry.kind() != EntryKind::Dir
            && entry.nlink() > 1
            && !linked.insert((entry.dev(), entry.ino()))
        {
            continue;
        }
        store.allocated_bytes += entry.allocated();
        let own = entry
            .file_name()
            .as_bytes()
            .starts_with(crate::key::RESERVED_PREFIX.as_bytes());
        match entry.kind() {
            EntryKind::Dir => {
                store.dirs += 1;
                if entry.depth() == 1 {
                    prefixes.finish_dir(entry.file_name());
                }
            }
            EntryKind::Symlink => store.symlinks += 1,
            EntryKind::File if own => store.own_files += 1,
            EntryKind::File => {
                reporter.items_found(1);
                let size = entry.size();
                let mtime = entry.mtime();
                store.files += 1;
                store.apparent_bytes += size;
                prefixes.add(entry.path(), size);
                if oldest.as_ref().is_none_or(|(t, _)| mtime < *t) {
                    oldest = Some((mtime, entry.path().to_path_buf()));
                }
                if newest.as_ref().is_none_or(|(t, _)| mtime > *t) {
                    newest = Some((mtime, entry.path().to_path_buf()));
                }
                if let (Some(cutoff), Some(est)) = (cutoff, estimate.as_mut()) {
                    if mtime < cutoff {
                        est.files += 1;
                        est.bytes += size;
                    }
                }
            }
            EntryKind::MountPoint | EntryKind::Other => {}
        }
    }
    store.top_prefixes = prefixes.finish();
    store.oldest = oldest.map(stamp);
    store.newest = newest.map(stamp);

    let mut warnings = Vec::new();
    match opts.warn_above {
        Some(SizeSpec::Bytes(limit)) if store.apparent_bytes > limit => warnings.push(format!(
            "store {} holds {} ({} bytes), above the warning threshold of {}",
            opts.root.display(),
            human_bytes(store.apparent_bytes),
            store.apparent_bytes,
            human_bytes(limit)
        )),
        Some(SizeSpec::Percent(pct)) if filesystem.used_percent > pct => warnings.push(format!(
            "filesystem holding {} is {:.1}% used ({} available), above the warning threshold of {pct}%",
            opts.root.display(),
            filesystem.used_percent,
            human_bytes(filesystem.avail_bytes)
        )),
        _ => {}
    }

    Ok(DiskReport {
        root: opts.root.clone(),
        timestamp_s: now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
        filesystem,
        store,
        cleanup: estimate,
        warnings,
        errors,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

fn stamp((t, path): (SystemTime, PathBuf)) -> FileStamp {
    let unix = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    FileStamp {
        path,
        mtime: humantime::format_rfc3339_seconds(t).to_string(),
        mtime_unix_s: unix,
    }
}

/// The largest `n` top-level prefixes, in O(n) memory: the walk finishes one top-level
/// directory before starting the next, so only the current one is open.
struct TopPrefixes {
    n: usize,
    current: Option<PrefixUsage>,
    root_files: PrefixUsage,
    /// Min-heap of the largest finished prefixes.
    best: BinaryHeap<Reverse<(u64, String, u64)>>,
}

impl TopPrefixes {
    fn new(n: usize) -> Self {
        TopPrefixes {
            n,
            current: None,
            root_files: PrefixUsage {
                prefix: String::new(),
                bytes: 0,
                files: 0,
            },
            best: BinaryHeap::new(),
        }
    }

    fn label(name: &OsStr) -> String {
        format!("{}/", name.to_string_lossy())
    }

    fn add(&mut self, rel: &Path, size: u64) {
        let mut comps = rel.components();
        let first = match (comps.next(), comps.next()) {
            (Some(Component::Normal(first)), Some(_)) => first,
            _ => {
                self.root_files.bytes += size;
                self.root_files.files += 1;
                return;
            }
        };
        let label = Self::label(first);
        if self.current.as_ref().is_some_and(|c| c.prefix != label) {
            self.flush();
        }
        let cur = self.current.get_or_insert(PrefixUsage {
            prefix: label,
            bytes: 0,
            files: 0,
        });
        cur.bytes += size;
        cur.files += 1;
    }

    /// A top-level directory was finished (post-order), even an empty one.
    fn finish_dir(&mut self, name: &OsStr) {
        let label = Self::label(name);
        if self.current.as_ref().is_none_or(|c| c.prefix != label) {
            self.flush();
            self.current = Some(PrefixUsage {
                prefix: label,
                bytes: 0,
                files: 0,
            });
        }
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(p) = self.current.take() {
            self.push(p);
        }
    }

    fn push(&mut self, p: PrefixUsage) {
        if self.n == 0 {
            return;
        }
        self.best.push(Reverse((p.bytes, p.prefix, p.files)));
        if self.best.len() > self.n {
            self.best.pop();
        }
    }

    fn finish(mut self) -> Vec<PrefixUsage> {
        self.flush();
        if self.root_files.files > 0 {
            let root = std::mem::replace(
                &mut self.root_files,
                PrefixUsage {
                    prefix: String::new(),
                    bytes: 0,
                    files: 0,
                },
            );
            self.push(root);
        }
        let mut v: Vec<PrefixUsage> = self
            .best
            .into_iter()
            .map(|Reverse((bytes, prefix, files))| PrefixUsage {
                prefix,
                bytes,
                files,
            })
            .collect();
        v.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.prefix.cmp(&b.prefix)));
        v
    }
}

impl DiskReport {
    /// The figures in the Prometheus text exposition format (version 0.0.4), with `HELP`
    /// and `TYPE` lines, every sample labelled with the store `root`; ready for
    /// node_exporter's textfile collector.
    pub fn to_prometheus(&self) -> String {
        let root = escape_label(&self.root.to_string_lossy());
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (labels, value) in samples {
                let _ = writeln!(
                    out,
                    "{name}{{root=\"{root}\"{labels}}} {}",
                    fmt_value(*value)
                );
            }
        };
        let one = |v: f64| [(String::new(), v)];
        let fs = &self.filesystem;
        let st = &self.store;
        gauge(
            "stowage_fs_size_bytes",
            "Size of the filesystem holding the store root.",
            &one(fs.size_bytes as f64),
        );
        gauge(
            "stowage_fs_used_bytes",
            "Bytes used on the filesystem holding the store root.",
            &one(fs.used_bytes as f64),
        );
        gauge(
            "stowage_fs_avail_bytes",
            "Bytes available to unprivileged users on the filesystem holding the store root (f_bavail).",
            &one(fs.avail_bytes as f64),
        );
        gauge(
            "stowage_fs_used_ratio",
            "Share of the filesystem in use, used / (used + avail), as df shows it.",
            &one(fs.used_percent / 100.0),
        );
        gauge(
            "stowage_fs_inodes_used",
            "Inodes in use on the filesystem holding the store root.",
            &one(fs.inodes_used as f64),
        );
        gauge(
            "stowage_fs_inodes_free",
            "Free inodes on the filesystem holding the store root.",
            &one(fs.inodes_free as f64),
        );
        gauge(
            "stowage_store_bytes",
            "Sum of the sizes of the files in the store.",
            &one(st.apparent_bytes as f64),
        );
        gauge(
            "stowage_store_allocated_bytes",
            "Disk space used under the store root, as du -sx counts it.",
            &one(st.allocated_bytes as f64),
        );
        gauge(
            "stowage_store_files",
            "Number of files in the store.",
            &one(st.files as f64),
        );
        if let Some(o) = &st.oldest {
            gauge(
                "stowage_store_oldest_file_timestamp_seconds",
                "Modification time of the oldest file in the store.",
                &one(o.mtime_unix_s as f64),
            );
        }
        if let Some(n) = &st.newest {
            gauge(
                "stowage_store_newest_file_timestamp_seconds",
                "Modification time of the newest file in the store.",
                &one(n.mtime_unix_s as f64),
            );
        }
        let by_prefix = |f: fn(&PrefixUsage) -> u64| -> Vec<(String, f64)> {
            st.top_prefixes
                .iter()
                .map(|p| {
                    (
                        format!(",prefix=\"{}\"", escape_label(&p.prefix)),
                        f(p) as f64,
                    )
                })
                .collect()
        };
        gauge(
            "stowage_store_prefix_bytes",
            "Sum of file sizes under the largest top-level prefixes (prefix=\"\" for files in the root).",
            &by_prefix(|p| p.bytes),
        );
        gauge(
            "stowage_store_prefix_files",
            "Number of files under the largest top-level prefixes.",
            &by_prefix(|p| p.files),
        );
        if let Some(c) = &self.cleanup {
            let label = format!(
                ",max_age=\"{}\"",
                escape_label(
                    &humantime::format_duration(Duration::from_secs(c.max_age_s)).to_string()
                )
            );
            gauge(
                "stowage_cleanup_reclaimable_bytes",
                "Bytes a cleanup with this max_age would free now.",
                &[(label.clone(), c.bytes as f64)],
            );
            gauge(
                "stowage_cleanup_reclaimable_files",
                "Files a cleanup with this max_age would delete now.",
                &[(label, c.files as f64)],
            );
        }
        gauge(
            "stowage_disk_warnings",
            "Warning thresholds crossed (0 when all is well).",
            &one(self.warnings.len() as f64),
        );
        gauge(
            "stowage_disk_walk_errors",
            "Parts of the store that could not be read during the walk.",
            &one(self.errors.len() as f64),
        );
        gauge(
            "stowage_disk_walk_duration_seconds",
            "How long walking the store took.",
            &one(self.elapsed_s),
        );
        gauge(
            "stowage_disk_last_run_timestamp_seconds",
            "When these figures were taken.",
            &one(self.timestamp_s),
        );
        out
    }

    /// Writes [`DiskReport::to_prometheus`] to `path` atomically: a temp file in the same
    /// directory (named so the textfile collector, which reads `*.prom`, ignores it),
    /// fsynced, then renamed over `path`.
    pub fn write_prometheus(&self, path: &Path) -> Result<()> {
        write_atomically(path, self.to_prometheus().as_bytes())
    }
}

/// Writes `path` through the store's own atomic writer (temp file beside it, fsync,
/// rename, fsync of the directory): the textfile collector never reads half a file, and
/// the temp name does not end in `.prom`, so it is never collected either.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(OsStr::to_str)
        .and_then(|n| Key::new(n).ok())
        .ok_or_else(|| {
            Error::config(
                "prometheus",
                format!("{} is not a file path stowage can write", path.display()),
            )
        })?;
    let mut file = AtomicFile::create(dir, &name).map_err(|e| e.into_error(path.to_path_buf()))?;
    file.write_all(bytes)
        .map_err(|e| Error::io("write", path, e))?;
    file.commit().map_err(|e| e.into_error(path.to_path_buf()))
}

/// Escapes a label value per the Prometheus text format: `\`, `"` and newline.
pub fn escape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }

    #[test]
    fn top_prefixes_keeps_the_largest() {
        let mut t = TopPrefixes::new(2);
        t.add(Path::new("a/1"), 5);
        t.add(Path::new("a/2"), 5);
        t.finish_dir(OsStr::new("a"));
        t.add(Path::new("b/x/1"), 100);
        t.finish_dir(OsStr::new("b"));
        t.finish_dir(OsStr::new("empty"));
        t.add(Path::new("rootfile"), 1);
        let v = t.finish();
        assert_eq!(
            v,
            [
                PrefixUsage {
                    prefix: "b/".into(),
                    bytes: 100,
                    files: 1
                },
                PrefixUsage {
                    prefix: "a/".into(),
                    bytes: 10,
                    files: 2
                },
            ]
        );
    }

    #[test]
    fn values_print_as_integers_when_whole() {
        assert_eq!(fmt_value(3.0), "3");
        assert_eq!(fmt_value(0.5), "0.5");
    }
}
