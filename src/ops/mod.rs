//! The operations behind the CLI commands: each takes options and a
//! [`crate::Reporter`] and returns a `Serialize` summary.

pub mod migrate;
