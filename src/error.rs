//! The one public error type.
//!
//! Every fallible library call returns [`Result`]. Variants are semantic so callers
//! match on *what* went wrong (`NotFound`, `InvalidKey`, `NoSpace`, ...) rather than on
//! message text, and each message says what to do next.

use std::path::PathBuf;

use crate::key::KeyError;

/// The result type of every fallible stowage call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in stowage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object does not exist.
    #[error("object not found: {key}")]
    NotFound {
        /// The key that was looked up.
        key: String,
    },

    /// A string is not a safe object key.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The rejected key, as given.
        key: String,
        /// The rule it broke.
        reason: KeyError,
    },

    /// A configuration value is missing or malformed.
    #[error("{name}: {reason}")]
    Config {
        /// The setting (environment variable or option) at fault.
        name: String,
        /// What is wrong and what is expected instead.
        reason: String,
    },

    /// No credentials were configured and none could be found anywhere stowage looks.
    #[error("no credentials for {store}: none in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), none in the shared credentials file (~/.aws/credentials, or AWS_SHARED_CREDENTIALS_FILE, profile AWS_PROFILE else default), and the machine's instance metadata service offered none. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), or write them to ~/.aws/credentials")]
    NoCredentials {
        /// The store that needed them.
        store: String,
    },

    /// The store refused our credentials (HTTP 401/403).
    #[error("access denied by {store}: {detail}. Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials under AWS_PROFILE) and the bucket policy")]
    AccessDenied {
        /// Which store answered.
        store: String,
        /// What the server said.
        detail: String,
    },

    /// The bucket named in the configuration does not exist.
    #[error("bucket {bucket:?} does not exist at {endpoint}. Check the bucket name (S3_BUCKET_NAME) and the endpoint")]
    NoSuchBucket {
        /// The bucket name.
        bucket: String,
        /// The endpoint that was asked.
        endpoint: String,
    },

    /// Not enough free space at the destination.
    #[error("not enough space in {path}: need {needed} bytes, {available} available{hint}", path = path.display())]
    NoSpace {
        /// The destination directory.
        path: PathBuf,
        /// Bytes the operation needs.
        needed: u64,
        /// Bytes it may use.
        available: u64,
        /// A suffix saying where the limit came from.
        hint: String,
    },

    /// The content read does not match what the store promised (size or checksum).
    #[error("integrity check failed for {key}: {detail}")]
    Integrity {
        /// The object.
        key: String,
        /// Expected and actual.
        detail: String,
    },

    /// Another process holds a lock this operation needs.
    #[error("{path} is locked by another stowage run", path = path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// The operation was interrupted (Ctrl-C, SIGTERM).
    #[error("interrupted")]
    Interrupted,

    /// A local filesystem operation failed.
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        /// What we were doing ("create", "rename", ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The store could not be reached at all: connection refused, DNS failure, TLS failure
    /// or timeout.
    #[error("{store}: cannot reach {endpoint} ({cause}{detail}). Check the endpoint (AWS_ENDPOINT_URL), the network, and that the server is running")]
    Unreachable {
        /// Which store.
        store: String,
        /// `scheme://host:port` that was asked, never a path or query.
        endpoint: String,
        /// What went wrong, in a few words ("connection refused", "timeout", ...).
        cause: String,
        /// Context such as "; gave up listing after 8 attempts", may be empty.
        detail: String,
    },

    /// An error from the object-store backend (S3 or memory). Its text has gone through
    /// the redaction every backend error goes through: no URL query, signature or token.
    #[error("{store}: {source}")]
    Backend {
        /// Which store.
        store: String,
        /// The backend error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            name: name.into(),
            reason: reason.into(),
        }
    }

    /// True when the error is a full disk or exhausted quota (ENOSPC, EDQUOT).
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::NoSpace { .. } => true,
            Error::Io { source, .. } => is_enospc(source),
            _ => false,
        }
    }
}

pub(crate) fn is_enospc(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error() == Some(Errno::NOSPC.raw_os_error())
        || e.raw_os_error() == Some(Errno::DQUOT.raw_os_error())
}

