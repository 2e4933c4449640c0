//! What proves a copy (issue 12): ETags that are no MD5 (SSE-KMS), S3 additional checksums,
//! and the proof recorded with each file so `verify` checks it offline.

use stowage::checksum::{checksum_of, Algorithm};

use crate::support::cli::run;
use crate::support::s3::TestS3;

fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .rotate_left(u32::from(seed)) as u8
        })
        .collect()
}

fn migrate(s3: &TestS3, dest: &std::path::Path) -> crate::support::cli::Run {
    let dest = dest.to_str().unwrap();
    run(
        Some(s3),
        &["migrate", "s3-to-local", "--dest", dest, "--json"],
    )
}

fn verify(s3: &TestS3, dest: &std::path::Path) -> crate::support::cli::Run {
    run(
        Some(s3),
        &[
            "verify",
            "s3-to-local",
            "--dest",
            dest.to_str().unwrap(),
            "--json",
        ],
    )
}

/// Flips one byte in the middle of `path`, keeping its size.
fn flip_a_byte(path: &std::path::Path) {
    let mut data = std::fs::read(path).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x20;
    std::fs::write(path, data).unwrap();
}

fn keys(list: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sse_kms_object_is_proven_by_its_checksum_or_unverified_and_fetched_once() {
    let s3 = TestS3::start();
    let store = s3.object_store();
    let with_sum = body(3, (1 << 20) + 5);
    let without = body(5, 70_000);
    use object_store::ObjectStoreExt;
    for (k, d) in [
        ("kms/with-sum.bin", &with_sum),
        ("kms/no-sum.bin", &without),
    ] {
        store
            .put(
                &object_store::path::Path::parse(k).unwrap(),
                d.clone().into(),
            )
            .await
            .unwrap();
    }
    s3.faults().present_as_kms(
        "kms/with-sum.bin",
        Some(("sha256", checksum_of(Algorithm::Sha256, &with_sum))),
    );
    s3.faults().present_as_kms("kms/no-sum.bin", None);

    let tmp = tempfile::tempdir().unwrap();
    let r = migrate(&s3, tmp.path());
    assert_eq!(
        r.code, 1,
        "the object without a checksum is unverified: {r:?}"
    );
    let j = r.json();
    assert_eq!(j["copied"], 2, "{j}");
    assert!(j["failed"].as_array().unwrap().is_empty(), "{j}");
    assert_eq!(j["unverified"][0]["key"], "kms/no-sum.bin", "{j}");
    assert_eq!(j["unverified"].as_array().unwrap().len(), 1, "{j}");
    let reason = j["unverified"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("aws:kms"), "{reason}");
    assert_eq!(j["proofs"]["sha256"], 1, "{j}");
    assert_eq!(j["proofs"]["size_only"], 1, "{j}");
    assert_eq!(
        j["proofs"]["md5"], 0,
        "the KMS ETag is never taken for an MD5: {j}"
    );
    assert_eq!(s3.faults().gets_of("kms/with-sum.bin"), 1);
    assert_eq!(
        s3.faults().gets_of("kms/no-sum.bin"),
        1,
        "downloaded once, not six times"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("kms/with-sum.bin")).unwrap(),
        with_sum
    );
    assert_eq!(
        std::fs::read(tmp.path().join("kms/no-sum.bin")).unwrap(),
        without
    );

    let r = verify(&s3, tmp.path());
    let j = r.json();
    assert_eq!(j["identical"], 1, "{j}");
    assert_eq!(j["proofs"]["sha256"], 1, "{j}");
    assert_eq!(keys(&j["unverifiable"]), ["kms/no-sum.bin"], "{j}");
    assert!(j["content_differs"].as_array().unwrap().is_empty(), "{j}");

    // A flipped byte under the recorded checksum differs; under nothing, it is still
    // only unverifiable (never "differs" on an ETag that is no MD5).
    flip_a_byte(&tmp.path().join("kms/with-sum.bin"));
    flip_a_byte(&tmp.path().join("kms/no-sum.bin"));
    let j = verify(&s3, tmp.path()).json();
    assert_eq!(keys(&j["content_differs"]), ["kms/with-sum.bin"], "{j}");
    assert_eq!(keys(&j["unverifiable"]), ["kms/no-sum.bin"], "{j}");
}

