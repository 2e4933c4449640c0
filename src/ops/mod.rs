//! The operations behind the `stowage` commands: each takes an options struct and a
//! [`Reporter`](crate::report::Reporter) and returns a `Serialize` summary.

pub mod cleanup;
pub mod disk;