/// A backend error reduced to its redacted text: what stowage keeps of an error from S3,
/// object_store or the HTTP client, so neither `Display` nor `Debug` can show a presigned
/// URL, a session token or a signature that the original carried.
#[derive(Debug)]
struct Redacted(String);

impl std::fmt::Display for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Redacted {}

impl Error {
    /// [`Error::Backend`] from any backend error: the one door through which an error of
    /// S3, object_store or reqwest becomes ours. Keeps the text of `source` (and, when it
    /// names one, the network cause) after [`redact`].
    pub(crate) fn backend(
        store: impl Into<String>,
        source: &(dyn std::error::Error + 'static),
    ) -> Self {
        let mut text = source.to_string();
        if let Some(cause) = network_cause(source) {
            if !text.contains(cause) {
                text = format!("{text} ({cause})");
            }
        }
        Error::backend_msg(store, text)
    }

    /// [`Error::Backend`] from a message, redacted like [`Error::backend`].
    pub(crate) fn backend_msg(store: impl Into<String>, msg: impl AsRef<str>) -> Self {
        Error::Backend {
            store: store.into(),
            source: Box::new(Redacted(redact(msg.as_ref()))),
        }
    }
}

/// Query parameters that carry credentials or prove them, wherever they appear.
const SECRET_PARAMS: [&str; 5] = [
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "signature",
    "awsaccesskeyid",
];

/// Removes from `text` what must never reach a terminal, a log or `--json`: the query
/// (and fragment, and user:password) of every URL, and any signing parameter
/// (`X-Amz-Signature=…`, `X-Amz-Credential=…`, `X-Amz-Security-Token=…`) found outside one.
/// `http://h:1/b/?list-type=2&X-Amz-Signature=ab` becomes `http://h:1/b/`.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: the letters, digits, `+`, `-`, `.` just before `://`.
        let scheme_len = rest[..at]
            .bytes()
            .rev()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            .count();
        out.push_str(&rest[..at - scheme_len]);
        let url_start = at - scheme_len;
        let url_len = rest[url_start..]
            .find(|c: char| {
                c.is_whitespace() || matches!(c, ')' | '"' | '\'' | '<' | '>' | '`' | ',' | ']')
            })
            .unwrap_or(rest.len() - url_start);
        out.push_str(&redact_url(&rest[url_start..url_start + url_len]));
        rest = &rest[url_start + url_len..];
    }
    out.push_str(rest);
    strip_secret_params(&out)
}