/// Every checksum algorithm S3 offers, on objects whose ETag says nothing (SSE-KMS), plus a
/// plain MD5 object: each copy is proven by its own method, recorded, checked again
/// offline by `verify`, and a flipped byte is caught under each.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto: STOWAGE_TEST_S3_ENDPOINT (.ci/run starts it)"]
async fn each_checksum_algorithm_proves_a_copy_and_catches_a_flipped_byte() {
    let s3 = TestS3::moto();
    let mut expected = Vec::new();
    for (i, alg) in Algorithm::ALL.into_iter().enumerate() {
        let data = body(i as u8 + 1, 200_003 + i);
        let key = format!("sum/{}.bin", alg.name());
        let value = checksum_of(alg, &data);
        s3.put_raw_with_headers(
            &key,
            &data,
            &[
                (&format!("x-amz-checksum-{}", alg.name()), &value),
                ("x-amz-sdk-checksum-algorithm", &alg.name().to_uppercase()),
                ("x-amz-server-side-encryption", "aws:kms"),
            ],
        )
        .unwrap();
        expected.push((key, alg.name()));
    }
    s3.put_raw("plain.bin", &body(9, 123_457)).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let r = migrate(&s3, tmp.path());
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["copied"], 6, "{j}");
    for (_, name) in &expected {
        assert_eq!(j["proofs"][name], 1, "{name}: {j}");
    }
    assert_eq!(j["proofs"]["md5"], 1, "{j}");

    let r = verify(&s3, tmp.path());
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["identical"], 6, "{j}");
    for (_, name) in &expected {
        assert_eq!(j["proofs"][name], 1, "{name}: {j}");
    }

    let mut all: Vec<String> = expected.iter().map(|(k, _)| k.clone()).collect();
    all.push("plain.bin".into());
    all.sort();
    for k in &all {
        flip_a_byte(&tmp.path().join(k));
    }
    let j = verify(&s3, tmp.path()).json();
    assert_eq!(keys(&j["content_differs"]), all, "{j}");
}

/// A multipart object whose part size (5 MiB + 123 bytes) is none of the likely guesses:
/// `migrate` asks S3 for part 1's size (`HEAD ?partNumber=1`) instead of giving up, records
/// it, and `verify` then proves the copy and catches a flipped byte offline.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto: STOWAGE_TEST_S3_ENDPOINT (.ci/run starts it)"]
async fn an_odd_multipart_part_size_is_asked_for_and_recorded() {
    use object_store::{MultipartUpload, ObjectStoreExt};
    let s3 = TestS3::moto();
    let store = s3.object_store();
    let part = (5 << 20) + 123;
    let data = body(7, 2 * part + 1000);
    let path = object_store::path::Path::parse("big/odd-parts.bin").unwrap();
    let mut up = store.put_multipart(&path).await.unwrap();
    for chunk in data.chunks(part) {
        up.put_part(chunk.to_vec().into()).await.unwrap();
    }
    up.complete().await.unwrap();
    let etag = store.head(&path).await.unwrap().e_tag.unwrap();
    assert!(etag.ends_with("-3\""), "{etag}");

    let tmp = tempfile::tempdir().unwrap();
    let r = migrate(&s3, tmp.path());
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["proofs"]["multipart_md5"], 1, "{j}");
    let file = tmp.path().join("big/odd-parts.bin");
    assert_eq!(std::fs::read(&file).unwrap(), data);

    let r = verify(&s3, tmp.path());
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["proofs"]["multipart_md5"], 1);

    // A copy made without the record (an older stowage, another tool): verify asks S3.
    let _ = rustix::fs::removexattr(&file, "user.stowage.part_size");
    let r = verify(&s3, tmp.path());
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["proofs"]["multipart_md5"], 1);

    flip_a_byte(&file);
    let j = verify(&s3, tmp.path()).json();
    assert_eq!(keys(&j["content_differs"]), ["big/odd-parts.bin"], "{j}");
}

