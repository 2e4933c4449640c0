//! `StoreConfig` from environment maps and URLs: every variable, its default, and each bad
//! value, asserted on the variable `Error::Config` names (never on message text).
//!
//! `from_env_map` reads only the map (`HOME` included), so these tests never touch the
//! process environment and can run in parallel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use stowage::config::LocalConfig;
use stowage::{Error, S3Config, StoreConfig};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn config(pairs: &[(&str, &str)]) -> StoreConfig {
    StoreConfig::from_env_map(&env(pairs)).unwrap_or_else(|e| panic!("{pairs:?}: {e}"))
}

fn local(pairs: &[(&str, &str)]) -> LocalConfig {
    match config(pairs) {
        StoreConfig::Local(l) => l,
        other => panic!("{pairs:?}: expected a local config, got {other:?}"),
    }
}

fn s3(pairs: &[(&str, &str)]) -> S3Config {
    let mut all = vec![("STORAGE_TYPE", "s3"), ("S3_BUCKET_NAME", "clips")];
    all.extend_from_slice(pairs);
    match config(&all) {
        StoreConfig::S3(c) => c,
        other => panic!("{pairs:?}: expected an S3 config, got {other:?}"),
    }
}

/// The variable a configuration error names.
fn bad_var(pairs: &[(&str, &str)]) -> String {
    match StoreConfig::from_env_map(&env(pairs)) {
        Err(Error::Config { name, reason }) => {
            assert!(
                !reason.is_empty(),
                "{name}: the error says what is expected"
            );
            name
        }
        other => panic!("{pairs:?}: expected Error::Config, got {other:?}"),
    }
}

fn bad_s3_var(pairs: &[(&str, &str)]) -> String {
    let mut all = vec![("STORAGE_TYPE", "s3"), ("S3_BUCKET_NAME", "clips")];
    all.extend_from_slice(pairs);
    bad_var(&all)
}

#[test]
fn defaults_are_a_local_store_at_the_service_path() {
    let l = local(&[]);
    assert_eq!(l.root, PathBuf::from("/opt/meme-maker/storage"));
    assert_eq!(l.urls.base_url, "http://localhost:8000");
    assert_eq!(l.urls.files_path, "/api/files");
    // Empty values count as unset.
    assert_eq!(
        local(&[("STORAGE_TYPE", ""), ("LOCAL_STORAGE_PATH", "")]),
        l
    );
}

#[test]
fn storage_type_selects_the_backend() {
    assert!(matches!(
        config(&[("STORAGE_TYPE", "local")]),
        StoreConfig::Local(_)
    ));
    assert!(matches!(
        config(&[("STORAGE_TYPE", "LOCAL")]),
        StoreConfig::Local(_)
    ));
    assert!(matches!(
        config(&[("STORAGE_TYPE", "s3"), ("S3_BUCKET_NAME", "b")]),
        StoreConfig::S3(_)
    ));
    assert!(matches!(
        config(&[("STORAGE_TYPE", "memory")]),
        StoreConfig::Memory
    ));
    assert_eq!(bad_var(&[("STORAGE_TYPE", "gcs")]), "STORAGE_TYPE");
    assert_eq!(bad_var(&[("STORAGE_TYPE", "s3 ")]), "STORAGE_TYPE");
}

#[test]
fn local_variables() {
    let l = local(&[
        ("LOCAL_STORAGE_PATH", "/srv/clips"),
        ("BASE_URL", "https://clips.example.com"),
        ("FILES_PATH", "/files"),
    ]);
    assert_eq!(l.root, PathBuf::from("/srv/clips"));
    assert_eq!(l.urls.base_url, "https://clips.example.com");
    assert_eq!(l.urls.files_path, "/files");
}