/// One URL without user info, query or fragment.
fn redact_url(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Replaces `name=value` of every [`SECRET_PARAMS`] name (any case) with `<redacted>`.
fn strip_secret_params(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let hit = SECRET_PARAMS.iter().find(|p| {
            lower[i..].starts_with(*p)
                && lower[i + p.len()..].starts_with('=')
                && !lower[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
        });
        match hit {
            Some(p) => {
                let value_end = text[i + p.len() + 1..]
                    .find(|c: char| c == '&' || c.is_whitespace() || matches!(c, ')' | '"' | '\''))
                    .map_or(text.len(), |e| i + p.len() + 1 + e);
                out.push_str("<redacted>");
                i = value_end;
            }
            None => {
                let c = text[i..].chars().next().expect("i is on a char boundary");
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// The network failure behind `e`, in a few words, when its source chain shows one:
/// "connection refused", "DNS failure", "TLS failure", "timeout", "connection reset", or
/// "connection failed" for another failure to connect.
pub(crate) fn network_cause(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut found = None;
    // While connecting, rustls reports a failed handshake as InvalidData.
    let (mut connecting, mut invalid_data) = (false, false);
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            invalid_data |= io.kind() == std::io::ErrorKind::InvalidData;
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return Some("connection refused"),
                std::io::ErrorKind::TimedOut => return Some("timeout"),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                    found = found.or(Some("connection reset"))
                }
                _ => {}
            }
        }
        if let Some(r) = err.downcast_ref::<reqwest::Error>() {
            if r.is_timeout() {
                return Some("timeout");
            }
            connecting |= r.is_connect();
        }
        // hyper-util and rustls name these only in text; the source chain carries no type
        // we could match without depending on them.
        let text = err.to_string().to_ascii_lowercase();
        if text.contains("dns error") || text.contains("failed to lookup address") {
            return Some("DNS failure");
        }
        connecting |= text.contains("client error (connect)");
        if ["certificate", "tls", "handshake", "corrupt message"]
            .iter()
            .any(|t| text.contains(t))
        {
            found = found.or(Some("TLS failure"));
        }
        if text.contains("timed out") || text.contains("timeout") {
            found = found.or(Some("timeout"));
        }
        next = err.source();
    }
    match found {
        Some(cause) => Some(cause),
        None if connecting && invalid_data => Some("TLS failure"),
        None if connecting => Some("connection failed"),
        None => None,
    }
}

/// `scheme://host:port` of `url` (the port spelled out even when it is the default), for
/// naming an endpoint without its path or query.
pub(crate) fn endpoint_of(url: &url::Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
        (Some(host), None) => format!("{}://{host}", url.scheme()),
        _ => url.scheme().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNED: &str = "error sending request for url (http://127.0.0.1:1/b/?list-type=2&prefix=&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAXXXX%2F20261127%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Security-Token=TOKEN123&X-Amz-Signature=747692)";

    #[test]
    fn redact_strips_the_query_of_a_signed_url_and_keeps_scheme_host_port_path() {
        assert_eq!(
            redact(SIGNED),
            "error sending request for url (http://127.0.0.1:1/b/)"
        );
    }

    #[test]
    fn redact_strips_every_url_user_info_and_fragment() {
        assert_eq!(
            redact("GET https://u:pw@s3.example.com/k?a=1#f then http://x/y?z failed"),
            "GET https://s3.example.com/k then http://x/y failed"
        );
        assert_eq!(
            redact("at s3://bucket/key?versionId=3."),
            "at s3://bucket/key"
        );
    }

    #[test]
    fn redact_removes_signing_parameters_outside_urls() {
        let r = redact("query: list-type=2&X-Amz-Signature=abc&x-amz-security-token=TOK&X-Amz-Credential=AK%2Fx done");
        assert_eq!(
            r,
            "query: list-type=2&<redacted>&<redacted>&<redacted> done"
        );
        for secret in ["abc", "TOK", "AK%2Fx"] {
            assert!(!r.contains(secret), "{r}");
        }
    }

    #[test]
    fn redact_leaves_plain_text_alone() {
        for t in [
            "503 SlowDown: Please reduce your request rate",
            "listed key \"a?b\" is odd",
            "naïve 日本 text with a ? mark",
            "",
        ] {
            assert_eq!(redact(t), t);
        }
    }

    #[test]
    fn backend_errors_keep_no_secret_in_display_or_debug() {
        let io = std::io::Error::other(SIGNED);
        let e = Error::backend("s3://b/", &io);
        for text in [e.to_string(), format!("{e:?}")] {
            for secret in ["AKIAXXXX", "TOKEN123", "747692", "X-Amz-", "list-type"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
    }

    #[test]
    fn network_causes_are_named_from_the_source_chain() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(network_cause(&refused), Some("connection refused"));
        let wrapped = Error::io(
            "connect",
            "/x",
            std::io::Error::from(std::io::ErrorKind::TimedOut),
        );
        assert_eq!(network_cause(&wrapped), Some("timeout"));
        let dns = std::io::Error::other("dns error: failed to lookup address information");
        assert_eq!(network_cause(&dns), Some("DNS failure"));
        let tls = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        assert_eq!(network_cause(&tls), Some("TLS failure"));
        // rustls, when an https endpoint answers in plain HTTP.
        let tls = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received corrupt message of type InvalidContentType",
        ));
        assert_eq!(network_cause(&tls), Some("TLS failure"));
        assert_eq!(network_cause(&std::io::Error::other("boom")), None);
    }

    #[test]
    fn endpoints_are_scheme_host_port_only() {
        let u = url::Url::parse("http://127.0.0.1:1/b/?X-Amz-Signature=x").unwrap();
        assert_eq!(endpoint_of(&u), "http://127.0.0.1:1");
        let u = url::Url::parse("https://s3.eu-west-1.amazonaws.com/b").unwrap();
        assert_eq!(endpoint_of(&u), "https://s3.eu-west-1.amazonaws.com:443");
    }
}
