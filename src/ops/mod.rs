//! The operations behind the CLI commands: each takes options and a
//! [`crate::Reporter`] and returns a `Serialize` summary.

pub mod cleanup;
pub mod disk;
pub mod migrate;
pub mod verify;

use futures::stream::{BoxStream, StreamExt};

use crate::error::Result;
use crate::s3::ListedObject;
use crate::store::{BlobStore, ObjectBackend};

/// A key and why it is reported (not copied, different, unverifiable, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyReason {
    /// The object key, exactly as listed (or the path relative to the root).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// The listing of an object store as raw entries: S3 through the hostile-key-proof
/// [`crate::s3::RawLister`], memory through object_store.
pub(crate) fn source_listing<'a>(
    src: &BlobStore,
    backend: &'a ObjectBackend,
    prefix: &str,
) -> BoxStream<'a, Result<ListedObject>> {
    match &backend.s3 {
        Some(s3) => s3
            .lister
            .list_parallel(&format!("{}{}", backend.prefix, prefix), &backend.prefix),
        None => src
            .list(prefix)
            .map(|r| {
                r.map(|m| ListedObject {
                    key: m.key.to_string(),
                    size: m.size,
                    last_modified: m.last_modified,
                    etag: m.etag,
                })
            })
            .boxed(),
    }
}
