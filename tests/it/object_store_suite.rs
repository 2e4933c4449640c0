//! object_store's own conformance suite (`object_store::integration`), run against
//! [`LocalStore`] in a temp dir and against S3 (s3s-fs in-process; moto when
//! `STOWAGE_TEST_S3_ENDPOINT` is set), plus the local guarantees the suite does not check:
//! symlinks, invalid keys, `#<digits>` keys, Content-Type, racing creators, stowage's own
//! files.
//!
//! `cargo test --test it object_store_suite` runs it all; `object_store_suite::local::`
//! one backend.

use std::sync::Arc;

use object_store::integration;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutOptions, WriteMultipart,
};
use stowage::LocalStore;

use crate::support::s3::TestS3;

fn local() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = LocalStore::new(dir.path()).expect("LocalStore on a temp dir");
    (dir, store)
}

/// Every file and directory under `root` (relative paths), stowage's own names included,
/// sorted; symlinks are listed, not followed.
fn tree(root: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read dir") {
            let e = e.expect("dir entry");
            let path = e.path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().expect("file type").is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v.sort();
    v
}

async fn keys(store: &dyn ObjectStore, prefix: Option<&str>) -> Vec<String> {
    use futures::TryStreamExt;
    let prefix = prefix.map(Path::from);
    store
        .list(prefix.as_ref())
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .expect("list")
}

/// object_store's suite against `LocalStore`.
///
/// Not run: `multipart`, `multipart_with_opts`, `multipart_put_part_out_of_order` (they
/// drive `MultipartStore`, upload ids that outlive the upload handle, which LocalStore
/// does not implement; `put_multipart` is covered by `stream_get`, `multipart_out_of_order`
/// and `multipart_race_condition`), `list_paginated` (`PaginatedListStore`, not
/// implemented), `response_extensions` (HTTP responses only). `put_opts` runs with
/// `supports_update = false`: `PutMode::Update` is `NotImplemented` (see `LocalStore`).
mod local {
    use super::*;

    macro_rules! suite {
        ($($name:ident => |$s:ident| $body:expr;)*) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (_dir, store) = local();
                let $s: &dyn ObjectStore = &store;
                $body.await;
            }
        )*};
    }

    suite! {
        put_get_delete_list => |s| integration::put_get_delete_list(s);
        put_get_attributes => |s| integration::put_get_attributes(s);
        get_opts => |s| integration::get_opts(s);
        put_opts => |s| integration::put_opts(s, false);
        stream_get => |s| integration::stream_get(s);
        list_uses_directories_correctly => |s| integration::list_uses_directories_correctly(s);
        list_with_delimiter => |s| integration::list_with_delimiter(s);
        rename_and_copy => |s| integration::rename_and_copy(s);
        copy_if_not_exists => |s| integration::copy_if_not_exists(s);
        copy_rename_nonexistent_object => |s| integration::copy_rename_nonexistent_object(s);
        multipart_out_of_order => |s| integration::multipart_out_of_order(s);
        multipart_race_condition => |s| integration::multipart_race_condition(s, true);
        list_with_offset_exclusivity => |s| integration::list_with_offset_exclusivity(s);
    }

    #[tokio::test]
    async fn get_nonexistent_object() {
        let (_dir, store) = local();
        let err = integration::get_nonexistent_object(&store, None)
            .await
            .unwrap_err();
        assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    }
}

/// stowage's own guarantees, on the same store.
mod local_guarantees {
    use super::*;

