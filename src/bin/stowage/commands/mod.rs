//! One module per command: clap arguments, conversion to library options, output.

pub(crate) mod migrate;
pub(crate) mod serve;
pub(crate) mod verify;
