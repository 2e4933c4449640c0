//! The command line as an operator meets it: wrong invocations that say what happened and
//! what to do, one JSON vocabulary across commands (also on a fatal error), and cron runs
//! that print nothing on success.

use std::path::Path;

use crate::local_tree::{file, DAY};
use crate::support::cli::{output, run, stowage, Run};
use crate::support::s3::TestS3;

/// A marked store with one old and one new file.
fn store(root: &Path) {
    file(root, "clips/old.mp4", 1000, 30 * DAY);
    file(root, "clips/new.mp4", 1000, std::time::Duration::ZERO);
    std::fs::write(root.join(".stowage"), b"").unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Nothing that looks like a signed URL or a secret reaches the operator.
fn assert_no_secrets(r: &Run) {
    for text in [&r.stdout, &r.stderr] {
        for leak in [
            "X-Amz-Signature",
            "X-Amz-Credential",
            "?list-type",
            "169.254.169.254",
        ] {
            assert!(!text.contains(leak), "{leak} in the output: {r:?}");
        }
    }
}

#[test]
fn wrong_invocations_exit_2_naming_the_cause_and_the_fix() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("missing");
    let dest = t.path().join("dest");
    let missing_parent = t.path().join("typo/store").to_str().unwrap().to_owned();
    let (missing, dest) = (s(&missing), s(&dest));
    let b = ["--bucket", "clips"];
    #[rustfmt::skip]
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec!["migrate", "s3-to-local", b[0], b[1], "--dest", dest, "--endpoint", "127.0.0.1:15055"],
            &["--endpoint", "no scheme", "http://127.0.0.1:15055"]),
        (vec!["verify", "s3-to-local", b[0], b[1], "--dest", dest, "--endpoint", "localhost:9000"],
            &["no scheme", "http://localhost:9000"]),
        (vec!["migrate", "s3-to-local", "--bucket", "s3://clips/a/", "--prefix", "b/", "--dest", dest],
            &["--bucket", "give the prefix once"]),
        (vec!["migrate", "s3-to-local", b[0], b[1], "--dest", dest, "--concurrency", "0"],
            &["--concurrency", "at least 1"]),
        (vec!["migrate", "local-to-s3", b[0], b[1], "--source", dest, "--max-used", "1GB"],
            &["--max-used"]),
        (vec!["serve", "--root", missing],
            &["--root", "not a directory"]),
        (vec!["serve", "--root", dest, "--listen", "localhost"],
            &["--listen", "no port", "localhost:8000"]),
        (vec!["cleanup", "--root", dest, "--max-age", "0s"],
            &["--max-age", "every file old", "24h"]),
        (vec!["disk", "--root", dest, "--max-age", "0s"],
            &["--max-age", "every file old", "24h"]),
        (vec!["cleanup", "--root", missing, "--max-age", "7d"],
            &["--root", "store directory"]),
        (vec!["disk", "--root", missing],
            &["--root", "store directory"]),
        (vec!["disk", "--root", dest, "--warn-above", "80%cats"],
            &["--warn-above"]),
        (vec!["migrate", "s3-to-local", b[0], b[1], "--dest", &missing_parent],
            &["--dest", "parent", "typo"]),
        (vec!["migrate", "s3-to-local", b[0], b[1], "--dest", dest, "--delete"],
            &["--delete", "never deletes", "verify"]),
        (vec!["migrate", "s3-to-local", b[0], b[1], "--dest", dest, "-c"],
            &["--checksum"]),
        (vec!["migrate", "s3-to-local", b[0], b[1], "--dest", dest, "--exclude", "*.tmp"],
            &["--prefix"]),
        (vec!["migrate", "s3-to-local", b[0], b[1], "--dest", dest, "--min-age", "1d"],
            &["cleanup --max-age"]),
    ];
    std::fs::create_dir(t.path().join("dest")).unwrap();
    for (args, needles) in cases {
        let r = run(None, &args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        let all = format!("{}{}", r.stdout, r.stderr);
        for n in needles {
            assert!(all.contains(n), "{args:?} should say {n:?}: {r:?}");
        }
        assert_no_secrets(&r);
    }
}