/// A local file corrupted with its size and mtime kept: every plain rerun skips it, a
/// `--checksum` rerun fetches it again. An object that could only be copied unverified
/// (SSE-KMS, no checksum) is not fetched again for it.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_checksum_fetches_again_a_file_corrupted_in_place() {
    use object_store::ObjectStoreExt;
    let s3 = TestS3::start();
    let store = s3.object_store();
    let good = body(11, 300_000);
    let kms = body(12, 1000);
    for (k, d) in [("a/good.bin", &good), ("a/kms.bin", &kms)] {
        store
            .put(
                &object_store::path::Path::parse(k).unwrap(),
                d.clone().into(),
            )
            .await
            .unwrap();
    }
    s3.faults().present_as_kms("a/kms.bin", None);
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(migrate(&s3, tmp.path()).json()["copied"], 2);

    let file = tmp.path().join("a/good.bin");
    let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
    flip_a_byte(&file);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    let j = migrate(&s3, tmp.path()).json();
    assert_eq!(
        (j["copied"].as_u64(), j["skipped"].as_u64()),
        (Some(0), Some(2)),
        "{j}"
    );
    assert_ne!(
        std::fs::read(&file).unwrap(),
        good,
        "a plain rerun trusts size and mtime"
    );

    let dest = tmp.path().to_str().unwrap();
    let r = run(
        Some(&s3),
        &[
            "migrate",
            "s3-to-local",
            "--dest",
            dest,
            "--json",
            "--checksum",
        ],
    );
    let j = r.json();
    assert_eq!(
        (j["copied"].as_u64(), j["skipped"].as_u64()),
        (Some(1), Some(1)),
        "{j}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), good);
    assert_eq!(s3.faults().gets_of("a/good.bin"), 2);
    assert_eq!(
        s3.faults().gets_of("a/kms.bin"),
        1,
        "nothing to compare it with: not refetched"
    );
    let j = verify(&s3, tmp.path()).json();
    assert!(j["content_differs"].as_array().unwrap().is_empty(), "{j}");
    assert_eq!(j["identical"], 1, "{j}");
}

/// `local-to-s3` into a bucket that encrypts with SSE-KMS: an upload is confirmed by the
/// checksum the bucket stored, or listed as unverified; never failed for its ETag.
#[tokio::test(flavor = "multi_thread")]
async fn local_to_s3_confirms_uploads_to_an_sse_kms_bucket_by_checksum() {
    let s3 = TestS3::start();
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("up")).unwrap();
    let one = body(21, 77_777);
    std::fs::write(src.path().join("up/one.bin"), &one).unwrap();
    std::fs::write(src.path().join("up/two.bin"), body(22, 1234)).unwrap();
    s3.faults().present_as_kms(
        "up/one.bin",
        Some(("sha256", checksum_of(Algorithm::Sha256, &one))),
    );
    s3.faults().present_as_kms("up/two.bin", None);
    let r = run(
        Some(&s3),
        &[
            "migrate",
            "local-to-s3",
            "--source",
            src.path().to_str().unwrap(),
            "--json",
        ],
    );
    let j = r.json();
    assert_eq!(j["copied"], 2, "{j}");
    assert!(j["failed"].as_array().unwrap().is_empty(), "{j}");
    assert_eq!(j["proofs"]["sha256"], 1, "{j}");
    assert_eq!(j["unverified"][0]["key"], "up/two.bin", "{j}");
    assert_eq!(j["unverified"].as_array().unwrap().len(), 1, "{j}");
}

