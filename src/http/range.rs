//! The pure RFC 9110 part of the router: conditional requests in §13.2.2 order, `If-Range`
//! and single byte ranges, decided from an object's metadata and the request headers. No
//! I/O here: the handler in `mod.rs` opens the file and builds the response, and the fuzz
//! targets drive these functions through `stowage::fuzzing`.

use std::ops::Range;
use std::time::SystemTime;

use http::{header, HeaderMap};

use crate::store::Meta;

/// What a request gets, from its conditional and range headers and the object's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// 200 with the whole object (`0..size`).
    Full(Range<u64>),
    /// 206 with this range.
    Partial(Range<u64>),
    /// 304.
    NotModified,
    /// 412.
    PreconditionFailed,
    /// 416.
    Unsatisfiable,
}

/// Evaluates the preconditions in RFC 9110 §13.2.2 order, then `If-Range` and `Range`.
pub(super) fn evaluate(meta: &Meta, headers: &HeaderMap) -> Outcome {
    let etag = meta.etag.as_deref().map(normalize_etag);
    let etag = etag.as_deref();
    let modified = meta.last_modified.timestamp();

    // 1-2: If-Match, else If-Unmodified-Since.
    if let Some(list) = joined(headers, &header::IF_MATCH) {
        if !etag_list_matches(&list, etag, Comparison::Strong) {
            return Outcome::PreconditionFailed;
        }
    } else if let Some(since) = http_date(headers, &header::IF_UNMODIFIED_SINCE) {
        if modified > since {
            return Outcome::PreconditionFailed;
        }
    }
    // 3-4: If-None-Match, else If-Modified-Since (only GET and HEAD reach here).
    if let Some(list) = joined(headers, &header::IF_NONE_MATCH) {
        if etag_list_matches(&list, etag, Comparison::Weak) {
            return Outcome::NotModified;
        }
    } else if let Some(since) = http_date(headers, &header::IF_MODIFIED_SINCE) {
        if modified <= since {
            return Outcome::NotModified;
        }
    }
    // 5: Range, if If-Range (when present) still names this representation.
    let full = Outcome::Full(0..meta.size);
    let Some(range) = single(headers, &header::RANGE) else {
        return full;
    };
    // Only a strong ETag match keeps the range. A date is a weak validator with
    // one-second resolution (RFC 9110 §13.1.5 lets us ignore it): two versions written
    // within a second share it, and honouring it would splice them.
    // If-Range holds one entity tag (RFC 9110 §13.1.5): `*` or a list is not ours, and
    // one we cannot read (not ASCII, sent twice) is no match either: the whole object.
    if headers.contains_key(header::IF_RANGE) {
        let ours = etag.filter(|e| !e.starts_with("W/"));
        let theirs = single(headers, &header::IF_RANGE).map(str::trim);
        if ours.is_none() || ours != theirs {
            return full;
        }
    }
    match parse_range(range, meta.size) {
        RangeSpec::Ignore => full,
        RangeSpec::Unsatisfiable => Outcome::Unsatisfiable,
        RangeSpec::Bytes(r) => Outcome::Partial(r),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum RangeSpec {
    /// Not a single byte range we honour (bad syntax, another unit, several ranges).
    Ignore,
    /// A byte range none of whose bytes exist.
    Unsatisfiable,
    /// The satisfiable part of the range, end exclusive.
    Bytes(Range<u64>),
}

/// Parses a `Range` header for an object of `len` bytes (RFC 9110 §14.1.2, §14.2).
/// Multi-range requests are answered with the whole object, as the issue asks.
pub(super) fn parse_range(value: &str, len: u64) -> RangeSpec {
    let Some((unit, set)) = value.trim().split_once('=') else {
        return RangeSpec::Ignore;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last `n` bytes.
        let Some(n) = digits(last) else {
            return RangeSpec::Ignore;
        };
        return match (n, len) {
            (0, _) => RangeSpec::Unsatisfiable,
            // The empty object's "last n bytes" are all of it: a plain 200.
            (_, 0) => RangeSpec::Ignore,
            _ => RangeSpec::Bytes(len.saturating_sub(n)..len),
        };
    }
    let Some(start) = digits(first) else {
        return RangeSpec::Ignore;
    };
    let end = if last.is_empty() {
        len
    } else {
        match digits(last) {
            Some(l) if l >= start => l.saturating_add(1).min(len),
            _ => return RangeSpec::Ignore,
        }
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Bytes(start..end)
}

/// A non-empty run of ASCII digits; values beyond `u64` saturate (they mean "past the end").
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Strong,
    Weak,
}

/// Whether a list of entity tags (`*`, or `"a", W/"b"`) matches `etag` (normalized).
fn etag_list_matches(list: &str, etag: Option<&str>, cmp: Comparison) -> bool {
    let Some(etag) = etag else {
        return false;
    };
    if list.trim() == "*" {
        return true;
    }
    let (ours_weak, ours) = split_weak(etag);
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        if rest.is_empty() {
            return false;
        }
        let (weak, tail) = match rest.strip_prefix("W/") {
            Some(t) => (true, t),
            None => (false, rest),
        };
        // An entity tag is a quoted string without inner quotes (commas allowed).
        let Some(tail) = tail.strip_prefix('"') else {
            return false;
        };
        let Some(close) = tail.find('"') else {
            return false;
        };
        // `ours` is the quoted tag; compare the opaque parts between the quotes.
        let equal = ours.len() == close + 2 && ours[1..=close] == tail[..close];
        let ok = match cmp {
            Comparison::Strong => equal && !weak && !ours_weak,
            Comparison::Weak => equal,
        };
        if ok {
            return true;
        }
        rest = &tail[close + 1..];
    }
}

/// `W/"x"` -> `(true, "\"x\"")`.
fn split_weak(etag: &str) -> (bool, &str) {
    match etag.strip_prefix("W/") {
        Some(t) => (true, t),
        None => (false, etag),
    }
}

/// Backends differ in quoting (object_store's in-memory store sends a bare counter):
/// every ETag we send and compare is a quoted entity tag.
pub(super) fn normalize_etag(e: &str) -> String {
    if e.starts_with('"') || e.starts_with("W/\"") {
        e.to_owned()
    } else {
        format!("\"{}\"", e.replace('"', ""))
    }
}

/// All values of a list-valued header joined with `,` (fields may be repeated).
fn joined(headers: &HeaderMap, name: &header::HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let v = v.to_str().ok()?;
        match &mut out {
            Some(o) => {
                o.push(',');
                o.push_str(v);
            }
            None => out = Some(v.to_owned()),
        }
    }
    out
}

