//! `StoreConfig`: choosing and configuring a backend from the environment or a URL.
//!
//! The clip service already configures storage through environment variables
//! (`STORAGE_TYPE`, `LOCAL_STORAGE_PATH`, `BASE_URL`, `S3_BUCKET_NAME`, ...); this module
//! reads exactly those, plus the standard AWS ones and `~/.aws/credentials`, so switching
//! backends is a configuration change.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::{BlobStore, LocalUrls};

/// Default root of a local store (where the clip service keeps its files).
pub const DEFAULT_LOCAL_PATH: &str = "/opt/meme-maker/storage";
/// Default lifetime of presigned S3 URLs.
pub const DEFAULT_PRESIGN_TTL: Duration = Duration::from_secs(3600);

/// Which backend to open, and how.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StoreConfig {
    /// A directory on local disk.
    Local(LocalConfig),
    /// An S3 or S3-compatible bucket.
    S3(S3Config),
    /// In process memory.
    Memory,
}

/// Settings of a local store.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LocalConfig {
    /// Absolute root directory (`LOCAL_STORAGE_PATH`).
    pub root: PathBuf,
    /// How download URLs are formed (`BASE_URL`, `FILES_PATH`).
    #[serde(default)]
    pub urls: LocalUrls,
}

/// Settings of an S3 store.
#[derive(Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct S3Config {
    /// Bucket name (`S3_BUCKET_NAME`).
    pub bucket: String,
    /// Key prefix inside the bucket (`S3_PREFIX`), may be empty.
    #[serde(default)]
    pub prefix: String,
    /// Region (`S3_REGION`, `AWS_REGION`, `AWS_DEFAULT_REGION`; default `us-east-1`).
    pub region: String,
    /// Endpoint of an S3-compatible server (`AWS_ENDPOINT_URL`); `None` for AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Access key id (`AWS_ACCESS_KEY_ID` or `~/.aws/credentials`).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key.
    #[serde(default, skip_serializing)]
    pub secret_access_key: Option<String>,
    /// Session token for temporary credentials.
    #[serde(default, skip_serializing)]
    pub session_token: Option<String>,
    /// Public base URL (a CDN) used for download URLs instead of presigning.
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// Lifetime of presigned download URLs.
    #[serde(default = "default_ttl", with = "humantime_serde_compat")]
    pub presign_ttl: Duration,
    /// Ask for URL-encoded keys in listings (`encoding-type=url`), so keys with control
    /// characters survive the XML. On by default; turn off (`S3_URL_ENCODED_LISTING=false`)
    /// for servers that claim the encoding without applying it (s3s-fs 0.14).
    #[serde(default = "yes")]
    pub url_encoded_listing: bool,
}

fn yes() -> bool {
    true
}

fn default_ttl() -> Duration {
    DEFAULT_PRESIGN_TTL
}

pub(crate) mod humantime_serde_compat {
    use std::time::Duration;
    pub(crate) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field(
                "access_key_id",
                &self.access_key_id.as_deref().map(masked_key_id),
            )
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("public_base_url", &self.public_base_url)
            .field("presign_ttl", &self.presign_ttl)
            .field("url_encoded_listing", &self.url_encoded_listing)
            .finish()
    }
}

/// An access key id as `aws configure list` shows it: only its last four characters. Not a
/// secret on its own, but it names the account and need not sit in every log.
fn masked_key_id(id: &str) -> String {
    let tail: String = id
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("****{tail}")
}

impl S3Config {
    /// An S3 config for `bucket` with everything else from the environment
    /// (region, endpoint, credentials). Used by the CLI, whose flags override the rest.
    pub fn from_env_for_bucket(bucket: &str) -> Result<S3Config> {
        S3Config::from_vars(&Vars::process(), bucket.to_owned())
    }