#[test]
fn bad_local_values_name_their_variable() {
    for path in ["relative/dir", "./storage", "storage"] {
        assert_eq!(
            bad_var(&[("LOCAL_STORAGE_PATH", path)]),
            "LOCAL_STORAGE_PATH",
            "{path}"
        );
    }
    for url in [
        "localhost:8000",
        "not a url",
        "ftp://clips.example.com",
        "/api",
    ] {
        assert_eq!(bad_var(&[("BASE_URL", url)]), "BASE_URL", "{url}");
    }
    assert_eq!(bad_var(&[("FILES_PATH", "api/files")]), "FILES_PATH");
}

#[test]
fn a_set_but_empty_or_short_url_secret_is_an_error_not_signing_off() {
    // Unset means "no signing"; set-but-empty is almost always a failed substitution
    // (`STORAGE_URL_SECRET=$(cat missing-file)`) and must not silently serve unsigned.
    assert_eq!(local(&[]).urls.secret, None);
    for secret in ["", "short", "   "] {
        assert_eq!(
            bad_var(&[("STORAGE_URL_SECRET", secret)]),
            "STORAGE_URL_SECRET",
            "{secret:?}"
        );
    }
}

#[test]
fn s3_variables() {
    let c = s3(&[
        ("S3_REGION", "eu-west-1"),
        ("S3_PREFIX", "clips/v1"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ("AWS_ACCESS_KEY_ID", "AKIDENV"),
        ("AWS_SECRET_ACCESS_KEY", "secretenv"),
        ("AWS_SESSION_TOKEN", "tokenenv"),
        ("S3_PUBLIC_BASE_URL", "https://cdn.example.com/clips"),
        ("S3_PRESIGN_TTL", "15m"),
        ("S3_URL_ENCODED_LISTING", "false"),
    ]);
    assert_eq!(c.bucket, "clips");
    assert_eq!(c.region, "eu-west-1");
    assert_eq!(c.prefix, "clips/v1");
    assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(c.access_key_id.as_deref(), Some("AKIDENV"));
    assert_eq!(c.secret_access_key.as_deref(), Some("secretenv"));
    assert_eq!(c.session_token.as_deref(), Some("tokenenv"));
    assert_eq!(
        c.public_base_url.as_deref(),
        Some("https://cdn.example.com/clips")
    );
    assert_eq!(c.presign_ttl, Duration::from_secs(15 * 60));
    assert!(!c.url_encoded_listing);

    // Defaults.
    let d = s3(&[]);
    assert_eq!(d.region, "us-east-1");
    assert_eq!(d.prefix, "");
    assert_eq!(d.endpoint, None);
    assert_eq!(d.public_base_url, None);
    assert_eq!(
        d.presign_ttl,
        Duration::from_secs(3600),
        "presigned URLs last 1 hour"
    );
    assert!(d.url_encoded_listing);
    assert_eq!(
        (d.access_key_id, d.secret_access_key),
        (None, None),
        "no HOME, no keys"
    );
}

#[test]
fn region_comes_from_s3_region_then_aws_region_then_aws_default_region() {
    let all = [
        ("S3_REGION", "r-s3"),
        ("AWS_REGION", "r-aws"),
        ("AWS_DEFAULT_REGION", "r-default"),
    ];
    assert_eq!(s3(&all).region, "r-s3");
    assert_eq!(s3(&all[1..]).region, "r-aws");
    assert_eq!(s3(&all[2..]).region, "r-default");
}

#[test]
fn aws_endpoint_url_s3_wins_over_aws_endpoint_url() {
    let c = s3(&[
        ("AWS_ENDPOINT_URL", "http://general:1"),
        ("AWS_ENDPOINT_URL_S3", "http://s3only:2"),
    ]);
    assert_eq!(c.endpoint.as_deref(), Some("http://s3only:2"));
}

#[test]
fn bad_s3_values_name_their_variable() {
    assert_eq!(bad_var(&[("STORAGE_TYPE", "s3")]), "S3_BUCKET_NAME");
    assert_eq!(
        bad_var(&[("STORAGE_TYPE", "s3"), ("S3_BUCKET_NAME", "")]),
        "S3_BUCKET_NAME"
    );
    assert_eq!(
        bad_s3_var(&[("AWS_ENDPOINT_URL", "not a url")]),
        "AWS_ENDPOINT_URL"
    );
    assert_eq!(
        bad_s3_var(&[("AWS_ENDPOINT_URL_S3", "not a url")]),
        "AWS_ENDPOINT_URL_S3"
    );
    assert_eq!(
        bad_s3_var(&[("AWS_ACCESS_KEY_ID", "AKID")]),
        "AWS_SECRET_ACCESS_KEY"
    );
    assert_eq!(
        bad_s3_var(&[("AWS_SECRET_ACCESS_KEY", "s")]),
        "AWS_ACCESS_KEY_ID"
    );
    assert_eq!(
        bad_s3_var(&[("S3_PRESIGN_TTL", "an hour")]),
        "S3_PRESIGN_TTL"
    );
    assert_eq!(
        bad_s3_var(&[("S3_URL_ENCODED_LISTING", "maybe")]),
        "S3_URL_ENCODED_LISTING"
    );
    assert_eq!(
        bad_s3_var(&[("S3_PUBLIC_BASE_URL", "cdn.example.com")]),
        "S3_PUBLIC_BASE_URL"
    );
}

/// Writes an AWS shared credentials file with a `[default]` and a `[clips]` profile.
fn credentials_file(dir: &Path) -> PathBuf {
    let path = dir.join("credentials");
    std::fs::write(
        &path,
        "# comment\n\
         [default]\n\
         aws_access_key_id = AKIDDEFAULT\n\
         aws_secret_access_key = secretdefault\n\
         \n\
         [clips]\n\
         aws_access_key_id=AKIDCLIPS\n\
         aws_secret_access_key=secretclips\n\
         aws_session_token=tokenclips\n\
         \n\
         [empty]\n\
         region = eu-west-1\n",
    )
    .unwrap();
    path
}

fn keys(c: &S3Config) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        c.access_key_id.as_deref(),
        c.secret_access_key.as_deref(),
        c.session_token.as_deref(),
    )
}