/// A header that must appear once; repeated or non-ASCII values count as absent.
fn single<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    let mut all = headers.get_all(name).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    v.to_str().ok()
}

/// A date header in Unix seconds; invalid dates are ignored, as RFC 9110 requires.
fn http_date(headers: &HeaderMap, name: &header::HeaderName) -> Option<i64> {
    let v = single(headers, name)?;
    httpdate::parse_http_date(v.trim()).ok().map(unix_secs)
}

pub(super) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64) - 1,
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, StatusCode};

    use super::*;
    use crate::http::fuzzing;

    #[test]
    fn range_forms() {
        use RangeSpec::*;
        let cases: &[(&str, u64, RangeSpec)] = &[
            ("bytes=0-0", 10, Bytes(0..1)),
            ("bytes=-3", 10, Bytes(7..10)),
            ("bytes=-30", 10, Bytes(0..10)),
            ("bytes=4-", 10, Bytes(4..10)),
            ("bytes=2-5", 10, Bytes(2..6)),
            ("bytes=2-500", 10, Bytes(2..10)),
            ("Bytes = 2-3", 10, Bytes(2..4)),
            ("bytes=0-99999999999999999999999", 10, Bytes(0..10)),
            ("bytes=10-", 10, Unsatisfiable),
            ("bytes=10-20", 10, Unsatisfiable),
            ("bytes=-0", 10, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=-5", 0, Ignore),
            ("bytes=5-2", 10, Ignore),
            ("bytes=0-1,3-4", 10, Ignore),
            ("bytes=a-b", 10, Ignore),
            ("bytes=+1-2", 10, Ignore),
            ("items=0-1", 10, Ignore),
            ("bytes 0-1", 10, Ignore),
            ("bytes=-", 10, Ignore),
        ];
        for (h, len, want) in cases {
            assert_eq!(&parse_range(h, *len), want, "{h} on {len}");
        }
    }

    #[test]
    fn etag_comparisons() {
        let e = Some("\"abc\"");
        let w = Some("W/\"abc\"");
        assert!(etag_list_matches("\"abc\"", e, Comparison::Strong));
        assert!(etag_list_matches("\"x\", \"abc\"", e, Comparison::Strong));
        assert!(etag_list_matches("\"x,y\",\"abc\"", e, Comparison::Strong));
        assert!(!etag_list_matches("W/\"abc\"", e, Comparison::Strong));
        assert!(etag_list_matches("W/\"abc\"", e, Comparison::Weak));
        assert!(!etag_list_matches("\"abc\"", w, Comparison::Strong));
        assert!(etag_list_matches("\"abc\"", w, Comparison::Weak));
        assert!(etag_list_matches("*", e, Comparison::Strong));
        assert!(!etag_list_matches("*", None, Comparison::Strong));
        assert!(!etag_list_matches("\"abcd\"", e, Comparison::Weak));
        assert!(!etag_list_matches("abc", e, Comparison::Weak));
        assert!(!etag_list_matches("\"ab", e, Comparison::Weak));
    }

    #[test]
    fn if_range_keeps_the_range_only_for_our_own_strong_etag() {
        let eval = |etag: &str, if_range: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
            h.insert(header::IF_RANGE, HeaderValue::from_str(if_range).unwrap());
            fuzzing::evaluate(10, Some(etag), 1_000, &h).0
        };
        assert_eq!(eval("\"abc\"", "\"abc\""), StatusCode::PARTIAL_CONTENT);
        assert_eq!(eval("abc", " \"abc\" "), StatusCode::PARTIAL_CONTENT);
        // `*`, a list or trailing text used to keep the range (seen writing the fuzz properties).
        for other in [
            "*",
            "\"x\", \"abc\"",
            "\"abc\" junk",
            "W/\"abc\"",
            "Thu, 01 Jan 1970 00:16:40 GMT",
        ] {
            assert_eq!(eval("\"abc\"", other), StatusCode::OK, "{other}");
        }
        assert_eq!(eval("W/\"abc\"", "W/\"abc\""), StatusCode::OK);
    }

    use proptest::prelude::*;

    fn range_header() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,30}",
            "[ bBytesx]{0,7}=[ 0-9,-]{0,30}",
            (
                proptest::arbitrary::any::<Option<u64>>(),
                proptest::arbitrary::any::<Option<u64>>()
            )
                .prop_map(|(f, l)| format!(
                    "bytes={}-{}",
                    f.map_or(String::new(), |f| f.to_string()),
                    l.map_or(String::new(), |l| l.to_string())
                )),
        ]
    }

    proptest! {
        /// Any `Range` value on any object size: no panic, and a satisfiable range lies
        /// within the object; a multi-range is never honoured.
        #[test]
        fn a_range_is_within_the_object(v in range_header(), len in prop_oneof![0u64..64, proptest::arbitrary::any::<u64>()]) {
            if let RangeSpec::Bytes(r) = parse_range(&v, len) {
                prop_assert!(r.start < r.end && r.end <= len, "{:?} on {}: {:?}", v, len, r);
                prop_assert!(!v.contains(','));
            }
        }

        /// A well-formed `bytes=first-last` means what RFC 9110 §14.1.2 says.
        #[test]
        fn well_formed_ranges_mean_what_the_rfc_says(
            first in proptest::option::of(prop_oneof![0u64..80, proptest::arbitrary::any::<u64>()]),
            last in proptest::option::of(prop_oneof![0u64..80, proptest::arbitrary::any::<u64>()]),
            len in prop_oneof![0u64..64, proptest::arbitrary::any::<u64>()],
        ) {
            prop_assume!(first.is_some() || last.is_some());
            let h = format!("bytes={}-{}", first.map_or(String::new(), |f| f.to_string()), last.map_or(String::new(), |l| l.to_string()));
            let want = match (first, last) {
                (None, Some(0)) => RangeSpec::Unsatisfiable,
                (None, Some(_)) if len == 0 => RangeSpec::Ignore,
                (None, Some(n)) => RangeSpec::Bytes(len.saturating_sub(n)..len),
                (Some(f), Some(l)) if l < f => RangeSpec::Ignore,
                (Some(f), _) if f >= len => RangeSpec::Unsatisfiable,
                (Some(f), Some(l)) => RangeSpec::Bytes(f..l.saturating_add(1).min(len)),
                (Some(f), None) => RangeSpec::Bytes(f..len),
                (None, None) => unreachable!(),
            };
            prop_assert_eq!(parse_range(&h, len), want, "{}", h);
        }

        /// Conditional and range headers together: 206 only for one valid range and,
        /// with `If-Range`, only for our own strong ETag; 304 and 412 only when a header
        /// allows them.
        #[test]
        fn conditionals_answer_only_what_their_headers_allow(
            len in 0u64..100,
            etag in proptest::option::of(prop_oneof![Just("\"abc\"".to_owned()), Just("W/\"abc\"".to_owned()), "[a-c\"]{0,4}"]),
            fields in proptest::collection::vec((0usize..6, prop_oneof![
                range_header(),
                Just("\"abc\"".to_owned()),
                Just("W/\"abc\"".to_owned()),
                Just("*".to_owned()),
                Just("\"x\", \"abc\"".to_owned()),
                Just("Thu, 01 Jan 1970 00:16:40 GMT".to_owned()),
                Just("Sun, 06 Nov 1994 08:49:37 GMT".to_owned()),
                "\\PC{0,12}",
            ]), 0..5),
        ) {
            let names = [header::RANGE, header::IF_RANGE, header::IF_MATCH, header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE, header::IF_UNMODIFIED_SINCE];
            let mut headers = HeaderMap::new();
            for (n, v) in &fields {
                if let Ok(v) = HeaderValue::from_str(v) {
                    headers.append(names[*n].clone(), v);
                }
            }
            let (status, range) = fuzzing::evaluate(len, etag.as_deref(), 1_000, &headers);
            let has = |n: &header::HeaderName| headers.contains_key(n);
            match status {
                StatusCode::OK => prop_assert_eq!(range, Some(0..len)),
                StatusCode::PARTIAL_CONTENT => {
                    let r = range.unwrap();
                    prop_assert!(r.start < r.end && r.end <= len);
                    prop_assert_eq!(headers.get_all(header::RANGE).iter().count(), 1);
                    if let Some(ir) = headers.get(header::IF_RANGE) {
                        let ours = normalize_etag(etag.as_deref().unwrap_or("-"));
                        prop_assert_eq!(ir.to_str().unwrap().trim(), ours.as_str());
                        prop_assert!(!ours.starts_with("W/"));
                    }
                }
                StatusCode::NOT_MODIFIED => prop_assert!(has(&header::IF_NONE_MATCH) || has(&header::IF_MODIFIED_SINCE)),
                StatusCode::PRECONDITION_FAILED => prop_assert!(has(&header::IF_MATCH) || has(&header::IF_UNMODIFIED_SINCE)),
                StatusCode::RANGE_NOT_SATISFIABLE => prop_assert!(has(&header::RANGE)),
                other => prop_assert!(false, "unexpected {}", other),
            }
        }
    }
}
