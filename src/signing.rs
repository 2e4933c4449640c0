//! Signed, expiring download URLs for local stores.
//!
//! On S3 a download URL stops working when its presignature expires; a local store served
//! by `stowage::http` gets the same property from an HMAC-SHA256 over the key and an
//! expiry time. [`crate::BlobStore::download_url`] signs and the router verifies with the
//! functions here, so the two can never disagree about what is signed.
//!
//! What is signed: `stowage-url-v1\n<expires>\n<key>`, where `<expires>` is the expiry in
//! Unix seconds (decimal) and `<key>` the decoded [`Key`]. Keys cannot contain `\n`, so the
//! message is unambiguous; the method and the mount path are not part of it, so one URL
//! serves both `GET` and `HEAD` wherever the router is nested.

use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::key::Key;

/// Default lifetime of a signed local URL.
pub const DEFAULT_URL_TTL: Duration = Duration::from_secs(3600);
/// Shortest secret accepted by the configuration, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// Query parameter holding the expiry (Unix seconds).
pub const EXPIRES_PARAM: &str = "expires";
/// Query parameter holding the hex signature.
pub const SIG_PARAM: &str = "sig";

const DOMAIN: &[u8] = b"stowage-url-v1\n";

/// Why a request's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The URL has no `expires` or no `sig` parameter.
    #[error("the URL is not signed")]
    Missing,
    /// The URL was signed correctly but its expiry has passed.
    #[error("the URL has expired")]
    Expired,
    /// The signature does not match the key and expiry (tampered, or another secret).
    #[error("the URL signature is invalid")]
    Invalid,
}

