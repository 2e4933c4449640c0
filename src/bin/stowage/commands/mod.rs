//! One module per command: clap arguments, conversion to library options, output.

pub(crate) mod cleanup;
pub(crate) mod disk;
pub(crate) mod migrate;
pub(crate) mod serve;
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

/// The age and wait options' parser, shared with the library so it can be fuzzed.
pub(crate) use stowage::size::parse_age;

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