    fn from_vars(v: &Vars, bucket: String) -> Result<S3Config> {
        if bucket.is_empty() {
            return Err(Error::config(
                "S3_BUCKET_NAME",
                "is not set; name the bucket to use (S3_BUCKET_NAME=my-bucket)",
            ));
        }
        let region = v
            .get("S3_REGION")
            .or_else(|| v.get("AWS_REGION"))
            .or_else(|| v.get("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_owned());
        // Name the variable the value came from, so the error points at the right one.
        let endpoint_var = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .into_iter()
            .find(|name| v.get(name).is_some())
            .unwrap_or("AWS_ENDPOINT_URL");
        let endpoint = v.get(endpoint_var);
        if let Some(e) = &endpoint {
            url::Url::parse(e).map_err(|err| {
                Error::config(
                    endpoint_var,
                    format!("{e:?} is not a URL ({err}); expected e.g. http://127.0.0.1:9000"),
                )
            })?;
        }
        let public_base_url = v.get("S3_PUBLIC_BASE_URL");
        if let Some(b) = &public_base_url {
            if !url::Url::parse(b).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                return Err(Error::config(
                    "S3_PUBLIC_BASE_URL",
                    format!("{b:?}: expected an http:// or https:// URL such as https://cdn.example.com/clips"),
                ));
            }
        }
        let (mut access_key_id, mut secret_access_key, mut session_token) = (
            v.get("AWS_ACCESS_KEY_ID"),
            v.get("AWS_SECRET_ACCESS_KEY"),
            v.get("AWS_SESSION_TOKEN"),
        );
        if access_key_id.is_none() && secret_access_key.is_none() {
            if let Some(c) = profile_credentials(v)? {
                (access_key_id, secret_access_key, session_token) = (Some(c.0), Some(c.1), c.2);
            }
        }
        if access_key_id.is_some() != secret_access_key.is_some() {
            let missing = if access_key_id.is_none() {
                "AWS_ACCESS_KEY_ID"
            } else {
                "AWS_SECRET_ACCESS_KEY"
            };
            return Err(Error::config(
                missing,
                "is not set while its pair is; set both, or neither to use ~/.aws/credentials",
            ));
        }
        let presign_ttl = match v.get("S3_PRESIGN_TTL") {
            Some(s) => humantime::parse_duration(&s).map_err(|e| {
                Error::config(
                    "S3_PRESIGN_TTL",
                    format!("{s:?}: {e}; expected a duration like 1h or 15m"),
                )
            })?,
            None => DEFAULT_PRESIGN_TTL,
        };
        Ok(S3Config {
            bucket,
            prefix: v.get("S3_PREFIX").unwrap_or_default(),
            region,
            endpoint,
            access_key_id,
            secret_access_key,
            session_token,
            public_base_url,
            presign_ttl,
            url_encoded_listing: match v.get("S3_URL_ENCODED_LISTING").as_deref() {
                None | Some("true" | "1" | "yes") => true,
                Some("false" | "0" | "no") => false,
                Some(other) => {
                    return Err(Error::config(
                        "S3_URL_ENCODED_LISTING",
                        format!("{other:?}: expected true or false"),
                    ))
                }
            },
        })
    }
}

impl StoreConfig {
    /// Reads the configuration from the process environment:
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `STORAGE_TYPE` | `local` or `s3` | `local` |
    /// | `LOCAL_STORAGE_PATH` | absolute root of a local store | `/opt/meme-maker/storage` |
    /// | `BASE_URL` | origin of local download URLs | `http://localhost:8000` |
    /// | `FILES_PATH` | path the files are served under | `/api/files` |
    /// | `STORAGE_URL_SECRET` | signing secret for local download URLs (≥ 16 bytes) | unsigned URLs |
    /// | `STORAGE_URL_TTL` | lifetime of signed local URLs | `1h` |
    /// | `S3_BUCKET_NAME` | bucket (required for s3) | |
    /// | `S3_REGION` / `AWS_REGION` / `AWS_DEFAULT_REGION` | region | `us-east-1` |
    /// | `S3_PREFIX` | key prefix inside the bucket | none |
    /// | `AWS_ENDPOINT_URL` | S3-compatible endpoint | AWS |
    /// | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` | credentials | `~/.aws/credentials` \[`AWS_PROFILE`\] |
    /// | `S3_PUBLIC_BASE_URL` | CDN base for download URLs instead of presigning | none |
    /// | `S3_PRESIGN_TTL` | lifetime of presigned URLs | `1h` |
    /// | `S3_URL_ENCODED_LISTING` | ask for URL-encoded keys in listings | `true` |
    ///
    /// ```no_run
    /// // STORAGE_TYPE=local LOCAL_STORAGE_PATH=/srv/clips, or STORAGE_TYPE=s3 S3_BUCKET_NAME=...
    /// let store = stowage::StoreConfig::from_env()?.open()?;
    /// println!("serving {}", store.describe());
    /// # Ok::<(), stowage::Error>(())
    /// ```
    pub fn from_env() -> Result<StoreConfig> {
        StoreConfig::from_vars(&Vars::process())
    }

