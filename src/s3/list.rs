//! A ListObjectsV2 lister that survives hostile keys.
//!
//! object_store's S3 `list` turns every key into a `Path` and ends the whole stream at the
//! first one `Path::parse` rejects (`../x`, `a//b`, `./x`, control characters). A migration
//! must see those keys (to report them) *and* every key after them, so this module fetches
//! the pages itself: each page is a presigned GET on the bucket root (object_store's
//! [`Signer`] does the SigV4 work), fetched with reqwest and parsed here. Keys are requested
//! with `encoding-type=url`, so keys with control characters survive the XML, and are handed
//! back exactly as stored.
//!
//! One page (at most 1,000 entries) is held in memory at a time; the next page is requested
//! only once the consumer has taken every entry of the current one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::signer::{Method, SignedUrlOptions, Signer};
use serde::Deserialize;

use crate::{Error, Result};

/// Entries asked for per page (the S3 maximum).
const PAGE_SIZE: &str = "1000";
/// How long each presigned page URL stays valid. A URL is signed per attempt, so this only
/// has to cover one request.
const URL_TTL: Duration = Duration::from_secs(15 * 60);
/// Upper bound for one page request, body included.
const PAGE_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest page body read. 1,000 keys of at most 1,024 bytes, URL-encoded, stay under
/// 4 MiB; anything past this is not a listing we can use, and reading on would let a
/// hostile or broken endpoint fill our memory.
pub const MAX_PAGE_BYTES: usize = 16 << 20;

/// One entry of a raw S3 listing: the key exactly as stored, relative to the `strip` prefix
/// given to [`RawLister::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    /// The key as stored, with the `strip` prefix removed. It may be any string S3 accepts,
    /// including ones that are not a valid [`crate::Key`].
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time (milliseconds precision in listings).
    pub last_modified: DateTime<Utc>,
    /// The ETag as the server sent it, quotes included; `None` when the server sends none
    /// (s3s-fs does not in listings).
    pub etag: Option<String>,
    /// Why this entry cannot be used as listed (its key is not UTF-8 once URL-decoded, its
    /// `LastModified` or `Size` is unreadable); `None` for a sound entry. The rest of the
    /// listing is unaffected: `migrate` and `verify` report such an entry as rejected and
    /// go on. When set, `key` may be a lossy rendering (U+FFFD for bad bytes),
    /// `last_modified` the Unix epoch and `size` 0.
    pub problem: Option<String>,
}

/// How often and how patiently a page request is retried.
#[derive(Debug, Clone, Copy)]
struct Retry {
    attempts: u32,
    backoff: crate::retry::Backoff,
}

/// Lists a bucket through presigned ListObjectsV2 requests, returning keys exactly as stored.
///
/// Unlike object_store's `list`, a key that is not a valid object_store `Path` (`../x`,
/// `a//b`, control characters) is returned like any other and does not end the listing.
/// Transient failures (5xx, `SlowDown`, connection errors, timeouts) are retried with capped
/// exponential backoff and jitter; entries already yielded are never repeated.
#[derive(Debug, Clone)]
pub struct RawLister {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    signer: Arc<dyn Signer>,
    http: reqwest::Client,
    endpoint_desc: String,
    bucket: String,
    retry: Retry,
    url_encoding: bool,
    ambient_credentials: bool,
    max_page_bytes: usize,
}

/// Leaves out the signer: object_store's `Debug` of it shows the access key id, and the
/// credential provider is no business of a log line.
impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawLister")
            .field("store", &self.endpoint_desc)
            .field("bucket", &self.bucket)
            .field("retry", &self.retry)
            .field("url_encoding", &self.url_encoding)
            .field("max_page_bytes", &self.max_page_bytes)
            .finish_non_exhaustive()
    }
}

