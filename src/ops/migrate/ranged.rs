//! A big object fetched as several byte ranges at once: S3 caps each connection's rate
//! (tens of MB/s), so one connection per object bounds how fast a big object copies
//! however fast the link is; S3's own advice is parallel ranged GETs.
//!
//! The object's first range streams through the usual path ([`super::download`]: hashed
//! while written, resumed when broken); the others ("tails") are fetched beside it, each
//! pinned to the ETag, and written into the same temp file at their offsets. Once all are
//! in, the tails are read back in order through the same hasher, so the proofs (MD5,
//! multipart ETag, S3 checksums) are computed over the bytes exactly as they lie on disk.
//! Tails take stream permits that are free at that moment, never wait for one: when many
//! objects are in flight the permits are taken and an object is fetched whole. And only a
//! connection too slow to bring the object within [`SPLIT_IF_LONGER`] is helped: on a fast
//! link (loopback, a local MinIO) the ranges would only add the read-back's copy.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use futures::stream::StreamExt;
use object_store::{GetOptions, GetRange};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::blocking;
use crate::etag::ContentHasher;
use crate::local::AtomicFile;
use crate::store::Backend;

use super::download::{backoff, OpenError};
use super::{MAX_ATTEMPTS, WRITE_BUFFER};

/// Objects this big or bigger are fetched in ranges when stream permits are free.
pub(super) const RANGED_MIN: u64 = 32 << 20;
/// The least bytes a range holds.
const RANGE_BYTES: u64 = 16 << 20;
/// Ranges fetched beside the first one, at most.
const MAX_TAILS: u64 = 3;
/// Bytes of the first GET timed before deciding whether to fetch ranges beside it.
pub(super) const SPLIT_PROBE: u64 = 2 << 20;
/// Ranges are fetched when the first GET alone would take longer than this for the rest.
const SPLIT_IF_LONGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a `size`-byte object whose GET brought `got` bytes in `took` (from its first
/// byte) would take longer than [`SPLIT_IF_LONGER`] to finish on that one connection.
pub(super) fn slow_enough_to_split(size: u64, got: u64, took: std::time::Duration) -> bool {
    got > 0
        && (size - got.min(size)) as f64 * took.as_secs_f64() / got as f64
            > SPLIT_IF_LONGER.as_secs_f64()
}

/// The ranges beside the first one under way, and where the first one ends.
pub(super) struct Tails {
    /// Where the first range (the usual stream) ends: the first tail's start.
    pub(super) first_end: u64,
    ranges: Vec<Range<u64>>,
    tasks: JoinSet<Result<u64, TailError>>,
}

/// Why a tail could not be fetched.
pub(super) enum TailError {
    /// Retrying cannot help, or the retries ran out.
    Failed(String),
    /// The object is no longer in the source.
    Vanished,
}

impl Tails {
    /// Starts fetching the tails of a `size`-byte object into `file` when stream permits
    /// are free now (as many as are: none, and the object is fetched whole). `etag` pins
    /// every range to the version the first GET is reading.
    pub(super) fn start(
        backend: &Backend,
        path: &object_store::path::Path,
        streams: &Arc<Semaphore>,
        file: &mut AtomicFile,
        (size, etag): (u64, &str),
        stop: &CancellationToken,
    ) -> Option<Tails> {
        let wanted = (size / RANGE_BYTES).saturating_sub(1).min(MAX_TAILS);
        if wanted == 0 {
            return None;
        }
        let (n, mut permits) = (1..=wanted).rev().find_map(|n| {
            let p = Arc::clone(streams).try_acquire_many_owned(n as u32).ok()?;
            Some((n, p))
        })?;
        let writer = Arc::new(file.file().try_clone().ok()?);
        let part = size / (n + 1);
        let ranges: Vec<Range<u64>> = (1..=n)
            .map(|i| i * part..if i == n { size } else { (i + 1) * part })
            .collect();
        let mut tasks = JoinSet::new();
        for r in &ranges {
            // Each task holds one permit, given back when it ends.
            let permit = permits.split(1)?;
            tasks.spawn(fetch(
                backend.clone(),
                path.clone(),
                etag.to_owned(),
                r.clone(),
                Arc::clone(&writer),
                stop.clone(),
                permit,
            ));
        }
        Some(Tails {
            first_end: part,
            ranges,
            tasks,
        })
    }

    /// Waits for every tail; the bytes they brought.
    pub(super) async fn finish(&mut self) -> Result<u64, TailError> {
        let mut bytes = 0;
        while let Some(done) = self.tasks.join_next().await {
            match done {
                Ok(Ok(n)) => bytes += n,
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(TailError::Failed(format!("range fetch ended: {e}"))),
            }
        }
        Ok(bytes)
    }

    /// The ranges, to be hashed in order once written ([`hash_ranges`]).
    pub(super) fn into_ranges(self) -> Vec<Range<u64>> {
        self.ranges
    }
}

/// Feeds the bytes of `ranges` (in order, contiguous, starting where the hasher stands)
/// from `file` into `hasher`.
pub(super) fn hash_ranges(
    file: &AtomicFile,
    ranges: &[Range<u64>],
    hasher: &mut ContentHasher,
) -> std::io::Result<()> {
    let Some(all) = ranges.first().zip(ranges.last()) else {
        return Ok(());
    };
    let reader = file.reopen_read()?;
    let mut buf = vec![0u8; WRITE_BUFFER];
    let (mut pos, end) = (all.0.start, all.1.end);
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let n = reader.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the temp file ends at byte {pos} of {end}"),
            ));
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(())
}

