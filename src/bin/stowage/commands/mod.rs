//! One module per command: clap arguments, conversion to library options, output.

pub(crate) mod cleanup;
pub(crate) mod disk;
pub(crate) mod migrate;
pub(crate) mod serve;
pub(crate) mod verify;
