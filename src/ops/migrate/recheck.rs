//! After copies are in place: asking the source again whether it still holds them, so
//! that a clip the service deletes while a catch-up run copies it does not come back.
//!
//! Why commit-then-ask closes the race with a service deleting the clip: the service
//! deletes through [`crate::ReadThrough`], the bucket first, then the local file. Take the
//! moment the source answers a request made after our commit (the re-listing's page that
//! holds, or would hold, the key; a HEAD for a key it does not show):
//! - after the bucket delete: the object is not there and we remove our file here;
//! - before it: our commit came earlier still, so the service's local delete, which
//!   follows its bucket delete, finds our file and removes it.
//!
//! Either way the clip stays deleted. This needs the source to answer a request after a
//! completed DELETE without the object (S3 has been strongly consistent for listings and
//! HEADs since 2020, as are MinIO and s3s-fs). A delete that reaches only the bucket (the
//! service not yet on the read-through store) is not covered once the source has been
//! asked: `verify` lists such a file as `extra`.
//!
//! The asking costs few requests: placed copies wait up to [`RECHECK_WAIT`] (or until
//! [`RECHECK_BATCH`] of them are waiting), then copies close together in the listing are
//! covered by one listing of their key range (a page per 1,000 keys listed), and only a key
//! that listing does not show is asked about on its own (HEAD) before its file is removed.
//! So a listing that is out of order, or that ignores `StartAfter`, costs requests, never a
//! copy. Against a HEAD per object, `small` (5,000 objects in 50 prefixes) asks 5,000
//! requests fewer.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use object_store::ObjectStoreExt;

use crate::blocking;
use crate::checksum::Proof;
use crate::key::Key;
use crate::local;
use crate::report::Reporter;
use crate::s3::list::LIST_FANOUT;
use crate::store::{Backend, BlobStore};

use super::download::PlacedFile;
use super::{CopyCtx, Outcome};

/// Copies waiting to be asked about that start the asking at once.
pub(super) const RECHECK_BATCH: usize = 1000;
/// The longest a placed copy waits before the source is asked about it: how long a clip
/// deleted during the run may still be read from the store.
pub(super) const RECHECK_WAIT: Duration = Duration::from_secs(1);
/// Listing entries between two copies beyond which they are asked about apart (a page).
const RUN_GAP: u64 = 1000;
/// HEADs at once for keys a re-listing did not show.
const HEADS_AT_ONCE: usize = 16;

/// A copy in place whose object the source is still to be asked about.
#[derive(Debug)]
pub(super) struct PlacedCopy {
    /// The key as listed (relative to the source store's prefix).
    pub(super) listed: String,
    /// Its position in the listing.
    pub(super) seq: u64,
    pub(super) key: Key,
    pub(super) path: object_store::path::Path,
    pub(super) placed: PlacedFile,
    pub(super) bytes: u64,
    pub(super) unverified: Option<String>,
    pub(super) proof: Proof,
}

/// Asks the source about every copy of `batch` and removes the ones it no longer holds:
/// each copy's outcome, keyed by its listed key.
pub(super) async fn recheck_batch(
    ctx: &CopyCtx,
    mut batch: Vec<PlacedCopy>,
    reporter: &dyn Reporter,
) -> Vec<(String, Outcome)> {
    batch.sort_unstable_by_key(|c| c.seq);
    let runs = runs(&batch.iter().map(|c| c.seq).collect::<Vec<_>>());
    let src = &ctx.backend_store;
    let shown: Vec<Option<HashSet<String>>> = stream::iter(runs.iter().cloned())
        .map(|r| listed_among(src, &batch[r]))
        .buffered(LIST_FANOUT)
        .collect()
        .await;
    let mut seen = vec![false; batch.len()];
    for (r, shown) in runs.into_iter().zip(shown) {
        if let Some(shown) = shown {
            for i in r {
                seen[i] = shown.contains(&batch[i].listed);
            }
        }
    }
    let backend = ctx.backend_store.backend();
    stream::iter(batch.into_iter().zip(seen))
        .map(|(c, seen)| async move {
            let vanished = match seen {
                true => None,
                false => recheck_source(ctx, backend, &c.path, &c.key, c.placed, reporter).await,
            };
            let outcome = match vanished {
                Some(reason) => Outcome::Vanished(reason),
                None => Outcome::Copied {
                    bytes: c.bytes,
                    unverified: c.unverified,
                    proof: c.proof,
                },
            };
            (c.listed, outcome)
        })
        .buffer_unordered(HEADS_AT_ONCE)
        .collect()
        .await
}