impl RawLister {
    /// A lister that signs page URLs with `signer` (an `AmazonS3` configured for `bucket`)
    /// and fetches them with its own HTTP client. `endpoint_desc` names the store in error
    /// messages. An `Err` only when the HTTP client cannot be built.
    pub fn new(signer: Arc<dyn Signer>, endpoint_desc: String, bucket: String) -> Result<Self> {
        let http = crate::s3::client::http_client()?;
        Ok(RawLister {
            inner: Arc::new(Inner {
                signer,
                http,
                endpoint_desc,
                bucket,
                retry: Retry {
                    attempts: 8,
                    backoff: crate::retry::Backoff::DEFAULT,
                },
                url_encoding: true,
                ambient_credentials: false,
                max_page_bytes: MAX_PAGE_BYTES,
            }),
        })
    }

    /// Changes the retry policy: at most `attempts` tries per page (at least one), waiting
    /// `first_delay` after the first failure, doubling up to `max_delay`.
    /// The default is 8 attempts, 100 ms doubling to 5 s.
    pub fn with_retry(mut self, attempts: u32, first_delay: Duration, max_delay: Duration) -> Self {
        Arc::make_mut(&mut self.inner).retry = Retry {
            attempts: attempts.max(1),
            backoff: crate::retry::Backoff {
                first: first_delay,
                max: max_delay,
            },
        };
        self
    }

    /// Whether to ask for `encoding-type=url` (the default, and what AWS recommends: it is
    /// the only way keys with control characters survive the XML). Turn it off for servers
    /// that echo `<EncodingType>url</EncodingType>` without encoding the keys, such as
    /// s3s-fs 0.14.1: with it on, their `a+b` and `%2e` keys would be decoded wrongly.
    pub fn with_url_encoding(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.inner).url_encoding = on;
        self
    }

    /// Says that no static credentials were configured, so the signer looks for them in
    /// the environment of the machine (EC2 instance metadata, ...). When that fails, the
    /// error then says where to put credentials instead of naming a metadata endpoint.
    pub fn with_ambient_credentials(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.inner).ambient_credentials = on;
        self
    }

    /// Changes the largest page body read before the listing fails ([`MAX_PAGE_BYTES`] by
    /// default).
    pub fn with_max_page_bytes(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.inner).max_page_bytes = bytes;
        self
    }

    /// Streams every object whose full key starts with `prefix` (may be empty), in listing
    /// order, fetching 1,000 entries per page and following `NextContinuationToken`.
    ///
    /// `strip` is removed from the front of each returned key (a store's own key prefix);
    /// `prefix` should start with it. A listed key that does not start with `strip` ends the
    /// stream with [`Error::Backend`]. An entry whose key cannot be decoded or whose
    /// `LastModified` or `Size` cannot be read is yielded with [`ListedObject::problem`]
    /// set, and the listing goes on. After an `Err` the stream ends.
    ///
    /// Errors: [`Error::AccessDenied`] on 401/403, [`Error::NoSuchBucket`] on a missing
    /// bucket, [`Error::Unreachable`] when the endpoint could not be reached (refused, DNS,
    /// TLS, timeout) through every retry, [`Error::Backend`] for anything else, including
    /// other transient failures that outlasted the retries and a page body over
    /// [`MAX_PAGE_BYTES`].
    pub fn list(&self, prefix: &str, strip: &str) -> BoxStream<'static, Result<ListedObject>> {
        self.list_after(prefix, None, strip)
    }

    /// [`RawLister::list`] from the first full key after `start_after` (S3's `StartAfter`,
    /// itself not listed; `None`: from the start). A server that ignores `StartAfter`
    /// cannot make it list anything before it: such entries are dropped here.
    pub fn list_after(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        strip: &str,
    ) -> BoxStream<'static, Result<ListedObject>> {
        let state = PageState {
            inner: self.inner.clone(),
            prefix: prefix.to_owned(),
            strip: strip.to_owned(),
            start_after: start_after.map(str::to_owned),
            next: Some(None),
        };
        stream::try_unfold(state, |mut st| async move {
            // `next` is None once the last page has been fetched.
            let Some(token) = st.next.take() else {
                return Ok(None);
            };
            let page = st
                .inner
                .fetch_page(&st.prefix, token.as_deref(), st.start_after.as_deref())
                .await?;
            let url_encoded = st.inner.url_encoding && page.encoding_type.as_deref() == Some("url");
            let after = st
                .start_after
                .as_deref()
                .and_then(|a| a.strip_prefix(st.strip.as_str()));
            let entries: Vec<Result<ListedObject>> = page
                .contents
                .into_iter()
                .map(|c| st.inner.entry(c, url_encoded, &st.strip))
                .filter(|e| match (e, after) {
                    (Ok(o), Some(after)) => o.key.as_str() > after,
                    _ => true,
                })
                .collect();
            if page.is_truncated {
                match page.next_continuation_token {
                    Some(next) if Some(&next) != token.as_ref() && !next.is_empty() => {
                        st.next = Some(Some(next));
                    }
                    Some(_) => {
                        return Err(st.inner.backend(
                            "the server repeated the continuation token; stopping to avoid a loop",
                        ));
                    }
                    None => {
                        return Err(st
                            .inner
                            .backend("truncated listing page without NextContinuationToken"));
                    }
                }
            }
            Ok(Some((stream::iter(entries), st)))
        })
        .try_flatten()
        .boxed()
    }
}

