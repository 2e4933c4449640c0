//! `BlobStore` and the object_store ecosystem, both ways: a store the caller built keeps
//! its kind behind `BlobStore`, and `BlobStore::object_store` hands any backend back out.

use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use stowage::{BackendKind, BlobStore, Error, Key};

fn key(s: &str) -> Key {
    Key::parse(s).unwrap()
}

#[tokio::test]
async fn a_callers_own_store_keeps_its_kind_and_round_trips() {
    let mine = Arc::new(InMemory::new());
    let store = BlobStore::from_object_store(mine.clone(), "tenant", "mine");
    assert_eq!(store.kind(), BackendKind::ObjectStore);
    assert_eq!(BlobStore::memory().kind(), BackendKind::Memory);

    let k = key("clips/cat.mp4");
    store
        .put_opts(&k, Bytes::from_static(b"meow"), Some("video/mp4"))
        .await
        .unwrap();
    assert_eq!(store.get(&k).await.unwrap(), "meow");
    assert_eq!(
        store.head(&k).await.unwrap().content_type.as_deref(),
        Some("video/mp4")
    );
    // Written under the prefix, in the caller's own store.
    let raw = mine
        .get(&ObjPath::from("tenant/clips/cat.mp4"))
        .await
        .unwrap();
    assert_eq!(raw.bytes().await.unwrap(), "meow");
    let listed: Vec<String> = store
        .list("clips/")
        .map_ok(|m| m.key.to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed, ["clips/cat.mp4"]);

    // The store handed back is the caller's: what it writes, the facade reads.
    store
        .object_store()
        .put(&ObjPath::from("tenant/dog.mp4"), "woof".into())
        .await
        .unwrap();
    assert_eq!(store.get(&key("dog.mp4")).await.unwrap(), "woof");

    match store.download_url(&k).await {
        Err(Error::Backend { source, .. }) => {
            assert!(
                source
                    .to_string()
                    .starts_with("this store has no download URLs"),
                "{source}"
            )
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert!(store.delete(&k).await.unwrap());
    assert!(!store.exists(&k).await.unwrap());
}

#[tokio::test]
async fn the_local_backend_as_an_object_store_sees_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::local(dir.path()).unwrap();
    let os = store.object_store();

    store
        .put(&key("a/from-facade.txt"), Bytes::from_static(b"facade"))
        .await
        .unwrap();
    os.put(&ObjPath::from("a/from-os.txt"), "object store".into())
        .await
        .unwrap();

    assert_eq!(
        os.get(&ObjPath::from("a/from-facade.txt"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
        "facade"
    );
    assert_eq!(
        store.get(&key("a/from-os.txt")).await.unwrap(),
        "object store"
    );
    assert_eq!(
        std::fs::read(dir.path().join("a/from-os.txt")).unwrap(),
        b"object store"
    );

    let mut listed: Vec<String> = os
        .list(Some(&ObjPath::from("a")))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    assert_eq!(listed, ["a/from-facade.txt", "a/from-os.txt"]);
}

/// The router proxies a store the caller built, as it does Memory.
#[cfg(feature = "http")]
#[tokio::test]
async fn the_router_proxies_a_callers_own_store() {
    use stowage::http::{router, ServeOptions};

    let store = BlobStore::from_object_store(Arc::new(InMemory::new()), "", "mine");
    store
        .put(&key("clips/cat.mp4"), Bytes::from_static(b"meow"))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app: axum::Router = axum::Router::new().nest(
        "/api/files",
        router(store, ServeOptions::default()).unwrap(),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let resp = reqwest::get(format!("http://{addr}/api/files/clips/cat.mp4"))
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), "meow");
}

/// A read-through store over a local primary hands out the primary's signed URLs, and
/// the router over the same facade answers them, reading through to the fallback.
#[cfg(feature = "http")]
#[tokio::test]
async fn a_read_through_facade_hands_out_urls_its_router_answers() {
    use stowage::config::LocalConfig;
    use stowage::http::{router, ServeOptions};
    use stowage::read_through::{ReadThroughConfig, ReadThroughOptions};
    use stowage::{LocalUrls, StoreConfig};

    let (primary_dir, fallback_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let urls = LocalUrls {
        base_url: format!("http://{addr}"),
        secret: Some("a-secret-of-at-least-thirty-two-bytes!".into()),
        ..LocalUrls::default()
    };
    let cfg = ReadThroughConfig::new(
        StoreConfig::Local(LocalConfig {
            root: primary_dir.path().to_owned(),
            urls: urls.clone(),
        }),
        StoreConfig::Local(LocalConfig {
            root: fallback_dir.path().to_owned(),
            urls: LocalUrls::default(),
        }),
        ReadThroughOptions::default(),
    );
    let (store, rt) = cfg.open().unwrap();
    // The clip is only in the fallback, as right after the switch.
    BlobStore::local(fallback_dir.path())
        .unwrap()
        .put(&key("clips/7/video.mp4"), Bytes::from_static(b"frames"))
        .await
        .unwrap();

    let url = store.download_url(&key("clips/7/video.mp4")).await.unwrap();
    assert!(
        url.starts_with(&format!("http://{addr}/api/files/clips/7/video.mp4?")),
        "{url}"
    );
    assert!(
        url.contains("sig="),
        "signed like the primary's URLs: {url}"
    );

    let app: axum::Router = axum::Router::new().nest(
        "/api/files",
        router(store.clone(), ServeOptions::default()).unwrap(),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), "frames");
    assert_eq!(rt.stats().fallback_hits, 1);

    // Without the signature the router refuses, as it does for the local store itself.
    let unsigned = url.split('?').next().unwrap();
    assert_eq!(
        reqwest::get(unsigned).await.unwrap().status(),
        reqwest::StatusCode::FORBIDDEN
    );
}