    /// Like [`StoreConfig::from_env`], reading variables from `vars` instead of the process
    /// environment (a missing name counts as unset).
    pub fn from_env_map(vars: &HashMap<String, String>) -> Result<StoreConfig> {
        StoreConfig::from_vars(&Vars::Map(vars.clone()))
    }

    fn from_vars(v: &Vars) -> Result<StoreConfig> {
        let kind = v.get("STORAGE_TYPE").unwrap_or_else(|| "local".to_owned());
        match kind.to_ascii_lowercase().as_str() {
            "local" => {
                let root = PathBuf::from(
                    v.get("LOCAL_STORAGE_PATH")
                        .unwrap_or_else(|| DEFAULT_LOCAL_PATH.to_owned()),
                );
                if !root.is_absolute() {
                    return Err(Error::config(
                        "LOCAL_STORAGE_PATH",
                        format!("{:?} is relative; expected an absolute directory such as {DEFAULT_LOCAL_PATH}", root),
                    ));
                }
                let urls = LocalUrls::from_vars(v)?;
                Ok(StoreConfig::Local(LocalConfig { root, urls }))
            }
            "s3" => {
                let bucket = v.get("S3_BUCKET_NAME").unwrap_or_default();
                Ok(StoreConfig::S3(S3Config::from_vars(v, bucket)?))
            }
            "memory" => Ok(StoreConfig::Memory),
            other => Err(Error::config(
                "STORAGE_TYPE",
                format!("unknown storage type {other:?}; expected \"local\" or \"s3\""),
            )),
        }
    }

    /// Parses `s3://bucket/prefix`, `file:///absolute/path` or `memory://`. For S3, region,
    /// endpoint and credentials come from the environment.
    ///
    /// ```
    /// use stowage::{BackendKind, StoreConfig};
    ///
    /// let dir = std::env::temp_dir().join("stowage-from-url-doc");
    /// std::fs::create_dir_all(&dir).unwrap(); // open() refuses a missing root
    /// let store = StoreConfig::from_url(&format!("file://{}", dir.display()))?.open()?;
    /// assert_eq!(store.kind(), BackendKind::Local);
    /// assert_eq!(StoreConfig::from_url("memory://")?, StoreConfig::Memory);
    /// assert!(StoreConfig::from_url("ftp://example.com/").is_err());
    /// # Ok::<(), stowage::Error>(())
    /// ```
    pub fn from_url(s: &str) -> Result<StoreConfig> {
        let u = url::Url::parse(s).map_err(|e| {
            Error::config("store URL", format!("{s:?} is not a URL ({e}); expected s3://bucket/prefix, file:///path or memory://"))
        })?;
        match u.scheme() {
            "s3" => {
                let bucket = u.host_str().unwrap_or_default().to_owned();
                let mut c = S3Config::from_vars(&Vars::process(), bucket)?;
                c.prefix = u.path().trim_matches('/').to_owned();
                Ok(StoreConfig::S3(c))
            }
            "file" => {
                let root = u.to_file_path().map_err(|()| {
                    Error::config(
                        "store URL",
                        format!("{s:?}: expected file:///absolute/path"),
                    )
                })?;
                // URLs and their signing come from the environment, as with from_env.
                let urls = LocalUrls::from_vars(&Vars::process())?;
                Ok(StoreConfig::Local(LocalConfig { root, urls }))
            }
            "memory" => Ok(StoreConfig::Memory),
            other => Err(Error::config(
                "store URL",
                format!("unknown scheme {other:?} in {s:?}; expected s3://, file:// or memory://"),
            )),
        }
    }

