//! Watches: resuming from a resourceVersion, bookmarks, 410 after a
//! compaction, the ends of a watch, and held watches.

use super::*;

#[tokio::test]
async fn a_watch_resumes_after_its_resource_version_then_goes_live() {
    let api = server().await;
    let rv_a = api.apply(&namespace("a")).expect("apply");
    api.apply(&namespace("b")).expect("apply");
    api.apply(&pod("b", "other-kind", "Running"))
        .expect("apply");
    api.apply(&namespace("c")).expect("apply");
    let namespaces: Api<Namespace> = Api::all(api.client().expect("client"));
    let mut events = pin!(
        namespaces
            .watch(&WatchParams::default(), &rv_a.to_string())
            .await
            .expect("watch")
    );
    assert_eq!(added_name(next(&mut events).await), "b");
    assert_eq!(added_name(next(&mut events).await), "c");
    let rv = api
        .update::<Namespace>("", "a", |ns| {
            ns.metadata.labels = Some(BTreeMap::from([("k".into(), "v".into())]));
        })
        .expect("update");
    match next(&mut events).await {
        Some(WatchEvent::Modified(ns)) => {
            assert_eq!(ns.metadata.name.as_deref(), Some("a"));
            assert_eq!(
                ns.metadata.resource_version.as_deref(),
                Some(&*rv.to_string())
            );
        }
        other => panic!("want MODIFIED, got {other:?}"),
    }
    let rv = api.delete::<Namespace>("", "c").expect("delete");
    match next(&mut events).await {
        Some(WatchEvent::Deleted(ns)) => {
            assert_eq!(ns.metadata.name.as_deref(), Some("c"));
            assert_eq!(
                ns.metadata.resource_version.as_deref(),
                Some(&*rv.to_string())
            );
        }
        other => panic!("want DELETED, got {other:?}"),
    }
    // Ending the watches ends the stream.
    assert_eq!(api.end_watches(), 1);
    assert!(next(&mut events).await.is_none());
    let watch = api
        .requests()
        .into_iter()
        .find(|r| r.is_watch_of(Kind::Namespace))
        .expect("the watch request");
    assert_eq!(watch.param("resourceVersion"), Some(rv_a.to_string()));
    assert_eq!(watch.param("allowWatchBookmarks").as_deref(), Some("true"));
}

#[tokio::test]
async fn a_bookmark_carries_only_the_current_resource_version() {
    let api = server().await;
    api.apply(&namespace("foo")).expect("apply");
    let pods: Api<Pod> = Api::all(api.client().expect("client"));
    let mut events = pin!(
        pods.watch(&WatchParams::default(), &api.resource_version().to_string())
            .await
            .expect("watch")
    );
    // The watch is registered once its response has started.
    assert_eq!(api.open_watches(Kind::Pod), 1);
    api.apply(&namespace("bar"))
        .expect("a write of another kind");
    assert_eq!(api.bookmark(), 1);
    match next(&mut events).await {
        Some(WatchEvent::Bookmark(b)) => {
            assert_eq!(b.types.kind, "Pod");
            assert_eq!(b.types.api_version, "v1");
            assert_eq!(
                b.metadata.resource_version,
                api.resource_version().to_string()
            );
        }
        other => panic!("want BOOKMARK, got {other:?}"),
    }
    // Without allowWatchBookmarks, none.
    let mut quiet = pin!(
        pods.watch(
            &WatchParams {
                bookmarks: false,
                ..WatchParams::default()
            },
            &api.resource_version().to_string()
        )
        .await
        .expect("watch")
    );
    assert_eq!(api.bookmark(), 1, "only the first watch allows bookmarks");
    api.end_watches();
    assert!(next(&mut quiet).await.is_none());
}

