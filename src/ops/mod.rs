//! The operations behind the CLI commands: each takes options and a
//! [`crate::Reporter`] and returns a `Serialize` summary.

pub mod cleanup;
pub mod disk;
pub mod migrate;
pub mod verify;

use crate::key::{Key, KeyError};
use crate::s3::ListedObject;

/// A key and why it is reported (not copied, different, unverifiable, deleted, ...): the
/// one shape of every per-item list in every summary (`--json` prints `{key, reason}`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyReason {
    /// The object key, exactly as listed, or the path relative to the store root (the
    /// summary's `root`); `.` for the root itself.
    pub key: String,
    /// What is wrong, or what was done and why.
    pub reason: String,
}

impl KeyReason {
    /// A `{key, reason}` for `path`, the key being `path` relative to `root` (the whole
    /// path, when it is outside the root). A name that is not UTF-8 has U+FFFD in place of
    /// the bad bytes, so one odd file name never stops a summary from being printed.
    pub fn at(root: &std::path::Path, path: &std::path::Path, reason: impl Into<String>) -> Self {
        KeyReason {
            key: relative_key(root, path),
            reason: reason.into(),
        }
    }
}

/// `path` relative to `root` as a key string (`.` for the root itself; the whole path when
/// it lies outside the root).
pub(crate) fn relative_key(root: &std::path::Path, path: &std::path::Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    if rel.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        rel.to_string_lossy().into_owned()
    }
}

/// What a listed object becomes on disk: the one place `migrate` and `verify` decide it.
pub(crate) enum Placement {
    /// A folder marker (a size-0 key ending in `/`): a directory, `None` for the root.
    Folder(Option<Key>),
    /// A regular file.
    File(Key),
    /// A key that cannot be stored safely; `folder` when it was a folder marker.
    Unsafe { reason: Unsafe, folder: bool },
}

/// Why a listed object cannot be placed.
pub(crate) enum Unsafe {
    /// The key breaks a rule of [`Key`].
    Key(KeyError),
    /// The listing entry itself is unusable ([`ListedObject::problem`]).
    Listing(String),
}

impl std::fmt::Display for Unsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsafe::Key(e) => e.fmt(f),
            Unsafe::Listing(p) => f.write_str(p),
        }
    }
}

impl Placement {
    pub(crate) fn of(o: &ListedObject) -> Placement {
        if let Some(p) = &o.problem {
            return Placement::Unsafe {
                reason: Unsafe::Listing(p.clone()),
                folder: false,
            };
        }
        match o.key.strip_suffix('/') {
            Some("") if o.size == 0 => Placement::Folder(None),
            Some(dir) if o.size == 0 => match Key::new(dir) {
                Ok(k) => Placement::Folder(Some(k)),
                Err(reason) => Placement::Unsafe {
                    reason: Unsafe::Key(reason),
                    folder: true,
                },
            },
            _ => match Key::new(o.key.as_str()) {
                Ok(k) => Placement::File(k),
                Err(reason) => Placement::Unsafe {
                    reason: Unsafe::Key(reason),
                    folder: false,
                },
            },
        }
    }
}
