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

/// Prints up to 100 `key: reason` lines of a summary list, then how many more `--json` has.
pub(crate) fn print_key_reasons(items: &[stowage::ops::KeyReason]) {
    const SHOWN: usize = 100;
    for kr in items.iter().take(SHOWN) {
        println!("      {:?}: {}", kr.key, kr.reason);
    }
    if items.len() > SHOWN {
        println!(
            "      ... and {} more (--json lists all)",
            items.len() - SHOWN
        );
    }
}
