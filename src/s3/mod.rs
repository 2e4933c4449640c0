//! S3-specific code that object_store does not give us.
//!
//! object_store's own S3 `list` ends the whole stream at the first key its `Path` refuses
//! (`../x`, `a//b`, `./x`), so one hostile key would hide every key after it. [`list`]
//! fetches ListObjectsV2 pages itself and hands back keys exactly as stored. `client`
//! builds object_store's S3 client with settings fit for large objects.

mod client;
pub mod integrity;
pub mod list;

pub(crate) use client::open;

/// The object_store S3 client stowage itself uses for `cfg` (no whole-request timeout,
/// connect and idle-read timeouts, SHA-256 upload checksums), for code that wants a plain
/// [`object_store::ObjectStore`]. `cfg.prefix` is not applied: wrap the client in
/// `object_store::prefix::PrefixStore` for that.
pub fn object_store(cfg: &crate::S3Config) -> crate::Result<object_store::aws::AmazonS3> {
    client::build(cfg)
}
pub(crate) use client::http_client;
pub use integrity::ObjectHeaders;
pub use list::{ListedObject, RawLister};