#[test]
fn credentials_from_home_aws_credentials() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".aws")).unwrap();
    credentials_file(&home.path().join(".aws"));
    let h = home.path().to_str().unwrap();

    let c = s3(&[("HOME", h)]);
    assert_eq!(keys(&c), (Some("AKIDDEFAULT"), Some("secretdefault"), None));
    let c = s3(&[("HOME", h), ("AWS_PROFILE", "clips")]);
    assert_eq!(
        keys(&c),
        (Some("AKIDCLIPS"), Some("secretclips"), Some("tokenclips"))
    );
    assert_eq!(
        bad_s3_var(&[("HOME", h), ("AWS_PROFILE", "nosuch")]),
        "AWS_PROFILE"
    );
    assert_eq!(
        bad_s3_var(&[("HOME", h), ("AWS_PROFILE", "empty")]),
        "AWS_PROFILE"
    );

    // Keys in the environment win over the file, session token included.
    let c = s3(&[
        ("HOME", h),
        ("AWS_PROFILE", "clips"),
        ("AWS_ACCESS_KEY_ID", "AKIDENV"),
        ("AWS_SECRET_ACCESS_KEY", "secretenv"),
    ]);
    assert_eq!(keys(&c), (Some("AKIDENV"), Some("secretenv"), None));

    // A HOME without .aws/credentials means no static keys, not an error.
    let empty_home = tempfile::tempdir().unwrap();
    let c = s3(&[("HOME", empty_home.path().to_str().unwrap())]);
    assert_eq!(keys(&c), (None, None, None));
}