/// Splits listing positions (sorted) into runs one listing covers cheaply: a gap of more
/// than a page of entries between neighbours starts a new run. A run of `n` copies then
/// costs at most `n` pages, never more requests than a HEAD each.
fn runs(seqs: &[u64]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=seqs.len() {
        if i == seqs.len() || seqs[i] - seqs[i - 1] > RUN_GAP {
            out.push(start..i);
            start = i;
        }
    }
    out
}

/// The keys of `copies` the source lists now, from one listing of the range they span;
/// `None` when the listing failed (each key is then asked about on its own).
async fn listed_among(src: &BlobStore, copies: &[PlacedCopy]) -> Option<HashSet<String>> {
    let first = copies.iter().map(|c| c.listed.as_str()).min()?;
    let last = copies.iter().map(|c| c.listed.as_str()).max()?;
    let (prefix, after) = range_query(first, last);
    let wanted: HashSet<&str> = copies.iter().map(|c| c.listed.as_str()).collect();
    let mut shown = HashSet::with_capacity(copies.len());
    let mut listing = src.listing_after(prefix, after);
    while let Some(entry) = listing.next().await {
        let entry = entry.ok()?;
        // S3 lists in key order: nothing of the range comes after `last`. (A source that
        // does not only costs HEADs for what is left.)
        if entry.key.as_str() > last {
            break;
        }
        if wanted.contains(entry.key.as_str()) {
            shown.insert(entry.key);
        }
    }
    Some(shown)
}

/// The listing request that covers the keys from `first` to `last` (`first <= last`):
/// their common prefix, starting after `first` less its last character (a key itself
/// cannot be named: `StartAfter` leaves it out).
fn range_query<'a>(first: &'a str, last: &str) -> (&'a str, Option<&'a str>) {
    let common = first
        .char_indices()
        .zip(last.chars())
        .find(|((_, a), b)| a != b)
        .map_or_else(|| first.len().min(last.len()), |((i, _), _)| i);
    let prefix = &first[..common];
    let before = first
        .char_indices()
        .next_back()
        .map_or(first, |(i, _)| &first[..i]);
    (prefix, (before.len() > prefix.len()).then_some(before))
}

pub(super) const VANISHED_AFTER: &str = "deleted from the bucket while it was being copied (by the service, presumably): the copy was removed again";
pub(super) const VANISHED_REPLACED: &str = "deleted from the bucket while it was being copied; the local name already holds another file (or none), left as it is";

/// Asks the source (HEAD) whether it still holds a copied object the re-listing did not
/// show, and if it is gone, removes the file just committed (only that very inode).
/// `Some(reason)` when the object was deleted from the source, `None` when the copy stands
/// (the object is there, or the HEAD failed: it was there moments ago).
pub(super) async fn recheck_source(
    ctx: &CopyCtx,
    backend: &Backend,
    path: &object_store::path::Path,
    key: &Key,
    placed: PlacedFile,
    reporter: &dyn Reporter,
) -> Option<String> {
    match backend.store.head(path).await {
        Err(object_store::Error::NotFound { .. }) => {}
        Ok(_) => return None,
        Err(e) => {
            // Unknown: the object was there moments ago, so the copy stands.
            reporter.note(&format!(
                "copied {:?}, but could not ask the bucket again whether it still holds it: {}",
                key.as_str(),
                crate::error::redact(&e.to_string())
            ));
            return None;
        }
    }
    let (root, key2) = (ctx.root.clone(), key.clone());
    match blocking::try_run(move || remove_if_placed(&root, &key2, placed)).await {
        Ok(true) => Some(VANISHED_AFTER.into()),
        Ok(false) => Some(VANISHED_REPLACED.into()),
        Err(e) => Some(format!(
            "deleted from the bucket while it was being copied, but the copy at {} could not be removed: {e}",
            key.to_path(&ctx.root).display()
        )),
    }
}

