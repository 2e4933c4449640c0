//! `Range` and conditional headers (RFC 9110): no panic; a satisfiable range lies within
//! the object; 206 only for a single valid byte range whose `If-Range` (if any) is a
//! strong match; 304 and 412 only when the header that allows them is present.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use stowage::fuzzing::{evaluate, parse_range};

use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};

const NAMES: [HeaderName; 6] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

#[derive(Debug, Arbitrary)]
struct Input {
    size: u64,
    small: bool,
    etag: Option<String>,
    modified: i64,
    headers: Vec<(u8, Vec<u8>)>,
    /// A well-formed `bytes=first-last` to check against the arithmetic.
    first: Option<u64>,
    last: Option<u64>,
}

/// The quoting the router gives a backend's ETag.
fn normalize(e: &str) -> String {
    if e.starts_with('"') || e.starts_with("W/\"") {
        e.to_owned()
    } else {
        format!("\"{}\"", e.replace('"', ""))
    }
}

fuzz_target!(|input: Input| {
    let size = if input.small { input.size % 64 } else { input.size };

    // The raw parser on every Range value.
    for (_, v) in &input.headers {
        let v = String::from_utf8_lossy(v);
        if let Some(Some(r)) = parse_range(&v, size) {
            assert!(r.start < r.end && r.end <= size, "{v:?} on {size}: {r:?}");
            assert!(!v.contains(','), "a multi-range was honoured: {v:?}");
        }
    }

    // A well-formed single range has exactly the RFC's meaning.
    if input.first.is_some() || input.last.is_some() {
        let f = input.first.map(|f| f.to_string()).unwrap_or_default();
        let l = input.last.map(|l| l.to_string()).unwrap_or_default();
        let got = parse_range(&format!("bytes={f}-{l}"), size);
        let want = match (input.first, input.last) {
            (None, Some(0)) => Some(None),
            (None, Some(_)) if size == 0 => None,
            (None, Some(n)) => Some(Some(size.saturating_sub(n)..size)),
            (Some(f), Some(l)) if l < f => None,
            (Some(f), _) if f >= size => Some(None),
            (Some(f), Some(l)) => Some(Some(f..l.saturating_add(1).min(size))),
            (Some(f), None) => Some(Some(f..size)),
            (None, None) => unreachable!(),
        };
        assert_eq!(got, want, "bytes={f}-{l} on {size}");
    }

    // The whole evaluation.
    let mut headers = HeaderMap::new();
    for (n, v) in &input.headers {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            headers.append(NAMES[*n as usize % NAMES.len()].clone(), v);
        }
    }
    let (status, range) = evaluate(size, input.etag.as_deref(), input.modified, &headers);
    let has = |n: &HeaderName| headers.contains_key(n);
    match status {
        StatusCode::OK => assert_eq!(range, Some(0..size)),
        StatusCode::PARTIAL_CONTENT => {
            let r = range.clone().expect("206 has a range");
            assert!(r.start < r.end && r.end <= size, "{r:?} of {size}");
            let ranges: Vec<_> = headers.get_all(header::RANGE).iter().collect();
            assert_eq!(ranges.len(), 1, "206 without exactly one Range");
            let v = ranges[0].to_str().expect("an ASCII Range");
            assert_eq!(parse_range(v, size), Some(Some(r)));
            if let Some(if_range) = headers.get(header::IF_RANGE) {
                // Only our own strong entity tag keeps the range: never a date, a weak
                // tag, a list or `*`.
                let ir = if_range.to_str().unwrap().trim();
                let ours = input.etag.as_deref().map(normalize).unwrap_or_default();
                assert_eq!(ir, ours, "If-Range {ir:?} kept the range");
                assert!(ir.len() >= 2 && ir.starts_with('"'), "{ir:?}");
                assert!(!ir[1..ir.len() - 1].contains('"'), "{ir:?}");
            }
        }
        StatusCode::NOT_MODIFIED => {
            assert!(has(&header::IF_NONE_MATCH) || has(&header::IF_MODIFIED_SINCE));
        }
        StatusCode::PRECONDITION_FAILED => {
            assert!(has(&header::IF_MATCH) || has(&header::IF_UNMODIFIED_SINCE));
        }
        StatusCode::RANGE_NOT_SATISFIABLE => assert!(has(&header::RANGE)),
        other => panic!("unexpected status {other}"),
    }
    if status != StatusCode::PARTIAL_CONTENT && status != StatusCode::OK {
        assert_eq!(range, None);
    }
});
