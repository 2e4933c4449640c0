//! `stowage migrate` driven as a process against real S3 servers on 127.0.0.1.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions};

use crate::local_tree::TmpfsMount;
use crate::support::cli::{digest, run, stowage, tree, xattrs_supported};
use crate::support::s3::TestS3;

fn body(key: &str, len: usize) -> Vec<u8> {
    let seed = key
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    (0..len)
        .map(|i| (seed.wrapping_add((i as u32).wrapping_mul(2654435761)) >> 13) as u8)
        .collect()
}

/// PUTs each `(key, len)` (content from `body`), 32 at a time. Returns key → MD5.
async fn seed(s3: &TestS3, objects: &[(String, usize)]) -> BTreeMap<String, String> {
    let store = s3.object_store();
    futures::stream::iter(objects.iter().cloned())
        .map(|(k, len)| {
            let store = store.clone();
            async move {
                let data = body(&k, len);
                let md5 = digest(&data);
                store
                    .put(&ObjPath::parse(&k).unwrap(), data.into())
                    .await
                    .unwrap();
                (k, md5)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

fn dest_arg(dir: &std::path::Path) -> String {
    dir.to_str().unwrap().to_owned()
}

/// `stowage migrate s3-to-local --dest <dest> <extra...>` against `s3`, to completion.
fn migrate(s3: &TestS3, dest: &std::path::Path, extra: &[&str]) -> crate::support::cli::Run {
    let dest = dest_arg(dest);
    let mut args = vec!["migrate", "s3-to-local", "--dest", &dest];
    args.extend_from_slice(extra);
    run(Some(s3), &args)
}

#[tokio::test(flavor = "multi_thread")]
async fn copies_more_than_1000_objects_then_a_rerun_downloads_nothing() {
    let s3 = TestS3::start();
    let objects: Vec<(String, usize)> = (0..1100)
        .map(|i| (format!("clips/{:03}/video-{i}.mp4", i % 37), 100 + i % 3000))
        .collect();
    let want = seed(&s3, &objects).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("store");

    let r = migrate(&s3, &dest, &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["listed"], 1100);
    assert_eq!(j["copied"], 1100);
    assert_eq!(
        j["bytes_copied"].as_u64(),
        Some(objects.iter().map(|(_, n)| *n as u64).sum())
    );
    assert_eq!(j["failed"].as_array().unwrap().len(), 0);
    assert_eq!(j["unverified"].as_array().unwrap().len(), 0);
    assert_eq!(tree(&dest), want);

    // mtime is the object's LastModified, so cleanup judges clips by their real age.
    let meta = s3
        .object_store()
        .head(&ObjPath::parse("clips/000/video-0.mp4").unwrap())
        .await
        .unwrap();
    let md = std::fs::metadata(dest.join("clips/000/video-0.mp4")).unwrap();
    assert_eq!(md.mtime(), meta.last_modified.timestamp());

    let gets_before = s3.faults().gets();
    let r = migrate(&s3, &dest, &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(
        (j["copied"].as_u64(), j["skipped"].as_u64()),
        (Some(0), Some(1100))
    );
    assert_eq!(
        s3.faults().gets(),
        gets_before,
        "a rerun must not download anything"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn multipart_objects_are_verified_through_their_etag() {
    let s3 = TestS3::start();
    let store = s3.object_store();
    let data = body("big", 21 << 20);
    let path = ObjPath::parse("clips/big/video.mp4").unwrap();
    let mut up =
        object_store::buffered::BufWriter::with_capacity(store.clone(), path.clone(), 5 << 20);
    use tokio::io::AsyncWriteExt;
    up.write_all(&data).await.unwrap();
    up.shutdown().await.unwrap();
    let etag = store.head(&path).await.unwrap().e_tag.unwrap();
    assert!(etag.contains('-'), "expected a multipart ETag, got {etag}");

    let tmp = tempfile::tempdir().unwrap();
    let r = migrate(&s3, tmp.path(), &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["copied"], 1);
    assert_eq!(j["unverified"].as_array().unwrap().len(), 0, "{j}");
    assert_eq!(
        std::fs::read(tmp.path().join("clips/big/video.mp4")).unwrap(),
        data
    );
}

/// Seeds a 50 MiB single-part object and a 40 MiB multipart one (5 MiB parts); their
/// keys and contents.
async fn seed_big(s3: &TestS3) -> [(&'static str, Vec<u8>); 2] {
    let single = "clips/one/video.mp4";
    seed(s3, &[(single.into(), 50 << 20)]).await;
    let multi = "clips/multi/video.mp4";
    let data = body(multi, 40 << 20);
    let path = ObjPath::parse(multi).unwrap();
    let mut up = object_store::buffered::BufWriter::with_capacity(s3.object_store(), path, 5 << 20);
    use tokio::io::AsyncWriteExt;
    up.write_all(&data).await.unwrap();
    up.shutdown().await.unwrap();
    [(single, body(single, 50 << 20)), (multi, data)]
}

/// Big objects through the command, proven whole (in one GET or in ranges: that depends on
/// how fast this machine moves them; the ranged path is pinned down below).
#[tokio::test(flavor = "multi_thread")]
async fn big_objects_are_copied_and_proven_whole() {
    let s3 = TestS3::start();
    let [(single, one), (multi, two)] = seed_big(&s3).await;
    let tmp = tempfile::tempdir().unwrap();
    let r = migrate(&s3, tmp.path(), &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["copied"], 2, "{j}");
    assert_eq!(j["proofs"]["md5"], 1, "{j}");
    assert_eq!(j["proofs"]["multipart_md5"], 1, "{j}");
    assert_eq!(std::fs::read(tmp.path().join(single)).unwrap(), one);
    assert_eq!(std::fs::read(tmp.path().join(multi)).unwrap(), two);
}

/// Behind a connection too slow to bring it within a second (25 MB/s here, object_store's
/// own `ThrottledStore` in front of the bucket) a big object is fetched as several ranges
/// at once; the bytes on disk are proven as a whole, single-part and multipart alike; a
/// range that breaks off resumes, and a corrupt one has the object fetched again.
#[tokio::test(flavor = "multi_thread")]
async fn a_big_object_behind_a_slow_link_is_fetched_in_ranges_and_proven_whole() {
    use object_store::throttle::{ThrottleConfig, ThrottledStore};
    use stowage::ops::migrate;
    let s3 = TestS3::start();
    let [(single, one), (multi, two)] = seed_big(&s3).await;
    let slow = ThrottledStore::new(
        stowage::s3::object_store(&s3.config()).unwrap(),
        ThrottleConfig {
            wait_get_per_byte: Duration::from_nanos(40),
            ..ThrottleConfig::default()
        },
    );
    let src = stowage::BlobStore::from_object_store(std::sync::Arc::new(slow), "", "slow bucket");
    let run = |prefix: &str| {
        let (src, prefix) = (src.clone(), prefix.to_owned());
        async move {
            let tmp = tempfile::tempdir().unwrap();
            let mut opts = migrate::MigrateOptions::default();
            opts.prefix = prefix;
            opts.min_free = stowage::SizeSpec::Bytes(1 << 20);
            let summary = migrate::s3_to_local(&src, tmp.path(), &opts, &stowage::NoopReporter)
                .await
                .unwrap();
            (tmp, summary)
        }
    };

    let (tmp, summary) = run("").await;
    assert_eq!(summary.copied, 2, "{summary:?}");
    assert_eq!(summary.proofs.md5, 1, "{summary:?}");
    assert_eq!(summary.proofs.multipart_md5, 1, "{summary:?}");
    assert_eq!(std::fs::read(tmp.path().join(single)).unwrap(), one);
    assert_eq!(std::fs::read(tmp.path().join(multi)).unwrap(), two);
    // 50 MiB: the first range and two more; 40 MiB: the first and one more.
    assert_eq!(s3.faults().gets_of(single), 3);
    assert_eq!(s3.faults().gets_of(multi), 2);

    // Every body breaks off after 3 MiB once (the first range and the others): each
    // resumes where it stopped.
    s3.faults().truncate_next_gets(3, 3 << 20);
    let (tmp, summary) = run("clips/one/").await;
    assert_eq!(summary.copied, 1, "{summary:?}");
    assert_eq!(std::fs::read(tmp.path().join(single)).unwrap(), one);

    // A corrupt byte: the whole object is fetched again.
    s3.faults().corrupt_next_gets(1);
    let (tmp, summary) = run("clips/one/").await;
    assert_eq!(summary.copied, 1, "{summary:?}");
    assert!(summary.unverified.is_empty(), "{summary:?}");
    assert_eq!(std::fs::read(tmp.path().join(single)).unwrap(), one);
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_corrupt_and_refused_responses_are_retried() {
    let s3 = TestS3::start();
    let want = seed(
        &s3,
        &[
            ("a.bin".into(), 3 << 20),
            ("b.bin".into(), 1 << 20),
            ("c.bin".into(), 10),
        ],
    )
    .await;
    s3.faults().truncate_next_gets(2, 100_000);
    s3.faults().corrupt_next_gets(1);
    let tmp = tempfile::tempdir().unwrap();
    let r = migrate(&s3, tmp.path(), &["--json", "--concurrency", "1"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["copied"], 3);
    assert_eq!(tree(tmp.path()), want);
    assert!(
        s3.faults().gets() >= 6,
        "3 objects + 2 resumes + 1 refetch, saw {}",
        s3.faults().gets()
    );

    // A burst of 503 SlowDown on the next requests (listing included).
    let tmp2 = tempfile::tempdir().unwrap();
    s3.faults().fail_next(4, 503);
    let r = migrate(&s3, tmp2.path(), &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(tree(tmp2.path()), want);
}

#[tokio::test(flavor = "multi_thread")]
async fn content_type_folder_markers_and_dry_run() {
    let s3 = TestS3::start();
    let store = s3.object_store();
    let mut attrs = Attributes::new();
    attrs.insert(Attribute::ContentType, "video/mp4".into());
    store
        .put_opts(
            &ObjPath::parse("clips/1/video.mp4").unwrap(),
            b"mp4!".to_vec().into(),
            PutOptions {
                attributes: attrs,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let _ = s3.put_raw("empty-folder/", b"");

    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("store");
    let r = migrate(&s3, &dest, &["--dry-run", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["would_copy"][0]["key"], "clips/1/video.mp4", "{j}");
    assert_eq!(j["would_copy"].as_array().unwrap().len(), 1, "{j}");
    assert!(!dest.exists(), "a dry run writes nothing");

    let r = migrate(&s3, &dest, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("copied"), "{r:?}");
    let f = std::fs::File::open(dest.join("clips/1/video.mp4")).unwrap();
    assert!(
        xattrs_supported(&dest),
        "{} has no user xattrs: run the tests on a filesystem that has them",
        dest.display()
    );
    assert_eq!(
        stowage::local::read_content_type(&f).as_deref(),
        Some("video/mp4")
    );
    if s3
        .object_store()
        .head(&ObjPath::parse("empty-folder").unwrap())
        .await
        .is_ok()
        || dest.join("empty-folder").exists()
    {
        assert!(dest.join("empty-folder").is_dir());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_before_writing_when_the_copy_would_not_fit() {
    let s3 = TestS3::start();
    seed(&s3, &[("a".into(), 300_000), ("b".into(), 300_000)]).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("store");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("existing"), vec![0u8; 500_000]).unwrap();
    let r = migrate(&s3, &dest, &["--max-used", "1MB"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("not enough space") && r.stderr.contains("--max-used"),
        "{r:?}"
    );
    assert_eq!(tree(&dest).len(), 1, "nothing written");
    assert!(!dest.join(".stowage.lock").exists());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root to mount a tmpfs (.ci/run runs as root)"]
async fn refuses_before_writing_when_the_copy_would_not_fit_a_real_small_filesystem() {
    let s3 = TestS3::start();
    // 1.2 MB in all, on a 1 MiB filesystem.
    seed(&s3, &[("a".into(), 600_000), ("c".into(), 600_000)]).await;
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("tiny");
    let _mount = TmpfsMount::with_size(&mnt, "1m");
    let r = migrate(&s3, &mnt, &["--min-free", "0"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("not enough space"), "{r:?}");
    let listing = tree(&mnt);
    assert!(listing.is_empty(), "nothing written: {listing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_and_missing_bucket_stop_before_copying() {
    let s3 = TestS3::start();
    seed(&s3, &[("a".into(), 10)]).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("store");
    let r = output_with(
        &s3,
        &["migrate", "s3-to-local", "--dest", &dest_arg(&dest)],
        &[("AWS_SECRET_ACCESS_KEY", "wrong")],
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("access denied"), "{r:?}");
    let r = migrate(&s3, &dest, &["--bucket", "no-such-bucket"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("does not exist"), "{r:?}");
    // No credentials anywhere (HOME has no ~/.aws): the message says where to put them.
    let mut cmd = stowage(
        None,
        &[
            "migrate",
            "s3-to-local",
            "--bucket",
            s3.bucket(),
            "--endpoint",
            &s3.endpoint(),
            "--dest",
            &dest_arg(&dest),
        ],
    );
    cmd.env("S3_URL_ENCODED_LISTING", "false");
    let r = crate::support::cli::output(cmd.output().unwrap());
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("no credentials") && r.stderr.contains("AWS_ACCESS_KEY_ID"),
        "{r:?}"
    );
    assert!(!dest.exists());
}

fn output_with(s3: &TestS3, args: &[&str], env: &[(&str, &str)]) -> crate::support::cli::Run {
    let mut cmd = stowage(Some(s3), args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    crate::support::cli::output(cmd.output().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn resumes_after_kill_9_without_partial_files() {
    let s3 = TestS3::start();
    let objects: Vec<(String, usize)> = (0..120)
        .map(|i| (format!("clips/{i}/video.mp4"), 512 << 10))
        .collect();
    let want = seed(&s3, &objects).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("store");
    // Wait until the copy is under way, then kill it without warning.
    let mut child = migrate_under_way(&s3, &dest, "--quiet", 10);
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = tree(&dest);
    assert!(
        partial.len() < 120,
        "killed too late to test resuming ({} files)",
        partial.len()
    );
    for (k, v) in &partial {
        if !k.contains(".stowage") {
            assert_eq!(
                Some(v),
                want.get(k),
                "{k} is complete or absent, never partial"
            );
        }
    }
    let r = migrate(&s3, &dest, &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    let done = partial.keys().filter(|k| !k.contains(".stowage")).count() as u64;
    assert_eq!(j["skipped"].as_u64(), Some(done));
    assert_eq!(j["copied"].as_u64(), Some(120 - done));
    assert_eq!(tree(&dest), want, "complete, with no temp files left");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto: STOWAGE_TEST_S3_ENDPOINT (.ci/run starts it)"]
async fn hostile_keys_are_rejected_and_nothing_escapes_the_destination() {
    let s3 = TestS3::moto();
    let good = seed(&s3, &[("clips/1/video.mp4".into(), 1000), ("x".into(), 5)]).await;
    let hostile = [
        "../escape.txt",
        "a/../../escape2.txt",
        "a//b",
        "./dot",
        "/leading",
        "back\\slash",
        "ctl\u{1}char",
        "x/y",
    ];
    for k in hostile {
        s3.put_raw(k, b"evil").unwrap_or_else(|e| panic!("{e}"));
    }
    s3.put_raw(&format!("long/{}", "n".repeat(300)), b"long")
        .unwrap();
    s3.put_raw("zz-after/ok.txt", b"after").unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("store");
    let r = migrate(&s3, &dest, &["--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    let rejected: Vec<&str> = j["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kr| kr["key"].as_str().unwrap())
        .collect();
    for k in hostile {
        assert!(rejected.contains(&k), "{k:?} not in {rejected:?}");
    }
    assert_eq!(j["copied"], 3, "{j}");
    let mut want = good.clone();
    want.insert("zz-after/ok.txt".into(), digest(b"after"));
    assert_eq!(tree(&dest), want);
    let outside: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside,
        vec![std::ffi::OsString::from("store")],
        "nothing written beside the destination"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn local_to_s3_uploads_verifies_and_skips_what_is_identical() {
    let s3 = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path();
    std::fs::create_dir_all(src.join("clips/1")).unwrap();
    let small = body("s", 1000);
    let big = body("b", 9 << 20);
    std::fs::write(src.join("clips/1/small.mp4"), &small).unwrap();
    std::fs::write(src.join("clips/1/big.mp4"), &big).unwrap();
    std::fs::write(src.join(".stowage-tmp.0123456789abcdef"), b"partial").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("clips/link")).unwrap();

    let r = run(
        Some(&s3),
        &[
            "migrate",
            "local-to-s3",
            "--source",
            src.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["copied"], 2, "{j}");
    assert_eq!(j["unverified"].as_array().unwrap().len(), 0, "{j}");
    let store = s3.object_store();
    let got = store
        .get(&ObjPath::parse("clips/1/big.mp4").unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], &big[..]);
    assert!(
        store
            .head(&ObjPath::parse("clips/link").unwrap())
            .await
            .is_err(),
        "symlinks are not uploaded"
    );

    let r = run(
        Some(&s3),
        &[
            "migrate",
            "local-to-s3",
            "--source",
            src.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        (r.json()["copied"].as_u64(), r.json()["skipped"].as_u64()),
        (Some(0), Some(2))
    );
}

#[test]
fn help_teaches_and_bad_usage_exits_2() {
    let r = run(None, &["migrate", "s3-to-local", "--help"]);
    assert_eq!(r.code, 0);
    for needle in [
        "--bucket",
        "--dest",
        "--min-free",
        "--dry-run",
        "Exit codes",
        "S3_BUCKET_NAME",
    ] {
        assert!(
            r.stdout.contains(needle),
            "{needle} missing from help:\n{}",
            r.stdout
        );
    }
    let r = run(None, &["migrate", "s3-to-local", "--dest", "/tmp/x"]);
    assert_eq!(r.code, 2, "no bucket: {r:?}");
    let r = run(
        None,
        &[
            "migrate",
            "s3-to-local",
            "--bucket",
            "b",
            "--min-free",
            "lots",
        ],
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("invalid size"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_cleanly_and_a_rerun_finishes() {
    let s3 = TestS3::start();
    let objects: Vec<(String, usize)> = (0..150)
        .map(|i| (format!("c/{i}.mp4"), 300 << 10))
        .collect();
    let want = seed(&s3, &objects).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("store");
    let child = migrate_under_way(&s3, &dest, "--json", 5);
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let r = crate::support::cli::output(child.wait_with_output().unwrap());
    assert_eq!(r.code, 130, "{r:?}");
    let j = r.json();
    assert_eq!(j["interrupted"], true);
    let now = tree(&dest);
    assert!(
        now.keys().all(|k| !k.contains(".stowage-tmp")),
        "temp files removed: {now:?}"
    );
    assert_eq!(
        now.len() as u64,
        j["copied"].as_u64().unwrap(),
        "every copied object and nothing else is in place"
    );
    let r = migrate(&s3, &dest, &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(tree(&dest), want);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root to mount a tmpfs (.ci/run runs as root)"]
async fn a_disk_filling_up_mid_run_stops_cleanly() {
    let s3 = TestS3::start();
    let objects: Vec<(String, usize)> = (0..40)
        .map(|i| (format!("c/{i:02}.mp4"), 100_000))
        .collect();
    let want = seed(&s3, &objects).await;
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("disk");
    let _mount = TmpfsMount::with_size(&mnt, "8m");
    let dest = mnt.join("store");
    let child = stowage(
        Some(&s3),
        &[
            "migrate",
            "s3-to-local",
            "--dest",
            &dest_arg(&dest),
            "--concurrency",
            "1",
            "--min-free",
            "0",
            "--json",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Once the copy has started (preflight passed), another writer takes all the space.
    for _ in 0..1000 {
        if dest.join("c").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut hog = std::fs::File::create(mnt.join("hog")).unwrap();
    let chunk = vec![1u8; 64 << 10];
    while std::io::Write::write_all(&mut hog, &chunk).is_ok() {}
    let r = crate::support::cli::output(child.wait_with_output().unwrap());
    assert_eq!(r.code, 2, "{r:?}");
    let j = r.json();
    assert!(
        j["aborted"]
            .as_str()
            .unwrap_or_default()
            .contains("disk full"),
        "{j}"
    );
    let now = tree(&dest);
    assert!(
        now.keys().all(|k| !k.contains(".stowage-tmp")),
        "temp files removed: {now:?}"
    );
    for (k, v) in &now {
        assert_eq!(Some(v), want.get(k), "{k} is complete");
    }
    assert!((now.len() as u64) < 40);
    assert_eq!(
        now.len() as u64,
        j["copied"].as_u64().unwrap(),
        "the summary counts exactly what is in place"
    );
}

/// Starts a slow migration (two objects at a time) into `dest` as a child process and
/// returns once at least `files` files are there, so it can be interrupted mid-run.
fn migrate_under_way(
    s3: &TestS3,
    dest: &std::path::Path,
    output: &str,
    files: usize,
) -> std::process::Child {
    let child = stowage(
        Some(s3),
        &[
            "migrate",
            "s3-to-local",
            "--dest",
            &dest_arg(dest),
            "--concurrency",
            "2",
            output,
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    for _ in 0..500 {
        if dest.exists() && tree(dest).len() >= files {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Writes files through a local `BlobStore` (as the service does) when migrate enters its
/// copy phase: after planning, before any commit.
struct ServiceWritesWhenCopying {
    root: std::path::PathBuf,
    files: Vec<(&'static str, &'static [u8])>,
}

impl stowage::Reporter for ServiceWritesWhenCopying {
    fn phase(&self, name: &str, _items: Option<u64>, _bytes: Option<u64>) {
        if name != "copying" {
            return;
        }
        let (root, files) = (self.root.clone(), self.files.clone());
        // Its own runtime: the reporter is called from migrate's async context.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let service = stowage::BlobStore::local(root).unwrap();
                for (k, data) in files {
                    let key = stowage::Key::new(k).unwrap();
                    service.put(&key, data.to_vec().into()).await.unwrap();
                }
            })
        })
        .join()
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_the_service_writes_after_planning_is_never_replaced() {
    let s3 = TestS3::start();
    seed(
        &s3,
        &[
            ("clips/new/video.mp4".into(), 1000),
            ("clips/old/video.mp4".into(), 1000),
            ("clips/other/video.mp4".into(), 1000),
        ],
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("store");
    // An older, different local copy the plan will see and mean to replace.
    std::fs::create_dir_all(dest.join("clips/old")).unwrap();
    let stale = dest.join("clips/old/video.mp4");
    std::fs::write(&stale, b"stale").unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();

    let reporter = ServiceWritesWhenCopying {
        root: dest.clone(),
        files: vec![
            ("clips/new/video.mp4", b"NEW-SERVICE-RENDER"),
            ("clips/old/video.mp4", b"RE-RENDERED-BY-THE-SERVICE"),
        ],
    };
    let opts = stowage::ops::migrate::MigrateOptions::default();
    let summary = stowage::ops::migrate::s3_to_local(&s3.blob_store(), &dest, &opts, &reporter)
        .await
        .unwrap();

    let now = tree(&dest);
    assert_eq!(now["clips/new/video.mp4"], digest(b"NEW-SERVICE-RENDER"));
    assert_eq!(
        now["clips/old/video.mp4"],
        digest(b"RE-RENDERED-BY-THE-SERVICE")
    );
    assert_eq!(
        now["clips/other/video.mp4"],
        digest(&body("clips/other/video.mp4", 1000))
    );
    assert_eq!(summary.copied, 1, "{summary:?}");
    let mut conflicts: Vec<&str> = summary.conflicts.iter().map(|c| c.key.as_str()).collect();
    conflicts.sort();
    assert_eq!(
        conflicts,
        ["clips/new/video.mp4", "clips/old/video.mp4"],
        "{summary:?}"
    );
    assert!(summary
        .conflicts
        .iter()
        .all(|c| c.reason.contains("written locally since planning")));
    assert!(summary.has_problems());
    let leftovers: Vec<String> = tree(&dest)
        .into_keys()
        .filter(|k| k.contains(".stowage-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_file_newer_than_the_object_is_left_alone_and_reported() {
    let s3 = TestS3::start();
    seed(&s3, &[("clips/j1/video.mp4".into(), 1000)]).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("store");
    std::fs::create_dir_all(dest.join("clips/j1")).unwrap();
    // Written by the service after the bucket's version (its mtime is now).
    std::fs::write(dest.join("clips/j1/video.mp4"), b"NEW-SERVICE-RENDER").unwrap();

    let r = migrate(&s3, &dest, &["--json"]);
    assert_eq!(r.code, 1, "a conflict is reported as a problem: {r:?}");
    let j = r.json();
    assert_eq!(j["copied"], 0, "{j}");
    assert_eq!(j["conflicts"][0]["key"], "clips/j1/video.mp4", "{j}");
    assert!(
        j["conflicts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("newer than the bucket's version"),
        "{j}"
    );
    assert_eq!(
        std::fs::read(dest.join("clips/j1/video.mp4")).unwrap(),
        b"NEW-SERVICE-RENDER"
    );
}

/// Once the first file is uploaded, swaps every other listed file for a symlink to
/// `target` (outside the store): the walk has already seen them as regular files.
struct SwapForLinkAfterFirstUpload {
    files: Vec<std::path::PathBuf>,
    target: std::path::PathBuf,
    swapped: std::sync::Mutex<Vec<String>>,
}

impl stowage::Reporter for SwapForLinkAfterFirstUpload {
    fn item_done(&self, key: &str, _ok: bool) {
        let mut swapped = self.swapped.lock().unwrap();
        if !swapped.is_empty() {
            return;
        }
        for f in &self.files {
            if !f.ends_with(key) {
                std::fs::remove_file(f).unwrap();
                std::os::unix::fs::symlink(&self.target, f).unwrap();
                swapped.push(f.display().to_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn local_to_s3_never_uploads_a_file_swapped_for_a_symlink_after_the_walk() {
    let s3 = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("store");
    std::fs::create_dir_all(src.join("clips/a")).unwrap();
    std::fs::create_dir_all(src.join("clips/b")).unwrap();
    let secret = tmp.path().join("secret.txt");
    std::fs::write(&secret, b"OUTSIDE-THE-STORE").unwrap();
    let files = vec![src.join("clips/a/video.mp4"), src.join("clips/b/video.mp4")];
    for f in &files {
        std::fs::write(f, b"a clip").unwrap();
    }
    let reporter = SwapForLinkAfterFirstUpload {
        files: files.clone(),
        target: secret,
        swapped: Default::default(),
    };
    let mut opts = stowage::ops::migrate::MigrateOptions::default();
    opts.concurrency = 1;
    let summary = stowage::ops::migrate::local_to_s3(&src, &s3.blob_store(), &opts, &reporter)
        .await
        .unwrap();

    assert_eq!(summary.listed, 2, "the walk saw both files: {summary:?}");
    assert_eq!(reporter.swapped.lock().unwrap().len(), 1);
    let store = s3.object_store();
    for k in ["clips/a/video.mp4", "clips/b/video.mp4"] {
        if let Ok(got) = store.get(&ObjPath::parse(k).unwrap()).await {
            let got = got.bytes().await.unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got),
                "a clip",
                "{k}: content from outside the store"
            );
        }
    }
    assert_eq!(summary.copied, 1, "{summary:?}");
    assert_eq!(summary.failed.len(), 1, "{summary:?}");
    assert!(
        summary.failed[0].reason.contains("symbolic link"),
        "{summary:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_is_locked_before_the_listing_starts() {
    let s3 = TestS3::start();
    let want = seed(&s3, &[("clips/1/video.mp4".into(), 1000)]).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("store");
    s3.faults().delay_next_lists(1, Duration::from_secs(2));
    let child = stowage(
        Some(&s3),
        &[
            "migrate",
            "s3-to-local",
            "--dest",
            &dest_arg(&dest),
            "--json",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    for _ in 0..1000 {
        if s3.faults().lists() > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(s3.faults().lists() > 0, "the listing never started");
    // The first listing request is being held: a cleanup now must find the store locked.
    let lock = stowage::local::StoreLock::try_acquire(&dest);
    assert!(
        matches!(lock, Ok(None)),
        "the store is not locked while migrate lists it: {lock:?}"
    );
    let r = crate::support::cli::output(child.wait_with_output().unwrap());
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(tree(&dest), want);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_temp_sweep_keeps_a_live_writers_temp_file() {
    let s3 = TestS3::start();
    let want = seed(&s3, &[("clips/1/video.mp4".into(), 1000)]).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("store");
    std::fs::create_dir_all(dest.join("clips/live")).unwrap();
    // The service's put, in flight while migrate starts.
    let key = stowage::Key::new("clips/live/video.mp4").unwrap();
    let mut live = stowage::local::AtomicFile::create(&dest, &key).unwrap();
    live.write_all(b"NEW-SERVICE-RENDER").unwrap();
    // And one left by a killed run.
    std::fs::write(dest.join("clips/.stowage-tmp.00000000deadbeef"), b"partial").unwrap();

    let r = migrate(&s3, &dest, &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        !dest.join("clips/.stowage-tmp.00000000deadbeef").exists(),
        "a dead writer's temp file is swept"
    );
    live.commit().expect("the live put commits");
    let mut want = want;
    want.insert("clips/live/video.mp4".into(), digest(b"NEW-SERVICE-RENDER"));
    assert_eq!(tree(&dest), want);
}

#[tokio::test(flavor = "multi_thread")]
async fn local_to_s3_stopped_by_a_fatal_error_aborts_its_multipart_uploads() {
    let s3 = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path();
    std::fs::create_dir_all(src.join("clips")).unwrap();
    // A multipart upload of 12 parts, each held for a second: more than object_store
    // keeps in flight (8), so its body is still being read when the small file's PUT is
    // refused.
    std::fs::write(src.join("clips/big.mp4"), body("big", 96 << 20)).unwrap();
    std::fs::write(src.join("clips/small.mp4"), b"small").unwrap();
    s3.faults()
        .slow_key("clips/big.mp4", Duration::from_secs(1));
    s3.faults()
        .fail_key("clips/small.mp4", 403, Duration::from_millis(300));

    let mut opts = stowage::ops::migrate::MigrateOptions::default();
    opts.concurrency = 2;
    let summary =
        stowage::ops::migrate::local_to_s3(src, &s3.blob_store(), &opts, &stowage::NoopReporter)
            .await
            .unwrap();
    assert!(
        summary
            .aborted
            .as_deref()
            .unwrap_or_default()
            .contains("access denied"),
        "{summary:?}"
    );
    assert_eq!(
        s3.open_multipart_uploads(),
        0,
        "the in-flight multipart upload is aborted, not left behind: {summary:?}"
    );
    let in_bucket = s3
        .object_store()
        .head(&ObjPath::parse("clips/big.mp4").unwrap())
        .await
        .is_ok();
    assert_eq!(
        summary.copied,
        u64::from(in_bucket),
        "the summary counts exactly what is in the bucket: {summary:?}"
    );
}

/// Every object of the bucket: key → MD5 of its content.
async fn bucket_tree(s3: &TestS3) -> BTreeMap<String, String> {
    let store = s3.object_store();
    let metas: Vec<_> = store.list(None).map(|m| m.unwrap()).collect().await;
    let mut out = BTreeMap::new();
    for m in metas {
        let data = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        out.insert(m.location.to_string(), digest(&data));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn local_to_s3_killed_at_random_points_then_rerun_leaves_the_bucket_identical() {
    let s3 = TestS3::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("store");
    for i in 0..80 {
        let k = format!("clips/{i}/video.mp4");
        std::fs::create_dir_all(src.join(format!("clips/{i}"))).unwrap();
        std::fs::write(src.join(&k), body(&k, 256 << 10)).unwrap();
    }
    // One multipart upload too.
    std::fs::write(src.join("clips/big.mp4"), body("big", 20 << 20)).unwrap();
    let want = tree(&src);
    let src_arg = src.to_str().unwrap().to_owned();
    let args = [
        "migrate",
        "local-to-s3",
        "--source",
        &src_arg,
        "--concurrency",
        "4",
        "--quiet",
    ];
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for _ in 0..3 {
        let mut child = stowage(Some(&s3), &args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.u64(100..600)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Whatever is in the bucket is a whole file, never a part of one.
        let now = bucket_tree(&s3).await;
        eprintln!(
            "killed with {} of {} objects uploaded",
            now.len(),
            want.len()
        );
        for (k, v) in now {
            assert_eq!(Some(&v), want.get(&k), "{k} is complete or absent");
        }
    }
    let r = run(Some(&s3), &args[..6]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(bucket_tree(&s3).await, want);
    // A killed process cannot abort its multipart upload: its parts stay until a bucket
    // lifecycle rule (AbortIncompleteMultipartUpload) removes them.
    eprintln!(
        "multipart uploads left by the kills: {}",
        s3.open_multipart_uploads()
    );
}
