//! `Reporter`: how long-running operations tell their caller what they are doing.
//!
//! The library never writes to the terminal. Operations call these hooks; the binary
//! implements them with indicatif bars or plain log lines, a service may log them, and
//! tests use [`NoopReporter`].

/// Progress hooks called by the operations in [`crate::ops`]. All methods have empty
/// defaults; implement the ones you display. Calls may come from several tasks at once.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use stowage::Reporter;
///
/// /// Counts bytes and failed items, and logs notes.
/// #[derive(Default)]
/// struct Counts {
///     bytes: AtomicU64,
///     failed: AtomicU64,
/// }
///
/// impl Reporter for Counts {
///     fn bytes_done(&self, n: u64) {
///         self.bytes.fetch_add(n, Ordering::Relaxed);
///     }
///     fn item_done(&self, _key: &str, ok: bool) {
///         if !ok {
///             self.failed.fetch_add(1, Ordering::Relaxed);
///         }
///     }
///     fn note(&self, msg: &str) {
///         eprintln!("note: {msg}");
///     }
/// }
///
/// let counts = Counts::default();
/// let reporter: &dyn Reporter = &counts; // what `stowage::ops` take
/// reporter.bytes_done(512);
/// reporter.item_done("clips/cat.mp4", false);
/// assert_eq!(counts.bytes.load(Ordering::Relaxed), 512);
/// assert_eq!(counts.failed.load(Ordering::Relaxed), 1);
/// ```
pub trait Reporter: Send + Sync {
    /// A new phase begins ("listing", "copying", "hashing", "deleting", ...), with totals
    /// when they are known.
    fn phase(&self, _name: &str, _total_items: Option<u64>, _total_bytes: Option<u64>) {}
    /// `n` more items were discovered (listed or walked).
    fn items_found(&self, _n: u64) {}
    /// `n` more bytes were transferred, hashed or freed.
    fn bytes_done(&self, _n: u64) {}
    /// One item finished; `ok` is false when it failed or was rejected.
    fn item_done(&self, _key: &str, _ok: bool) {}
    /// A notable event worth a line of its own (a retry, a skipped key).
    fn note(&self, _msg: &str) {}
}

/// A reporter that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopReporter;

impl Reporter for NoopReporter {}
