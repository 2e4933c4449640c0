//! Real directory trees for the local-store operations: files with chosen ages, a tmpfs
//! mounted inside a root, running code without root's permission bypass.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

pub const DAY: Duration = Duration::from_secs(86_400);

/// Writes `size` bytes at `root/rel` (creating directories) with an mtime `age` ago.
pub fn file(root: &Path, rel: &str, size: usize, age: Duration) -> PathBuf {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, vec![b'x'; size]).unwrap();
    set_age(&p, age);
    p
}

/// Sets the mtime of `p` (not following symlinks is not needed: callers pass files).
pub fn set_age(p: &Path, age: Duration) {
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A tmpfs mounted at a directory for the life of the guard; unmounted on drop.
pub struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    /// Mounts a small (4 MiB) tmpfs at `path`. Tests that use it are marked
    /// `#[ignore = "needs root ..."]`; anywhere mounting is impossible they fail with the reason.
    pub fn new(path: &Path) -> TmpfsMount {
        TmpfsMount::with_size(path, "4m")
    }

    /// Like [`TmpfsMount::new`], with the filesystem's size (`mount -o size=`, e.g. `1m`).
    pub fn with_size(path: &Path, size: &str) -> TmpfsMount {
        assert!(
            is_root(),
            "mounting a tmpfs needs root: run this test as root"
        );
        fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "stowage-test"])
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            out.status.success(),
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TmpfsMount {
            path: path.to_owned(),
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            // Lazy unmount so a busy mount never outlives the test tree.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Runs `f` on a thread without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH / CAP_FOWNER, so
/// file modes apply to it even when the tests run as root. Capabilities are per thread
/// on Linux; the rest of the test process keeps them.
pub fn without_permission_bypass<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            use rustix::thread::{capabilities, set_capabilities, CapabilitySet};
            let mut caps = capabilities(None).expect("capget");
            let bypass = CapabilitySet::DAC_OVERRIDE
                | CapabilitySet::DAC_READ_SEARCH
                | CapabilitySet::FOWNER;
            caps.effective.remove(bypass);
            caps.permitted.remove(bypass);
            set_capabilities(None, caps).expect("capset: drop the permission bypass");
            f()
        })
        .join()
        .unwrap()
    })
}

/// A reporter that keeps the notes, to check what a dry run prints.
#[derive(Default)]
pub struct Notes(pub Mutex<Vec<String>>);

impl stowage::report::Reporter for Notes {
    fn note(&self, msg: &str) {
        self.0.lock().unwrap().push(msg.to_owned());
    }
}

/// Runs a command and returns its stdout, failing the test with its stderr otherwise.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
