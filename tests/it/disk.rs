//! `ops::disk` against real trees, `statvfs`, `du` and the Prometheus text format.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use stowage::ops::disk::{disk, DiskOptions, DiskReport};
use stowage::report::NoopReporter;
use stowage::size::SizeSpec;

use crate::local_tree::{file, run, TmpfsMount, DAY};

fn measure(o: &DiskOptions) -> DiskReport {
    disk(o, &NoopReporter).unwrap()
}

/// A store with nested prefixes, a symlink, a hard link, stowage's own files.
fn sample_store(r: &Path) {
    file(r, "clips/1/a.mp4", 300_000, 10 * DAY);
    file(r, "clips/1/b.mp4", 5_000, 2 * DAY);
    file(r, "clips/2/c.mp4", 123_457, 40 * DAY);
    file(r, "thumbs/1.jpg", 4_097, DAY);
    file(r, "thumbs/2.jpg", 0, 3 * DAY);
    file(r, "root.txt", 10, Duration::from_secs(60));
    file(r, "clips/.stowage-tmp.0a0b", 9_000, Duration::ZERO);
    file(r, ".stowage.lock", 0, Duration::ZERO);
    fs::create_dir(r.join("empty")).unwrap();
    symlink("/etc/passwd", r.join("thumbs/link")).unwrap();
    fs::hard_link(r.join("thumbs/1.jpg"), r.join("thumbs/1-again.jpg")).unwrap();
}

#[test]
fn store_figures_match_du_and_find() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    sample_store(r);
    let mut o = DiskOptions::new(r);
    o.max_age = Some(7 * DAY);
    let rep = measure(&o);
    let st = &rep.store;

    // Allocated: exactly what du counts (one filesystem, hard links once, dirs included).
    let du = run(Command::new("du").args(["-sx", "--block-size=1"]).arg(r));
    let du: u64 = du.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(st.allocated_bytes, du, "{rep:#?}");

    // Apparent: du's per-entry apparent sizes, summed over the store's regular files.
    let all = run(Command::new("du").args(["-abx"]).arg(r));
    let mut apparent = 0u64;
    for line in all.lines() {
        let (size, path) = line.split_once('\t').unwrap();
        let p = Path::new(path);
        let own = p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".stowage");
        if !own && p.symlink_metadata().unwrap().file_type().is_file() {
            apparent += size.parse::<u64>().unwrap();
        }
    }
    // du -a lists a hard-linked file once, as we count it.
    assert_eq!(st.apparent_bytes, apparent);
    assert_eq!(st.apparent_bytes, 300_000 + 5_000 + 123_457 + 4_097 + 10);

    let found = run(Command::new("find").arg(r).args([
        "-xdev",
        "-type",
        "f",
        "!",
        "-name",
        ".stowage*",
        "-links",
        "1",
    ]));
    assert_eq!(
        st.files,
        found.lines().count() as u64 + 1,
        "plus one hard-linked file, counted once"
    );
    assert_eq!((st.dirs, st.symlinks, st.own_files), (5, 1, 2));

    assert_eq!(st.oldest.as_ref().unwrap().path, Path::new("clips/2/c.mp4"));
    assert_eq!(st.newest.as_ref().unwrap().path, Path::new("root.txt"));
    let prefixes: Vec<_> = st
        .top_prefixes
        .iter()
        .map(|p| (p.prefix.as_str(), p.bytes, p.files))
        .collect();
    assert_eq!(
        prefixes,
        [
            ("clips/", 428_457, 3),
            ("thumbs/", 4_097, 2),
            ("", 10, 1),
            ("empty/", 0, 0)
        ]
    );

    let est = rep.cleanup.as_ref().unwrap();
    assert_eq!((est.files, est.bytes), (2, 423_457));
    assert!(rep.errors.is_empty() && rep.warnings.is_empty());
}