/// Fetches `range` of the object into `file` at its offsets, resuming a broken body, every
/// request pinned to `etag`. The bytes written.
async fn fetch(
    backend: Backend,
    path: object_store::path::Path,
    etag: String,
    range: Range<u64>,
    file: Arc<std::fs::File>,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) -> Result<u64, TailError> {
    let mut pos = range.start;
    let mut last_reason = String::new();
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            backoff(attempt).await;
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(pos..range.end)),
            if_match: Some(etag.clone()),
            ..Default::default()
        };
        let mut body = match backend.store.get_opts(&path, opts).await {
            Ok(res) => res.into_stream(),
            Err(e) => match OpenError::of(e) {
                OpenError::Vanished => return Err(TailError::Vanished),
                OpenError::Permanent(r) => return Err(TailError::Failed(r)),
                OpenError::Transient(r) => {
                    last_reason = r;
                    continue;
                }
            },
        };
        let mut held: Vec<u8> = Vec::with_capacity(WRITE_BUFFER);
        let mut broken = None;
        loop {
            let chunk = tokio::select! {
                biased;
                _ = stop.cancelled() => return Err(TailError::Failed("stopped".into())),
                c = body.next() => c,
            };
            let last = match chunk {
                Some(Ok(c)) => {
                    // Never past the range, whatever the server sends.
                    let room = (range.end - pos) as usize - held.len();
                    let take = c.len().min(room);
                    held.extend_from_slice(&c[..take]);
                    take == room
                }
                Some(Err(e)) => {
                    broken = Some(e.to_string());
                    true
                }
                None => true,
            };
            if held.len() >= WRITE_BUFFER || (last && !held.is_empty()) {
                let (f, data, at) = (Arc::clone(&file), std::mem::take(&mut held), pos);
                let n = data.len() as u64;
                blocking::try_run(move || f.write_all_at(&data, at))
                    .await
                    .map_err(|e| TailError::Failed(format!("writing the temp file: {e}")))?;
                pos += n;
                held = Vec::with_capacity(WRITE_BUFFER);
            }
            if last {
                break;
            }
        }
        if pos >= range.end {
            return Ok(range.end - range.start);
        }
        last_reason = match broken {
            Some(e) => format!(
                "body of bytes {}-{} broke off at byte {pos}: {e}",
                range.start,
                range.end - 1
            ),
            None => format!(
                "body of bytes {}-{} ended at byte {pos}",
                range.start,
                range.end - 1
            ),
        };
    }
    Err(TailError::Failed(format!(
        "gave up after {MAX_ATTEMPTS} attempts: {last_reason}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_a_connection_too_slow_for_the_object_is_helped() {
        let mib = 1 << 20;
        // 16 MB/s (S3 over a WAN): 62 MiB more take ~4 s.
        assert!(slow_enough_to_split(
            64 * mib,
            2 * mib,
            Duration::from_millis(130)
        ));
        // Loopback speeds: 62 MiB more in ~60 ms.
        assert!(!slow_enough_to_split(
            64 * mib,
            2 * mib,
            Duration::from_millis(2)
        ));
        assert!(!slow_enough_to_split(64 * mib, 0, Duration::from_secs(9)));
        assert!(!slow_enough_to_split(
            2 * mib,
            2 * mib,
            Duration::from_secs(9)
        ));
    }
}