/// How many top-level prefixes [`RawLister::list_parallel`] lists at once.
pub const LIST_FANOUT: usize = 16;
/// Entries buffered per prefix listed ahead of the one being consumed.
const FANOUT_BUFFER: usize = 1000;

enum Segment {
    Object(Result<ListedObject>),
    Prefix(String),
}

impl RawLister {
    /// Like [`RawLister::list`], in the same order, but when the level just below `prefix`
    /// holds several "directories" (`prefix/a/`, `prefix/b/`, ...) and fits in one page,
    /// lists up to [`LIST_FANOUT`] of them at once, each buffering up to 1,000
    /// entries ahead of the consumer.
    /// Costs one extra request; a flat or very wide level falls back to one sequential
    /// listing, and so does a level with a prefix that is not UTF-8 once decoded (listing
    /// under a mangled prefix would silently miss its objects; the sequential listing
    /// yields each of them with [`ListedObject::problem`] set). Used by `migrate` and
    /// `verify`, where listing time is waiting time.
    pub fn list_parallel(
        &self,
        prefix: &str,
        strip: &str,
    ) -> BoxStream<'static, Result<ListedObject>> {
        let this = self.clone();
        let (prefix, strip) = (prefix.to_owned(), strip.to_owned());
        stream::once(async move {
            let page = match this
                .inner
                .fetch_page_with(&prefix, None, Some("/"), None)
                .await
            {
                Ok(p) => p,
                Err(e) => return stream::iter([Err(e)]).boxed(),
            };
            if page.is_truncated || page.common_prefixes.len() < 2 {
                return this.list(&prefix, &strip);
            }
            let url_encoded =
                this.inner.url_encoding && page.encoding_type.as_deref() == Some("url");
            let mut prefixes = Vec::with_capacity(page.common_prefixes.len());
            for cp in page.common_prefixes {
                match url_encoded {
                    true => match url_decode(&cp.prefix) {
                        Some(p) => prefixes.push(p),
                        None => return this.list(&prefix, &strip),
                    },
                    false => prefixes.push(cp.prefix),
                }
            }
            // Objects at this level and the prefixes below it, in key order: every key
            // under `p/` sorts exactly where `p/` does among keys without a `/`.
            let mut segments: Vec<(String, Segment)> = Vec::new();
            for c in page.contents {
                // Sorted by the key the entry will carry (lossy for an undecodable one).
                let key = if url_encoded {
                    url_decode_lossy(&c.key)
                } else {
                    c.key.clone()
                };
                segments.push((
                    key,
                    Segment::Object(this.inner.entry(c, url_encoded, &strip)),
                ));
            }
            for p in prefixes {
                segments.push((p.clone(), Segment::Prefix(p)));
            }
            segments.sort_by(|a, b| a.0.cmp(&b.0));
            // A window of up to LIST_FANOUT prefixes listed ahead of the consumer, each
            // started the moment it enters the window (a `buffered` map would start the
            // next one only when the consumer asks for it: one listing at a time).
            let mut segments = segments.into_iter().map(|(_, seg)| seg);
            let mut window: VecDeque<BoxStream<'static, Result<ListedObject>>> =
                VecDeque::with_capacity(LIST_FANOUT);
            stream::poll_fn(move |_| {
                while window.len() < LIST_FANOUT {
                    let Some(seg) = segments.next() else { break };
                    window.push_back(match seg {
                        Segment::Object(o) => stream::iter([o]).boxed(),
                        Segment::Prefix(p) => this.list_ahead(&p, &strip),
                    });
                }
                Poll::Ready(window.pop_front())
            })
            .flatten()
            .boxed()
        })
        .flatten()
        .boxed()
    }

    /// [`RawLister::list`] of `prefix` on its own task from now on, buffering up to
    /// [`FANOUT_BUFFER`] entries until the returned stream takes them.
    fn list_ahead(&self, prefix: &str, strip: &str) -> BoxStream<'static, Result<ListedObject>> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(FANOUT_BUFFER);
        let mut entries = self.list(prefix, strip);
        tokio::spawn(async move {
            while let Some(e) = entries.next().await {
                let stop = e.is_err();
                if tx.send(e).await.is_err() || stop {
                    return;
                }
            }
        });
        stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }
}

