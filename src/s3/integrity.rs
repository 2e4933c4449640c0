//! The response headers that say what an object's ETag and checksums prove.
//!
//! object_store's `GetResult` keeps the ETag, size and a few Content-* headers and drops the
//! rest, but it passes the HTTP response's `extensions` through. `IntegrityConnector`
//! wraps object_store's own reqwest connector and, for every response, parses the
//! server-side-encryption, checksum and part-count headers into an [`ObjectHeaders`] it
//! stores in those extensions; `migrate` and `verify` read it back from the `GetResult`.
//!
//! The checksums come back only when the request carries `x-amz-checksum-mode: ENABLED`.
//! SigV4 requires every `x-amz-*` header to be signed, so adding it in the connector (after
//! signing) would be a trap; instead the client's *default headers* carry it: object_store
//! adds default headers to the request builder before it signs (its own test
//! `assert_default_headers_signed` covers that), so the header is in `SignedHeaders`.

use http::HeaderMap;
use object_store::client::{HttpClient, HttpConnector, HttpError, HttpService, ReqwestConnector};
use object_store::client::{HttpRequest, HttpResponse};
use object_store::ClientOptions;

use crate::checksum::{Algorithm, Checksum};

/// What a GET or HEAD response said about the object's integrity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectHeaders {
    /// `x-amz-server-side-encryption` (`AES256`, `aws:kms`, `aws:kms:dsse`).
    pub sse: Option<String>,
    /// True when `x-amz-server-side-encryption-customer-algorithm` was sent (SSE-C).
    pub sse_customer: bool,
    /// Full-object checksums sent (`x-amz-checksum-<alg>` without a `-N` suffix).
    pub checksums: Vec<Checksum>,
    /// True when some checksum was COMPOSITE (`x-amz-checksum-type`, or a `-N` value).
    pub composite_checksum: bool,
    /// `x-amz-mp-parts-count`.
    pub parts_count: Option<u32>,
    /// `Content-Length` of this response.
    pub content_length: Option<u64>,
}

impl ObjectHeaders {
    /// Parses the headers of a GET or HEAD object response.
    pub fn from_headers(h: &HeaderMap) -> ObjectHeaders {
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let composite_type = text("x-amz-checksum-type").is_some_and(|t| t == "COMPOSITE");
        let mut checksums = Vec::new();
        let mut composite_checksum = composite_type;
        for alg in Algorithm::ALL {
            if let Some(v) = text(&format!("x-amz-checksum-{}", alg.name())) {
                match Checksum::parse(alg, v) {
                    Some(c) if !composite_type => checksums.push(c),
                    _ => composite_checksum |= v.contains('-'),
                }
            }
        }
        ObjectHeaders {
            sse: text("x-amz-server-side-encryption").map(str::to_owned),
            sse_customer: text("x-amz-server-side-encryption-customer-algorithm").is_some(),
            checksums,
            composite_checksum,
            parts_count: text("x-amz-mp-parts-count").and_then(|v| v.parse().ok()),
            content_length: text("content-length").and_then(|v| v.parse().ok()),
        }
    }

    /// Why the object's ETag is not an MD5 of its content, when the headers say so:
    /// SSE-KMS, DSSE-KMS and SSE-C objects have ETags that look like MD5s but are not.
    pub fn opaque_etag_reason(&self) -> Option<String> {
        if self.sse_customer {
            return Some("encrypted with a customer key (SSE-C): its ETag is not an MD5".into());
        }
        match self.sse.as_deref() {
            Some(s @ ("aws:kms" | "aws:kms:dsse")) => {
                Some(format!("encrypted with {s}: its ETag is not an MD5"))
            }
            _ => None,
        }
    }

    /// The strongest full-object checksum sent, if any.
    pub fn best_checksum(&self) -> Option<&Checksum> {
        self.checksums.iter().max_by_key(|c| c.algorithm)
    }
}

/// Asks for part `part` of a multipart object (`HEAD ?partNumber=N`, checksum mode on):
/// S3 answers with that part's `Content-Length` and the object's `x-amz-mp-parts-count`,
/// which pin a multipart ETag's part size exactly instead of guessing it. object_store has
/// no part-number option, so the request is a presigned URL with `partNumber` in the
/// signed query and `x-amz-checksum-mode` among the signed headers (object_store's
/// `Signer::signed_url_opts` signs both), sent with `http`.
pub(crate) async fn head_part(
    signer: &dyn object_store::signer::Signer,
    http: &reqwest::Client,
    path: &object_store::path::Path,
    part: u32,
) -> Result<ObjectHeaders, String> {
    use object_store::signer::{Method, SignedUrlOptions};
    let (name, value) = (
        http::HeaderName::from_static("x-amz-checksum-mode"),
        http::HeaderValue::from_static("ENABLED"),
    );
    let opts = SignedUrlOptions::new()
        .with_query([("partNumber", part.to_string())])
        .with_signed_header(name.clone(), value.clone());
    let url = signer
        .signed_url_opts(
            Method::HEAD,
            path,
            std::time::Duration::from_secs(300),
            &opts,
        )
        .await
        .map_err(|e| format!("cannot sign HEAD ?partNumber={part}: {e}"))?;
    let resp = http
        .head(url)
        .header(name, value)
        .send()
        .await
        .map_err(|e| format!("HEAD ?partNumber={part}: {}", e.without_url()))?;
    if !resp.status().is_success() {
        return Err(format!("HEAD ?partNumber={part}: {}", resp.status()));
    }
    Ok(ObjectHeaders::from_headers(resp.headers()))
}

/// object_store's reqwest connector, with [`ObjectHeaders`] put into every response's
/// extensions.
#[derive(Debug, Default)]
pub(crate) struct IntegrityConnector;

impl HttpConnector for IntegrityConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(IntegrityService { inner }))
    }
}

#[derive(Debug)]
struct IntegrityService {
    inner: HttpClient,
}

#[async_trait::async_trait]
impl HttpService for IntegrityService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let mut resp = self.inner.execute(req).await?;
        let found = ObjectHeaders::from_headers(resp.headers());
        resp.extensions_mut().insert(found);
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> ObjectHeaders {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        ObjectHeaders::from_headers(&h)
    }

    #[test]
    fn kms_and_customer_keys_make_the_etag_opaque() {
        assert!(headers(&[("x-amz-server-side-encryption", "aws:kms")])
            .opaque_etag_reason()
            .is_some());
        assert!(headers(&[("x-amz-server-side-encryption", "aws:kms:dsse")])
            .opaque_etag_reason()
            .is_some());
        assert!(
            headers(&[("x-amz-server-side-encryption-customer-algorithm", "AES256")])
                .opaque_etag_reason()
                .is_some()
        );
        assert!(headers(&[("x-amz-server-side-encryption", "AES256")])
            .opaque_etag_reason()
            .is_none());
    }

    #[test]
    fn composite_checksums_are_not_taken_as_full_object() {
        let h = headers(&[
            ("x-amz-checksum-crc32", "NhCmhg==-2"),
            (
                "x-amz-checksum-sha256",
                "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=",
            ),
        ]);
        assert!(h.composite_checksum);
        assert_eq!(h.best_checksum().unwrap().algorithm, Algorithm::Sha256);
        let h = headers(&[
            ("x-amz-checksum-crc32", "NhCmhg=="),
            ("x-amz-checksum-type", "COMPOSITE"),
        ]);
        assert!(h.checksums.is_empty() && h.composite_checksum);
    }
}