/// Removes `key`'s file under `root` if it is still the inode `placed`; `Ok(false)` when
/// the name holds something else (the service wrote it again) or nothing. Never follows a
/// symlink. Like cleanup, the file is first renamed to a private name and checked there,
/// where nobody can swap it, so a file renamed over the name meanwhile is never removed;
/// if the private name holds another file after all, it goes back.
pub(super) fn remove_if_placed(
    root: &Path,
    key: &Key,
    placed: PlacedFile,
) -> std::io::Result<bool> {
    use rustix::fs::{renameat_with, statat, unlinkat, AtFlags, RenameFlags};
    use rustix::io::Errno;
    let dir = match local::open_parent_dir(root, key, false) {
        Ok(d) => d,
        Err(local::PlaceError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(false)
        }
        Err(local::PlaceError::Io(e)) => return Err(e),
        // A parent became a symlink or a file: not our file any more.
        Err(_) => return Ok(false),
    };
    let name = key.file_name();
    match statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if placed.is(&st) => {}
        Ok(_) | Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let private = format!("{}{:016x}", local::DELETE_PREFIX, fastrand::u64(..));
    match renameat_with(&dir, name, &dir, private.as_str(), RenameFlags::NOREPLACE) {
        Ok(()) => {}
        Err(Errno::NOENT) => return Ok(false),
        // No RENAME_NOREPLACE here: the plain check (above) then unlink.
        Err(Errno::INVAL | Errno::NOSYS) => {
            return match unlinkat(&dir, name, AtFlags::empty()) {
                Ok(()) => Ok(true),
                Err(Errno::NOENT) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    }
    let ours = matches!(statat(&dir, private.as_str(), AtFlags::SYMLINK_NOFOLLOW), Ok(st) if placed.is(&st));
    if !ours {
        // Another writer's file took the name between the check and the rename: back.
        return match renameat_with(&dir, private.as_str(), &dir, name, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(false),
            // A yet newer file has the name: it would have replaced this one anyway.
            Err(Errno::EXIST) => unlinkat(&dir, private.as_str(), AtFlags::empty())
                .map(|()| false)
                .map_err(Into::into),
            Err(e) => Err(e.into()),
        };
    }
    unlinkat(&dir, private.as_str(), AtFlags::empty())?;
    drop(dir);
    local::prune_empty_parents(root, key);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_close_in_the_listing_share_a_run() {
        assert_eq!(runs(&[]), Vec::<Range<usize>>::new());
        assert_eq!(runs(&[7]), vec![0..1]);
        assert_eq!(runs(&[0, 1, 2, 999, 1999]), vec![0..5]);
        assert_eq!(runs(&[0, 1, 1002, 1003, 5000]), vec![0..2, 2..4, 4..5]);
    }

    #[test]
    fn a_range_is_listed_from_its_common_prefix() {
        assert_eq!(
            range_query("clips/1/video.mp4", "clips/9/video.mp4"),
            ("clips/", Some("clips/1/video.mp"))
        );
        // One key: the key itself is the prefix; nothing to start after.
        assert_eq!(range_query("a/b.mp4", "a/b.mp4"), ("a/b.mp4", None));
        // A key that is a prefix of the last one.
        assert_eq!(range_query("a/b", "a/b/c"), ("a/b", None));
        // No common prefix at all, and characters wider than a byte.
        assert_eq!(range_query("é1", "z"), ("", Some("é")));
        assert_eq!(range_query("dé", "dz"), ("d", None));
    }
}
