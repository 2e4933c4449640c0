//! A clip deleted through the read-through store while it is being copied into the
//! primary stays deleted: by a catch-up `migrate s3-to-local` running beside the service,
//! and by another process's copy on read.
//!
//! Each race is made deterministic by [`Gated`], a wrapper around the bucket's store that
//! holds one request of [`KEY`] until the test has done its delete (object_store's
//! `ThrottledStore` wraps a store the same way): no sleeps.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use stowage::ops::migrate;
use stowage::{BlobStore, LocalStore, NoopReporter, ReadThrough, ReadThroughOptions};
use tokio::sync::{oneshot, Semaphore};

use crate::support::s3::TestS3;

const KEY: &str = "clips/9/video.mp4";

/// Which request of [`KEY`] a [`Gated`] store holds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hold {
    /// The GET: answered by the server (the object existed), its body held back.
    Body,
    /// The HEAD that follows the GET.
    Head,
    /// The GET, before it reaches the server.
    Get,
    /// The second listing (migrate's re-listing after its copies), before it is made.
    Relisting,
    /// Nothing: the run goes through.
    Nothing,
}

/// The bucket as migrate sees it, with one request of [`KEY`] held until the test
/// releases it: a deterministic "migrate is in the middle of copying this clip". A
/// wrapper store, as object_store's own `ThrottledStore`, not a flag in migrate.
#[derive(Debug)]
struct Gated {
    inner: Arc<dyn ObjectStore>,
    hold: Hold,
    reached: Mutex<Option<oneshot::Sender<()>>>,
    release: Arc<Semaphore>,
    /// Listings made so far.
    lists: AtomicUsize,
    /// HEAD requests made so far.
    heads: AtomicUsize,
    /// Keys left out of every listing after the first (a listing that misses what it
    /// should show: out of order, or lagging).
    hidden_from_relistings: Mutex<Vec<String>>,
}

impl std::fmt::Display for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gated({})", self.inner)
    }
}

impl Gated {
    /// The store, a receiver told when the held request is reached, and the gate.
    fn new(
        inner: Arc<dyn ObjectStore>,
        hold: Hold,
    ) -> (Arc<Gated>, oneshot::Receiver<()>, Arc<Semaphore>) {
        let (tx, rx) = oneshot::channel();
        let release = Arc::new(Semaphore::new(0));
        let store = Arc::new(Gated {
            inner,
            hold,
            reached: Mutex::new(Some(tx)),
            release: release.clone(),
            lists: AtomicUsize::new(0),
            heads: AtomicUsize::new(0),
            hidden_from_relistings: Mutex::new(Vec::new()),
        });
        (store, rx, release)
    }

    /// True (once) for the request to hold.
    fn take(&self, location: &Path, head: bool) -> bool {
        let wanted = match self.hold {
            Hold::Body | Hold::Get => !head,
            Hold::Head => head,
            Hold::Relisting | Hold::Nothing => false,
        };
        if location.as_ref() != KEY || !wanted {
            return false;
        }
        match self.reached.lock().unwrap().take() {
            Some(tx) => {
                let _ = tx.send(());
                true
            }
            None => false,
        }
    }
}

