//! # stowage
//!
//! One blob-store API over local disk and S3, and the operations that move a bucket to
//! disk and keep it healthy.
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]
#![warn(unreachable_pub)]

pub mod config;
mod error;
pub mod etag;
#[cfg(feature = "http")]
pub mod http;
pub mod key;
pub mod local;
pub mod ops;
pub mod report;
pub mod s3;
pub mod signing;
pub mod size;
pub mod store;

pub use config::{S3Config, StoreConfig};
pub use error::{Error, Result};
pub use key::{Key, KeyError};
pub use report::{NoopReporter, Reporter};
pub use size::SizeSpec;
pub use store::{BackendKind, BlobStore, GetStream, LocalUrls, Meta};