fn mac(secret: &[u8], key: &Key, expires: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(DOMAIN);
    mac.update(expires.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(key.as_str().as_bytes());
    mac
}

/// The hex HMAC-SHA256 signature of `key` valid until `expires` (Unix seconds).
pub fn signature(secret: &[u8], key: &Key, expires: u64) -> String {
    hex::encode(mac(secret, key, expires).finalize().into_bytes())
}

/// The query string (`expires=<unix>&sig=<hex>`, without `?`) that makes a URL for `key`
/// valid for `ttl` from `now`.
pub fn signed_query(secret: &[u8], key: &Key, ttl: Duration, now: SystemTime) -> String {
    let expires = unix_secs(now).saturating_add(ttl.as_secs());
    format!(
        "{EXPIRES_PARAM}={expires}&{SIG_PARAM}={}",
        signature(secret, key, expires)
    )
}

/// Checks the `expires` and `sig` parameters of a request's query string for `key` at
/// time `now`, and returns the verified expiry (Unix seconds). The signature is compared
/// in constant time. A parameter given twice is refused as [`SignatureError::Invalid`], so
/// there is never a choice of which one counts.
///
/// Parameter names are percent-decoded (`%65xpires` is `expires`): anything derived from
/// the URL's expiry, such as how long a response may be cached, must use the value
/// returned here and never parse the query again.
pub fn verify(
    secret: &[u8],
    key: &Key,
    query: Option<&str>,
    now: SystemTime,
) -> Result<u64, SignatureError> {
    let (mut expires, mut sig) = (None, None);
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match name.as_ref() {
            EXPIRES_PARAM => &mut expires,
            SIG_PARAM => &mut sig,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(SignatureError::Invalid);
        }
    }
    let (Some(expires), Some(sig)) = (expires, sig) else {
        return Err(SignatureError::Missing);
    };
    // Digits only, as signed: `+5`, ` 5` or `05` would parse as numbers that sign the same
    // message, giving one signed URL many spellings.
    if expires.is_empty()
        || expires.len() > 20
        || !expires.bytes().all(|b| b.is_ascii_digit())
        || (expires.len() > 1 && expires.starts_with('0'))
    {
        return Err(SignatureError::Invalid);
    }
    let expires: u64 = expires.parse().map_err(|_| SignatureError::Invalid)?;
    let sig = hex::decode(sig.as_bytes()).map_err(|_| SignatureError::Invalid)?;
    mac(secret, key, expires)
        .verify_slice(&sig)
        .map_err(|_| SignatureError::Invalid)?;
    // Checked after the signature, so an attacker learns nothing from the two answers.
    if unix_secs(now) > expires {
        return Err(SignatureError::Expired);
    }
    Ok(expires)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_signed_query_verifies_until_it_expires() {
        let key = Key::new("clips/a b.mp4").unwrap();
        let q = signed_query(SECRET, &key, Duration::from_secs(60), at(1_000));
        assert!(q.starts_with("expires=1060&sig="), "{q}");
        assert_eq!(verify(SECRET, &key, Some(&q), at(1_000)), Ok(1_060));
        assert_eq!(verify(SECRET, &key, Some(&q), at(1_060)), Ok(1_060));
        assert_eq!(
            verify(SECRET, &key, Some(&q), at(1_061)),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn the_signature_binds_key_expiry_and_secret() {
        let key = Key::new("clips/1.mp4").unwrap();
        let q = signed_query(SECRET, &key, Duration::from_secs(60), at(0));
        let other = Key::new("clips/2.mp4").unwrap();
        assert_eq!(
            verify(SECRET, &other, Some(&q), at(0)),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(b"another secret!!", &key, Some(&q), at(0)),
            Err(SignatureError::Invalid)
        );
        let later = q.replace("expires=60", "expires=6000");
        assert_eq!(
            verify(SECRET, &key, Some(&later), at(0)),
            Err(SignatureError::Invalid)
        );
        let plus = q.replace("expires=60", "expires=%2B60");
        assert_eq!(
            verify(SECRET, &key, Some(&plus), at(0)),
            Err(SignatureError::Invalid)
        );
        let twice = format!("{q}&sig={}", signature(SECRET, &key, 60));
        assert_eq!(
            verify(SECRET, &key, Some(&twice), at(0)),
            Err(SignatureError::Invalid)
        );
        let truncated = &q[..q.len() - 2];
        assert_eq!(
            verify(SECRET, &key, Some(truncated), at(0)),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn the_verified_expiry_is_the_decoded_one() {
        // `%65xpires` decodes to `expires`: the expiry returned is the one that was
        // checked, however the parameter name was spelled.
        let key = Key::new("k").unwrap();
        let sig = signature(SECRET, &key, 500);
        for q in [
            format!("expires=500&sig={sig}"),
            format!("%65xpires=500&sig={sig}"),
            format!("%65xpires=500&%73ig={sig}&expires_=1"),
        ] {
            assert_eq!(verify(SECRET, &key, Some(&q), at(0)), Ok(500), "{q}");
        }
        let both = format!("expires=500&%65xpires=500&sig={sig}");
        assert_eq!(
            verify(SECRET, &key, Some(&both), at(0)),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn leading_zeros_in_the_expiry_are_refused() {
        // Found by the signed_url fuzz target: `expires=060` verified as 60.
        let key = Key::new("k").unwrap();
        let sig = signature(SECRET, &key, 60);
        assert_eq!(
            verify(SECRET, &key, Some(&format!("expires=060&sig={sig}")), at(0)),
            Err(SignatureError::Invalid)
        );
        let zero = signature(SECRET, &key, 0);
        assert_eq!(
            verify(SECRET, &key, Some(&format!("expires=0&sig={zero}")), at(0)),
            Ok(0)
        );
        assert_eq!(
            verify(SECRET, &key, Some(&format!("expires=00&sig={zero}")), at(0)),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn missing_parameters_are_reported_as_missing() {
        let key = Key::new("k").unwrap();
        for q in [
            None,
            Some(""),
            Some("expires=5"),
            Some("sig=00"),
            Some("x=1"),
        ] {
            assert_eq!(
                verify(SECRET, &key, q, at(0)),
                Err(SignatureError::Missing),
                "{q:?}"
            );
        }
    }

    #[test]
    fn signature_is_hmac_sha256_of_the_documented_message() {
        // Independent check of the message layout: recompute with the raw MAC.
        let key = Key::new("a/b").unwrap();
        let mut m = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
        m.update(b"stowage-url-v1\n42\na/b");
        assert_eq!(
            signature(SECRET, &key, 42),
            hex::encode(m.finalize().into_bytes())
        );
        assert_eq!(signature(SECRET, &key, 42).len(), 64);
    }

    use proptest::prelude::*;

    fn decoded(query: &str, name: &str) -> Vec<String> {
        url::form_urlencoded::parse(query.as_bytes())
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.into_owned())
            .collect()
    }

    proptest! {
        /// Any query: an answer, never a panic, and nothing accepted without the real
        /// signature of the expiry it carries.
        #[test]
        fn verify_accepts_only_real_signatures(
            q in "\\PC{0,80}|((%65|e)xpires|sig|x)=[0-9a-f%+ ]{0,70}(&((%73|s)ig|expires)=[0-9a-f%]{0,66}){0,2}",
            now in 0u64..2_000,
        ) {
            let key = Key::new("clips/a.mp4").unwrap();
            if let Ok(expires) = verify(SECRET, &key, Some(&q), at(now)) {
                prop_assert!(expires >= now);
                prop_assert_eq!(decoded(&q, "expires"), [expires.to_string()]);
                let sig = decoded(&q, "sig");
                prop_assert_eq!(sig.len(), 1);
                prop_assert_eq!(hex::decode(&sig[0]).ok(), hex::decode(signature(SECRET, &key, expires)).ok());
            }
        }

        /// Edits of a signed query verify only when they still decode to the expiry and
        /// the signature that were signed.
        #[test]
        fn edited_signed_queries_verify_only_to_what_was_signed(
            ttl in 0u64..100_000,
            edits in proptest::collection::vec((any::<usize>(), 0u8..3, prop_oneof![Just(b'0'), Just(b'&'), Just(b'%'), Just(b'='), Just(b'a'), Just(b'F'), any::<u8>()]), 1..4),
        ) {
            let key = Key::new("clips/a.mp4").unwrap();
            let q = signed_query(SECRET, &key, Duration::from_secs(ttl), at(1_000));
            let expires = 1_000 + ttl;
            prop_assert_eq!(verify(SECRET, &key, Some(&q), at(1_000)), Ok(expires));
            let mut bytes = q.into_bytes();
            for (pos, what, b) in edits {
                let pos = pos % (bytes.len() + 1);
                match what {
                    0 => bytes.insert(pos, b),
                    1 if pos < bytes.len() => { bytes.remove(pos); }
                    _ if pos < bytes.len() => bytes[pos] = b,
                    _ => bytes.push(b),
                }
            }
            let edited = String::from_utf8_lossy(&bytes);
            if let Ok(e) = verify(SECRET, &key, Some(&edited), at(1_000)) {
                prop_assert_eq!(e, expires);
                prop_assert_eq!(decoded(&edited, "expires"), [expires.to_string()]);
                let sig = decoded(&edited, "sig");
                prop_assert_eq!(sig.len(), 1);
                prop_assert_eq!(hex::decode(&sig[0]).ok(), hex::decode(signature(SECRET, &key, expires)).ok());
            }
        }
    }
}