    #[tokio::test]
    async fn a_symlink_inside_the_root_is_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"outside").unwrap();
        let (dir, store) = local();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("linkdir")).unwrap();
        store.put(&Path::from("real"), "in".into()).await.unwrap();

        for p in ["link", "linkdir/secret"] {
            let err = store.get(&Path::from(p)).await.unwrap_err();
            assert!(
                matches!(err, object_store::Error::NotFound { .. }),
                "get {p}: {err}"
            );
            let err = store.head(&Path::from(p)).await.unwrap_err();
            assert!(
                matches!(err, object_store::Error::NotFound { .. }),
                "head {p}: {err}"
            );
        }
        assert_eq!(keys(&store, None).await, ["real"]);
        assert_eq!(keys(&store, Some("linkdir")).await, Vec::<String>::new());
        let listed = store
            .list_with_delimiter(None)
            .await
            .unwrap()
            .objects
            .into_iter()
            .map(|m| m.location.to_string())
            .collect::<Vec<_>>();
        assert_eq!(listed, ["real"]);

        // Writing, copying or renaming through the symlinked directory fails and leaves the
        // outside alone.
        store
            .put(&Path::from("linkdir/new"), "x".into())
            .await
            .unwrap_err();
        store
            .copy(&Path::from("real"), &Path::from("linkdir/secret"))
            .await
            .unwrap_err();
        store
            .rename(&Path::from("real"), &Path::from("linkdir/secret"))
            .await
            .unwrap_err();
        store
            .rename(&Path::from("link"), &Path::from("moved"))
            .await
            .unwrap_err();
        store.delete(&Path::from("linkdir/secret")).await.unwrap();
        assert_eq!(tree(outside.path()), ["secret"]);
        assert_eq!(
            std::fs::read(outside.path().join("secret")).unwrap(),
            b"outside"
        );
    }

    #[tokio::test]
    async fn a_path_that_is_not_a_key_is_an_error_and_touches_nothing() {
        let (dir, store) = local();
        for p in [".stowage.lock", "a/.stowage-tmp.0", "a\\b", "..\\x"] {
            let path = Path::parse(p).unwrap();
            let err = store.put(&path, "x".into()).await.unwrap_err();
            assert!(err.to_string().contains("not a stowage key"), "{p}: {err}");
            store.get(&path).await.unwrap_err();
            store.delete(&path).await.unwrap_err();
            store.put_multipart(&path).await.unwrap_err();
        }
        assert_eq!(tree(dir.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn keys_ending_in_hash_digits_round_trip() {
        let (_dir, store) = local();
        let path = Path::parse("frames/take#2").unwrap();
        store.put(&path, "two".into()).await.unwrap();
        assert_eq!(
            store.get(&path).await.unwrap().bytes().await.unwrap(),
            "two"
        );
        assert_eq!(keys(&store, None).await, ["frames/take#2"]);
    }

    #[tokio::test]
    async fn content_type_survives_put_and_get_and_is_the_one_blob_store_reads() {
        let (dir, store) = local();
        let path = Path::from("page.html");
        let attrs = Attributes::from_iter([(Attribute::ContentType, "text/html")]);
        store
            .put_opts(&path, "<p>".into(), PutOptions::from(attrs.clone()))
            .await
            .unwrap();
        assert_eq!(store.get(&path).await.unwrap().attributes, attrs);
        let meta = stowage::BlobStore::local(dir.path())
            .unwrap()
            .head(&stowage::Key::parse("page.html").unwrap())
            .await
            .unwrap();
        assert_eq!(meta.content_type.as_deref(), Some("text/html"));
        let head = store.head(&path).await.unwrap();
        assert_eq!(
            head.e_tag, meta.etag,
            "LocalStore and BlobStore agree on ETags"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn put_mode_create_from_8_tasks_has_exactly_one_winner() {
        let (dir, store) = local();
        let store = Arc::new(store);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let opts = PutOptions::from(PutMode::Create);
                    let r = store
                        .put_opts(&Path::from("race/x"), format!("{i}").into(), opts)
                        .await;
                    (i, r)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (i, Ok(_)) => winners.push(i),
                (_, Err(object_store::Error::AlreadyExists { .. })) => {}
                (i, Err(e)) => panic!("task {i}: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let body = store.get(&Path::from("race/x")).await.unwrap();
        assert_eq!(body.bytes().await.unwrap(), winners[0].to_string());
        assert_eq!(tree(dir.path()), ["race", "race/x"], "no temp file left");
    }

    #[tokio::test]
    async fn stowage_files_and_names_that_are_not_keys_are_invisible_and_listing_is_in_key_order() {
        let (dir, store) = local();
        for k in ["a/x", "a-b", "a0", "a/b/c", "b"] {
            store.put(&Path::from(k), "x".into()).await.unwrap();
        }
        std::fs::write(dir.path().join(".stowage.lock"), b"").unwrap();
        std::fs::write(dir.path().join("a/.stowage-tmp.00ff"), b"").unwrap();
        std::fs::create_dir(dir.path().join(".stowage-dir")).unwrap();
        std::fs::write(dir.path().join(".stowage-dir/y"), b"").unwrap();
        // Names that are not keys are skipped, not the end of the listing.
        std::fs::write(dir.path().join("a/bad\nname"), b"").unwrap();
        std::fs::write(dir.path().join("a/back\\slash"), b"").unwrap();

        assert_eq!(keys(&store, None).await, ["a-b", "a/b/c", "a/x", "a0", "b"]);
        assert_eq!(keys(&store, Some("a")).await, ["a/b/c", "a/x"]);
        let r = store.list_with_delimiter(None).await.unwrap();
        let objects: Vec<_> = r.objects.iter().map(|m| m.location.to_string()).collect();
        assert_eq!(objects, ["a-b", "a0", "b"]);
        assert_eq!(r.common_prefixes, [Path::from("a")]);
        let after: Vec<String> = {
            use futures::TryStreamExt;
            store
                .list_with_offset(None, &Path::from("a/b/c"))
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
                .unwrap()
        };
        assert_eq!(after, ["a/x", "a0", "b"]);
    }

    #[tokio::test]
    async fn an_aborted_or_dropped_multipart_upload_leaves_nothing() {
        let (dir, store) = local();
        let mut upload = store.put_multipart(&Path::from("d/big")).await.unwrap();
        upload.put_part(vec![1u8; 1000].into()).await.unwrap();
        upload.abort().await.unwrap();
        let mut w = WriteMultipart::new(store.put_multipart(&Path::from("d/big")).await.unwrap());
        w.write(b"partial");
        drop(w);
        assert_eq!(keys(&store, None).await, Vec::<String>::new());
        assert!(
            tree(dir.path()).iter().all(|p| !p.contains(".stowage")),
            "{:?}",
            tree(dir.path())
        );
    }

    #[tokio::test]
    async fn delete_and_rename_prune_emptied_directories_but_never_the_root() {
        let (dir, store) = local();
        store.put(&Path::from("a/b/c"), "1".into()).await.unwrap();
        store.put(&Path::from("x/y/z"), "2".into()).await.unwrap();
        store.delete(&Path::from("a/b/c")).await.unwrap();
        store.delete(&Path::from("a/b/c")).await.unwrap(); // missing: Ok, as on S3
        store
            .rename(&Path::from("x/y/z"), &Path::from("top"))
            .await
            .unwrap();
        assert_eq!(tree(dir.path()), ["top"]);
        store.delete(&Path::from("top")).await.unwrap();
        assert_eq!(tree(dir.path()), Vec::<String>::new());
        assert!(dir.path().is_dir());
    }

    #[tokio::test]
    async fn get_hands_over_the_open_file() {
        let (_dir, store) = local();
        store.put(&Path::from("f"), "body".into()).await.unwrap();
        let r = store.get(&Path::from("f")).await.unwrap();
        assert!(
            matches!(r.payload, object_store::GetResultPayload::File(..)),
            "{:?}",
            r.payload
        );
    }

    #[test]
    fn new_refuses_a_missing_root_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = LocalStore::new(dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let err = LocalStore::new(dir.path().join("file")).unwrap_err();
        assert!(err.to_string().contains("must be a directory"), "{err}");
        let store = LocalStore::new(dir.path()).unwrap();
        assert_eq!(
            store.to_string(),
            format!("LocalStore({})", dir.path().display())
        );
    }
}

/// One `#[tokio::test]` per suite function against the S3 server `$start` builds, through
/// the client stowage builds for it (`stowage::s3::object_store`: its timeouts, SHA-256
/// upload checksums). `$needs_moto` is `all()` (true) for moto, whose tests
/// are then `#[ignore]`d, and `any()` (false) for s3s-fs.
macro_rules! s3_tests {
    ($start:expr, $needs_moto:meta, {$($name:ident => |$s:ident| $body:expr;)*}) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr($needs_moto, ignore = "needs moto: STOWAGE_TEST_S3_ENDPOINT (.ci/run starts it)")]
        async fn $name() {
            let server = $start;
            let store = stowage::s3::object_store(&server.config()).expect("S3 client");
            let $s = &store;
            $body.await;
        }
    )*};
}

/// The suite functions every S3 server here passes.
///
/// Not run anywhere: `copy_if_not_exists` (AmazonS3 without a `copy_if_not_exists`
/// setting, as stowage builds it, answers `NotSupported` before asking the server, and
/// `copy_rename_nonexistent_object` ends with that call), `response_extensions` (needs a
/// client built with its marker connector).
macro_rules! s3_suite {
    ($start:expr, $needs_moto:meta) => {
        s3_tests!($start, $needs_moto, {
            stream_get => |s| integration::stream_get(s);
            list_uses_directories_correctly => |s| integration::list_uses_directories_correctly(s);
            list_with_delimiter => |s| integration::list_with_delimiter(s);
            rename_and_copy => |s| integration::rename_and_copy(s);
            multipart => |s| integration::multipart(s, s);
            multipart_put_part_out_of_order => |s| integration::multipart_put_part_out_of_order(s, s);
            multipart_out_of_order => |s| integration::multipart_out_of_order(s);
            multipart_race_condition => |s| integration::multipart_race_condition(s, true);
            list_with_offset_exclusivity => |s| integration::list_with_offset_exclusivity(s);
            list_paginated => |s| integration::list_paginated(s, s);
            get_nonexistent_object => |s| async {
                let err = integration::get_nonexistent_object(s, None).await.unwrap_err();
                assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
            };
        });
    };
}

/// s3s-fs 0.14.1 in-process: the common list plus the attribute tests moto fails. Not
/// run, because s3s-fs cannot pass them:
/// `put_get_delete_list` (a suffix range longer than the object, `bytes=-100`, is a 500
/// instead of the whole object), `get_opts` (it ignores `If-Unmodified-Since`), `put_opts`
/// (its `If-Match` is not atomic: 5 racing incrementers reach 34 of 50).
mod s3s_fs {
    use super::*;
    s3_suite!(TestS3::start(), any());
    s3_tests!(TestS3::start(), any(), {
        put_get_attributes => |s| integration::put_get_attributes(s);
        multipart_with_opts => |s| integration::multipart_with_opts(s, s);
    });
}

/// moto, where `.ci/run` starts it: the common list plus what s3s-fs cannot pass. Not run:
/// `put_get_attributes` and `multipart_with_opts` (moto 5.2 drops user metadata whose name
/// has an `_`, such as the suite's `x-amz-meta-test_key`; checked with `aws s3api`).
mod moto {
    use super::*;
    s3_suite!(TestS3::moto(), all());
    s3_tests!(TestS3::moto(), all(), {
        put_get_delete_list => |s| integration::put_get_delete_list(s);
        get_opts => |s| integration::get_opts(s);
        put_opts => |s| integration::put_opts(s, true);
    });
}
