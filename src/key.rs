//! `Key`: the one place that decides what a safe object key is.
//!
//! Keys come from S3 listings, HTTP paths and user input; they become file paths under a
//! store root. Every rule that keeps a key from escaping the root, or from colliding with
//! stowage's own files, lives here and nowhere else.
//!
//! Invariant: a valid `Key` joined to any root is a path strictly inside that root.

use std::fmt;
use std::path::{Path, PathBuf};

/// Longest key accepted, in bytes (S3's own limit).
pub const MAX_KEY_LEN: usize = 1024;
/// Longest path segment accepted, in bytes (NAME_MAX on Linux filesystems).
pub const MAX_SEGMENT_LEN: usize = 255;
/// File names starting with this are stowage's own (temp files, lock file); keys may not use it.
pub const RESERVED_PREFIX: &str = ".stowage";

/// A validated object key: relative, `/`-separated, and safe to join to a directory.
///
/// ```
/// use std::path::Path;
/// use stowage::Key;
///
/// let key = Key::parse("clips/2024/cat.mp4")?;
/// assert_eq!(key.file_name(), "cat.mp4");
/// assert_eq!(key.to_path(Path::new("/srv/store")), Path::new("/srv/store/clips/2024/cat.mp4"));
///
/// // Anything that could leave the root, or clash with stowage's own files, is refused.
/// for bad in ["", "/etc/passwd", "a/../../b", "a//b", "a\\b", ".stowage.lock"] {
///     assert!(Key::parse(bad).is_err(), "{bad:?}");
/// }
/// # Ok::<(), stowage::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

/// Why a string is not a valid [`Key`]: the rule that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyError {
    /// The key is empty.
    #[error("the key is empty")]
    Empty,
    /// The key starts with `/`.
    #[error("a key may not start with '/'")]
    LeadingSlash,
    /// The key has an empty segment (`a//b`, or a trailing `/`).
    #[error("empty path segment ('//' or a trailing '/')")]
    EmptySegment,
    /// A segment is `.` or `..`.
    #[error("'.' or '..' path segment")]
    DotSegment,
    /// The key contains a backslash.
    #[error("backslash in key")]
    Backslash,
    /// The key contains NUL or another control character.
    #[error("control character in key")]
    ControlChar,
    /// A segment is longer than [`MAX_SEGMENT_LEN`] bytes.
    #[error("a path segment is longer than 255 bytes")]
    SegmentTooLong,
    /// The key is longer than [`MAX_KEY_LEN`] bytes.
    #[error("the key is longer than 1024 bytes")]
    TooLong,
    /// A segment starts with [`RESERVED_PREFIX`], which stowage uses for its own files.
    #[error("segments starting with '.stowage' are reserved for stowage's own files")]
    Reserved,
}

impl Key {
    /// Validates `s` as a key.
    pub fn new(s: impl Into<String>) -> Result<Key, KeyError> {
        let s = s.into();
        validate(&s)?;
        Ok(Key(s))
    }

    /// Validates `s`, wrapping a failure in [`crate::Error::InvalidKey`].
    pub fn parse(s: &str) -> crate::Result<Key> {
        Key::new(s).map_err(|reason| crate::Error::InvalidKey {
            key: s.to_owned(),
            reason,
        })
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key's `/`-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The last segment (the file name).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The path of this key under `root`. Always inside `root` (see the module invariant).
    pub fn to_path(&self, root: &Path) -> PathBuf {
        let mut p = root.to_path_buf();
        for seg in self.segments() {
            p.push(seg);
        }
        p
    }

    /// The key as it may be shown to a person: in a log line, a `Content-Disposition`
    /// file name, a report. See [`display_safe`].
    pub fn display_safe(&self) -> std::borrow::Cow<'_, str> {
        display_safe(&self.0)
    }

    /// The key for a path relative to a store root, if it is a valid key.
    pub fn from_relative_path(rel: &Path) -> crate::Result<Key> {
        let s = rel.to_str().ok_or_else(|| crate::Error::InvalidKey {
            key: rel.to_string_lossy().into_owned(),
            reason: KeyError::ControlChar,
        })?;
        Key::parse(s)
    }
}

