//! One module per command: clap arguments, conversion to library options, output.

pub(crate) mod cleanup;
pub(crate) mod disk;
pub(crate) mod migrate;
pub(crate) mod serve;
pub(crate) mod url;
pub(crate) mod verify;

/// `path` made absolute against the working directory; an error names the option.
pub(crate) fn absolute(
    option: &str,
    path: &std::path::Path,
) -> stowage::Result<std::path::PathBuf> {
    std::path::absolute(path).map_err(|e| stowage::Error::Config {
        name: option.into(),
        reason: format!("{}: {e}", path.display()),
    })
}

/// The library options that are also flags of some command, by their library name.
const OPTION_FLAGS: &[&str] = &[
    "dest",
    "source",
    "min_free",
    "max_used",
    "max_age",
    "min_age",
    "max_delete",
    "force",
    "init_store",
    "prometheus",
];

/// A library error's text as an operator of the CLI reads it: the library names its
/// options as a library user sets them (`` `min_free` ``, and `min_free` as the name of a
/// [`stowage::Error::Config`]), and each becomes the flag that sets it (`--min-free`).
pub(crate) fn error_text(e: &stowage::Error) -> String {
    let text = match e {
        stowage::Error::Config { name, reason } if OPTION_FLAGS.contains(&name.as_str()) => {
            format!("--{}: {reason}", name.replace('_', "-"))
        }
        e => e.to_string(),
    };
    flag_words(&text)
}

