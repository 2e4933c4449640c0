//! S3-specific code that object_store does not give us.
//!
//! object_store's own S3 `list` ends the whole stream at the first key its `Path` refuses
//! (`../x`, `a//b`, `./x`), so one hostile key would hide every key after it. [`list`]
//! fetches ListObjectsV2 pages itself and hands back keys exactly as stored. `client`
//! builds object_store's S3 client with settings fit for large objects.

mod client;
pub mod list;

pub(crate) use client::open;
pub use list::{ListedObject, RawLister};
