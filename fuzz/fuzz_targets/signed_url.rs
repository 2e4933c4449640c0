//! Signed-URL verification: no panic on any query; a signed query verifies to the expiry
//! that was signed; an edited query verifies only if it still decodes to the same expiry
//! (as the same digits) and the same signature bytes.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use stowage::signing::{signature, signed_query, verify, SignatureError};
use stowage::Key;

#[derive(Debug, Arbitrary)]
struct Input {
    secret: Vec<u8>,
    key: String,
    ttl: u64,
    now: u64,
    later: u32,
    /// Byte edits applied to the signed query: (position, what, byte).
    edits: Vec<(u16, u8, u8)>,
    /// A whole query of the attacker's choosing.
    raw: Vec<u8>,
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn decoded(query: &str, name: &str) -> Vec<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

fuzz_target!(|input: Input| {
    let key = Key::new(input.key.as_str()).unwrap_or_else(|_| Key::new("clips/a.mp4").unwrap());
    let secret = &input.secret;
    // Any time before the year 36812 (SystemTime itself overflows further out).
    let input_now = input.now % (1 << 40);
    let now = at(input_now);

    // Any query at all: an answer, no panic; an accepted one carries a real signature.
    let raw = String::from_utf8_lossy(&input.raw);
    if let Ok(expires) = verify(secret, &key, Some(&raw), now) {
        assert!(expires >= input_now);
        assert_eq!(decoded(&raw, "expires"), [expires.to_string()]);
        let sig = decoded(&raw, "sig");
        assert_eq!(sig.len(), 1);
        let want = hex::decode(signature(secret, &key, expires)).unwrap();
        assert_eq!(hex::decode(&sig[0]).ok(), Some(want), "forged {raw:?}");
    }

    // What signing produces verifies, to the expiry signed, until it passes.
    let q = signed_query(secret, &key, Duration::from_secs(input.ttl), now);
    let expires = input_now.saturating_add(input.ttl);
    assert_eq!(verify(secret, &key, Some(&q), now), Ok(expires));
    let then = input_now.saturating_add(input.later as u64);
    let want = if then > expires { Err(SignatureError::Expired) } else { Ok(expires) };
    assert_eq!(verify(secret, &key, Some(&q), at(then)), want);

    // Edits of it verify only if they decode to the same expiry and signature.
    let mut bytes = q.clone().into_bytes();
    for &(pos, what, b) in &input.edits {
        let pos = pos as usize % (bytes.len() + 1);
        match what % 3 {
            0 => bytes.insert(pos, b),
            1 if pos < bytes.len() => {
                bytes.remove(pos);
            }
            _ if pos < bytes.len() => bytes[pos] = b,
            _ => bytes.push(b),
        }
    }
    let edited = String::from_utf8_lossy(&bytes);
    if let Ok(e) = verify(secret, &key, Some(&edited), now) {
        assert_eq!(e, expires, "{edited:?}");
        assert_eq!(decoded(&edited, "expires"), [expires.to_string()], "{edited:?}");
        let sig = decoded(&edited, "sig");
        let ours = hex::decode(signature(secret, &key, expires)).unwrap();
        assert_eq!(sig.len(), 1, "{edited:?}");
        assert_eq!(hex::decode(&sig[0]).ok(), Some(ours), "{edited:?}");
    }
    // Another key never accepts it.
    let other = Key::new(format!("{}x", key.as_str()));
    if let Ok(other) = other {
        assert_eq!(
            verify(secret, &other, Some(&q), now),
            Err(SignatureError::Invalid)
        );
    }
});