#[test]
fn credentials_from_aws_shared_credentials_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = credentials_file(dir.path());
    let f = file.to_str().unwrap();
    let c = s3(&[("AWS_SHARED_CREDENTIALS_FILE", f), ("HOME", "/nonexistent")]);
    assert_eq!(keys(&c), (Some("AKIDDEFAULT"), Some("secretdefault"), None));
    let c = s3(&[("AWS_SHARED_CREDENTIALS_FILE", f), ("AWS_PROFILE", "clips")]);
    assert_eq!(
        keys(&c),
        (Some("AKIDCLIPS"), Some("secretclips"), Some("tokenclips"))
    );
}

#[test]
fn from_url_for_each_scheme() {
    match StoreConfig::from_url("s3://clip-bucket/some/prefix/").unwrap() {
        StoreConfig::S3(c) => {
            assert_eq!(c.bucket, "clip-bucket");
            assert_eq!(c.prefix, "some/prefix");
        }
        other => panic!("{other:?}"),
    }
    match StoreConfig::from_url("s3://clip-bucket").unwrap() {
        StoreConfig::S3(c) => {
            assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("clip-bucket", ""))
        }
        other => panic!("{other:?}"),
    }
    match StoreConfig::from_url("file:///srv/clips").unwrap() {
        StoreConfig::Local(l) => assert_eq!(l.root, PathBuf::from("/srv/clips")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        StoreConfig::from_url("memory://").unwrap(),
        StoreConfig::Memory
    );
}

#[test]
fn from_url_rejects_what_it_cannot_open() {
    for bad in [
        "gs://bucket/x",
        "/srv/clips",
        "file://relative/path",
        "s3://",
    ] {
        match StoreConfig::from_url(bad) {
            Err(Error::Config { .. }) => {}
            other => panic!("{bad}: expected Error::Config, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn open_builds_the_configured_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = config(&[("LOCAL_STORAGE_PATH", dir.path().to_str().unwrap())])
        .open()
        .unwrap();
    assert_eq!(store.local_root(), Some(dir.path()));
    assert_eq!(
        store
            .download_url(&stowage::Key::new("a b").unwrap())
            .await
            .unwrap(),
        "http://localhost:8000/api/files/a%20b"
    );
    assert_eq!(
        config(&[("STORAGE_TYPE", "memory")]).open().unwrap().kind(),
        stowage::BackendKind::Memory
    );

    let s3 = s3(&[
        ("S3_PREFIX", "/clips/v1/"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ("AWS_ACCESS_KEY_ID", "a"),
        ("AWS_SECRET_ACCESS_KEY", "b"),
    ]);
    let store = StoreConfig::S3(s3).open().unwrap();
    assert_eq!(store.describe(), "s3://clips/clips/v1/");
}

#[test]
fn open_on_a_missing_local_path_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-there");
    let cfg = config(&[("LOCAL_STORAGE_PATH", missing.to_str().unwrap())]);
    match cfg.open() {
        Err(Error::Config { name, .. }) => assert_eq!(name, "LOCAL_STORAGE_PATH"),
        other => panic!("expected Error::Config, got {other:?}"),
    }
    assert!(!missing.exists(), "open does not create the root");
}

#[test]
fn config_roundtrips_through_serde() {
    let l = config(&[
        ("LOCAL_STORAGE_PATH", "/srv/clips"),
        ("BASE_URL", "https://x.example"),
    ]);
    let json = serde_json::to_string(&l).unwrap();
    assert_eq!(serde_json::from_str::<StoreConfig>(&json).unwrap(), l);
    let c = StoreConfig::S3(s3(&[("S3_PRESIGN_TTL", "2h")]));
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<StoreConfig>(&json).unwrap(), c);
    let c = StoreConfig::S3(s3(&[
        ("AWS_ACCESS_KEY_ID", "id"),
        ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
    ]));
    assert!(
        !serde_json::to_string(&c).unwrap().contains("s3cr3t"),
        "secrets are not serialized"
    );
    assert!(
        !format!("{c:?}").contains("s3cr3t"),
        "secrets are not in Debug output"
    );
}
