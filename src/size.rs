//! `SizeSpec`: byte sizes and percentages as operators write them (`50GB`, `512MiB`, `10%`),
//! and [`parse_age`]: ages and waits (`24h`, `7d`, `90min`).
//!
//! Thresholds such as `--min-free`, `--max-used` and `--warn-above` accept either an
//! absolute size or a share of the filesystem, so the parsing lives in one place. The
//! binary's durations that decide what is deleted (`cleanup --max-age`) use [`parse_age`].

use std::fmt;
use std::str::FromStr;

/// An absolute byte count or a percentage of a filesystem's size.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeSpec {
    /// A number of bytes.
    Bytes(u64),
    /// A percentage (0–100) of the filesystem's total size.
    Percent(f64),
}

impl SizeSpec {
    /// The byte count this spec stands for on a filesystem of `fs_total` bytes.
    pub fn resolve(self, fs_total: u64) -> u64 {
        match self {
            SizeSpec::Bytes(b) => b,
            SizeSpec::Percent(p) => ((fs_total as f64) * p / 100.0).round() as u64,
        }
    }
}

/// Parses a byte size: a number with an optional unit, decimal (`kB`, `MB`, `GB`, `TB`)
/// or binary (`KiB`, `MiB`, `GiB`, `TiB`); `K`/`M`/`G`/`T` alone are binary, as in `du`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad(s))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => return Err(bad(s)),
    };
    let v = num * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(bad(s));
    }
    Ok(v.round() as u64)
}

fn bad(s: &str) -> String {
    format!("invalid size {s:?}: expected a number with an optional unit, like 50GB, 512MiB or 10%")
}

impl FromStr for SizeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.trim().strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad(s))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("invalid percentage {s:?}: expected 0% to 100%"));
            }
            return Ok(SizeSpec::Percent(v));
        }
        parse_bytes(s).map(SizeSpec::Bytes)
    }
}