/// `s` with every character that changes how the text around it is displayed written
/// out as `[U+XXXX]`: format characters (Unicode category Cf: bidi overrides and isolates
/// such as U+202E and U+2066..U+2069, marks such as U+200F, zero-width characters, soft
/// hyphen), line and paragraph separators, and control characters.
///
/// A valid key may contain format characters (S3 allows them), and `clip\u{202E}4pm.exe`
/// shows as `clipexe.mp4`: anything printed for a person goes through here.
pub fn display_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(changes_display) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if changes_display(c) {
            out.push_str(&format!("[U+{:04X}]", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Control characters, line/paragraph separators and the Cf (format) category of Unicode
/// 15.1, listed here so that no Unicode-table dependency is needed.
fn changes_display(c: char) -> bool {
    c.is_control()
        || matches!(
            c as u32,
            0x00AD
                | 0x0600..=0x0605
                | 0x061C
                | 0x06DD
                | 0x070F
                | 0x0890..=0x0891
                | 0x08E2
                | 0x180E
                | 0x200B..=0x200F
                | 0x2028..=0x202E
                | 0x2060..=0x2064
                | 0x2066..=0x206F
                | 0xFEFF
                | 0xFFF9..=0xFFFB
                | 0x110BD
                | 0x110CD
                | 0x13430..=0x1343F
                | 0x1BCA0..=0x1BCA3
                | 0x1D173..=0x1D17A
                | 0xE0001
                | 0xE0020..=0xE007F
        )
}

fn validate(s: &str) -> Result<(), KeyError> {
    if s.is_empty() {
        return Err(KeyError::Empty);
    }
    if s.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if s.starts_with('/') {
        return Err(KeyError::LeadingSlash);
    }
    if s.contains('\\') {
        return Err(KeyError::Backslash);
    }
    if s.chars().any(char::is_control) {
        return Err(KeyError::ControlChar);
    }
    for seg in s.split('/') {
        match seg {
            "" => return Err(KeyError::EmptySegment),
            "." | ".." => return Err(KeyError::DotSegment),
            _ if seg.len() > MAX_SEGMENT_LEN => return Err(KeyError::SegmentTooLong),
            _ if seg.starts_with(RESERVED_PREFIX) => return Err(KeyError::Reserved),
            _ => {}
        }
    }
    Ok(())
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Key, KeyError> {
        Key::new(s)
    }
}

impl TryFrom<&str> for Key {
    type Error = KeyError;
    fn try_from(s: &str) -> Result<Key, KeyError> {
        Key::new(s)
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        let s = String::deserialize(d)?;
        Key::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_safe_writes_out_bidi_and_format_characters() {
        let spoof = Key::new("clips/clip\u{202E}4pm.exe").unwrap();
        assert_eq!(spoof.display_safe(), "clips/clip[U+202E]4pm.exe");
        for (c, shown) in [
            ('\u{200F}', "[U+200F]"),
            ('\u{2066}', "[U+2066]"),
            ('\u{2069}', "[U+2069]"),
            ('\u{200B}', "[U+200B]"),
            ('\u{FEFF}', "[U+FEFF]"),
            ('\u{2028}', "[U+2028]"),
            ('\u{E0041}', "[U+E0041]"),
            ('\n', "[U+000A]"),
        ] {
            assert_eq!(
                display_safe(&format!("a{c}b")),
                format!("a{shown}b"),
                "{c:?}"
            );
        }
        // Ordinary text, RTL letters included, is left alone and not copied.
        for plain in ["clips/ünï code.mp4", "שלום.mp4", "a[b]"] {
            assert!(matches!(
                display_safe(plain),
                std::borrow::Cow::Borrowed(p) if p == plain
            ));
        }
    }
    use proptest::prelude::*;
    use std::path::Component;

    #[test]
    fn hostile_keys_are_rejected_with_the_rule_that_failed() {
        let long_seg = "a".repeat(300);
        let long_key = format!("{}/x", "abcdefgh/".repeat(120));
        let cases: &[(&str, KeyError)] = &[
            ("", KeyError::Empty),
            ("../x", KeyError::DotSegment),
            ("a/../../x", KeyError::DotSegment),
            ("./x", KeyError::DotSegment),
            ("a/.", KeyError::DotSegment),
            ("/etc/passwd", KeyError::LeadingSlash),
            ("..\\x", KeyError::Backslash),
            ("a\\b", KeyError::Backslash),
            ("a\0b", KeyError::ControlChar),
            ("a\nb", KeyError::ControlChar),
            ("a\x7fb", KeyError::ControlChar),
            ("a//b", KeyError::EmptySegment),
            ("a/", KeyError::EmptySegment),
            (&long_seg, KeyError::SegmentTooLong),
            (&long_key, KeyError::TooLong),
            (".stowage.lock", KeyError::Reserved),
            ("clips/.stowage-tmp.0123", KeyError::Reserved),
        ];
        for (k, want) in cases {
            assert_eq!(Key::new(*k).unwrap_err(), *want, "key {k:?}");
        }
    }

    #[test]
    fn awkward_but_safe_keys_are_accepted_and_stay_inside() {
        let root = Path::new("/srv/store");
        for k in [
            "clips/123/video.mp4",
            "%2e%2e/x",
            "\u{ff0e}\u{ff0e}/x", // fullwidth dots are ordinary letters to the filesystem
            "...",
            "..a/b..",
            "frames/take#2",
            "50%.txt",
            "sp ace/ünï.txt",
            ".hidden",
            &"a".repeat(255),
        ] {
            let key = Key::new(k).unwrap_or_else(|e| panic!("{k:?}: {e}"));
            let p = key.to_path(root);
            assert!(p.starts_with(root) && p != root, "{k:?} -> {}", p.display());
            assert_eq!(p.strip_prefix(root).unwrap().to_str().unwrap(), k);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Invariant: a valid key joined to a root is a path strictly inside the root,
        /// made only of normal components.
        #[test]
        fn valid_keys_never_escape_the_root(s in "\\PC*|[./\\\\a\u{0}\u{ff0e}%]{0,12}") {
            if let Ok(key) = Key::new(s.clone()) {
                let root = Path::new("/srv/store");
                let p = key.to_path(root);
                let rel = p.strip_prefix(root).unwrap();
                prop_assert!(rel.components().count() >= 1);
                for c in rel.components() {
                    prop_assert!(matches!(c, Component::Normal(_)), "{:?} in {:?}", c, s);
                }
                prop_assert_eq!(rel.to_str().unwrap(), s.as_str());
            }
        }

        #[test]
        fn validation_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let s = String::from_utf8_lossy(&bytes).into_owned();
            let _ = Key::new(s);
        }
    }
}
