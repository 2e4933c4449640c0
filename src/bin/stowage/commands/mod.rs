//! One module per command: clap arguments, conversion to library options, output.

pub(crate) mod cleanup;
pub(crate) mod disk;
pub(crate) mod migrate;
pub(crate) mod serve;
pub(crate) mod verify;

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