struct PageState {
    inner: Arc<Inner>,
    prefix: String,
    strip: String,
    /// The full key the listing starts after.
    start_after: Option<String>,
    /// The continuation token of the next page to fetch: `Some(None)` for the first page,
    /// `None` when done.
    next: Option<Option<String>>,
}

/// Why one attempt at a page failed.
enum AttemptError {
    /// Worth trying again (5xx, throttling, a dropped body).
    Transient(String),
    /// The endpoint could not be reached (`cause`: "connection refused", ...); retried too.
    Unreachable {
        endpoint: String,
        cause: &'static str,
    },
    /// Retrying cannot help.
    Fatal(Error),
}

impl Inner {
    fn backend(&self, msg: impl AsRef<str>) -> Error {
        Error::backend_msg(self.endpoint_desc.clone(), msg)
    }

    /// A failed request or body read, without the presigned URL reqwest would print (it
    /// holds the access key id, the session token and the signature).
    fn http_failure(&self, what: &str, endpoint: &str, e: reqwest::Error) -> AttemptError {
        let e = e.without_url();
        match crate::error::network_cause(&e) {
            Some(cause) => AttemptError::Unreachable {
                endpoint: endpoint.to_owned(),
                cause,
            },
            None => AttemptError::Transient(format!("{what} {endpoint} failed: {e}")),
        }
    }

    async fn fetch_page(
        &self,
        prefix: &str,
        token: Option<&str>,
        start_after: Option<&str>,
    ) -> Result<ListBucketResult> {
        self.fetch_page_with(prefix, token, None, start_after).await
    }