/// A rerun of `local-to-s3` into an SSE-KMS bucket: the ETags are opaque, so a file is
/// found already uploaded by the checksum the bucket stored (SHA-256, sent with every
/// upload), or, where the bucket stored none, by its size and an mtime equal to the
/// object's LastModified (the file was copied from that very object). Nothing else is
/// skipped: a file changed in place (same size) and one with another mtime go up again.
#[tokio::test(flavor = "multi_thread")]
async fn local_to_s3_rerun_into_an_sse_kms_bucket_uploads_only_what_changed() {
    use futures::TryStreamExt;
    let s3 = TestS3::start();
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("up")).unwrap();
    let files = [
        ("up/summed.bin", body(31, 90_001)),
        ("up/changed.bin", body(32, 4_567)),
        ("up/legacy.bin", body(33, 12_345)),
        ("up/touched.bin", body(34, 777)),
    ];
    for (k, d) in &files {
        std::fs::write(src.path().join(k), d).unwrap();
    }
    // The first two keep the SHA-256 each upload sends; the others stand for objects
    // uploaded before the bucket stored checksums.
    for (k, _) in &files[..2] {
        s3.faults().present_as_kms_keeping_checksums(k);
    }
    for (k, _) in &files[2..] {
        s3.faults().present_as_kms(k, None);
    }
    let upload = || {
        run(
            Some(&s3),
            &[
                "migrate",
                "local-to-s3",
                "--source",
                src.path().to_str().unwrap(),
                "--json",
            ],
        )
        .json()
    };
    let j = upload();
    assert_eq!(j["copied"], 4, "{j}");
    assert!(j["failed"].as_array().unwrap().is_empty(), "{j}");

    // The bucket is unchanged; locally, one file changes in place (size and mtime kept),
    // one legacy file gets the object's LastModified as its mtime (as `migrate
    // s3-to-local` leaves it), and one is merely touched.
    let changed = src.path().join("up/changed.bin");
    let mtime = std::fs::metadata(&changed).unwrap().modified().unwrap();
    flip_a_byte(&changed);
    let set_mtime = |path: &std::path::Path, t: std::time::SystemTime| {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(t).unwrap();
    };
    set_mtime(&changed, mtime);
    let listed: Vec<stowage::Meta> = s3.blob_store().list("up/").try_collect().await.unwrap();
    let legacy = listed
        .iter()
        .find(|m| m.key.as_str() == "up/legacy.bin")
        .unwrap();
    set_mtime(
        &src.path().join("up/legacy.bin"),
        legacy.last_modified.into(),
    );
    set_mtime(
        &src.path().join("up/touched.bin"),
        std::time::SystemTime::now() + std::time::Duration::from_secs(5),
    );

    let j = upload();
    assert_eq!(
        (j["copied"].as_u64(), j["skipped"].as_u64()),
        (Some(2), Some(2)),
        "only the changed and the touched file go up again: {j}"
    );
    assert_eq!(j["skipped_proofs"]["sha256"], 1, "{j}");
    assert_eq!(
        j["skipped_proofs"]["size_only"], 1,
        "the legacy file, by size and mtime: {j}"
    );
    assert!(j["failed"].as_array().unwrap().is_empty(), "{j}");
}

/// A multipart upload through signed raw requests, the way an SDK sends one with a checksum
/// algorithm: `x-amz-checksum-algorithm` on create, each part's checksum with the part, and
/// the part checksums in the completion. `extra` goes on the create (e.g. SSE-KMS).
fn upload_in_parts(
    s3: &TestS3,
    key: &str,
    data: &[u8],
    part: usize,
    alg: Algorithm,
    extra: &[(&str, &str)],
) {
    let path = format!("/{}/{key}", s3.bucket());
    let upper = alg.name().to_uppercase();
    let mut headers = vec![("x-amz-checksum-algorithm", upper.as_str())];
    headers.extend_from_slice(extra);
    let (status, _, resp) = s3
        .raw_request_with("POST", &format!("{path}?uploads"), &headers, b"")
        .unwrap();
    let resp = String::from_utf8(resp).unwrap();
    assert_eq!(status, 200, "{resp}");
    let id = resp
        .split("<UploadId>")
        .nth(1)
        .and_then(|r| r.split("</UploadId>").next())
        .unwrap()
        .to_owned();
    let header = format!("x-amz-checksum-{}", alg.name());
    let element = match alg {
        Algorithm::Crc32 => "ChecksumCRC32",
        Algorithm::Crc32c => "ChecksumCRC32C",
        Algorithm::Crc64Nvme => "ChecksumCRC64NVME",
        Algorithm::Sha1 => "ChecksumSHA1",
        Algorithm::Sha256 => "ChecksumSHA256",
    };
    let mut complete = String::from("<CompleteMultipartUpload>");
    for (i, chunk) in data.chunks(part).enumerate() {
        let n = i + 1;
        let sum = checksum_of(alg, chunk);
        let (status, head, resp) = s3
            .raw_request_with(
                "PUT",
                &format!("{path}?partNumber={n}&uploadId={id}"),
                &[(header.as_str(), sum.as_str())],
                chunk,
            )
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
        let etag = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("etag")
                    .then(|| value.trim().to_owned())
            })
            .unwrap();
        complete.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag><{element}>{sum}</{element}></Part>"
        ));
    }
    complete.push_str("</CompleteMultipartUpload>");
    let (status, _, resp) = s3
        .raw_request_with(
            "POST",
            &format!("{path}?uploadId={id}"),
            &[],
            complete.as_bytes(),
        )
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
}

