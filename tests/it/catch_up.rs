//! Catch-up runs that respect retention: `migrate s3-to-local --max-age` copies only what
//! `cleanup --max-age` would keep.

use crate::support::cli::run;
use crate::support::s3::{CannedEntry, TestS3};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_copies_only_objects_modified_within_the_window_and_counts_the_rest() {
    let s3 = TestS3::start();
    s3.put_raw("clips/old/video.mp4", b"old clip").unwrap();
    s3.put_raw("clips/new/video.mp4", b"new clip!").unwrap();
    // s3s-fs stamps objects with the time of the PUT: a crafted listing gives the old one
    // its age (the objects themselves are still served from the bucket).
    let recent = chrono::Utc::now() - chrono::Duration::hours(2);
    s3.faults().answer_lists_with(vec![
        CannedEntry::new("clips/old/video.mp4", 8), // 2024
        CannedEntry {
            last_modified: recent.format("%Y-%m-%dT%H:%M:%S.000Z").to_string(),
            ..CannedEntry::new("clips/new/video.mp4", 9)
        },
    ]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().to_str().unwrap();

    let r = run(
        Some(&s3),
        &[
            "migrate",
            "s3-to-local",
            "--dest",
            dest,
            "--min-free",
            "0",
            "--max-age",
            "24h",
            "--json",
        ],
    );
    let j = r.json();
    assert_eq!(
        (
            j["copied"].as_u64(),
            j["too_old"].as_u64(),
            j["listed"].as_u64()
        ),
        (Some(1), Some(1), Some(2)),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("clips/new/video.mp4")).unwrap(),
        b"new clip!"
    );
    assert!(!dir.path().join("clips/old").exists());

    // Without --max-age both are copied; an age without a unit is refused.
    let r = run(
        Some(&s3),
        &[
            "migrate",
            "s3-to-local",
            "--dest",
            dest,
            "--min-free",
            "0",
            "--json",
        ],
    );
    assert_eq!(r.json()["copied"].as_u64(), Some(1), "{r:?}");
    assert_eq!(r.json()["too_old"].as_u64(), Some(0), "{r:?}");
    let r = run(
        Some(&s3),
        &["migrate", "s3-to-local", "--dest", dest, "--max-age", "24"],
    );
    assert_eq!(r.code, 2, "{r:?}");
}
