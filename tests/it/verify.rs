//! `stowage verify s3-to-local` against a real S3 server: every kind of difference.

use object_store::path::Path as ObjPath;
use object_store::ObjectStoreExt;

use crate::support::cli::run;
use crate::support::s3::TestS3;

fn keys_of(j: &serde_json::Value, list: &str) -> Vec<String> {
    j[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|kr| kr["key"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn detects_flipped_truncated_missing_extra_and_multipart_differences() {
    let s3 = TestS3::start();
    let store = s3.object_store();
    for (k, n) in [
        ("a/flip.mp4", 5000),
        ("a/trunc.mp4", 5000),
        ("a/gone.mp4", 10),
        ("a/fine.mp4", 70_000),
    ] {
        let data: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
        store
            .put(&ObjPath::parse(k).unwrap(), data.into())
            .await
            .unwrap();
    }
    let big: Vec<u8> = (0..(11u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut up = object_store::buffered::BufWriter::with_capacity(
        store.clone(),
        ObjPath::parse("a/multi.mp4").unwrap(),
        5 << 20,
    );
    tokio::io::AsyncWriteExt::write_all(&mut up, &big)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut up).await.unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().to_str().unwrap();
    let r = run(
        Some(&s3),
        &["migrate", "s3-to-local", "--dest", dest, "--quiet"],
    );
    assert_eq!(r.code, 0, "{r:?}");

    let r = run(
        Some(&s3),
        &["verify", "s3-to-local", "--dest", dest, "--json"],
    );
    assert_eq!(r.code, 0, "an intact copy verifies: {r:?}");
    assert_eq!(r.json()["identical"], 5);

    let p = |k: &str| tmp.path().join(k);
    let mut flip = std::fs::read(p("a/flip.mp4")).unwrap();
    flip[100] ^= 1;
    std::fs::write(p("a/flip.mp4"), flip).unwrap();
    std::fs::write(
        p("a/trunc.mp4"),
        &std::fs::read(p("a/trunc.mp4")).unwrap()[..4000],
    )
    .unwrap();
    std::fs::remove_file(p("a/gone.mp4")).unwrap();
    std::fs::write(p("a/extra.mp4"), b"not in the bucket").unwrap();
    // Rewrite the multipart file in place (keeping its xattrs) with one byte changed.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(p("a/multi.mp4"))
            .unwrap();
        f.seek(SeekFrom::Start(6 << 20)).unwrap();
        f.write_all(&[big[6 << 20] ^ 0xff]).unwrap();
    }

    let r = run(
        Some(&s3),
        &["verify", "s3-to-local", "--dest", dest, "--json"],
    );
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    assert_eq!(keys_of(&j, "missing"), ["a/gone.mp4"]);
    assert_eq!(keys_of(&j, "extra"), ["a/extra.mp4"]);
    assert_eq!(keys_of(&j, "size_differs"), ["a/trunc.mp4"]);
    if crate::support::cli::xattrs_supported(tmp.path()) {
        // migrate recorded the part size, so the multipart change is a definite difference.
        assert_eq!(
            keys_of(&j, "content_differs"),
            ["a/flip.mp4", "a/multi.mp4"],
            "{j}"
        );
    } else {
        let mut bad = keys_of(&j, "content_differs");
        bad.extend(keys_of(&j, "unverifiable"));
        bad.sort();
        assert_eq!(bad, ["a/flip.mp4", "a/multi.mp4"], "{j}");
    }
    assert_eq!(j["identical"], 1);

    let r = run(Some(&s3), &["verify", "s3-to-local", "--dest", dest]);
    assert_eq!(r.code, 1);
    for needle in [
        "missing locally",
        "extra locally",
        "size differs",
        "a/flip.mp4",
    ] {
        assert!(r.stdout.contains(needle), "{needle}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto: STOWAGE_TEST_S3_ENDPOINT (.ci/run starts it)"]
async fn hostile_keys_are_reported_not_fatal() {
    let s3 = TestS3::moto();
    s3.put_raw("ok.txt", b"fine").unwrap();
    s3.put_raw("../escape.txt", b"evil").unwrap();
    s3.put_raw("zz.txt", b"after").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().to_str().unwrap();
    let r = run(
        Some(&s3),
        &["migrate", "s3-to-local", "--dest", dest, "--quiet"],
    );
    assert_eq!(r.code, 1, "{r:?}");
    let r = run(
        Some(&s3),
        &["verify", "s3-to-local", "--dest", dest, "--json"],
    );
    assert_eq!(r.code, 1, "{r:?}");
    let j = r.json();
    assert_eq!(keys_of(&j, "rejected"), ["../escape.txt"]);
    assert_eq!(j["identical"], 2);
}