#[test]
fn filesystem_figures_match_statvfs_and_df() {
    let t = tempfile::tempdir().unwrap();
    let rep = measure(&DiskOptions::new(t.path()));
    let fs_ = &rep.filesystem;
    let v = rustix::fs::statvfs(t.path()).unwrap();
    assert_eq!(fs_.size_bytes, v.f_blocks * v.f_frsize);
    assert_eq!(fs_.inodes_total, v.f_files);
    // Other processes (builds) write to this filesystem meanwhile: allow 1% of its size.
    let slack = fs_.size_bytes / 100;
    assert!(fs_.avail_bytes.abs_diff(v.f_bavail * v.f_frsize) <= slack);
    assert!(
        fs_.used_bytes
            .abs_diff((v.f_blocks - v.f_bfree) * v.f_frsize)
            <= slack
    );
    assert!(
        fs_.avail_bytes <= fs_.size_bytes - fs_.used_bytes,
        "f_bavail, not f_bfree"
    );

    let df = run(Command::new("df")
        .args(["-B1", "--output=size,avail,pcent"])
        .arg(t.path()));
    let row: Vec<&str> = df.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0].parse::<u64>().unwrap(), fs_.size_bytes);
    assert!(row[1].parse::<u64>().unwrap().abs_diff(fs_.avail_bytes) <= slack);
    let df_pct: f64 = row[2].trim_end_matches('%').parse().unwrap();
    assert!(
        (df_pct - fs_.used_percent).abs() <= 2.0,
        "df {df_pct}% vs {}%",
        fs_.used_percent
    );
}

#[test]
fn warn_above_compares_store_bytes_or_filesystem_percent() {
    let t = tempfile::tempdir().unwrap();
    file(t.path(), "a", 1000, DAY);
    let with = |spec: &str| {
        let mut o = DiskOptions::new(t.path());
        o.warn_above = Some(spec.parse::<SizeSpec>().unwrap());
        measure(&o).warnings
    };
    assert!(with("999").len() == 1 && with("999")[0].contains("above the warning threshold"));
    assert!(with("1000").is_empty(), "at the threshold is not above it");
    assert_eq!(with("0%").len(), 1, "any used filesystem is above 0%");
    assert!(with("0%")[0].contains("% used"));
    assert!(with("100%").is_empty());
}

#[test]
#[ignore = "needs root to mount a tmpfs (.ci/run runs as root)"]
fn another_filesystem_mounted_inside_the_root_is_not_counted() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    file(r, "here", 100, DAY);
    let _mount = TmpfsMount::new(&r.join("mnt"));
    file(r, "mnt/there", 1_000_000, DAY);
    let rep = measure(&DiskOptions::new(r));
    assert_eq!((rep.store.files, rep.store.apparent_bytes), (1, 100));
    assert_eq!(rep.store.mounts_skipped.len(), 1, "{rep:#?}");
    assert_eq!(rep.store.mounts_skipped[0].key, "mnt");
    let du = run(Command::new("du").args(["-sx", "--block-size=1"]).arg(r));
    assert_eq!(
        rep.store.allocated_bytes,
        du.split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    );
}

#[test]
fn prometheus_file_is_written_atomically_and_parses() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().join("store");
    let weird = "we\"ird\\pre\nfix";
    file(&r, &format!("{weird}/x"), 10, DAY);
    file(&r, "clips/y", 20, 10 * DAY);
    let mut o = DiskOptions::new(&r);
    o.max_age = Some(7 * DAY);
    let rep = measure(&o);
    let out_dir = t.path().join("textfile");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("stowage.prom");
    rep.write_prometheus(&out).unwrap();
    rep.write_prometheus(&out).unwrap(); // replacing an existing file works too
    let names: Vec<_> = fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["stowage.prom"], "no temp file left behind");

    let text = fs::read_to_string(&out).unwrap();
    let samples = parse_prometheus(&text);
    let root = r.to_string_lossy().into_owned();
    let get = |name: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("root".to_owned(), root.clone())];
        labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        labels.sort();
        *samples
            .get(&(name.to_owned(), labels))
            .unwrap_or_else(|| panic!("{name} {extra:?} missing in:\n{text}"))
    };
    assert_eq!(get("stowage_store_bytes", &[]), 30.0);
    assert_eq!(get("stowage_store_files", &[]), 2.0);
    assert_eq!(
        get("stowage_fs_avail_bytes", &[]),
        rep.filesystem.avail_bytes as f64
    );
    assert_eq!(
        get(
            "stowage_store_prefix_bytes",
            &[("prefix", &format!("{weird}/"))]
        ),
        10.0
    );
    assert_eq!(
        get("stowage_store_prefix_bytes", &[("prefix", "clips/")]),
        20.0
    );
    assert_eq!(
        get("stowage_cleanup_reclaimable_bytes", &[("max_age", "7days")]),
        20.0
    );
}

