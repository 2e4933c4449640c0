//! Size and duration arguments: no panic; what parses is in range and agrees between the
//! strict and the plain parser; `parse_age` refuses bare numbers and `m`/`M`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stowage::size::{parse_age, parse_bytes};
use stowage::SizeSpec;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let plain = s.parse::<SizeSpec>();
    if let Ok(SizeSpec::Percent(p)) = plain {
        assert!((0.0..=100.0).contains(&p), "{s:?} -> {p}");
    }
    if let Ok(spec) = SizeSpec::parse_with_unit(&s) {
        assert_eq!(Ok(spec), plain, "{s:?}");
        let t = s.trim();
        assert!(!t.chars().all(|c| c.is_ascii_digit() || c == '.'), "{s:?}");
    }
    if let Ok(b) = parse_bytes(&s) {
        assert_eq!(plain, Ok(SizeSpec::Bytes(b)), "{s:?}");
    }
    if let Ok(spec) = plain {
        let _ = spec.resolve(u64::MAX);
        let _ = spec.to_string();
    }
    if let Ok(d) = parse_age(&s) {
        let t = s.trim();
        assert!(!t.chars().all(|c| c.is_ascii_digit()), "bare number {s:?}");
        assert_eq!(humantime::parse_duration(t), Ok(d), "{s:?}");
        // No unit spelled `m` or `M` on its own.
        let units = t.split(|c: char| !c.is_alphabetic());
        for u in units {
            assert!(u != "m" && u != "M", "{s:?}");
        }
    }
});