    async fn fetch_page_with(
        &self,
        prefix: &str,
        token: Option<&str>,
        delimiter: Option<&str>,
        start_after: Option<&str>,
    ) -> Result<ListBucketResult> {
        let mut attempt = 1;
        loop {
            match self
                .fetch_page_once(prefix, token, delimiter, start_after)
                .await
            {
                Ok(page) => return Ok(page),
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Transient(msg)) if attempt >= self.retry.attempts => {
                    return Err(self.backend(format!(
                        "listing s3://{}/{prefix} failed after {attempt} attempts: {msg}",
                        self.bucket
                    )));
                }
                Err(AttemptError::Unreachable { endpoint, cause })
                    if attempt >= self.retry.attempts =>
                {
                    return Err(Error::Unreachable {
                        store: self.endpoint_desc.clone(),
                        endpoint,
                        cause: cause.to_owned(),
                        detail: format!("; gave up listing after {attempt} attempts"),
                    });
                }
                Err(AttemptError::Transient(_) | AttemptError::Unreachable { .. }) => {
                    self.retry.backoff.sleep(attempt).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn fetch_page_once(
        &self,
        prefix: &str,
        token: Option<&str>,
        delimiter: Option<&str>,
        start_after: Option<&str>,
    ) -> Result<ListBucketResult, AttemptError> {
        let mut query = vec![
            ("list-type", "2"),
            ("prefix", prefix),
            ("max-keys", PAGE_SIZE),
        ];
        if let Some(d) = delimiter {
            query.push(("delimiter", d));
        }
        if self.url_encoding {
            query.push(("encoding-type", "url"));
        }
        match (token, start_after) {
            (Some(token), _) => query.push(("continuation-token", token)),
            (None, Some(after)) => query.push(("start-after", after)),
            (None, None) => {}
        }
        let url = self
            .signer
            .signed_url_opts(
                Method::GET,
                &Path::ROOT,
                URL_TTL,
                &SignedUrlOptions::new().with_query(query),
            )
            .await
            .map_err(|e| {
                // Signing fails before any request only when ambient credentials were
                // asked for and the machine had none: say where stowage looked, not the
                // instance-metadata client's trace.
                AttemptError::Fatal(if self.ambient_credentials {
                    Error::NoCredentials {
                        store: self.endpoint_desc.clone(),
                    }
                } else {
                    Error::backend(self.endpoint_desc.clone(), &e)
                })
            })?;

        let endpoint = crate::error::endpoint_of(&url);
        let mut resp = self
            .http
            .get(url)
            .timeout(PAGE_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.http_failure("request to", &endpoint, e))?;
        let status = resp.status();
        let too_big = || {
            AttemptError::Fatal(self.backend(format!(
                "the ListObjectsV2 response from {endpoint} for s3://{}/{prefix} is larger than {} MiB, far more than a page of 1,000 keys: not read (is the endpoint an S3 server?)",
                self.bucket,
                self.max_page_bytes >> 20
            )))
        };
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_page_bytes as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| self.http_failure("reading the response from", &endpoint, e))?
        {
            if body.len() + chunk.len() > self.max_page_bytes {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&body);

        if status.is_success() {
            return quick_xml::de::from_str::<ListBucketResult>(&text).map_err(|e| {
                AttemptError::Fatal(self.backend(format!("unreadable ListObjectsV2 response: {e}")))
            });
        }

        let err = quick_xml::de::from_str::<S3Error>(&text).unwrap_or_default();
        let code = err.code.unwrap_or_default();
        let detail = crate::error::redact(&match (&code, err.message) {
            (c, Some(m)) if !c.is_empty() => format!("{status} {c}: {m}"),
            (c, None) if !c.is_empty() => format!("{status} {c}"),
            _ => format!("{status}: {}", text.chars().take(200).collect::<String>()),
        });
        Err(match status.as_u16() {
            500..=599 | 429 => AttemptError::Transient(detail),
            _ if code == "SlowDown" || code == "RequestTimeout" => AttemptError::Transient(detail),
            401 | 403 => AttemptError::Fatal(Error::AccessDenied {
                store: self.endpoint_desc.clone(),
                detail,
            }),
            404 if code == "NoSuchBucket" => AttemptError::Fatal(Error::NoSuchBucket {
                bucket: self.bucket.clone(),
                endpoint: self.endpoint_desc.clone(),
            }),
            _ => AttemptError::Fatal(self.backend(format!("listing failed: {detail}"))),
        })
    }

    /// One listed entry (see [`entry`]), the prefix error as [`Error::Backend`].
    fn entry(&self, c: Contents, url_encoded: bool, strip: &str) -> Result<ListedObject> {
        entry(c, url_encoded, strip).map_err(|msg| self.backend(msg))
    }
}

/// One listed entry. What is wrong with the entry alone becomes its `problem`; only a
/// key outside the store prefix, which means the server ignored our `prefix`, is an
/// error.
fn entry(c: Contents, url_encoded: bool, strip: &str) -> std::result::Result<ListedObject, String> {
    let mut problems = Vec::new();
    let key = match url_encoded {
        true => url_decode(&c.key).unwrap_or_else(|| {
            problems.push(format!(
                "the key is not UTF-8 once URL-decoded (listed as {:?})",
                c.key
            ));
            url_decode_lossy(&c.key)
        }),
        false => c.key,
    };
    let rel = match key.strip_prefix(strip) {
        Some(rel) => rel,
        // A lossy key may have lost the prefix's bytes; the problem is reported anyway.
        None if !problems.is_empty() => key.as_str(),
        None => {
            return Err(format!(
                "listed key {key:?} does not start with the store prefix {strip:?}"
            ))
        }
    };
    let last_modified = parse_time(&c.last_modified).unwrap_or_else(|| {
        problems.push(format!("unreadable LastModified {:?}", c.last_modified));
        DateTime::UNIX_EPOCH
    });
    let size = c.size.trim().parse::<u64>().unwrap_or_else(|_| {
        problems.push(format!("unreadable Size {:?}", c.size));
        0
    });
    Ok(ListedObject {
        key: rel.to_owned(),
        size,
        last_modified,
        // Some servers send an empty <ETag/>: that is no ETag.
        etag: c.etag.filter(|e| !e.trim_matches('"').is_empty()),
        problem: (!problems.is_empty()).then(|| problems.join("; ")),
    })
}

/// Decodes a key sent with `encoding-type=url`. AWS encodes like an HTML form (space as
/// `+`, `+` as `%2B`); servers that send `%20` for a space decode the same way.
fn url_decode(s: &str) -> Option<String> {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8()
        .ok()
        .map(|k| k.into_owned())
}

/// [`url_decode`] for a key that is not UTF-8: bad bytes become U+FFFD, for reports only.
fn url_decode_lossy(s: &str) -> String {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8_lossy()
        .into_owned()
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| s.parse::<DateTime<Utc>>())
        .ok()
}

/// The parts of a ListObjectsV2 response we use; other elements are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_continuation_token: Option<String>,
    #[serde(default)]
    encoding_type: Option<String>,
    #[serde(default)]
    contents: Vec<Contents>,
    #[serde(default)]
    common_prefixes: Vec<CommonPrefix>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CommonPrefix {
    prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
    last_modified: String,
    #[serde(rename = "ETag", default)]
    etag: Option<String>,
    /// Read as text so one bad value makes one bad entry, not an unreadable page.
    #[serde(default)]
    size: String,
}

/// An S3 error body: `<Error><Code>…</Code><Message>…</Message></Error>`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct S3Error {
    code: Option<String>,
    message: Option<String>,
}

/// The page parsing of [`RawLister`], for the fuzz targets in `fuzz/`: not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// One ListObjectsV2 page body as [`super::RawLister::list`] reads it.
    #[derive(Debug)]
    pub struct Page {
        /// Each `<Contents>` entry, or why it ends the listing.
        pub entries: Vec<Result<super::ListedObject, String>>,
        /// `<CommonPrefixes>`, decoded (`None`: not UTF-8 once decoded).
        pub prefixes: Vec<Option<String>>,
        /// `<IsTruncated>`.
        pub truncated: bool,
        /// `<NextContinuationToken>`.
        pub next_token: Option<String>,
    }

