//! INTERIM (replaced by the raw ListObjectsV2 lister on merge).
#![allow(missing_docs)]
use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use object_store::ObjectStore;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub last_modified: chrono::DateTime<chrono::Utc>,
    pub etag: Option<String>,
}

pub(crate) struct RawLister {
    pub(crate) store: Arc<dyn ObjectStore>,
}

impl RawLister {
    pub(crate) fn list(
        &self,
        prefix: &str,
        strip: &str,
    ) -> BoxStream<'static, crate::Result<ListedObject>> {
        let p = object_store::path::Path::parse(prefix.trim_end_matches('/')).ok();
        let strip = strip.to_owned();
        self.store
            .list(p.as_ref())
            .map(move |r| {
                r.map(|m| ListedObject {
                    key: m
                        .location
                        .as_ref()
                        .strip_prefix(&strip)
                        .unwrap_or(m.location.as_ref())
                        .to_owned(),
                    size: m.size,
                    last_modified: m.last_modified,
                    etag: m.e_tag,
                })
                .map_err(|e| crate::Error::Backend {
                    store: "s3".into(),
                    source: Box::new(e),
                })
            })
            .boxed()
    }
}