/// Multipart objects whose only proof, or best one, is a COMPOSITE checksum (a checksum of
/// the part checksums): SSE-KMS objects (their ETag says nothing) with CRC32 and SHA-1, and
/// a SHA-256 one as object_store uploads it. `migrate` asks S3 for the part size, proves
/// each copy with it and records both; `verify` proves them offline and catches a flipped
/// byte under each. moto keeps the checksums of a multipart upload (without the `-N`
/// suffix and `x-amz-checksum-type` S3 sends; stowage checks such a value either way).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto: STOWAGE_TEST_S3_ENDPOINT (.ci/run starts it)"]
async fn composite_checksums_prove_multipart_copies_and_catch_a_flipped_byte() {
    use object_store::{MultipartUpload, ObjectStoreExt};
    let s3 = TestS3::moto();
    let part = (5 << 20) + 123;
    let kms = [("x-amz-server-side-encryption", "aws:kms")];
    let crc32 = body(41, 2 * part + 1000);
    upload_in_parts(
        &s3,
        "comp/kms-crc32.bin",
        &crc32,
        part,
        Algorithm::Crc32,
        &kms,
    );
    // Not CRC32C: moto 5.2 without the optional `crc32c` module computes CRC32 for it
    // (stowage rightly reports such a copy as not matching).
    let sha1 = body(42, part + 77);
    upload_in_parts(&s3, "comp/kms-sha1.bin", &sha1, part, Algorithm::Sha1, &kms);
    // stowage's own client uploads with SHA-256 (a multipart upload: COMPOSITE).
    let sha256 = body(43, 2 * part + 5);
    let store = stowage::s3::object_store(&s3.config()).unwrap();
    let path = object_store::path::Path::parse("comp/sha256.bin").unwrap();
    let mut up = store.put_multipart(&path).await.unwrap();
    for chunk in sha256.chunks(part) {
        up.put_part(chunk.to_vec().into()).await.unwrap();
    }
    up.complete().await.unwrap();
    let all = ["comp/kms-crc32.bin", "comp/kms-sha1.bin", "comp/sha256.bin"];

    let tmp = tempfile::tempdir().unwrap();
    let r = migrate(&s3, tmp.path());
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["copied"], 3, "{j}");
    for name in ["crc32_composite", "sha1_composite", "sha256_composite"] {
        assert_eq!(j["proofs"][name], 1, "{name}: {j}");
    }
    for (k, d) in all.iter().zip([&crc32, &sha1, &sha256]) {
        let file = tmp.path().join(k);
        assert_eq!(&std::fs::read(&file).unwrap(), d, "{k}");
        if crate::support::cli::xattrs_supported(tmp.path()) {
            let record = xattr_text(&file, "user.stowage.checksum");
            let parts = d.len().div_ceil(part);
            assert!(record.ends_with(&format!("-{parts}")), "{k}: {record}");
            assert_eq!(
                xattr_text(&file, "user.stowage.part_size"),
                part.to_string()
            );
        }
    }

    let r = verify(&s3, tmp.path());
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["identical"], 3, "{j}");
    for name in ["crc32_composite", "sha1_composite", "sha256_composite"] {
        assert_eq!(j["proofs"][name], 1, "{name}: {j}");
    }

    for k in all {
        flip_a_byte(&tmp.path().join(k));
    }
    let j = verify(&s3, tmp.path()).json();
    assert_eq!(keys(&j["content_differs"]), all, "{j}");
    assert!(j["unverifiable"].as_array().unwrap().is_empty(), "{j}");
}

fn xattr_text(path: &std::path::Path, name: &str) -> String {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::getxattr(path, name, &mut buf).unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// `local-to-s3` of a file big enough for a multipart upload: object_store sends SHA-256,
/// so the bucket keeps a COMPOSITE checksum, which confirms the upload (moto sends it
/// without its `-N`, which stowage used to take for a full-object checksum and fail the
/// upload on); a rerun finds it already there.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs moto: STOWAGE_TEST_S3_ENDPOINT (.ci/run starts it)"]
async fn local_to_s3_confirms_a_multipart_upload_by_its_composite_checksum() {
    let s3 = TestS3::moto();
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("big")).unwrap();
    std::fs::write(src.path().join("big/clip.bin"), body(51, (21 << 20) + 3)).unwrap();
    let upload = || {
        run(
            Some(&s3),
            &[
                "migrate",
                "local-to-s3",
                "--source",
                src.path().to_str().unwrap(),
                "--json",
            ],
        )
    };
    let r = upload();
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["copied"], 1, "{j}");
    assert_eq!(j["proofs"]["sha256_composite"], 1, "{j}");
    let j = upload().json();
    assert_eq!(
        (j["copied"].as_u64(), j["skipped"].as_u64()),
        (Some(0), Some(1)),
        "{j}"
    );
}
