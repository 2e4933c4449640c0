//! [`ReadThroughConfig`]: a read-through store from the same environment variables as the
//! rest of stowage, so a service switches to it with a configuration change.

use std::collections::HashMap;
use std::sync::Arc;

use object_store::ObjectStore;

use super::{ReadThrough, ReadThroughOptions};
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::store::BlobStore;

/// A primary store, the fallback it reads through to, and how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReadThroughConfig {
    /// The store reads try first and writes go to (`STORAGE_TYPE` and its variables).
    pub primary: StoreConfig,
    /// The store a not-found falls back to (`STORAGE_FALLBACK`).
    pub fallback: StoreConfig,
    /// `STORAGE_COPY_ON_READ` (default `true`) and `STORAGE_DUAL_WRITE` (default `false`).
    pub options: ReadThroughOptions,
}

impl ReadThroughConfig {
    /// A read-through configuration over two stores.
    pub fn new(
        primary: StoreConfig,
        fallback: StoreConfig,
        options: ReadThroughOptions,
    ) -> ReadThroughConfig {
        ReadThroughConfig {
            primary,
            fallback,
            options,
        }
    }

    /// Reads the process environment; `None` when `STORAGE_FALLBACK` is unset or `none`.
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `STORAGE_FALLBACK` | `s3` (the bucket of the `S3_*` variables), `local` (`LOCAL_STORAGE_PATH`), or a store URL (`s3://bucket/prefix`, `file:///path`) | none |
    /// | `STORAGE_COPY_ON_READ` | copy fallback hits into the primary (`true`/`false`) | `true` |
    /// | `STORAGE_DUAL_WRITE` | also write to the fallback (`true`/`false`) | `false` |
    ///
    /// The primary is what [`StoreConfig::from_env`] reads. A fallback equal to the
    /// primary's type (`STORAGE_TYPE=s3` with `STORAGE_FALLBACK=s3`), or
    /// `STORAGE_COPY_ON_READ`/`STORAGE_DUAL_WRITE` without `STORAGE_FALLBACK`, is an
    /// [`Error::Config`] naming the variable.
    pub fn from_env() -> Result<Option<ReadThroughConfig>> {
        ReadThroughConfig::from_env_map(&std::env::vars().collect())
    }

    /// Like [`ReadThroughConfig::from_env`], from `vars`.
    pub fn from_env_map(vars: &HashMap<String, String>) -> Result<Option<ReadThroughConfig>> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let fallback = match get("STORAGE_FALLBACK") {
            None | Some("none") => {
                for name in ["STORAGE_COPY_ON_READ", "STORAGE_DUAL_WRITE"] {
                    if get(name).is_some() {
                        return Err(Error::config(
                            name,
                            "is set but STORAGE_FALLBACK is not: set STORAGE_FALLBACK=s3 (or a store URL) to read through to a fallback",
                        ));
                    }
                }
                return Ok(None);
            }
            Some(f) => f.to_owned(),
        };
        let primary = StoreConfig::from_env_map(vars)?;
        let same_type = |kind: &str| {
            let mut v = vars.clone();
            v.insert("STORAGE_TYPE".into(), kind.into());
            StoreConfig::from_env_map(&v)
        };
        let fallback = match fallback.to_ascii_lowercase().as_str() {
            "s3" | "local" if matches!(
                (&primary, fallback.as_str()),
                (StoreConfig::S3(_), "s3") | (StoreConfig::Local(_), "local")
            ) =>
            {
                return Err(Error::config(
                    "STORAGE_FALLBACK",
                    format!("is {fallback:?}, the same store as STORAGE_TYPE: the fallback must be the other store (STORAGE_TYPE=local with STORAGE_FALLBACK=s3, or a store URL)"),
                ));
            }
            "s3" => same_type("s3")?,
            "local" => same_type("local")?,
            url if url.contains("://") => StoreConfig::from_url(&fallback)
                .map_err(|e| Error::config("STORAGE_FALLBACK", e.to_string()))?,
            _ => {
                return Err(Error::config(
                    "STORAGE_FALLBACK",
                    format!("{fallback:?}: expected s3, local, none or a store URL such as s3://bucket/prefix"),
                ))
            }
        };
        let options = ReadThroughOptions::default()
            .with_copy_on_read(flag(vars, "STORAGE_COPY_ON_READ", true)?)
            .with_dual_write(flag(vars, "STORAGE_DUAL_WRITE", false)?);
        Ok(Some(ReadThroughConfig {
            primary,
            fallback,
            options,
        }))
    }

    /// Opens both stores; returns the facade the service uses and the [`ReadThrough`]
    /// under it (for [`ReadThrough::stats`]).
    ///
    /// With a local primary the facade hands out the primary's download URLs
    /// ([`LocalUrls`](crate::LocalUrls): `stowage serve --fallback`, or
    /// `stowage::http::router` over this facade, answers them, reading through on a miss).
    /// With an S3 primary it has none ([`BlobStore::download_url`] is an error): serve it
    /// with the router.
    pub fn open(&self) -> Result<(BlobStore, ReadThrough)> {
        let primary = object_store_of(&self.primary, "STORAGE_TYPE")?;
        let fallback = object_store_of(&self.fallback, "STORAGE_FALLBACK")?;
        let rt = ReadThrough::new(primary, fallback, self.options.clone());
        let name = format!("read-through:{}", rt);
        let mut store = BlobStore::from_object_store(Arc::new(rt.clone()), "", &name);
        if let StoreConfig::Local(l) = &self.primary {
            store = store.with_download_urls(l.urls.clone());
        }
        Ok((store, rt))
    }
}

