//! `ops::cleanup` against real directory trees.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stowage::ops::cleanup::{cleanup, CleanupOptions, CleanupSummary};
use stowage::report::NoopReporter;
use stowage::size::SizeSpec;

use crate::local_tree::{file, set_age, without_permission_bypass, Notes, TmpfsMount, DAY};

/// Options for a marked store; `force` because most of these small trees are mostly old
/// (the more-than-half guard has its own tests).
fn opts(root: &Path) -> CleanupOptions {
    opts_age(root, 7 * DAY)
}

fn opts_age(root: &Path, max_age: Duration) -> CleanupOptions {
    stowage::local::mark_store(root).unwrap();
    let mut o = CleanupOptions::new(root, max_age);
    o.force = true;
    o
}

fn run(o: &CleanupOptions) -> CleanupSummary {
    cleanup(o, &NoopReporter).unwrap()
}

#[test]
fn deletes_old_files_keeps_new_ones_and_stowage_files_and_prunes_emptied_dirs() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    file(r, "clips/1/old.mp4", 1000, 10 * DAY);
    file(r, "clips/1/old.jpg", 24, 8 * DAY);
    file(r, "clips/2/old.mp4", 500, 30 * DAY);
    file(r, "clips/2/new.mp4", 700, Duration::from_secs(3600));
    file(r, "top-old", 1, 9 * DAY);
    // A write in progress and the lock file: never touched, however old.
    file(r, "clips/2/.stowage-tmp.00c0ffee", 5, 40 * DAY);
    file(r, ".stowage.lock", 0, 40 * DAY);
    fs::create_dir(r.join("fresh-empty")).unwrap(); // the service may be about to write here
    fs::create_dir(r.join("stale-empty")).unwrap();
    filetime_dir(&r.join("stale-empty"), 20 * DAY);

    let s = run(&opts(r));
    assert_eq!(
        (s.deleted_count, s.deleted_for_age, s.bytes_freed),
        (4, 4, 1525),
        "{s:#?}"
    );
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert!(!s.locked && !s.dry_run);
    for gone in [
        "clips/1/old.mp4",
        "clips/1/old.jpg",
        "clips/1",
        "clips/2/old.mp4",
        "top-old",
        "stale-empty",
    ] {
        assert!(!r.join(gone).exists(), "{gone} should be gone");
    }
    for kept in [
        "clips/2/new.mp4",
        "clips/2/.stowage-tmp.00c0ffee",
        ".stowage.lock",
        "fresh-empty",
    ] {
        assert!(r.join(kept).exists(), "{kept} should be kept");
    }
    assert_eq!(s.dirs_removed, 2, "clips/1 and stale-empty");
    assert!(r.is_dir(), "the root itself is never removed");

    // Nothing old is left: a second run deletes nothing.
    let again = run(&opts(r));
    assert_eq!((again.deleted_count, again.dirs_removed), (0, 0));
}

#[test]
fn root_emptied_entirely_is_kept() {
    let t = tempfile::tempdir().unwrap();
    file(t.path(), "a/b/c", 1, 10 * DAY);
    let s = run(&opts(t.path()));
    assert_eq!((s.deleted_count, s.dirs_removed), (1, 2));
    assert!(t.path().is_dir());
}