    /// Parses `body` as a page listed with `encoding-type=url` requested when
    /// `url_encoding`, with `strip` removed from each key; `Err` for an unreadable page.
    pub fn parse_page(body: &[u8], url_encoding: bool, strip: &str) -> Result<Page, String> {
        let text = String::from_utf8_lossy(body);
        let page = quick_xml::de::from_str::<super::ListBucketResult>(&text)
            .map_err(|e| format!("unreadable ListObjectsV2 response: {e}"))?;
        let url_encoded = url_encoding && page.encoding_type.as_deref() == Some("url");
        Ok(Page {
            entries: page
                .contents
                .into_iter()
                .map(|c| super::entry(c, url_encoded, strip))
                .collect(),
            prefixes: page
                .common_prefixes
                .into_iter()
                .map(|p| match url_encoded {
                    true => super::url_decode(&p.prefix),
                    false => Some(p.prefix),
                })
                .collect(),
            truncated: page.is_truncated,
            next_token: page.next_continuation_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_parses_with_encoded_keys_and_quoted_etags() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>b</Name><Prefix></Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>
  <EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
  <Contents><Key>..%2Fescape.txt</Key><LastModified>2024-05-01T10:20:30.123Z</LastModified>
    <ETag>&quot;abc&quot;</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass></Contents>
  <Contents><Key>a%01b+c%2B</Key><LastModified>2024-05-01T10:20:30Z</LastModified><Size>0</Size></Contents>
  <NextContinuationToken>tok</NextContinuationToken>
</ListBucketResult>"#;
        let page: ListBucketResult = quick_xml::de::from_str(xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_continuation_token.as_deref(), Some("tok"));
        assert_eq!(page.contents.len(), 2);
        assert_eq!(page.contents[0].etag.as_deref(), Some("\"abc\""));
        assert_eq!(page.contents[1].etag, None);
        assert_eq!(
            parse_time(&page.contents[0].last_modified)
                .unwrap()
                .timestamp_millis()
                % 1000,
            123
        );
    }

    #[test]
    fn url_encoded_keys_decode_plus_as_space() {
        assert_eq!(url_decode("a%01b+c%2B%25").as_deref(), Some("a\u{1}b c+%"));
        assert_eq!(
            url_decode("sp%20ace/%C3%BC").as_deref(),
            Some("sp ace/\u{fc}")
        );
        assert_eq!(url_decode("%FF"), None);
    }

    use proptest::prelude::*;

    fn page_body() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just("<ListBucketResult>".to_owned()),
            Just("</ListBucketResult>".to_owned()),
            Just("<Contents>".to_owned()),
            Just("</Contents>".to_owned()),
            Just("<Key>".to_owned()),
            Just("</Key>".to_owned()),
            Just("<LastModified>2024-05-01T10:20:30Z</LastModified>".to_owned()),
            Just("<Size>".to_owned()),
            Just("</Size>".to_owned()),
            Just("<EncodingType>url</EncodingType>".to_owned()),
            Just("<IsTruncated>true</IsTruncated>".to_owned()),
            Just("<CommonPrefixes><Prefix>".to_owned()),
            Just("</Prefix></CommonPrefixes>".to_owned()),
            Just("&lt;&#x1;&amp;".to_owned()),
            "[a-z%0-9+/.]{0,8}",
            "\\PC{0,8}",
        ];
        prop_oneof![
            proptest::collection::vec(piece, 0..24).prop_map(|p| p.concat().into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..200),
        ]
    }

    proptest! {
        /// Any body: an answer, never a panic, and no entry, key or prefix that the body
        /// does not contain (lossy UTF-8 may triple a byte; no decoding lengthens text).
        #[test]
        fn any_page_body_parses_to_bounded_output(body in page_body(), url in any::<bool>()) {
            if let Ok(page) = fuzzing::parse_page(&body, url, "") {
                prop_assert!(page.entries.len() + page.prefixes.len() <= body.len() / 10);
                let mut total = page.next_token.as_ref().map_or(0, String::len);
                for e in &page.entries {
                    let o = e.as_ref().unwrap();
                    total += o.key.len() + o.etag.as_ref().map_or(0, String::len);
                }
                total += page.prefixes.iter().flatten().map(String::len).sum::<usize>();
                prop_assert!(total <= 3 * body.len());
            }
        }
    }
}