    /// Opens the store this configuration describes.
    pub fn open(&self) -> Result<BlobStore> {
        match self {
            StoreConfig::Local(l) => {
                if !l.root.exists() {
                    return Err(Error::config(
                        "LOCAL_STORAGE_PATH",
                        format!("{} does not exist; create it (mkdir -p) or point LOCAL_STORAGE_PATH at the store", l.root.display()),
                    ));
                }
                BlobStore::local_with_urls(&l.root, l.urls.clone())
            }
            StoreConfig::S3(c) => crate::s3::open(c),
            StoreConfig::Memory => Ok(BlobStore::memory()),
        }
    }
}

impl LocalUrls {
    /// `BASE_URL`, `FILES_PATH`, `STORAGE_URL_SECRET` and `STORAGE_URL_TTL`, checked.
    fn from_vars(v: &Vars) -> Result<LocalUrls> {
        let mut urls = LocalUrls::default();
        if let Some(b) = v.get("BASE_URL") {
            let u = url::Url::parse(&b).map_err(|e| {
                Error::config(
                    "BASE_URL",
                    format!("{b:?} is not a URL ({e}); expected e.g. https://clips.example.com"),
                )
            })?;
            if !matches!(u.scheme(), "http" | "https") {
                return Err(Error::config(
                    "BASE_URL",
                    format!("{b:?}: expected an http:// or https:// URL"),
                ));
            }
            urls.base_url = b;
        }
        if let Some(p) = v.get("FILES_PATH") {
            if !p.starts_with('/') {
                return Err(Error::config(
                    "FILES_PATH",
                    format!("{p:?}: expected a path starting with '/', like /api/files"),
                ));
            }
            urls.files_path = p;
        }
        // Set but empty is an error, not "unset": an empty secret is nearly always a failed
        // substitution, and treating it as unset would silently serve unsigned.
        if let Some(secret) = v.get_even_if_empty("STORAGE_URL_SECRET") {
            if secret.len() < crate::signing::MIN_SECRET_LEN {
                return Err(Error::config(
                    "STORAGE_URL_SECRET",
                    format!("is {} bytes; use at least {} random bytes, e.g. the output of `openssl rand -hex 32`", secret.len(), crate::signing::MIN_SECRET_LEN),
                ));
            }
            urls.secret = Some(secret);
        }
        if let Some(t) = v.get("STORAGE_URL_TTL") {
            urls.ttl = humantime::parse_duration(&t).map_err(|e| {
                Error::config(
                    "STORAGE_URL_TTL",
                    format!("{t:?}: {e}; expected a duration like 1h or 15m"),
                )
            })?;
        }
        Ok(urls)
    }
}

enum Vars {
    Process,
    Map(HashMap<String, String>),
}

impl Vars {
    fn process() -> Vars {
        Vars::Process
    }

    /// A variable's value; empty counts as unset.
    fn get(&self, name: &str) -> Option<String> {
        self.get_even_if_empty(name).filter(|s| !s.is_empty())
    }

    /// A variable's value, empty included (for settings where empty is a mistake).
    fn get_even_if_empty(&self, name: &str) -> Option<String> {
        match self {
            Vars::Process => std::env::var(name).ok(),
            Vars::Map(m) => m.get(name).cloned(),
        }
    }
}

/// Static keys for `AWS_PROFILE` (default `default`) from the shared credentials file
/// (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`).
fn profile_credentials(v: &Vars) -> Result<Option<(String, String, Option<String>)>> {
    let path = match v.get("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => PathBuf::from(p),
        None => match v.get("HOME") {
            Some(h) => PathBuf::from(h).join(".aws/credentials"),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let profile = v.get("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
    let section = parse_ini_section(&text, &profile);
    match (
        section.get("aws_access_key_id"),
        section.get("aws_secret_access_key"),
    ) {
        (Some(id), Some(secret)) => Ok(Some((
            id.clone(),
            secret.clone(),
            section.get("aws_session_token").cloned(),
        ))),
        _ if v.get("AWS_PROFILE").is_some() => Err(Error::config(
            "AWS_PROFILE",
            format!(
                "profile {profile:?} has no aws_access_key_id/aws_secret_access_key in {}",
                path.display()
            ),
        )),
        _ => Ok(None),
    }
}

fn parse_ini_section(text: &str, profile: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            inside =
                name == profile || name.strip_prefix("profile ").map(str::trim) == Some(profile);
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
    }
    out
}
