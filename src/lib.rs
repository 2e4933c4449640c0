//! # stowage
//!
//! One blob-store API over local disk and S3, and the operations that move a bucket to
//! disk and keep it healthy.
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]
#![warn(unreachable_pub)]

mod error;
pub mod key;
pub mod ops;
pub mod report;
pub mod size;
pub mod walk;

pub use error::{Error, Result};
pub use key::{Key, KeyError};