#[test]
fn rclone_spellings_with_the_same_meaning_are_accepted() {
    let s3 = TestS3::start();
    s3.put_raw("clips/1.mp4", b"one").unwrap();
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("dest");
    let bucket = format!("s3://{}/clips/", s3.bucket());
    let r = run(
        Some(&s3),
        &[
            "migrate",
            "s3-to-local",
            "--bucket",
            &bucket,
            "--dest",
            s(&dest),
            "--dryrun",
            "--transfers",
            "2",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["dry_run"], true, "{j}");
    assert_eq!(j["would_copy"][0]["key"], "clips/1.mp4", "{j}");
    assert!(!dest.exists(), "a dry run writes nothing");
}

/// Checks the fields every `--json` document carries; `fatal` also wants `error`.
fn assert_envelope(r: &Run, command: &str, fatal: bool) -> serde_json::Value {
    let j = r.json();
    assert!(j.is_object(), "{r:?}");
    assert_eq!(j["command"], command, "{r:?}");
    for field in ["started", "finished"] {
        let v = j[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field}: {r:?}"));
        assert!(
            humantime::parse_rfc3339(v).is_ok(),
            "{field} {v:?} is RFC 3339: {r:?}"
        );
    }
    assert!(j["elapsed_s"].as_f64().is_some_and(|s| s >= 0.0), "{r:?}");
    if fatal {
        assert!(j["error"]["kind"].is_string(), "{r:?}");
        assert!(
            j["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{r:?}"
        );
    } else {
        assert!(j.get("error").is_none(), "{r:?}");
    }
    j
}

/// Every per-item list is `[{key, reason}]`, keys relative to the root.
fn assert_key_reasons(list: &serde_json::Value, r: &Run) {
    for item in list.as_array().unwrap_or_else(|| panic!("a list: {r:?}")) {
        let key = item["key"]
            .as_str()
            .unwrap_or_else(|| panic!("{item}: {r:?}"));
        assert!(!key.starts_with('/'), "keys are relative: {r:?}");
        assert!(item["reason"].is_string(), "{item}: {r:?}");
    }
}

#[test]
fn every_command_prints_one_json_object_with_the_common_fields_success_and_fatal() {
    let s3 = TestS3::start();
    s3.put_raw("clips/1.mp4", b"one").unwrap();
    s3.put_raw("clips/2.mp4", b"two").unwrap();
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("dest");
    let missing = t.path().join("missing");
    let local = t.path().join("local");
    std::fs::create_dir(&local).unwrap();
    store(&local);

    // Success.
    let r = run(
        Some(&s3),
        &["migrate", "s3-to-local", "--dest", s(&dest), "--json"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let j = assert_envelope(&r, "migrate s3-to-local", false);
    assert_eq!(j["root"], s(&dest));
    for list in ["failed", "rejected", "conflicts", "unverified"] {
        assert_key_reasons(&j[list], &r);
    }
    let r = run(
        Some(&s3),
        &["verify", "s3-to-local", "--dest", s(&dest), "--json"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let j = assert_envelope(&r, "verify s3-to-local", false);
    assert_eq!(j["root"], s(&dest));
    let r = run(
        Some(&s3),
        &["migrate", "local-to-s3", "--source", s(&dest), "--json"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_envelope(&r, "migrate local-to-s3", false);
    let r = run(None, &["disk", "--root", s(&local), "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = assert_envelope(&r, "disk", false);
    assert_eq!(j["store"]["oldest"]["key"], "clips/old.mp4", "{r:?}");
    let r = run(
        None,
        &["cleanup", "--root", s(&local), "--max-age", "7d", "--json"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let j = assert_envelope(&r, "cleanup", false);
    assert_eq!(j["deleted_count"], 1, "{r:?}");
    assert_eq!(
        j["deleted"][0]["key"], "clips/old.mp4",
        "a real run lists what it deleted: {r:?}"
    );
    assert_key_reasons(&j["deleted"], &r);
    assert_key_reasons(&j["errors"], &r);

    // Fatal: exit 2 and still one JSON object, with the error.
    let fatal: Vec<(&str, Vec<&str>)> = vec![
        (
            "migrate s3-to-local",
            vec![
                "migrate",
                "s3-to-local",
                "--dest",
                s(&dest),
                "--endpoint",
                "127.0.0.1:1",
            ],
        ),
        (
            "migrate local-to-s3",
            vec!["migrate", "local-to-s3", "--source", s(&missing)],
        ),
        (
            "verify s3-to-local",
            vec![
                "verify",
                "s3-to-local",
                "--dest",
                s(&dest),
                "--bucket",
                "no-such-bucket",
            ],
        ),
        ("disk", vec!["disk", "--root", s(&missing)]),
        (
            "cleanup",
            vec!["cleanup", "--root", s(&missing), "--max-age", "7d"],
        ),
        // Refused by the argument parser.
        (
            "cleanup",
            vec!["cleanup", "--root", s(&local), "--max-age", "24"],
        ),
        (
            "migrate s3-to-local",
            vec!["migrate", "s3-to-local", "--concurrency", "0"],
        ),
    ];
    for (command, mut args) in fatal {
        args.push("--json");
        let r = run(Some(&s3), &args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert_envelope(&r, command, true);
        assert_no_secrets(&r);
    }
}

#[test]
fn a_cleanup_that_finds_the_lock_held_prints_its_json_with_a_locked_error() {
    let t = tempfile::tempdir().unwrap();
    store(t.path());
    let holder = stowage::local::StoreLock::try_acquire(t.path())
        .unwrap()
        .expect("free");
    let r = run(
        None,
        &[
            "cleanup",
            "--root",
            s(t.path()),
            "--max-age",
            "7d",
            "--wait",
            "1s",
            "--json",
        ],
    );
    drop(holder);
    assert_eq!(r.code, 3, "{r:?}");
    let j = assert_envelope(&r, "cleanup", true);
    assert_eq!(j["error"]["kind"], "locked", "{r:?}");
}

#[test]
fn cron_runs_with_quiet_print_nothing_on_success() {
    let s3 = TestS3::start();
    s3.put_raw("clips/1.mp4", b"one").unwrap();
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("dest");
    let local = t.path().join("local");
    std::fs::create_dir(&local).unwrap();
    store(&local);
    let runs: Vec<Vec<&str>> = vec![
        vec!["migrate", "s3-to-local", "--dest", s(&dest), "--quiet"],
        vec!["-q", "migrate", "s3-to-local", "--dest", s(&dest)],
        vec!["verify", "s3-to-local", "--dest", s(&dest), "-q"],
        vec!["migrate", "local-to-s3", "--source", s(&dest), "--quiet"],
        vec!["disk", "--root", s(&local), "--quiet"],
        vec!["cleanup", "--root", s(&local), "--max-age", "7d", "--quiet"],
        vec![
            "cleanup",
            "--root",
            s(&local),
            "--max-age",
            "7d",
            "--dry-run",
            "-q",
        ],
    ];
    for args in runs {
        // Output captured: stdout and stderr are pipes, not a terminal.
        let r = run(Some(&s3), &args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert_eq!(
            (r.stdout.as_str(), r.stderr.as_str()),
            ("", ""),
            "{args:?}: {r:?}"
        );
    }
    // A run with problems still speaks: a threshold crossed.
    let r = run(
        None,
        &["disk", "--root", s(&local), "--warn-above", "1B", "--quiet"],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("WARNING"), "{r:?}");
}

#[test]
fn verify_local_to_s3_is_the_rollback_check() {
    let s3 = TestS3::start();
    s3.put_raw("clips/1.mp4", b"one").unwrap();
    let t = tempfile::tempdir().unwrap();
    let local = t.path().join("local");
    let r = run(
        Some(&s3),
        &["migrate", "s3-to-local", "--dest", s(&local), "-q"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let r = run(
        Some(&s3),
        &["verify", "local-to-s3", "--source", s(&local), "--json"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_envelope(&r, "verify local-to-s3", false);
    // A file the bucket lacks: the rollback is incomplete.
    std::fs::write(local.join("clips/2.mp4"), b"two").unwrap();
    let r = run(Some(&s3), &["verify", "local-to-s3", "--source", s(&local)]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("missing from the bucket"), "{r:?}");
    assert!(r.stdout.contains("clips/2.mp4"), "{r:?}");
}

#[test]
fn disk_checks_several_thresholds_and_echoes_them_as_written() {
    let t = tempfile::tempdir().unwrap();
    store(t.path());
    let r = run(
        None,
        &[
            "disk",
            "--root",
            s(t.path()),
            "--warn-above",
            "1KB",
            "--warn-above",
            "0%inodes",
            "--warn-above",
            "100%",
            "--quiet",
        ],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("threshold of 1KB"),
        "the size as written: {r:?}"
    );
    assert!(r.stderr.contains("threshold of 0%inodes"), "{r:?}");
    assert!(
        !r.stderr.contains("threshold of 100%"),
        "not crossed: {r:?}"
    );
    assert_eq!(r.stderr.matches("WARNING").count(), 2, "each once: {r:?}");
}

#[test]
fn a_relative_root_is_resolved_and_shown_absolute() {
    let t = tempfile::tempdir().unwrap();
    let local = t.path().join("local");
    std::fs::create_dir(&local).unwrap();
    store(&local);
    for args in [
        vec!["disk", "--root", "local", "--json"],
        vec![
            "cleanup",
            "--root",
            "local",
            "--max-age",
            "7d",
            "--dry-run",
            "--json",
        ],
    ] {
        let r = output(stowage(None, &args).current_dir(t.path()).output().unwrap());
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert_eq!(r.json()["root"], s(&local), "{args:?}: {r:?}");
    }
}

/// No credentials anywhere: the hint says so and where stowage looked, not only "access
/// denied ... bucket policy". (The message itself comes from the S3 lister.)
#[test]
fn no_credentials_anywhere_says_where_stowage_looked() {
    let s3 = TestS3::start();
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("dest");
    let r = output(
        stowage(
            None,
            &[
                "migrate",
                "s3-to-local",
                "--bucket",
                s3.bucket(),
                "--dest",
                s(&dest),
                "--endpoint",
                &s3.endpoint(),
                "--dry-run",
                "--json",
            ],
        )
        // No instance metadata service to wait for.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", s3.region())
        .output()
        .unwrap(),
    );
    assert_eq!(r.code, 2, "{r:?}");
    let j = r.json();
    assert_eq!(j["error"]["kind"], "no_credentials", "{r:?}");
    let message = j["error"]["message"].as_str().unwrap();
    for looked in [
        "no credentials for",
        "AWS_ACCESS_KEY_ID",
        ".aws/credentials",
        "instance metadata",
    ] {
        assert!(message.contains(looked), "{looked}: {r:?}");
    }
    assert!(r.stderr.contains("no credentials for"), "{r:?}");
    for misleading in ["access denied", "bucket policy", "169.254.169.254"] {
        assert!(!r.stderr.contains(misleading), "{misleading}: {r:?}");
    }
}

/// The library speaks to library users: its messages name options as they are set in
/// code (`` `min_free` ``), never a CLI flag; the binary turns those into flags.
#[test]
fn library_messages_name_no_cli_flag() {
    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().unwrap() != "bin" {
                    rust_files(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut found = Vec::new();
    for f in &files {
        for (n, line) in std::fs::read_to_string(f).unwrap().lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") || code.starts_with("#[") {
                continue;
            }
            // Rust code has no `--x` of its own: on a code line it is a flag in a string
            // (a literal may span lines, so the whole line is looked at).
            let flag = code
                .match_indices("--")
                .any(|(i, _)| code[i + 2..].starts_with(|c: char| c.is_ascii_lowercase()));
            if flag {
                found.push(format!("{}:{}: {}", f.display(), n + 1, code));
            }
        }
    }
    assert!(
        found.is_empty(),
        "library strings naming CLI flags:\n{}",
        found.join("\n")
    );
}
