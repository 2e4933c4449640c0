//! No credential reaches the output: every command, with and without `--json`, against an
//! endpoint that is down and against a server that fails, plus the `Debug` of configs,
//! stores and errors. Each secret is long and distinctive, so finding it is proof of a leak.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::TryStreamExt;

use crate::support::cli::{output, stowage, Run};
use crate::support::s3::TestS3;

const ACCESS_KEY_ID: &str = "AKIASTOWAGELEAKCHECKKEYID7777777";
const SECRET_ACCESS_KEY: &str = "stowage-leak-check-secret-access-key-4f9d1c";
const SESSION_TOKEN: &str = "stowage-leak-check-session-token-FwoGZXIvYXdzEB8a";
const URL_SECRET: &str = "stowage-leak-check-url-signing-secret-91b7e2";

/// What must never be printed: the secrets, the names of SigV4 query parameters (a
/// presigned URL carries them), and the query of a listing URL.
const FORBIDDEN: [&str; 9] = [
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    URL_SECRET,
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "X-Amz-Algorithm",
    "list-type=",
];

/// Panics when `text` holds a secret, a SigV4 parameter or any URL with a query.
fn assert_clean(what: &str, text: &str) {
    let lower = text.to_ascii_lowercase();
    for f in FORBIDDEN {
        assert!(
            !lower.contains(&f.to_ascii_lowercase()),
            "{what}: {f:?} leaked:\n{text}"
        );
    }
    for (i, _) in text.match_indices("://") {
        let url: String = text[i..]
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, ')' | '"' | '\''))
            .collect();
        assert!(
            !url.contains('?'),
            "{what}: a URL with a query {url:?}:\n{text}"
        );
    }
}

fn assert_run_clean(what: &str, r: &Run) {
    assert_clean(&format!("{what} (stdout)"), &r.stdout);
    assert_clean(&format!("{what} (stderr)"), &r.stderr);
}

/// The fake secrets, and the S3 endpoint and bucket.
fn secret_env(cmd: &mut Command, endpoint: &str, bucket: &str) {
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
        .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
        .env("STORAGE_URL_SECRET", URL_SECRET)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("S3_BUCKET_NAME", bucket);
}

/// A local store with one file (old, so cleanup has something to consider).
fn local_store(dir: &std::path::Path) -> String {
    let root = dir.join("store");
    std::fs::create_dir_all(root.join("clips")).unwrap();
    std::fs::write(root.join("clips/a.mp4"), b"clip").unwrap();
    root.to_str().unwrap().to_owned()
}

/// Every command, each once plain and once with `--json`.
fn every_command(store: &str, dest: &str) -> Vec<Vec<String>> {
    let base: [&[&str]; 5] = [
        &["migrate", "s3-to-local", "--dest", dest],
        &["migrate", "local-to-s3", "--source", store],
        &["verify", "s3-to-local", "--dest", store],
        &[
            "cleanup",
            "--root",
            store,
            "--max-age",
            "3650d",
            "--dry-run",
        ],
        &["disk", "--root", store],
    ];
    base.iter()
        .flat_map(|args| {
            let plain: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let mut json = plain.clone();
            json.push("--json".into());
            // The two runs go at once: each migration takes its destination's lock, so the
            // JSON one gets a destination of its own.
            for arg in json.iter_mut().filter(|a| a.as_str() == dest) {
                arg.push_str("-json");
            }
            [plain, json]
        })
        .collect()
}

/// Runs all `commands` at once (an unreachable endpoint makes each wait out its retries).
fn run_all(commands: &[Vec<String>], endpoint: &str, bucket: &str) -> Vec<(String, Run)> {
    let children: Vec<_> = commands
        .iter()
        .map(|args| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut cmd = stowage(None, &args);
            secret_env(&mut cmd, endpoint, bucket);
            let child = cmd
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (args.join(" "), child)
        })
        .collect();
    children
        .into_iter()
        .map(|(what, child)| (what, output(child.wait_with_output().unwrap())))
        .collect()
}

#[test]
fn no_command_prints_a_secret_when_the_endpoint_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let dest = dir.path().join("dest");
    let commands = every_command(&store, dest.to_str().unwrap());
    for (what, r) in run_all(&commands, "http://127.0.0.1:1", "leak-check") {
        assert_run_clean(&what, &r);
        if what.contains("s3") {
            assert_eq!(r.code, 2, "{what}: {r:?}");
            assert!(
                r.stderr
                    .contains("cannot reach http://127.0.0.1:1 (connection refused"),
                "{what}: the message names the endpoint and the cause: {r:?}"
            );
        }
    }
}

