//! # stowage
//!
//! One blob-store API over local disk and S3, and the operations that move a bucket to
//! disk and keep it healthy.
//!
//! A service reads and writes objects through a [`BlobStore`]: a cheap-to-clone handle
//! over a local directory, an S3 (or S3-compatible) bucket, or process memory. The
//! backend is chosen by configuration ([`StoreConfig::from_env`], [`StoreConfig::from_url`]),
//! so moving a service from S3 to a server's own disk does not change its code.
//!
//! - Objects are named by [`Key`]s, validated so that a key joined to a local root can
//!   never leave it.
//! - Writes are all-or-nothing: on local disk a temp file is fsynced and renamed into
//!   place; [`BlobStore::put_stream`] and [`BlobStore::put_file`] stream without holding
//!   the object in memory (multipart uploads on S3 above [`store::MULTIPART_THRESHOLD`]).
//! - [`BlobStore::delete`] is idempotent and answers the same everywhere: `false` when
//!   the key was absent.
//! - [`BlobStore::list`] streams [`Meta`] page by page, whatever the number of objects.
//! - [`BlobStore::download_url`] gives a presigned S3 URL, a CDN URL, or
//!   `{BASE_URL}/api/files/{key}` for a local store.
//! - Every error is one [`Error`] enum with semantic variants ([`Error::NotFound`],
//!   [`Error::Config`], ...).
//!
//! The operations behind the `stowage` binary (migrating a bucket to disk, verifying and
//! cleaning it up) live in [`ops`] and report progress through a [`Reporter`].
//!
//! ## Example
//!
//! The in-memory backend behaves like the others, which makes it handy in tests:
//!
//! ```
//! use bytes::Bytes;
//! use futures::TryStreamExt;
//! use stowage::{BlobStore, Error, Key};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> stowage::Result<()> {
//! let store = BlobStore::memory();
//! let key = Key::parse("clips/2024/cat.mp4")?;
//!
//! store.put(&key, Bytes::from_static(b"not really a video")).await?;
//! assert_eq!(store.get(&key).await?, "not really a video");
//! assert_eq!(store.head(&key).await?.size, 18);
//!
//! store.put(&Key::parse("clips/2025/dog.mp4")?, Bytes::from_static(b"woof")).await?;
//! let mut keys: Vec<String> = store
//!     .list("clips/")
//!     .map_ok(|meta| meta.key.to_string())
//!     .try_collect()
//!     .await?;
//! keys.sort();
//! assert_eq!(keys, ["clips/2024/cat.mp4", "clips/2025/dog.mp4"]);
//!
//! assert!(store.delete(&key).await?);
//! assert!(!store.delete(&key).await?, "deleting again is not an error");
//! assert!(matches!(store.get(&key).await, Err(Error::NotFound { .. })));
//! # Ok(())
//! # }
//! ```
//!
//! The same code runs against a local directory with `BlobStore::local("/srv/clips")?`,
//! or against whatever the environment configures with `StoreConfig::from_env()?.open()?`.
#![deny(missing_docs)]
#![deny(rustdoc::broken_intra_doc_links)]
#![warn(unreachable_pub)]

// The local store stands on Linux system calls (openat with O_NOFOLLOW, renameat2 with
// RENAME_NOREPLACE / RENAME_EXCHANGE, user xattrs, flock, syncfs): say so at compile time
// rather than build something that silently loses those guarantees.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "stowage supports Linux only: its local store relies on openat, renameat2, xattrs and syncfs"
);

mod blocking;
pub mod checksum;
pub mod config;
mod error;
pub mod etag;
#[cfg(feature = "http")]
pub mod http;
pub mod key;
pub mod local;
pub mod ops;
pub mod read_through;
pub mod report;
mod retry;
pub mod s3;
pub mod signing;
pub mod size;
pub mod store;
mod walk;

/// The pure parsers behind keys, `Range` and conditional headers, signed URLs,
/// ListObjectsV2 pages, sizes and durations, gathered for the fuzz targets in `fuzz/`.
/// Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    #[cfg(feature = "http")]
    pub use crate::http::fuzzing::{evaluate, key_from_path, parse_range};
    pub use crate::s3::list::fuzzing::{parse_page, Page};
}

/// The README's Rust code, compiled as doctests so it cannot drift from the API.
#[cfg(all(doctest, feature = "http"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use config::{S3Config, StoreConfig};
pub use error::{Error, Result};
pub use key::{Key, KeyError};
pub use read_through::{ReadThrough, ReadThroughConfig, ReadThroughOptions, ReadThroughStats};
pub use report::{NoopReporter, Reporter};
pub use size::SizeSpec;
pub use store::{BackendKind, BlobStore, GetStream, LocalStore, LocalUrls, Meta};
