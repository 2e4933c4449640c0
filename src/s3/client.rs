//! Builds object_store's `AmazonS3` client from an [`S3Config`] with settings fit for
//! large objects: no whole-request timeout (the default 30 s covers the body too), a
//! connect timeout and an idle-read timeout instead, and SHA-256 checksums on uploads.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::ClientOptions;

use crate::config::S3Config;
use crate::error::{Error, Result};
use crate::store::{Backend, BlobStore, S3Extras};

/// The connection settings shared by every S3 request stowage makes.
pub(crate) fn client_options(cfg: &S3Config) -> ClientOptions {
    let allow_http = cfg
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_timeout_disabled()
        .with_connect_timeout(Duration::from_secs(10))
        .with_read_timeout(Duration::from_secs(60))
        .with_pool_max_idle_per_host(256)
        .with_default_headers(checksum_mode())
}

/// `x-amz-checksum-mode: ENABLED` on every request, so GET and HEAD answers carry the
/// object's additional checksums (S3 ignores the header on other requests). A default
/// header is added before object_store signs the request, so it is signed as SigV4
/// requires of every `x-amz-*` header (see [`super::integrity`]).
fn checksum_mode() -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        "x-amz-checksum-mode",
        http::HeaderValue::from_static("ENABLED"),
    );
    h
}

/// Builds the object_store client.
pub(crate) fn build(cfg: &S3Config) -> Result<AmazonS3> {
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&cfg.bucket)
        .with_region(&cfg.region)
        .with_client_options(client_options(cfg))
        .with_checksum_algorithm(Checksum::SHA256)
        .with_http_connector(super::integrity::IntegrityConnector);
    if let Some(e) = &cfg.endpoint {
        b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
    }
    if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
        if let Some(t) = &cfg.session_token {
            b = b.with_token(t);
        }
    }
    // The builder's errors quote the endpoint URL, user info and query included.
    b.build()
        .map_err(|e| Error::config("S3 configuration", crate::error::redact(&e.to_string())))
}

/// Opens a [`BlobStore`] on the bucket.
pub(crate) fn open(cfg: &S3Config) -> Result<BlobStore> {
    let s3 = Arc::new(build(cfg)?);
    let name = format!("s3://{}/", cfg.bucket);
    Ok(BlobStore::from_backend(Backend::s3(
        s3.clone(),
        &name,
        &cfg.prefix,
        S3Extras {
            signer: s3.clone(),
            presign_ttl: cfg.presign_ttl,
            public_base_url: cfg.public_base_url.clone(),
            lister: crate::s3::list::RawLister::new(s3, name.clone(), cfg.bucket.clone())?
                .with_url_encoding(cfg.url_encoded_listing)
                .with_ambient_credentials(cfg.access_key_id.is_none()),
        },
    )))
}

/// The HTTP client for the requests object_store cannot make (raw listing pages,
/// `HEAD ?partNumber=`); object_store does not lend its own.
pub(crate) fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| {
            Error::config(
                "S3 configuration",
                format!("cannot build the HTTP client: {e}"),
            )
        })
}