#[test]
fn no_command_prints_a_secret_when_the_server_fails() {
    let s3 = TestS3::start_with_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY);
    for k in ["clips/a.mp4", "clips/b.mp4", "clips/c.mp4"] {
        s3.put_raw(k, &vec![7u8; 64 << 10]).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let dest = dir.path().join("dest");
    let commands = every_command(&store, dest.to_str().unwrap());
    let faults = s3.faults();
    // One round with throttling and damaged downloads, one refused outright, one fine.
    for round in ["faults", "denied", "sound"] {
        for args in &commands {
            match round {
                "faults" => {
                    faults.fail_next(2, 503);
                    faults.truncate_next_gets(2, 1000);
                    faults.corrupt_next_gets(1);
                }
                "denied" => faults.fail_next(1, 403),
                _ => {}
            }
            let r = run_all(std::slice::from_ref(args), &s3.endpoint(), s3.bucket());
            let (what, r) = &r[0];
            assert_run_clean(&format!("{round}: {what}"), r);
        }
    }
    // Credentials the server does not know: a real signature mismatch.
    let other = TestS3::start();
    for (what, r) in run_all(&commands, &other.endpoint(), other.bucket()) {
        assert_run_clean(&format!("wrong credentials: {what}"), &r);
    }
}

#[test]
fn serve_prints_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let mut cmd = stowage(
        None,
        &["serve", "--listen", "127.0.0.1:0", "--root", &store],
    );
    secret_env(&mut cmd, "http://127.0.0.1:1", "leak-check");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let addr = loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("serve ended before listening:\n{log}");
        }
        log.push_str(&line);
        if let Some((_, rest)) = line.split_once("listening on http://") {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    for path in [
        "/api/files/clips/a.mp4",
        "/api/files/clips/a.mp4?expires=99999999999&sig=00",
        "/api/files/missing?X-Amz-Security-Token=abc&X-Amz-Signature=def",
    ] {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        use std::io::{Read, Write};
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut resp = Vec::new();
        let _ = conn.read_to_end(&mut resp);
        assert_clean(path, &String::from_utf8_lossy(&resp));
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    log.push_str(&rest);
    assert_clean("serve (stderr)", &log);
    assert_clean("serve (stdout)", &String::from_utf8_lossy(&out.stdout));
}

#[test]
fn debug_output_of_configs_and_stores_holds_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let vars = |kind: &str| -> std::collections::HashMap<String, String> {
        [
            ("STORAGE_TYPE", kind),
            ("S3_BUCKET_NAME", "leak-check"),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
            ("AWS_SESSION_TOKEN", SESSION_TOKEN),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
            ("STORAGE_URL_SECRET", URL_SECRET),
            ("LOCAL_STORAGE_PATH", root),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    };
    for kind in ["s3", "local"] {
        let config = stowage::StoreConfig::from_env_map(&vars(kind)).unwrap();
        assert_clean(&format!("{kind} config"), &format!("{config:?}"));
        assert_clean(&format!("{kind} config"), &format!("{config:#?}"));
        if let stowage::StoreConfig::S3(s3) = &config {
            assert_eq!(
                s3.session_token.as_deref(),
                Some(SESSION_TOKEN),
                "the token was read"
            );
            assert_clean("S3Config", &format!("{s3:?}"));
        }
        let store = config.open().unwrap();
        assert_clean(&format!("{kind} store"), &format!("{store:?}"));
    }
}

#[tokio::test]
async fn errors_hold_no_secret_in_display_or_debug() {
    // A listing through the raw lister, signed with a session token, against a closed port.
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint("http://127.0.0.1:1")
        .with_bucket_name("leak-check")
        .with_access_key_id(ACCESS_KEY_ID)
        .with_secret_access_key(SECRET_ACCESS_KEY)
        .with_token(SESSION_TOKEN)
        .with_region("us-east-1")
        .with_allow_http(true)
        .build()
        .unwrap();
    let lister = stowage::s3::RawLister::new(
        std::sync::Arc::new(store),
        "s3://leak-check/".into(),
        "leak-check".into(),
    )
    .unwrap()
    .with_retry(1, Duration::from_millis(1), Duration::from_millis(1));
    assert_clean("RawLister", &format!("{lister:?}"));
    let err = lister
        .list("", "")
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert_clean("listing error", &err.to_string());
    assert_clean("listing error", &format!("{err:?}"));

    // object_store requests that fail on the server: their errors name the request URL,
    // a listing's with its query.
    let s3 = TestS3::start_with_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY);
    let cfg = stowage::S3Config {
        session_token: Some(SESSION_TOKEN.into()),
        ..s3.config()
    };
    let blob = stowage::StoreConfig::S3(cfg).open().unwrap();
    let key = stowage::Key::new("clips/a.mp4").unwrap();
    s3.faults().fail_next(1, 400);
    let err = blob.head(&key).await.unwrap_err();
    s3.faults().fail_next(1, 400);
    let list_err = blob.list("").try_collect::<Vec<_>>().await.unwrap_err();
    for err in [err, list_err] {
        assert_clean("object_store error", &err.to_string());
        assert_clean("object_store error", &format!("{err:?}"));
    }
    let url = blob.download_url(&key).await.unwrap();
    assert!(url.contains("X-Amz-Signature"), "a presigned URL, as asked");
}
