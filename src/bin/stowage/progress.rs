//! Progress display: indicatif bars on a terminal, a plain line every 10 s elsewhere
//! (cron mails, CI logs: with the wall-clock time and an ETA), nothing with `--quiet`. Implements the library's `Reporter`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use stowage::size::human_bytes;
use stowage::Reporter;

/// How often the non-terminal reporter prints a line.
const PLAIN_INTERVAL: Duration = Duration::from_secs(10);

pub(crate) enum Progress {
    Quiet,
    Bars(Bars),
    Plain(Plain),
}

pub(crate) struct Bars {
    _multi: MultiProgress,
    items: ProgressBar,
    bytes: ProgressBar,
    found: AtomicU64,
}

pub(crate) struct Plain {
    phase: Mutex<(String, Option<u64>, Option<u64>)>,
    items: AtomicU64,
    found: AtomicU64,
    bytes: AtomicU64,
    started: Instant,
    /// When the last line was printed, in milliseconds since `started`.
    last_ms: AtomicU64,
}

impl Progress {
    pub(crate) fn new(quiet: bool) -> Progress {
        if quiet {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
            let items = multi.add(ProgressBar::new_spinner());
            items.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix:>9} {pos}/{len} objects  eta {eta}  {msg}",
                )
                .expect("valid template"),
            );
            let bytes = multi.add(ProgressBar::new(0));
            bytes.set_style(
                ProgressStyle::with_template(
                    "  {wide_bar} {bytes}/{total_bytes}  {binary_bytes_per_sec}  eta {eta}",
                )
                .expect("valid template"),
            );
            items.enable_steady_tick(Duration::from_millis(120));
            Progress::Bars(Bars {
                _multi: multi,
                items,
                bytes,
                found: AtomicU64::new(0),
            })
        } else {
            Progress::Plain(Plain {
                phase: Mutex::new((String::new(), None, None)),
                items: AtomicU64::new(0),
                found: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                started: Instant::now(),
                last_ms: AtomicU64::new(0),
            })
        }
    }

    /// Clears the bars before a summary is printed.
    pub(crate) fn finish(&self) {
        if let Progress::Bars(b) = self {
            b.items.finish_and_clear();
            b.bytes.finish_and_clear();
        }
    }
}

impl Plain {
    fn maybe_print(&self) {
        // Called for every chunk copied: a lock-free check, and one winner per interval.
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < PLAIN_INTERVAL.as_millis() as u64
            || self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let (phase, total_items, total_bytes) = self.phase.lock().expect("not poisoned").clone();
        let items = self.items.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let of = |n: Option<u64>, f: &dyn Fn(u64) -> String| {
            n.map(|n| format!("/{}", f(n))).unwrap_or_default()
        };
        errln!(
            "{} [{:>6.0}s] {phase}: {items}{} objects, {}{} ({}/s), {} listed{}",
            chrono::Local::now().format("%Y-%m-%d %H:%M:%S"),
            secs,
            of(total_items, &|n| n.to_string()),
            human_bytes(bytes),
            of(total_bytes, &human_bytes),
            human_bytes((bytes as f64 / secs) as u64),
            self.found.load(Ordering::Relaxed),
            eta(secs, bytes, total_bytes)
                .or_else(|| eta(secs, items, total_items))
                .map(|d| format!(", eta {}", humantime::format_duration(d)))
                .unwrap_or_default(),
        );
    }
}

/// Time left at the average rate so far to bring `done` up to `total`, in whole seconds;
/// `None` before anything is done or without a total.
fn eta(secs: f64, done: u64, total: Option<u64>) -> Option<Duration> {
    let total = total?;
    if done == 0 || done > total {
        return None;
    }
    let left = (total - done) as f64 * secs / done as f64;
    Some(Duration::from_secs(left.round() as u64))
}

impl Reporter for Progress {
    fn phase(&self, name: &str, total_items: Option<u64>, total_bytes: Option<u64>) {
        match self {
            Progress::Quiet => {}
            Progress::Bars(b) => {
                b.items.set_prefix(name.to_owned());
                b.items.set_position(0);
                b.items.set_length(total_items.unwrap_or(0));
                b.bytes.set_position(0);
                b.bytes.set_length(total_bytes.unwrap_or(0));
                b.items.reset_eta();
                b.bytes.reset_eta();
            }
            Progress::Plain(p) => {
                *p.phase.lock().expect("not poisoned") =
                    (name.to_owned(), total_items, total_bytes);
                p.items.store(0, Ordering::Relaxed);
                p.bytes.store(0, Ordering::Relaxed);
                // Stamped like the periodic lines, so a log shows when each phase began.
                errln!(
                    "{} {name}{}",
                    chrono::Local::now().format("%Y-%m-%d %H:%M:%S"),
                    match (total_items, total_bytes) {
                        (Some(i), Some(b)) => format!(": {i} objects, {}", human_bytes(b)),
                        (Some(i), None) => format!(": {i} objects"),
                        _ => String::new(),
                    }
                );
            }
        }
    }

    fn items_found(&self, n: u64) {
        match self {
            Progress::Quiet => {}
            Progress::Bars(b) => {
                let total = b.found.fetch_add(n, Ordering::Relaxed) + n;
                b.items.set_message(format!("{total} listed"));
            }
            Progress::Plain(p) => {
                p.found.fetch_add(n, Ordering::Relaxed);
                p.maybe_print();
            }
        }
    }

    fn bytes_done(&self, n: u64) {
        match self {
            Progress::Quiet => {}
            Progress::Bars(b) => b.bytes.inc(n),
            Progress::Plain(p) => {
                p.bytes.fetch_add(n, Ordering::Relaxed);
                p.maybe_print();
            }
        }
    }

    fn item_done(&self, _key: &str, _ok: bool) {
        match self {
            Progress::Quiet => {}
            Progress::Bars(b) => b.items.inc(1),
            Progress::Plain(p) => {
                p.items.fetch_add(1, Ordering::Relaxed);
                p.maybe_print();
            }
        }
    }

    fn note(&self, msg: &str) {
        let msg = &crate::commands::flag_words(msg);
        match self {
            Progress::Quiet => {}
            Progress::Bars(b) => b.items.println(msg),
            Progress::Plain(_) => errln!("{msg}"),
        }
    }
}
