//! Running the real `stowage` binary the way an operator would, with a spec-like API.

use std::path::Path;
use std::process::{Command, Output};

use super::s3::TestS3;

/// The result of one `stowage` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stdout parsed as the `--json` summary.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A `stowage` command with a clean environment pointed at `s3` (when given).
pub fn stowage(s3: Option<&TestS3>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stowage"));
    cmd.args(args);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "S3_BUCKET_NAME",
        "S3_REGION",
        "S3_PREFIX",
        "LOCAL_STORAGE_PATH",
        "STORAGE_TYPE",
    ] {
        cmd.env_remove(var);
    }
    // No ~/.aws/credentials of the machine leaks into a test.
    cmd.env("HOME", std::env::temp_dir().join("stowage-test-no-home"));
    if let Some(s3) = s3 {
        cmd.envs(s3.env());
    }
    cmd
}

/// Runs `stowage args...` to completion.
pub fn run(s3: Option<&TestS3>, args: &[&str]) -> Run {
    output(stowage(s3, args).output().expect("run stowage"))
}

pub fn output(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Every file under `root` (relative path → MD5 of its content), not following symlinks,
/// leaving out stowage's lock file and store marker. Digests keep failed assertions readable.
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                // A temp file may vanish while a live run is being watched.
                if rel != ".stowage.lock" && rel != ".stowage" {
                    if let Ok(data) = std::fs::read(e.path()) {
                        out.insert(rel, digest(&data));
                    }
                }
            }
        }
    }
    out
}

/// Hex MD5 of `data`.
pub fn digest(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

/// Whether files under `dir` can carry user extended attributes.
pub fn xattrs_supported(dir: &std::path::Path) -> bool {
    let p = dir.join("xattr-probe");
    std::fs::write(&p, b"").unwrap();
    let f = std::fs::File::open(&p).unwrap();
    let ok = rustix::fs::fsetxattr(&f, "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok();
    std::fs::remove_file(&p).unwrap();
    ok
}