#[async_trait]
impl ObjectStore for Gated {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let head = options.head;
        if head {
            self.heads.fetch_add(1, Ordering::SeqCst);
        }
        if self.hold != Hold::Body && self.take(location, head) {
            let _ = self.release.acquire().await.expect("gate open");
            return self.inner.get_opts(location, options).await;
        }
        let res = self.inner.get_opts(location, options).await?;
        if !self.take(location, head) {
            return Ok(res);
        }
        // The server answered: the whole body is read now, and handed out only once
        // the test opens the gate.
        let (meta, range, attributes) =
            (res.meta.clone(), res.range.clone(), res.attributes.clone());
        let body = res.bytes().await?;
        let release = self.release.clone();
        let stream = futures::stream::once(async move {
            let _ = release.acquire().await.expect("gate open");
            Ok::<Bytes, object_store::Error>(body)
        })
        .boxed();
        Ok(GetResult {
            payload: GetResultPayload::Stream(stream),
            meta,
            range,
            attributes,
            extensions: Default::default(),
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let first = self.lists.fetch_add(1, Ordering::SeqCst) == 0;
        let (inner, prefix) = (self.inner.clone(), prefix.cloned());
        let hidden = match first {
            true => Vec::new(),
            false => self.hidden_from_relistings.lock().unwrap().clone(),
        };
        // The re-listing that covers KEY (an earlier one may cover only the other clip).
        let covers = prefix.as_ref().is_none_or(|p| KEY.starts_with(p.as_ref()));
        let reached = match (first, self.hold) {
            (false, Hold::Relisting) if covers => self.reached.lock().unwrap().take(),
            _ => None,
        };
        let release = self.release.clone();
        futures::stream::once(async move {
            if let Some(tx) = reached {
                let _ = tx.send(());
                let _ = release.acquire().await.expect("gate open");
            }
            // The listing is made only now, after the gate.
            inner.list(prefix.as_ref())
        })
        .flatten()
        .filter(move |m| {
            let shown = !matches!(m, Ok(m) if hidden.iter().any(|h| h == m.location.as_ref()));
            futures::future::ready(shown)
        })
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    _s3: TestS3,
    root: std::path::PathBuf,
    bucket: Arc<dyn ObjectStore>,
    local: Arc<LocalStore>,
    /// The service's store: the local root read through to the bucket, dual write.
    service: ReadThrough,
    body: Vec<u8>,
}

async fn setup() -> Setup {
    let s3 = TestS3::start();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir(&root).unwrap();
    let bucket: Arc<dyn ObjectStore> = Arc::new(stowage::s3::object_store(&s3.config()).unwrap());
    // Bigger than migrate's write buffer, so it streams through a temp file.
    let body: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    bucket
        .put(&Path::from(KEY), body.clone().into())
        .await
        .unwrap();
    bucket
        .put(&Path::from("clips/1/video.mp4"), "one".into())
        .await
        .unwrap();
    let local = Arc::new(LocalStore::new(&root).unwrap());
    let service = ReadThrough::new(
        local.clone(),
        bucket.clone(),
        ReadThroughOptions::default().with_dual_write(true),
    );
    Setup {
        _dir: dir,
        _s3: s3,
        root,
        bucket,
        local,
        service,
        body,
    }
}

/// Waits until the gated request is reached; a bounded wait, so a run that never makes
/// it fails instead of hanging.
async fn until_reached(rx: oneshot::Receiver<()>) {
    match tokio::time::timeout(std::time::Duration::from_secs(60), rx).await {
        Ok(Ok(())) => {}
        _ => panic!("the request to hold was never made"),
    }
}

fn opts() -> migrate::MigrateOptions {
    let mut opts = migrate::MigrateOptions::default();
    opts.min_free = stowage::SizeSpec::Bytes(1 << 20);
    opts
}

/// Starts `migrate s3-to-local` from the bucket into the store, with `hold` held.
fn migrate_through(
    t: &Setup,
    hold: Hold,
) -> (
    tokio::task::JoinHandle<stowage::Result<migrate::MigrateSummary>>,
    oneshot::Receiver<()>,
    Arc<Semaphore>,
) {
    let (gated, reached, release) = Gated::new(t.bucket.clone(), hold);
    (migrate_with(t, gated), reached, release)
}

/// Starts `migrate s3-to-local` from `gated` into the store.
fn migrate_with(
    t: &Setup,
    gated: Arc<Gated>,
) -> tokio::task::JoinHandle<stowage::Result<migrate::MigrateSummary>> {
    let src = BlobStore::from_object_store(gated, "", "gated bucket");
    let root = t.root.clone();
    tokio::spawn(async move { migrate::s3_to_local(&src, &root, &opts(), &NoopReporter).await })
}

fn temp_files(root: &std::path::Path) -> usize {
    let dir = root.join("clips/9");
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".stowage-tmp."))
            .count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clip_deleted_through_the_service_while_migrate_downloads_it_stays_deleted() {
    let t = setup().await;
    let (run, reached, release) = migrate_through(&t, Hold::Body);

    // migrate has the object's answer from the bucket and its temp file open.
    until_reached(reached).await;
    assert_eq!(temp_files(&t.root), 1);
    // The service deletes the clip: the bucket, then the local name (not there yet).
    t.service.delete(&Path::from(KEY)).await.unwrap();
    assert!(t.bucket.head(&Path::from(KEY)).await.is_err());
    release.add_permits(1);

    let summary = run.await.unwrap().unwrap();
    assert!(
        !t.root.join(KEY).exists(),
        "the deleted clip came back on disk: {summary:?}"
    );
    assert!(
        !t.root.join("clips/9").exists(),
        "its empty directory is pruned"
    );
    assert_eq!(temp_files(&t.root), 0);
    assert_eq!(summary.copied, 1, "{summary:?}");
    let vanished: Vec<&str> = summary.vanished.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(vanished, [KEY], "{summary:?}");
    assert!(
        summary.vanished[0].reason.contains("removed"),
        "{summary:?}"
    );
    assert!(!summary.has_problems(), "{summary:?}");
    // The service does not read it back either.
    assert!(t.service.get(&Path::from(KEY)).await.is_err());
    assert_eq!(
        std::fs::read(t.root.join("clips/1/video.mp4")).unwrap(),
        b"one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clip_written_again_locally_before_migrate_asks_the_bucket_is_kept() {
    let t = setup().await;
    let (run, reached, release) = migrate_through(&t, Hold::Relisting);

    // migrate has committed the clip and is about to ask the bucket about it.
    until_reached(reached).await;
    assert_eq!(std::fs::read(t.root.join(KEY)).unwrap(), t.body);
    // The service deletes it (the bucket, then the committed file), then a new clip is
    // written under the same name on disk only.
    t.service.delete(&Path::from(KEY)).await.unwrap();
    assert!(!t.root.join(KEY).exists());
    t.local
        .put(&Path::from(KEY), "re-rendered".into())
        .await
        .unwrap();
    release.add_permits(1);

    let summary = run.await.unwrap().unwrap();
    assert_eq!(
        std::fs::read(t.root.join(KEY)).unwrap(),
        b"re-rendered",
        "a file migrate did not place is never removed: {summary:?}"
    );
    let vanished: Vec<&str> = summary.vanished.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(vanished, [KEY], "{summary:?}");
    assert!(!summary.has_problems(), "{summary:?}");
}

/// The bucket is asked again about every copy with one listing for clips close together in
/// it, not a HEAD each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_asks_the_bucket_again_with_a_listing_not_a_head_per_clip() {
    let t = setup().await;
    let (gated, _reached, _release) = Gated::new(t.bucket.clone(), Hold::Nothing);
    let summary = migrate_with(&t, gated.clone()).await.unwrap().unwrap();
    assert_eq!(summary.copied, 2, "{summary:?}");
    assert_eq!(gated.heads.load(Ordering::SeqCst), 0);
    // The plan's listing and one re-listing (two if the clips were placed over a second
    // apart).
    let lists = gated.lists.load(Ordering::SeqCst);
    assert!((2..=3).contains(&lists), "{lists} listings");
}

/// A re-listing that misses a clip the bucket still holds (out of order, lagging) costs a
/// HEAD for it, never the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clip_the_relisting_misses_is_asked_about_and_kept() {
    let t = setup().await;
    let (gated, _reached, _release) = Gated::new(t.bucket.clone(), Hold::Nothing);
    gated
        .hidden_from_relistings
        .lock()
        .unwrap()
        .push(KEY.to_owned());
    let summary = migrate_with(&t, gated.clone()).await.unwrap().unwrap();
    assert_eq!(std::fs::read(t.root.join(KEY)).unwrap(), t.body);
    assert_eq!(summary.copied, 2, "{summary:?}");
    assert!(summary.vanished.is_empty(), "{summary:?}");
    assert_eq!(gated.heads.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clip_deleted_after_the_listing_before_its_get_is_reported_not_failed() {
    let t = setup().await;
    let (run, reached, release) = migrate_through(&t, Hold::Get);
    until_reached(reached).await;
    t.service.delete(&Path::from(KEY)).await.unwrap();
    release.add_permits(1);

    let summary = run.await.unwrap().unwrap();
    assert!(!t.root.join(KEY).exists());
    assert_eq!(temp_files(&t.root), 0);
    assert_eq!(summary.copied, 1, "{summary:?}");
    let vanished: Vec<&str> = summary.vanished.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(vanished, [KEY], "{summary:?}");
    assert!(!summary.has_problems(), "{summary:?}");
}

/// Two processes of the service over the same root and bucket: `a` copies on read, `b`
/// deletes. `a`'s fallback is gated.
struct TwoProcesses {
    t: Setup,
    a: ReadThrough,
    b: ReadThrough,
    reached: oneshot::Receiver<()>,
    release: Arc<Semaphore>,
}

async fn two_processes(hold: Hold) -> TwoProcesses {
    let t = setup().await;
    let (gated, reached, release) = Gated::new(t.bucket.clone(), hold);
    let a = ReadThrough::new(t.local.clone(), gated, ReadThroughOptions::default());
    let b = t.service.clone();
    TwoProcesses {
        t,
        a,
        b,
        reached,
        release,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_on_read_in_one_process_does_not_bring_back_a_clip_another_deleted() {
    let p = two_processes(Hold::Body).await;
    // `a` reads the clip: the bucket has answered, the body is on its way.
    let got = p.a.get(&Path::from(KEY)).await.unwrap();
    until_reached(p.reached).await;
    // `b` deletes it: the bucket, then the local name (not there yet).
    p.b.delete(&Path::from(KEY)).await.unwrap();
    p.release.add_permits(1);
    // `a`'s reader still gets the bytes it asked for before the delete...
    assert_eq!(got.bytes().await.unwrap().len(), p.t.body.len());
    // ...but the copy does not stay.
    p.a.wait_for_copies().await;
    assert!(
        !p.t.root.join(KEY).exists(),
        "the deleted clip came back: {:?}",
        p.a.stats()
    );
    let stats = p.a.stats();
    assert_eq!((stats.copies, stats.copies_removed), (1, 1), "{stats:?}");
    assert!(p.b.get(&Path::from(KEY)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_on_read_never_removes_a_newer_write_when_the_fallback_lost_the_object() {
    let p = two_processes(Hold::Head).await;
    let got = p.a.get(&Path::from(KEY)).await.unwrap();
    assert_eq!(got.bytes().await.unwrap().len(), p.t.body.len());
    // `a` has committed its copy and is about to ask the bucket again.
    until_reached(p.reached).await;
    assert!(p.t.root.join(KEY).exists());
    // `b` deletes the clip (the bucket, then `a`'s copy); a new one is written on disk.
    p.b.delete(&Path::from(KEY)).await.unwrap();
    p.t.local
        .put(&Path::from(KEY), "re-rendered".into())
        .await
        .unwrap();
    p.release.add_permits(1);
    p.a.wait_for_copies().await;
    assert_eq!(std::fs::read(p.t.root.join(KEY)).unwrap(), b"re-rendered");
    assert_eq!(p.a.stats().copies_removed, 0, "{:?}", p.a.stats());
}
