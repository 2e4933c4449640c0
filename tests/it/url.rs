//! `stowage url KEY`: the download URL the library hands out, from the service's
//! environment.

use crate::support::cli::{output, stowage};
use crate::support::s3::TestS3;

#[test]
fn a_local_store_gives_its_files_url_signed_when_a_secret_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let base = |secret: Option<&str>| {
        let mut cmd = stowage(None, &["url", "clips/1/video.mp4"]);
        cmd.env("STORAGE_TYPE", "local")
            .env("LOCAL_STORAGE_PATH", dir.path())
            .env("BASE_URL", "https://clips.example")
            .env_remove("FILES_PATH")
            .env_remove("STORAGE_URL_SECRET");
        if let Some(s) = secret {
            cmd.env("STORAGE_URL_SECRET", s);
        }
        output(cmd.output().unwrap())
    };
    let r = base(None);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stdout.trim(),
        "https://clips.example/api/files/clips/1/video.mp4"
    );
    let r = base(Some("0123456789abcdef0123456789abcdef"));
    assert_eq!(r.code, 0, "{r:?}");
    let url = r.stdout.trim();
    assert!(
        url.starts_with("https://clips.example/api/files/clips/1/video.mp4?expires="),
        "{url}"
    );
    assert!(url.contains("&sig="), "{url}");
}

#[test]
fn an_s3_store_gives_a_presigned_url_and_a_bad_key_is_an_error() {
    let s3 = TestS3::start();
    let mut cmd = stowage(Some(&s3), &["url", "clips/1/video.mp4"]);
    cmd.env("STORAGE_TYPE", "s3");
    let r = output(cmd.output().unwrap());
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("/clips/1/video.mp4?"), "{r:?}");
    assert!(r.stdout.contains("X-Amz-Signature="), "{r:?}");

    let mut cmd = stowage(Some(&s3), &["url", "../etc/passwd"]);
    cmd.env("STORAGE_TYPE", "s3");
    let r = output(cmd.output().unwrap());
    assert_eq!(r.code, 2, "{r:?}");
}
