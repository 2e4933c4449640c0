//! Key validation and key -> path: no panic, and a valid key joined to a root never
//! leaves it. Request paths go through the router's own decoding too.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use stowage::fuzzing::key_from_path;
use stowage::key::{MAX_KEY_LEN, MAX_SEGMENT_LEN, RESERVED_PREFIX};
use stowage::Key;

fn check_inside(key: &Key) {
    let root = Path::new("/srv/store");
    let p = key.to_path(root);
    let rel = p.strip_prefix(root).expect("the path is under the root");
    assert_eq!(rel.components().count(), key.segments().count(), "{key:?}");
    for c in rel.components() {
        assert!(matches!(c, Component::Normal(_)), "{c:?} in {key:?}");
    }
    assert_eq!(rel.to_str(), Some(key.as_str()));
    assert!(key.as_str().len() <= MAX_KEY_LEN);
    for seg in key.segments() {
        assert!(!seg.is_empty() && seg.len() <= MAX_SEGMENT_LEN, "{key:?}");
        assert!(!seg.starts_with(RESERVED_PREFIX), "{key:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let new = Key::new(s.as_ref());
    assert_eq!(new.as_ref().ok(), Key::parse(&s).ok().as_ref());
    if let Ok(key) = &new {
        check_inside(key);
        let _ = key.display_safe();
    }
    // The same bytes as a request path: whatever key it names is valid and inside, and
    // the URL `download_url` builds for that key names it again.
    let path = format!("/{s}");
    if let Some(key) = key_from_path(&path) {
        check_inside(&key);
        let encoded = format!("/{}", stowage::store::encode_key_path(&key));
        assert_eq!(key_from_path(&encoded).as_ref(), Some(&key), "{encoded}");
    }
});
