//! Every command ends quietly when the reader of its output goes away (`stowage ... | head`).

use std::io::Read;
use std::process::Stdio;

use crate::local_tree::{file, DAY};
use crate::support::cli::stowage;

/// Runs `stowage args`, reads one line of its stdout, closes the pipe, and returns the exit
/// code and stderr.
fn run_and_close_early(args: &[&str]) -> (Option<i32>, String) {
    let mut child = stowage(None, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stowage");
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    let _ = out.read(&mut first);
    drop(out); // the reader goes away, like `head -1`
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code(), err)
}

#[test]
fn cleanup_dry_run_into_a_closed_pipe_ends_quietly() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    stowage::local::mark_store(r).unwrap();
    for i in 0..3000 {
        file(
            r,
            &format!("clips/{i:05}/a-long-name-to-fill-the-pipe.mp4"),
            1,
            10 * DAY,
        );
    }
    let (code, err) = run_and_close_early(&[
        "cleanup",
        "--max-age",
        "24h",
        "--dry-run",
        "--force",
        "--root",
        r.to_str().unwrap(),
    ]);
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    assert_eq!(code, Some(141), "{err}");
    assert!(r
        .join("clips/00000/a-long-name-to-fill-the-pipe.mp4")
        .exists());
}

#[test]
fn disk_into_a_closed_pipe_ends_quietly() {
    let t = tempfile::tempdir().unwrap();
    file(t.path(), "a", 1, DAY);
    // The report is small: it fits the pipe buffer, so either it was written whole before
    // the reader left (exit 0) or the write failed (exit 141); never a panic.
    let (code, err) = run_and_close_early(&["disk", "--root", t.path().to_str().unwrap()]);
    assert!(!err.contains("panicked"), "{err}");
    assert!(matches!(code, Some(0 | 141)), "{code:?} {err}");
}