#[test]
fn symlinks_are_not_followed_and_their_targets_survive() {
    let outside = tempfile::tempdir().unwrap();
    let target = file(outside.path(), "precious.mp4", 10, 100 * DAY);
    file(outside.path(), "dir/also-precious", 10, 100 * DAY);
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    file(r, "clips/old", 3, 10 * DAY);
    symlink(&target, r.join("clips/link-to-file")).unwrap();
    symlink(outside.path().join("dir"), r.join("link-to-dir")).unwrap();

    let s = run(&opts(r));
    assert_eq!(s.deleted_count, 1);
    assert_eq!(s.symlinks_skipped, 2);
    assert!(target.exists() && outside.path().join("dir/also-precious").exists());
    // Documented behaviour: links themselves are left in place (only regular files go),
    // so their directory is not empty and stays.
    assert!(r
        .join("clips/link-to-file")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(r
        .join("link-to-dir")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
}

/// The walker has listed `sub/` (and holds it open); before the first delete in it, `sub`
/// is moved away and replaced by a symlink to a directory outside the root holding files
/// of the same names. The hook in the options runs at exactly that moment, so the race is
/// deterministic.
#[test]
fn directory_swapped_for_a_symlink_during_the_run_does_not_redirect_deletes() {
    let outside = tempfile::tempdir().unwrap();
    let decoy_a = file(outside.path(), "a.mp4", 10, 100 * DAY);
    let decoy_b = file(outside.path(), "b.mp4", 10, 100 * DAY);
    let t = tempfile::tempdir().unwrap();
    let r = t.path().to_owned();
    file(&r, "sub/a.mp4", 10, 10 * DAY);
    file(&r, "sub/b.mp4", 10, 10 * DAY);

    let swapped = Arc::new(AtomicBool::new(false));
    let mut o = opts(&r);
    let (root, out, flag) = (r.clone(), outside.path().to_owned(), Arc::clone(&swapped));
    o.before_delete = Some(Arc::new(move |rel: &Path| {
        if rel.starts_with("sub") && !flag.swap(true, Ordering::SeqCst) {
            fs::rename(root.join("sub"), root.join("sub.moved")).unwrap();
            symlink(&out, root.join("sub")).unwrap();
        }
    }));
    let s = run(&o);
    assert!(swapped.load(Ordering::SeqCst), "the hook ran");
    assert!(
        decoy_a.exists() && decoy_b.exists(),
        "nothing outside the root was deleted"
    );
    assert!(
        r.join("sub")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is left alone"
    );
    // The deletes went to the directory that was listed, through its open handle: the
    // listed files (now under sub.moved) are the ones deleted. The emptied directory is
    // not removed: under the name it was listed by there is now a symlink, left alone.
    assert_eq!(s.deleted_count, 2, "{s:#?}");
    assert!(!r.join("sub.moved/a.mp4").exists() && !r.join("sub.moved/b.mp4").exists());
    assert!(r.join("sub.moved").is_dir());
    assert!(s.errors.is_empty(), "{:?}", s.errors);
}

#[test]
fn directory_swapped_for_a_symlink_before_an_eviction_is_not_followed() {
    let outside = tempfile::tempdir().unwrap();
    let decoy = file(outside.path(), "oldest.mp4", 100, 100 * DAY);
    let t = tempfile::tempdir().unwrap();
    let r = t.path().to_owned();
    file(&r, "sub/oldest.mp4", 100, 5 * DAY);
    file(&r, "newer.mp4", 100, DAY);

    let mut o = opts_age(&r, 30 * DAY);
    o.max_used = Some(SizeSpec::Bytes(150));
    let (root, out) = (r.clone(), outside.path().to_owned());
    o.before_delete = Some(Arc::new(move |rel: &Path| {
        if rel == Path::new("sub/oldest.mp4") {
            fs::rename(root.join("sub"), root.join("sub.moved")).unwrap();
            symlink(&out, root.join("sub")).unwrap();
        }
    }));
    let s = run(&o);
    assert!(decoy.exists(), "the file behind the symlink survives");
    assert!(
        r.join("sub.moved/oldest.mp4").exists(),
        "the listed path no longer leads to it"
    );
    assert_eq!(s.changed, 1, "{s:#?}");
    // With the oldest out of reach, eviction goes on to the next oldest.
    assert!(!r.join("newer.mp4").exists());
    assert_eq!(s.deleted_for_size, 1);
}

#[test]
#[ignore = "needs root to mount a tmpfs (.ci/run runs as root)"]
fn another_filesystem_mounted_inside_the_root_is_not_entered() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    let _mount = TmpfsMount::new(&r.join("mnt"));
    let inside = file(r, "mnt/old-on-tmpfs", 10, 100 * DAY);
    file(r, "old-here", 10, 100 * DAY);
    let s = run(&opts(r));
    assert!(
        inside.exists(),
        "files on the other filesystem are untouched"
    );
    assert!(!r.join("old-here").exists());
    assert_eq!(s.mounts_skipped.len(), 1, "{s:#?}");
    assert_eq!(s.mounts_skipped[0].key, "mnt");
    assert_eq!(s.deleted_count, 1);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
}

#[test]
fn a_second_run_while_one_is_going_reports_the_lock_and_deletes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().to_owned();
    for i in 0..5 {
        file(&r, &format!("clips/{i}.mp4"), 10, 10 * DAY);
    }
    let second: Arc<Mutex<Option<(CleanupSummary, usize)>>> = Arc::default();
    let mut first = opts(&r);
    let (root, slot) = (r.clone(), Arc::clone(&second));
    first.before_delete = Some(Arc::new(move |_: &Path| {
        let mut slot = slot.lock().unwrap();
        if slot.is_none() {
            // cron fires again while the first run is in the middle of deleting
            let root2 = root.clone();
            let s = std::thread::spawn(move || cleanup(&opts(&root2), &NoopReporter).unwrap())
                .join()
                .unwrap();
            let left = fs::read_dir(root.join("clips")).unwrap().count();
            *slot = Some((s, left));
        }
    }));
    let s1 = run(&first);
    let (s2, left_after_second) = second.lock().unwrap().take().expect("second run happened");
    assert!(s2.locked, "{s2:#?}");
    assert_eq!((s2.deleted_count, s2.bytes_freed), (0, 0));
    assert_eq!(left_after_second, 5, "the second run deleted nothing");
    assert!(!s1.locked);
    assert_eq!(s1.deleted_count, 5);
    // Lock released when the first run ended: a third run gets it. (A child process that
    // another test forks in that instant holds a copy of the descriptor until it execs, so
    // allow a few tries.)
    let third_got_it = (0..50).any(|_| {
        let got = !run(&opts(&r)).locked;
        if !got {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        got
    });
    assert!(third_got_it, "the lock outlived the first run");
}

#[test]
fn dry_run_lists_what_it_would_delete_and_deletes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    file(r, "a/old1", 100, 10 * DAY);
    file(r, "a/old2", 50, 20 * DAY);
    file(r, "b/new", 70, DAY);
    file(r, "c/older-but-over-size", 30, 6 * DAY);
    let mut o = opts(r);
    o.dry_run = true;
    o.max_used = Some(SizeSpec::Bytes(80));
    let notes = Notes::default();
    let s = cleanup(&o, &notes).unwrap();
    assert!(s.dry_run);
    // Age: old1 + old2 (150 B). Size: 100 B left > 80, the oldest remaining goes (30 B).
    assert_eq!(
        (
            s.deleted_count,
            s.deleted_for_age,
            s.deleted_for_size,
            s.bytes_freed
        ),
        (3, 2, 1, 180),
        "{s:#?}"
    );
    assert_eq!(s.store_bytes_after, Some(70));
    for f in ["a/old1", "a/old2", "b/new", "c/older-but-over-size"] {
        assert!(r.join(f).exists(), "{f} must survive a dry run");
    }
    assert!(
        !r.join(".stowage.lock").exists(),
        "a dry run creates nothing"
    );
    let notes = notes.0.into_inner().unwrap();
    let would: Vec<_> = notes
        .iter()
        .filter(|n| n.starts_with("would delete"))
        .collect();
    assert_eq!(would.len(), 3, "{notes:#?}");
    assert!(would
        .iter()
        .any(|n| n.contains(&*r.join("a/old1").to_string_lossy())));
}

