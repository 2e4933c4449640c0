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
    /// The strongest COMPOSITE checksum sent, with its part count (from the `-N` suffix,
    /// else the ETag's or `x-amz-mp-parts-count`).
    pub composite: Option<Checksum>,
    /// True when `composite` is a bare value on a multipart object and the server named no
    /// `x-amz-checksum-type` (moto): it may be a FULL_OBJECT checksum instead.
    pub composite_may_be_full_object: bool,
    /// `x-amz-mp-parts-count`.
    pub parts_count: Option<u32>,
    /// `Content-Length` of this response.
    pub content_length: Option<u64>,
    /// The size of every part but the last, as S3 stated it (see `uniform_part_size`),
    /// or why it is not known. Not a header: set by the caller before a COMPOSITE
    /// checksum is checked.
    pub part_size: Option<Result<u64, String>>,
}

impl ObjectHeaders {
    /// Parses the headers of a GET or HEAD object response.
    pub fn from_headers(h: &HeaderMap) -> ObjectHeaders {
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let stated = text("x-amz-checksum-type");
        let parts_count = text("x-amz-mp-parts-count").and_then(|v| v.parse().ok());
        // A multipart object's part count, from its ETag (`"…-N"`) or the parts header.
        let multipart = text("etag")
            .and_then(|e| e.trim_matches('"').rsplit_once('-'))
            .and_then(|(_, n)| n.parse::<u32>().ok())
            .or(parts_count);
        let mut me = ObjectHeaders {
            sse: text("x-amz-server-side-encryption").map(str::to_owned),
            sse_customer: text("x-amz-server-side-encryption-customer-algorithm").is_some(),
            composite_checksum: stated == Some("COMPOSITE"),
            parts_count,
            content_length: text("content-length").and_then(|v| v.parse().ok()),
            ..ObjectHeaders::default()
        };
        // Strongest first: the first composite found is kept.
        for alg in Algorithm::ALL {
            let Some(v) = text(&format!("x-amz-checksum-{}", alg.name())) else {
                continue;
            };
            let suffixed = v.contains('-');
            let composite = match stated {
                Some("COMPOSITE") => true,
                Some(_) => false,
                None => suffixed || multipart.is_some(),
            };
            if !composite {
                me.checksums.extend(Checksum::parse(alg, v));
                continue;
            }
            me.composite_checksum = true;
            if me.composite.is_none() {
                me.composite = Checksum::parse_composite(alg, v, multipart);
                me.composite_may_be_full_object =
                    me.composite.is_some() && stated.is_none() && !suffixed;
            }
        }
        me
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

/// The size of every part but the last of the multipart object at `path` (`size` bytes
/// in `parts` parts), as S3 states it: part 1's `Content-Length` (`HEAD ?partNumber=1`),
/// checked against the part count and the size, and, for three parts or more, against the
/// last part's `Content-Length`, which must be the remainder. A COMPOSITE checksum can
/// only be recomputed when the parts are uniform like that (every SDK uploads so); an
/// upload whose middle parts differ while part 1 and the last fit is not detected here.
/// One part needs no request. The error says why the size is not known.
pub(crate) async fn uniform_part_size(
    signer: &dyn object_store::signer::Signer,
    http: &reqwest::Client,
    path: &object_store::path::Path,
    parts: u32,
    size: u64,
) -> Result<u64, String> {
    if parts <= 1 {
        return Ok(size.max(1));
    }
    let first = head_part(signer, http, path, 1).await?;
    let n = u64::from(parts);
    let p = match (first.content_length, first.parts_count) {
        (Some(p), Some(count)) if count == parts => p,
        (_, Some(count)) => {
            return Err(format!(
                "the checksum covers {parts} parts but the server counts {count}"
            ))
        }
        // Some S3-compatible servers answer partNumber with the whole object.
        _ => return Err("the server does not state part sizes (HEAD ?partNumber=1)".into()),
    };
    if p == 0 || (n - 1) * p >= size || size > n * p {
        return Err(format!(
            "the parts are not uniform: {parts} parts of {p} bytes cannot make {size} bytes"
        ));
    }
    if parts >= 3 {
        let last = head_part(signer, http, path, parts).await?;
        let remainder = size - (n - 1) * p;
        if last.content_length != Some(remainder) {
            return Err(format!(
                "the parts are not uniform: part 1 is {p} bytes, so part {parts} would be \
                 {remainder}, but the server says {}",
                last.content_length
                    .map_or("nothing".to_owned(), |l| format!("{l} bytes"))
            ));
        }
    }
    Ok(p)
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
        let c = h.composite.unwrap();
        assert_eq!((c.algorithm, c.parts), (Algorithm::Crc32, Some(2)));
        assert!(!h.composite_may_be_full_object);
        // COMPOSITE stated, the count from the ETag.
        let h = headers(&[
            ("x-amz-checksum-crc32", "NhCmhg=="),
            ("x-amz-checksum-type", "COMPOSITE"),
            ("etag", "\"d41d8cd98f00b204e9800998ecf8427e-4\""),
        ]);
        assert!(h.checksums.is_empty() && h.composite_checksum);
        assert_eq!(h.composite.unwrap().parts, Some(4));
        assert!(!h.composite_may_be_full_object);
    }

    #[test]
    fn a_bare_checksum_on_a_multipart_object_may_be_either_type() {
        // moto: no x-amz-checksum-type and no `-N`, on an object whose ETag ends in -3.
        let h = headers(&[
            ("x-amz-checksum-crc32", "zT8eCA=="),
            ("etag", "\"385867b5694a41d600b1b51a733c2d03-3\""),
        ]);
        assert!(h.checksums.is_empty());
        assert_eq!(h.composite.as_ref().unwrap().parts, Some(3));
        assert!(h.composite_may_be_full_object);
        // S3 names the type: a FULL_OBJECT CRC64NVME on a multipart object is one.
        let h = headers(&[
            ("x-amz-checksum-crc64nvme", "AAAAAAAAAAA="),
            ("x-amz-checksum-type", "FULL_OBJECT"),
            ("etag", "\"385867b5694a41d600b1b51a733c2d03-3\""),
        ]);
        assert_eq!(h.checksums.len(), 1);
        assert!(h.composite.is_none() && !h.composite_checksum);
        // A single-part object's bare value is a full-object one.
        let h = headers(&[
            ("x-amz-checksum-crc32", "NhCmhg=="),
            ("etag", "\"d41d8cd98f00b204e9800998ecf8427e\""),
        ]);
        assert_eq!(h.checksums.len(), 1);
        assert!(h.composite.is_none());
    }
}