impl SizeSpec {
    /// Like [`str::parse`], but a bare number is refused: for a limit that deletes files,
    /// `50` meaning 50 bytes is a typo, not a setting.
    pub fn parse_with_unit(s: &str) -> Result<SizeSpec, String> {
        let t = s.trim();
        if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(format!(
                "{t:?} has no unit, and a bare number would mean bytes: write it with a unit, \
                 like 50GB, 50GiB or 80% (of the filesystem)"
            ));
        }
        t.parse()
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeSpec::Bytes(b) => f.write_str(&human_bytes(*b)),
            SizeSpec::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Formats a byte count for people: `1.5 GiB`, `512 B`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Parses an age or wait (`24h`, `7d`, `90min`) for options that decide what is deleted.
///
/// Stricter than humantime: a bare number (`24`) is refused, and so are `m` and `M`,
/// which humantime reads as minutes and months — one slip of the shift key is a factor
/// of 43,800.
pub fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{t:?} has no unit: write e.g. {t}h (hours), {t}d (days) or {t}min (minutes), as in 24h"
        ));
    }
    let mut number = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        if c.is_alphabetic() {
            let mut unit = String::from(c);
            while let Some(&n) = chars.peek().filter(|n| n.is_alphabetic()) {
                unit.push(n);
                chars.next();
            }
            if unit == "m" || unit == "M" {
                return Err(format!(
                    "{t:?} is ambiguous: `m` reads as minutes and `M` as months; write {number}min or {number}months"
                ));
            }
        }
        number.clear();
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("invalid duration {t:?} ({e}): write e.g. 24h, 7d or 90min"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_operators_write() {
        assert_eq!("50GB".parse(), Ok(SizeSpec::Bytes(50_000_000_000)));
        assert_eq!("512MiB".parse(), Ok(SizeSpec::Bytes(512 << 20)));
        assert_eq!("10%".parse(), Ok(SizeSpec::Percent(10.0)));
        assert_eq!("1.5G".parse(), Ok(SizeSpec::Bytes(3 << 29)));
        assert_eq!("123".parse(), Ok(SizeSpec::Bytes(123)));
        assert_eq!(" 2 kb ".parse(), Ok(SizeSpec::Bytes(2000)));
        for bad in ["", "GB", "10 parsecs", "-5MB", "150%", "x%"] {
            assert!(bad.parse::<SizeSpec>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_need_a_unit() {
        assert_eq!(
            SizeSpec::parse_with_unit("50GB"),
            Ok(SizeSpec::Bytes(50_000_000_000))
        );
        assert_eq!(SizeSpec::parse_with_unit("0B"), Ok(SizeSpec::Bytes(0)));
        assert_eq!(
            SizeSpec::parse_with_unit("80%"),
            Ok(SizeSpec::Percent(80.0))
        );
        for bad in ["50", "0", " 1.5 "] {
            let e = SizeSpec::parse_with_unit(bad).unwrap_err();
            assert!(e.contains("50GiB") && e.contains("80%"), "{e}");
        }
    }

    #[test]
    fn percent_resolves_against_the_filesystem() {
        assert_eq!(
            SizeSpec::Percent(5.0).resolve(60_000_000_000),
            3_000_000_000
        );
        assert_eq!(SizeSpec::Bytes(7).resolve(1), 7);
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(50 << 30), "50.0 GiB");
    }

    #[test]
    fn ages_need_a_clear_unit() {
        use std::time::Duration;
        assert_eq!(parse_age("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_age("90min"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_age("1h 30min"), Ok(Duration::from_secs(5_400)));
        assert!(parse_age("24").unwrap_err().contains("24h"));
        assert!(parse_age("6m").unwrap_err().contains("6min or 6months"));
        assert!(parse_age("1h6M").unwrap_err().contains("6months"));
        assert!(parse_age("soon").is_err());
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever an operator types: an answer, never a panic; percentages stay within
        /// 0-100 and the strict parser only ever agrees with the plain one.
        #[test]
        fn size_parsing_never_panics_and_agrees(
            s in "\\PC{0,24}|[ 0-9.]{0,24}[kKmMgGtTiIbB%]{0,4}"
        ) {
            let plain = s.parse::<SizeSpec>();
            if let Ok(SizeSpec::Percent(p)) = plain {
                prop_assert!((0.0..=100.0).contains(&p));
            }
            if let Ok(spec) = SizeSpec::parse_with_unit(&s) {
                prop_assert_eq!(Ok(spec), plain.clone());
            }
            if let Ok(b) = parse_bytes(&s) {
                prop_assert_eq!(plain, Ok(SizeSpec::Bytes(b)));
            }
        }

        /// A whole number with a unit is exactly that many bytes.
        #[test]
        fn sizes_with_a_unit_are_exact(n in 0u64..(1 << 40), unit in 0usize..9) {
            let (name, mult) = [
                ("B", 1u64), ("kB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000),
                ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("K", 1 << 10),
                ("TiB", 1 << 40),
            ][unit];
            let want = n as u128 * mult as u128;
            let got = SizeSpec::parse_with_unit(&format!("{n}{name}"));
            if want < (1 << 53) {
                prop_assert_eq!(got, Ok(SizeSpec::Bytes(want as u64)));
            } else if want > u64::MAX as u128 {
                prop_assert!(got.is_err());
            }
        }

        /// Ages: never a bare number, never `m` or `M`, and otherwise what humantime says.
        #[test]
        fn ages_are_never_ambiguous(s in "\\PC{0,24}|[0-9 ]{0,6}[a-zA-Z]{0,6}[0-9 ]{0,6}[a-zA-Z]{0,3}") {
            if let Ok(d) = parse_age(&s) {
                let t = s.trim();
                prop_assert!(!t.chars().all(|c| c.is_ascii_digit()));
                prop_assert!(t.split(|c: char| !c.is_alphabetic()).all(|u| u != "m" && u != "M"));
                prop_assert_eq!(humantime::parse_duration(t).ok(), Some(d));
            }
        }
    }
}
