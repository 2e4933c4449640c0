//! One module per command: clap arguments, conversion to library options, output.

pub(crate) mod cleanup;
pub(crate) mod disk;
pub(crate) mod migrate;
pub(crate) mod serve;
pub(crate) mod url;
pub(crate) mod verify;

/// `path` made absolute against the working directory; an error names the option.
pub(crate) fn absolute(
    option: &str,
    path: &std::path::Path,
) -> stowage::Result<std::path::PathBuf> {
    std::path::absolute(path).map_err(|e| stowage::Error::Config {
        name: option.into(),
        reason: format!("{}: {e}", path.display()),
    })
}

/// Parses an age or wait (`24h`, `7d`, `90min`) for options that decide what is deleted.
///
/// Stricter than humantime: a bare number (`24`) is refused, and so are `m` and `M`,
/// which humantime reads as minutes and months — one slip of the shift key is a factor
/// of 43,800.
pub(crate) fn parse_age(s: &str) -> Result<std::time::Duration, String> {
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

/// Prints `value` as one pretty JSON document on stdout (what `--json` prints).
pub(crate) fn print_json(value: &impl serde::Serialize) -> serde_json::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Reports an error of a command working on a local store root; returns exit status 2.
pub(crate) fn root_error(command: &str, root: &std::path::Path, e: &stowage::Error) -> u8 {
    errln!("stowage {command}: {e}");
    if !root.is_dir() {
        errln!("hint: --root (or LOCAL_STORAGE_PATH) must name the store directory");
    }
    2
}

/// Prints up to 100 `key: reason` lines of a summary list, then how many more `--json` has.
pub(crate) fn print_key_reasons(items: &[stowage::ops::KeyReason]) {
    const SHOWN: usize = 100;
    for kr in items.iter().take(SHOWN) {
        outln!("      {:?}: {}", kr.key, kr.reason);
    }
    if items.len() > SHOWN {
        outln!(
            "      ... and {} more (--json lists all)",
            items.len() - SHOWN
        );
    }
}

#[cfg(test)]
mod tests {
    use super::parse_age;
    use std::time::Duration;

    #[test]
    fn ages_need_a_clear_unit() {
        assert_eq!(parse_age("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_age("90min"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_age("1h 30min"), Ok(Duration::from_secs(5_400)));
        assert!(parse_age("24").unwrap_err().contains("24h"));
        assert!(parse_age("6m").unwrap_err().contains("6min or 6months"));
        assert!(parse_age("1h6M").unwrap_err().contains("6months"));
        assert!(parse_age("soon").is_err());
    }
}