type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// A strict reader of the Prometheus text format (0.0.4): every sample's metric has
/// HELP and TYPE lines before it, names and labels are well-formed, values are floats,
/// no sample appears twice.
fn parse_prometheus(text: &str) -> Samples {
    assert!(text.ends_with('\n'), "the format requires a final newline");
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    let mut helped = std::collections::HashSet::new();
    let mut typed = std::collections::HashSet::new();
    let mut samples = Samples::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name) && helped.insert(name.to_owned()), "{line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["gauge", "counter", "untyped"].contains(&kind), "{line}");
            assert!(
                helped.contains(name) && typed.insert(name.to_owned()),
                "{line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected line {line:?}"
        );
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        assert!(valid_name(name) && typed.contains(name), "{line}");
        let mut labels = Vec::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            loop {
                let start = chars.peek().unwrap().0;
                let mut key_end = start;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        key_end = i;
                        break;
                    }
                }
                let key = &r[start..key_end];
                assert!(valid_name(key), "label name {key:?} in {line}");
                assert_eq!(chars.next().map(|c| c.1), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("unterminated label value").1 {
                        '\\' => match chars.next().unwrap().1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            c => panic!("bad escape \\{c} in {line}"),
                        },
                        '"' => break,
                        '\n' => panic!("raw newline in {line}"),
                        c => value.push(c),
                    }
                }
                labels.push((key.to_owned(), value));
                match chars.next().unwrap() {
                    (_, ',') => continue,
                    (i, '}') => {
                        rest = &r[i + 1..];
                        break;
                    }
                    (_, c) => panic!("unexpected {c:?} in {line}"),
                }
            }
        }
        let value: f64 = rest
            .strip_prefix(' ')
            .expect("space before value")
            .parse()
            .expect("float value");
        labels.sort();
        assert!(
            samples.insert((name.to_owned(), labels), value).is_none(),
            "duplicate sample {line}"
        );
    }
    samples
}

/// The binary as monitoring runs it: thresholds set the exit code; Prometheus file written.
#[test]
fn the_monitoring_command_warns_with_exit_1_and_writes_prometheus() {
    use crate::support::cli::run as stowage;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    std::fs::create_dir(&root).unwrap();
    crate::local_tree::file(
        &root,
        "clips/a/video.mp4",
        5000,
        std::time::Duration::from_secs(60),
    );
    let root_s = root.to_str().unwrap();
    let r = stowage(
        None,
        &["disk", "--root", root_s, "--warn-above", "1GB", "--json"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.json().is_object());
    let prom = tmp.path().join("stowage.prom");
    let r = stowage(
        None,
        &[
            "disk",
            "--root",
            root_s,
            "--warn-above",
            "4kB",
            "--prometheus",
            prom.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    let text = std::fs::read_to_string(&prom).unwrap();
    assert!(text.contains("# TYPE stowage_store_bytes gauge"), "{text}");
    let r = stowage(None, &["disk", "--root", "/no/such/dir"]);
    assert_eq!(r.code, 2, "{r:?}");
}

/// A file name that is not UTF-8 (`\xff\xfe.mp4`) is still reported: the JSON holds the
/// path lossily (U+FFFD) and the threshold's WARNING is printed.
#[test]
fn json_report_with_a_non_utf8_file_name_is_printed_with_its_warning() {
    use crate::support::cli::run as stowage;
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let name = std::ffi::OsStr::from_bytes(b"\xff\xfe.mp4");
    fs::write(root.join(name), vec![0u8; 2_000_000]).unwrap();
    let r = stowage(
        None,
        &[
            "disk",
            "--root",
            root.to_str().unwrap(),
            "--warn-above",
            "1MB",
            "--json",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("WARNING"), "{r:?}");
    let j = r.json();
    assert_eq!(j["store"]["oldest"]["key"], "\u{fffd}\u{fffd}.mp4", "{r:?}");
}