/// The `ObjectStore` a configuration opens, with an S3 prefix applied.
pub fn object_store_of(cfg: &StoreConfig, var: &str) -> Result<Arc<dyn ObjectStore>> {
    Ok(match cfg {
        StoreConfig::Local(l) => Arc::new(
            crate::LocalStore::new(&l.root).map_err(|e| Error::config(var, e.to_string()))?,
        ),
        StoreConfig::S3(c) => {
            let s3 = Arc::new(crate::s3::object_store(c)?);
            let prefix = c.prefix.trim_matches('/');
            if prefix.is_empty() {
                s3
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(
                    s3,
                    object_store::path::Path::from(prefix),
                ))
            }
        }
        StoreConfig::Memory => Arc::new(object_store::memory::InMemory::new()),
    })
}

fn flag(vars: &HashMap<String, String>, name: &str, default: bool) -> Result<bool> {
    match vars
        .get(name)
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") => Ok(default),
        Some("true" | "1" | "yes") => Ok(true),
        Some("false" | "0" | "no") => Ok(false),
        Some(other) => Err(Error::config(
            name,
            format!("{other:?}: expected true or false"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut v: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.insert("AWS_ACCESS_KEY_ID".into(), "AKID".into());
        v.insert("AWS_SECRET_ACCESS_KEY".into(), "SECRET".into());
        v.insert("HOME".into(), "/nonexistent".into());
        v
    }

    fn config_var(r: Result<Option<ReadThroughConfig>>) -> String {
        match r {
            Err(Error::Config { name, .. }) => name,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn local_over_s3_from_the_environment() {
        let c = ReadThroughConfig::from_env_map(&vars(&[
            ("STORAGE_TYPE", "local"),
            ("LOCAL_STORAGE_PATH", "/srv/clips"),
            ("STORAGE_FALLBACK", "s3"),
            ("S3_BUCKET_NAME", "clips"),
            ("S3_PREFIX", "v1/"),
            ("STORAGE_DUAL_WRITE", "true"),
        ]))
        .unwrap()
        .expect("a read-through config");
        assert!(matches!(&c.primary, StoreConfig::Local(l) if l.root.as_os_str() == "/srv/clips"));
        assert!(
            matches!(&c.fallback, StoreConfig::S3(s) if s.bucket == "clips" && s.prefix == "v1/")
        );
        assert!(c.options.copy_on_read && c.options.dual_write);
    }

    #[test]
    fn no_fallback_is_none_and_bad_combinations_name_their_variable() {
        assert!(
            ReadThroughConfig::from_env_map(&vars(&[("STORAGE_TYPE", "local")]))
                .unwrap()
                .is_none()
        );
        assert_eq!(
            config_var(ReadThroughConfig::from_env_map(&vars(&[(
                "STORAGE_DUAL_WRITE",
                "true"
            )]))),
            "STORAGE_DUAL_WRITE"
        );
        assert_eq!(
            config_var(ReadThroughConfig::from_env_map(&vars(&[
                ("STORAGE_TYPE", "s3"),
                ("S3_BUCKET_NAME", "b"),
                ("STORAGE_FALLBACK", "s3"),
            ]))),
            "STORAGE_FALLBACK"
        );
        assert_eq!(
            config_var(ReadThroughConfig::from_env_map(&vars(&[
                ("STORAGE_FALLBACK", "s3"),
                ("S3_BUCKET_NAME", "b"),
                ("STORAGE_COPY_ON_READ", "maybe"),
            ]))),
            "STORAGE_COPY_ON_READ"
        );
        assert_eq!(
            config_var(ReadThroughConfig::from_env_map(&vars(&[(
                "STORAGE_FALLBACK",
                "ftp"
            )]))),
            "STORAGE_FALLBACK"
        );
    }
}