#[tokio::test]
async fn a_watch_from_before_a_compaction_gets_410_expired() {
    let api = server().await;
    let old = api.apply(&namespace("a")).expect("apply");
    api.apply(&namespace("b")).expect("apply");
    let compacted = api.compact();
    let namespaces: Api<Namespace> = Api::all(api.client().expect("client"));
    let mut events = pin!(
        namespaces
            .watch(&WatchParams::default(), &old.to_string())
            .await
            .expect("watch")
    );
    match next(&mut events).await {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
            assert!(
                status
                    .message
                    .contains(&format!("too old resource version: {old} ({compacted})")),
                "{status:?}"
            );
        }
        other => panic!("want ERROR 410, got {other:?}"),
    }
    assert!(
        next(&mut events).await.is_none(),
        "the stream ends after it"
    );
    // From the compacted version on, a watch works.
    let mut events = pin!(
        namespaces
            .watch(&WatchParams::default(), &compacted.to_string())
            .await
            .expect("watch")
    );
    api.apply(&namespace("c")).expect("apply");
    assert_eq!(added_name(next(&mut events).await), "c");
}

#[tokio::test]
async fn a_watch_ends_after_its_timeout_seconds() {
    let api = server().await;
    let namespaces: Api<Namespace> = Api::all(api.client().expect("client"));
    let started = tokio::time::Instant::now();
    let mut events = pin!(
        namespaces
            .watch(&WatchParams::default().timeout(1), "0")
            .await
            .expect("watch")
    );
    assert!(next(&mut events).await.is_none(), "no event, then the end");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_watch_without_a_resource_version_starts_with_the_current_objects() {
    let api = server().await;
    api.apply(&namespace("a")).expect("apply");
    api.apply(&namespace("b")).expect("apply");
    let namespaces: Api<Namespace> = Api::all(api.client().expect("client"));
    let mut events = pin!(
        namespaces
            .watch(&WatchParams::default(), "0")
            .await
            .expect("watch")
    );
    assert_eq!(added_name(next(&mut events).await), "a");
    assert_eq!(added_name(next(&mut events).await), "b");
}

#[tokio::test]
async fn a_watch_ends_at_the_servers_own_limit() {
    let api = ApiServer::start(ApiServerOptions {
        bookmark_interval: None,
        max_watch_timeout: Some(Duration::from_secs(1)),
        ..ApiServerOptions::default()
    })
    .await
    .expect("start");
    let namespaces: Api<Namespace> = Api::all(api.client().expect("client"));
    let started = tokio::time::Instant::now();
    // kube-rs asks for 290 s.
    let mut events = pin!(
        namespaces
            .watch(&WatchParams::default(), "0")
            .await
            .expect("watch")
    );
    assert!(next(&mut events).await.is_none());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn a_held_watch_resumes_from_its_resource_version_once_released() {
    let api = server().await;
    let from = api.apply(&namespace("a")).expect("apply");
    api.hold_watches(Kind::Namespace);
    let namespaces: Api<Namespace> = Api::all(api.client().expect("client"));
    let watch = tokio::spawn(async move {
        namespaces
            .watch(&WatchParams::default(), &from.to_string())
            .await
            .map(|events| events.boxed())
    });
    api.wait_request(0, DEADLINE, |r| r.is_watch_of(Kind::Namespace))
        .await
        .expect("the watch arrives");
    assert_eq!(api.open_watches(Kind::Namespace), 0, "held, not open");
    api.apply(&namespace("b")).expect("a write while held");
    api.release_watches(Kind::Namespace);
    api.wait_watches(Kind::Namespace, 1, DEADLINE)
        .await
        .expect("open once released");
    let mut events = tokio::time::timeout(DEADLINE, watch)
        .await
        .expect("answered in time")
        .expect("task")
        .expect("watch");
    assert_eq!(added_name(next(&mut events).await), "b");
}

#[tokio::test]
async fn dropping_the_server_ends_its_watches() {
    let api = server().await;
    let namespaces: Api<Namespace> = Api::all(api.client().expect("client"));
    let mut events = pin!(
        namespaces
            .watch(&WatchParams::default(), "0")
            .await
            .expect("watch")
    );
    drop(api);
    let end = tokio::time::timeout(DEADLINE, events.next())
        .await
        .expect("the stream ends in time");
    assert!(
        !matches!(end, Some(Ok(_))),
        "no event after the server is gone: {end:?}"
    );
}