/// `text` with each backquoted option name in [`OPTION_FLAGS`] written as its flag.
pub(crate) fn flag_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('`') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('`') else { break };
        let word = &after[..close];
        out.push_str(&rest[..open]);
        if OPTION_FLAGS.contains(&word) {
            out.push_str("--");
            out.push_str(&word.replace('_', "-"));
        } else {
            out.push_str(&rest[open..open + close + 2]);
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The age and wait options' parser, shared with the library so it can be fuzzed.
pub(crate) use stowage::size::parse_age;

/// One run of a command: its name and start time, and whether stdout is JSON.
///
/// Every `--json` document goes through [`Envelope::summary`] or [`Envelope::fatal`], so
/// each carries the same `command`, `started`, `finished` (RFC 3339, UTC) and `elapsed_s`,
/// and a fatal error is still one JSON object on stdout (`error: {kind, message, hint}`):
/// a script never parses an empty stdout. The vocabulary is documented in the README
/// ("JSON output").
pub(crate) struct Envelope {
    command: &'static str,
    started: std::time::SystemTime,
    clock: std::time::Instant,
    pub(crate) json: bool,
}

impl Envelope {
    pub(crate) fn start(command: &'static str, json: bool) -> Envelope {
        Envelope {
            command,
            started: std::time::SystemTime::now(),
            clock: std::time::Instant::now(),
            json,
        }
    }

    /// `body` (a summary, or nothing) with the common fields, and `error` when given.
    fn document(&self, body: serde_json::Value, error: Option<JsonError>) -> serde_json::Value {
        let mut map = match body {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let finished = std::time::SystemTime::now();
        map.insert("command".into(), self.command.into());
        map.insert("started".into(), rfc3339(self.started).into());
        map.insert("finished".into(), rfc3339(finished).into());
        map.insert(
            "elapsed_s".into(),
            self.clock.elapsed().as_secs_f64().into(),
        );
        if let Some(e) = error {
            map.insert(
                "error".into(),
                serde_json::json!({"kind": e.kind, "message": e.message, "hint": e.hint}),
            );
        }
        serde_json::Value::Object(map)
    }

    /// Prints `summary` as the command's JSON document (with `error` when the run stopped
    /// early but has a summary, e.g. a held lock or a fatal error midway).
    pub(crate) fn summary(&self, summary: &impl serde::Serialize, error: Option<JsonError>) {
        let body = serde_json::to_value(summary).expect("summaries serialize");
        print_json(&self.document(body, error));
    }

    /// Reports a fatal error: the message (and hint) on stderr, and with `--json` one
    /// JSON object on stdout. Returns the exit: 130 for an interruption, 2 otherwise.
    pub(crate) fn fatal(&self, e: &stowage::Error, hint: Option<String>) -> crate::exit::Exit {
        let message = error_text(e);
        errln!("stowage {}: {message}", self.command);
        if let Some(h) = &hint {
            errln!("hint: {h}");
        }
        if self.json {
            let error = JsonError {
                kind: error_kind(e),
                message,
                hint,
            };
            print_json(&self.document(serde_json::Value::Null, Some(error)));
        }
        match e {
            stowage::Error::Interrupted => crate::exit::Exit::Interrupted,
            _ => crate::exit::Exit::Error,
        }
    }

    /// [`Envelope::fatal`] for a command working on a local store root: hints at
    /// `option` when the root is not a directory.
    pub(crate) fn root_fatal(
        &self,
        option: &str,
        root: &std::path::Path,
        e: &stowage::Error,
    ) -> crate::exit::Exit {
        let hint = (!root.is_dir()).then(|| {
            format!(
                "{option} (or LOCAL_STORAGE_PATH) must name the store directory; {} is not one",
                root.display()
            )
        });
        self.fatal(e, hint)
    }
}

/// The `error` object of a JSON document.
pub(crate) struct JsonError {
    /// A stable word scripts can match on: `config`, `usage`, `access_denied`, ...
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

/// The `error.kind` of a library error: one word per variant, stable for scripts.
fn error_kind(e: &stowage::Error) -> &'static str {
    use stowage::Error as E;
    match e {
        E::NotFound { .. } => "not_found",
        E::InvalidKey { .. } => "invalid_key",
        E::Config { .. } => "config",
        E::AccessDenied { .. } => "access_denied",
        E::NoCredentials { .. } => "no_credentials",
        E::NoSuchBucket { .. } => "no_such_bucket",
        E::NoSpace { .. } => "no_space",
        E::Integrity { .. } => "integrity",
        E::Locked { .. } => "locked",
        E::Interrupted => "interrupted",
        E::Io { .. } => "io",
        E::Unreachable { .. } => "unreachable",
        E::Backend { .. } => "backend",
        _ => "other",
    }
}

/// `t` as RFC 3339 in UTC, to the millisecond.
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `--max-age` of cleanup and disk: one rule for both, [`parse_age`] and more than zero
/// (0s would make every file old).
pub(crate) fn parse_max_age(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_age(s)?;
    if d.is_zero() {
        return Err(format!(
            "{:?} would make every file old: give an age more than zero, after which a clip may go, e.g. 24h or 7d",
            s.trim()
        ));
    }
    Ok(d)
}

/// Prints `value` as one pretty JSON document on stdout (what `--json` prints).
pub(crate) fn print_json(value: &serde_json::Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).expect("a JSON value serializes")
    );
}

/// Prints up to 100 `key: reason` lines of a summary list, then how many more `--json` has.
pub(crate) fn print_key_reasons(items: &[stowage::ops::KeyReason]) {
    const SHOWN: usize = 100;
    for kr in items.iter().take(SHOWN) {
        outln!("      {:?}: {}", kr.key, kr.reason);
    }
    if items.len() > SHOWN {
        outln!(
            "      ... and {} more (--json lists all)",
            items.len() - SHOWN
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn option_names_become_flags_and_nothing_else_changes() {
        let f = super::flag_words;
        assert_eq!(
            f("lower `min_free`, or `max_used`"),
            "lower --min-free, or --max-used"
        );
        assert_eq!(
            f("`ServeOptions::secret` stays"),
            "`ServeOptions::secret` stays"
        );
        assert_eq!(f("one ` alone"), "one ` alone");
        assert_eq!(f("`force`` `"), "--force` `");
        assert_eq!(f("naïve `init_store`é"), "naïve --init-store\u{e9}");
    }
}