#[test]
fn unreadable_directory_and_undeletable_file_are_reported_and_the_rest_is_cleaned() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    file(r, "locked/old", 10, 10 * DAY);
    file(r, "readonly/old", 10, 10 * DAY);
    file(r, "ok/old", 10, 10 * DAY);
    file(r, "zz/old", 10, 10 * DAY);
    fs::set_permissions(r.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(r.join("readonly"), fs::Permissions::from_mode(0o555)).unwrap();

    let s = without_permission_bypass(|| run(&opts(r)));

    fs::set_permissions(r.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(r.join("readonly"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(s.deleted_count, 2, "{s:#?}");
    assert!(!r.join("ok/old").exists() && !r.join("zz/old").exists());
    assert!(r.join("locked/old").exists() && r.join("readonly/old").exists());
    // Keys relative to the root, as in every summary.
    let mut paths: Vec<_> = s.errors.iter().map(|e| e.key.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["locked", "readonly/old"], "{:#?}", s.errors);
    for e in &s.errors {
        assert!(e.reason.contains("ermission denied"), "{}", e.reason);
        assert!(e.reason.contains("owner"), "says what to do: {}", e.reason);
    }
}

#[test]
fn a_file_that_vanishes_before_its_delete_is_counted_not_an_error() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().to_owned();
    file(&r, "x/old", 10, 10 * DAY);
    let mut o = opts(&r);
    let root = r.clone();
    o.before_delete = Some(Arc::new(move |rel: &Path| {
        fs::remove_file(root.join(rel)).unwrap()
    }));
    let s = run(&o);
    assert_eq!((s.deleted_count, s.vanished), (0, 1));
    assert!(s.errors.is_empty());
}

#[test]
fn a_file_modified_after_listing_is_kept() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().to_owned();
    file(&r, "x/old", 10, 10 * DAY);
    let mut o = opts(&r);
    let root = r.clone();
    o.before_delete = Some(Arc::new(move |rel: &Path| {
        set_age(&root.join(rel), Duration::ZERO)
    }));
    let s = run(&o);
    assert_eq!((s.deleted_count, s.changed), (0, 1));
    assert!(r.join("x/old").exists());
}

#[test]
fn max_used_evicts_the_oldest_first_until_the_store_fits() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    file(r, "p/a", 100, 5 * DAY);
    file(r, "q/b", 100, 4 * DAY);
    file(r, "p/c", 100, 3 * DAY);
    file(r, "q/d", 100, DAY);
    file(r, "e", 100, 2 * DAY);
    let mut o = opts_age(r, 30 * DAY);
    o.max_used = Some(SizeSpec::Bytes(250));
    let s = run(&o);
    // 500 B > 250 B: evict a (5d), b (4d), c (3d) -> 200 B left.
    assert_eq!(
        (
            s.deleted_count,
            s.deleted_for_age,
            s.deleted_for_size,
            s.bytes_freed
        ),
        (3, 0, 3, 300),
        "{s:#?}"
    );
    assert_eq!(s.store_bytes_after, Some(200));
    assert_eq!(s.max_used_bytes, Some(250));
    assert!(!r.join("p/a").exists() && !r.join("q/b").exists() && !r.join("p/c").exists());
    assert!(r.join("q/d").exists() && r.join("e").exists());
    assert!(
        !r.join("p").exists(),
        "p/ was emptied by eviction and removed"
    );
}

#[test]
fn max_used_already_met_deletes_nothing() {
    let t = tempfile::tempdir().unwrap();
    file(t.path(), "a", 100, 5 * DAY);
    let mut o = opts_age(t.path(), 30 * DAY);
    o.max_used = Some(SizeSpec::Bytes(100));
    let s = run(&o);
    assert_eq!((s.deleted_count, s.store_bytes_after), (0, Some(100)));
}

#[test]
fn zero_max_age_and_missing_root_are_errors_that_say_what_to_do() {
    let t = tempfile::tempdir().unwrap();
    let e = cleanup(&opts_age(t.path(), Duration::ZERO), &NoopReporter).unwrap_err();
    assert!(e.to_string().contains("more than zero"), "{e}");
    let e = cleanup(
        &CleanupOptions::new(t.path().join("nope"), DAY),
        &NoopReporter,
    )
    .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

fn filetime_dir(p: &Path, age: Duration) {
    let d = fs::File::open(p).unwrap();
    d.set_modified(std::time::SystemTime::now() - age).unwrap();
}

/// The binary as cron runs it: JSON summary, exit codes, the lock seen from a second process.
#[test]
fn the_cron_command_deletes_reports_and_respects_the_lock() {
    use crate::support::cli::run as stowage;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    stowage::local::mark_store(root).unwrap();
    crate::local_tree::file(
        root,
        "clips/old/video.mp4",
        1000,
        Duration::from_secs(3 * 86400),
    );
    crate::local_tree::file(root, "clips/new/video.mp4", 1000, Duration::from_secs(60));
    let r = stowage(
        None,
        &[
            "cleanup",
            "--max-age",
            "24h",
            "--root",
            root.to_str().unwrap(),
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        root.join("clips/old/video.mp4").exists(),
        "dry run deletes nothing"
    );

    // A second process holding the lock: the run says so and exits 3 without deleting.
    let lock = stowage::local::StoreLock::try_acquire(root)
        .unwrap()
        .expect("lock free");
    let r = stowage(
        None,
        &[
            "cleanup",
            "--max-age",
            "24h",
            "--wait",
            "0s",
            "--root",
            root.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("another stowage run"), "{r:?}");
    assert!(root.join("clips/old/video.mp4").exists());
    drop(lock);

    let r = stowage(
        None,
        &[
            "cleanup",
            "--max-age",
            "24h",
            "--root",
            root.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["deleted_count"], 1);
    assert_eq!(
        j["deleted"].as_array().unwrap().len(),
        1,
        "a real run lists what it deleted"
    );
    assert_eq!(j["bytes_freed"], 1000);
    assert!(j["elapsed_s"].is_number() && j["errors"].as_array().unwrap().is_empty());
    assert!(
        !root.join("clips/old").exists(),
        "emptied directory removed"
    );
    assert!(root.join("clips/new/video.mp4").exists());

    let r = stowage(
        None,
        &[
            "cleanup",
            "--max-age",
            "soon",
            "--root",
            root.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 2, "{r:?}");
}

/// A file name that is not UTF-8 (`\xff\xfe.mp4`): deleted, and the JSON summary printed.
#[test]
fn json_summary_with_a_non_utf8_file_name_is_printed() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    stowage::local::mark_store(root).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"\xff\xfe.mp4");
    let bad = root.join("clips").join(name);
    fs::create_dir(root.join("clips")).unwrap();
    fs::write(&bad, b"x").unwrap();
    set_age(&bad, 10 * DAY);
    file(root, "keep/new.mp4", 1, Duration::from_secs(60));
    let r = cli(root, &["--max-age", "24h", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["deleted_count"], 1, "{r:?}");
    assert!(!bad.exists());
}

/// Another filesystem mounted under a non-UTF-8 name is listed in `mounts_skipped`.
#[test]
#[ignore = "needs root to mount a tmpfs (.ci/run runs as root)"]
fn json_summary_names_a_skipped_mount_with_a_non_utf8_name() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    stowage::local::mark_store(root).unwrap();
    file(root, "keep/new.mp4", 1, Duration::from_secs(60));
    let mnt = root.join(std::ffi::OsStr::from_bytes(b"\xffmnt"));
    let _mount = TmpfsMount::new(&mnt);
    let r = cli(root, &["--max-age", "24h", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["mounts_skipped"][0]["key"], "\u{fffd}mnt", "{r:?}");
}

fn lock_mode(root: &Path) -> u32 {
    fs::metadata(root.join(".stowage.lock"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// The lock file is private (0600, an older world-readable one is fixed) and names the run
/// holding it: pid, start time, command.
#[test]
fn the_lock_file_is_private_and_records_its_holder() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().to_owned();
    file(&r, ".stowage.lock", 0, DAY);
    fs::set_permissions(r.join(".stowage.lock"), fs::Permissions::from_mode(0o644)).unwrap();
    file(&r, "old", 1, 10 * DAY);
    file(&r, "new", 1, Duration::from_secs(60));
    let mut o = opts(&r);
    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let (root, slot) = (r.clone(), Arc::clone(&seen));
    o.before_delete = Some(Arc::new(move |_: &Path| {
        *slot.lock().unwrap() = Some(fs::read_to_string(root.join(".stowage.lock")).unwrap());
    }));
    let s = run(&o);
    assert_eq!(s.deleted_count, 1, "{s:#?}");
    assert_eq!(lock_mode(&r), 0o600);
    let record = seen.lock().unwrap().take().expect("hook ran");
    assert!(
        record.contains(&format!("pid {}", std::process::id())),
        "{record}"
    );
    assert!(record.contains("since "), "{record}");
}

/// cron's cleanup while another process holds the lock: it waits `--wait`, then exits 3
/// naming the holder, and deletes nothing.
#[test]
fn a_held_lock_makes_the_cron_command_fail_after_wait_naming_the_holder() {
    use crate::support::cli::run as stowage;
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    stowage::local::mark_store(r).unwrap();
    file(r, "old.mp4", 1, 10 * DAY);
    let lock = stowage::local::StoreLock::try_acquire(r)
        .unwrap()
        .expect("lock free");
    let started = std::time::Instant::now();
    let out = stowage(
        None,
        &[
            "cleanup",
            "--max-age",
            "24h",
            "--wait",
            "1s",
            "--root",
            r.to_str().unwrap(),
        ],
    );
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited");
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains(&format!("pid {}", std::process::id())),
        "{out:?}"
    );
    assert!(r.join("old.mp4").exists());
    drop(lock);
}

/// Another user holding a read-only descriptor of an old world-readable lock file: the
/// run fails (exit 3) instead of "nothing done" and exit 0, and the file is made private
/// so that user cannot open it again.
#[test]
#[ignore = "needs root to act as another user (.ci/run runs as root)"]
fn a_lock_held_through_a_read_only_fd_by_another_user_is_an_error() {
    use crate::support::cli::run as stowage;
    assert!(
        crate::local_tree::is_root(),
        "acting as user nobody needs root: run this test as root"
    );
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    fs::set_permissions(r, fs::Permissions::from_mode(0o755)).unwrap();
    stowage::local::mark_store(r).unwrap();
    file(r, "old.mp4", 1, 10 * DAY);
    let lock_path = r.join(".stowage.lock");
    fs::write(&lock_path, b"").unwrap();
    fs::set_permissions(&lock_path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut holder = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(["flock", "--shared", "--no-fork"])
        .arg(&lock_path)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    // Wait until nobody's flock is taken (probing with flock(1), which leaves the mode be).
    let held = (0..100).any(|_| {
        let free = std::process::Command::new("flock")
            .args(["--exclusive", "--nonblock"])
            .arg(&lock_path)
            .arg("true")
            .status()
            .unwrap()
            .success();
        if free {
            std::thread::sleep(Duration::from_millis(50));
        }
        !free
    });
    assert!(held, "nobody's flock never showed up");
    let out = stowage(
        None,
        &[
            "cleanup",
            "--max-age",
            "24h",
            "--wait",
            "0s",
            "--root",
            r.to_str().unwrap(),
        ],
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("holds"), "{out:?}");
    assert!(r.join("old.mp4").exists());
    assert_eq!(lock_mode(r), 0o600, "the lock file is private now");
    let again = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(["flock", "--shared", "--nonblock"])
        .arg(&lock_path)
        .arg("true")
        .status()
        .unwrap();
    assert!(!again.success(), "nobody can no longer open the lock file");
}

/// Runs `stowage cleanup <args> --root <root>`.
fn cli(root: &Path, args: &[&str]) -> crate::support::cli::Run {
    let mut all = vec!["cleanup"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--wait", "0s", "--root", root.to_str().unwrap()]);
    crate::support::cli::run(None, &all)
}

/// `--max-used 50` (meant 50GB) used to delete every file, fresh ones too, and exit 0.
#[test]
fn a_max_used_without_a_unit_is_refused_and_says_which_units() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    stowage::local::mark_store(r).unwrap();
    file(r, "old.mp4", 100, 2 * DAY);
    file(r, "fresh.mp4", 100, Duration::from_secs(60));
    for bad in ["50", "0", "0%", "0B"] {
        let out = cli(r, &["--max-age", "30d", "--max-used", bad]);
        assert_eq!(out.code, 2, "{bad}: {out:?}");
        assert!(out.stderr.contains("50GB"), "{bad}: {out:?}");
        assert!(out.stderr.contains("80%"), "{bad}: {out:?}");
    }
    assert!(r.join("old.mp4").exists() && r.join("fresh.mp4").exists());
}

/// `--max-age 24` (no unit), `0`, `0s`, and the ambiguous `6m` / `6M` are refused, each
/// with a message that says what to write.
#[test]
fn ages_without_a_unit_zero_or_ambiguous_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    stowage::local::mark_store(r).unwrap();
    file(r, "old.mp4", 100, 2 * DAY);
    for (bad, says) in [
        ("24", "24h"),
        ("0", "24h"),
        ("0s", "more than zero"),
        ("6m", "6min"),
        ("6M", "6months"),
    ] {
        let out = cli(r, &["--max-age", bad]);
        assert_eq!(out.code, 2, "{bad}: {out:?}");
        assert!(out.stderr.contains(says), "{bad}: {out:?}");
    }
    assert!(r.join("old.mp4").exists());
    // How the value was read is shown: the cutoff as a date.
    let out = cli(r, &["--max-age", "1day", "--dry-run"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("modified before"), "{out:?}");
}

/// The size pass never deletes a file younger than `min_age` (1h by default): the
/// service may have just written it.
#[test]
fn max_used_never_evicts_files_younger_than_min_age() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    file(r, "older.mp4", 100, 2 * Duration::from_secs(3600));
    file(r, "fresh.mp4", 100, Duration::from_secs(60));
    let mut o = opts_age(r, 30 * DAY);
    o.max_used = Some(SizeSpec::Bytes(1));
    let s = run(&o);
    assert_eq!(s.deleted_for_size, 1, "{s:#?}");
    assert!(!r.join("older.mp4").exists());
    assert!(r.join("fresh.mp4").exists(), "younger than min_age");
    assert_eq!(s.store_bytes_after, Some(100));
}

/// A run that would delete more than half the store's files stops before deleting
/// anything and says what it would delete, unless forced.
#[test]
fn deleting_more_than_half_the_store_needs_force() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    for i in 0..3 {
        file(r, &format!("clips/old{i}.mp4"), 1000, 10 * DAY);
    }
    file(r, "clips/new.mp4", 1000, DAY);
    let mut o = opts(r);
    o.force = false;
    let e = cleanup(&o, &NoopReporter).unwrap_err().to_string();
    assert!(e.contains("3 of 4 files"), "{e}");
    assert!(e.contains("old0.mp4"), "{e}");
    assert!(e.contains("force"), "{e}");
    assert!(r.join("clips/old0.mp4").exists());
    // Half or less goes ahead without force.
    file(r, "clips/new2.mp4", 1000, DAY);
    file(r, "clips/new3.mp4", 1000, DAY);
    assert_eq!(run(&o).deleted_count, 3);
}

#[test]
fn max_delete_stops_the_run_and_says_so() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    for i in 0..5 {
        file(r, &format!("old{i}"), 10, 10 * DAY);
    }
    let mut o = opts(r);
    o.max_delete = Some(2);
    let s = run(&o);
    assert_eq!(s.deleted_count, 2, "{s:#?}");
    assert!(s.max_delete_reached);
    let out = cli(r, &["--max-age", "7d", "--force", "--max-delete", "1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("--max-delete"), "{out:?}");
    assert_eq!(
        fs::read_dir(r).unwrap().count(),
        2 + 2,
        "2 files + marker + lock"
    );
}

/// An unmarked directory is not cleaned: it may not be a store at all. `--init-store`
/// marks it (once) and goes on.
#[test]
fn an_unmarked_directory_is_refused_until_marked() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    file(r, "old.mp4", 10, 10 * DAY);
    file(r, "new.mp4", 10, DAY);
    let out = cli(r, &["--max-age", "7d"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--init-store"), "{out:?}");
    assert!(r.join("old.mp4").exists());
    let out = cli(r, &["--max-age", "7d", "--init-store"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!r.join("old.mp4").exists() && r.join(".stowage").is_file());
    // Marked now: plain runs go ahead.
    assert_eq!(cli(r, &["--max-age", "7d"]).code, 0);
}

/// `--root /` is refused (with --dry-run, so a broken guard deletes nothing), even with
/// `--init-store`.
#[test]
fn the_root_directory_is_refused() {
    let out = cli(Path::new("/"), &["--max-age", "24h", "--dry-run"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("root of the filesystem"), "{out:?}");
    let out = cli(
        Path::new("/"),
        &["--max-age", "24h", "--dry-run", "--init-store"],
    );
    assert_eq!(out.code, 2, "{out:?}");
}

#[test]
#[ignore = "needs root to mount a tmpfs (.ci/run runs as root)"]
fn a_mount_point_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("mnt");
    let _mount = TmpfsMount::new(&mnt);
    file(&mnt, "old", 1, 10 * DAY);
    let out = cli(&mnt, &["--max-age", "24h", "--dry-run"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("mount point"), "{out:?}");
}

/// The service renames a new clip over an old one's name right after cleanup checked the
/// old one: the new clip must survive (cleanup deletes what it checked, not a name).
#[test]
fn a_file_renamed_over_the_name_after_the_check_survives() {
    for size_pass in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().to_owned();
        file(&r, "clips/a.mp4", 10, 10 * DAY);
        file(&r, "clips/keep.mp4", 10, DAY);
        file(&r, "clips/keep2.mp4", 10, DAY);
        let mut o = if size_pass {
            let mut o = opts_age(&r, 30 * DAY);
            o.max_used = Some(SizeSpec::Bytes(25));
            o
        } else {
            opts(&r)
        };
        let root = r.clone();
        o.after_check = Some(Arc::new(move |rel: &Path| {
            if rel != Path::new("clips/a.mp4") {
                return;
            }
            let new = root.join("clips/.new-upload");
            fs::write(&new, b"NEW CLIP").unwrap();
            fs::rename(&new, root.join(rel)).unwrap();
        }));
        let s = run(&o);
        assert_eq!(
            fs::read(r.join("clips/a.mp4")).ok().as_deref(),
            Some(&b"NEW CLIP"[..]),
            "size pass {size_pass}: {s:#?}"
        );
        assert_eq!(s.changed, 1, "{s:#?}");
        assert_eq!(
            s.deleted_count,
            u64::from(size_pass),
            "the size pass evicts the next oldest"
        );
        let leftovers: Vec<_> = fs::read_dir(r.join("clips"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".stowage"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

/// A crash between the rename to a private name and the unlink leaves a `.stowage-del.*`
/// file: never listed, and removed by the next run.
#[test]
fn a_leftover_private_delete_name_is_removed_by_the_next_run() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    file(
        r,
        "clips/.stowage-del.0123abcd",
        10,
        Duration::from_secs(60),
    );
    file(r, "clips/new.mp4", 10, Duration::from_secs(60));
    // Inside a directory with a reserved name nothing is touched, however old.
    file(r, ".stowage-x/old", 10, 100 * DAY);
    file(r, ".stowage-x/.stowage-del.0123abcd", 10, 100 * DAY);
    let store = stowage::BlobStore::local(r).unwrap();
    let keys = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async {
            use futures::TryStreamExt;
            store.list("").try_collect::<Vec<_>>().await
        })
        .unwrap();
    assert_eq!(keys.len(), 1, "only the clip is listed: {keys:?}");
    let s = run(&opts(r));
    assert!(!r.join("clips/.stowage-del.0123abcd").exists(), "{s:#?}");
    assert!(r.join("clips/new.mp4").exists());
    assert!(
        r.join(".stowage-x/old").exists() && r.join(".stowage-x/.stowage-del.0123abcd").exists()
    );
    assert_eq!(s.leftovers_removed, 1, "{s:#?}");
}
