//! Stream-level properties over both protocol variants: who the peer is,
//! and the registry following connections.

use super::*;
use super::{delta, sotw};

#[tokio::test]
async fn peer_resolver_supplies_the_peer_to_the_source() {
    within(async {
        let source = FakeSource::new();
        source.set(NODE, &base());
        let server = AdsServer::new(Arc::clone(&source)).with_peer_resolver(|metadata, _| {
            match metadata
                .get("x-test-identity")
                .and_then(|v| v.to_str().ok())
            {
                Some(sa) => Peer::Certificate(Identity {
                    namespace: "foo".to_string(),
                    service_account: sa.to_string(),
                }),
                None => Peer::Unauthenticated,
            }
        });
        let mut stream = sotw::Stream::open_with(&server, |request| {
            request
                .metadata_mut()
                .insert("x-test-identity", "httpbin".parse().expect("ascii"));
        })
        .await;
        stream
            .send(sotw::request(ResourceType::Cluster, &[], "", ""))
            .await;
        stream.recv().await;
        assert_eq!(
            source.peers().first(),
            Some(&Peer::Certificate(Identity {
                namespace: "foo".to_string(),
                service_account: "httpbin".to_string(),
            }))
        );
    })
    .await;
}

#[tokio::test]
async fn registry_removes_connection_on_disconnect() {
    within(async {
        let (_source, server) = setup();
        let registry = server.registry();
        let stats = server.stats();

        let mut stream = sotw::Stream::open(&server).await;
        stream
            .send(sotw::request(ResourceType::Cluster, &[], "", ""))
            .await;
        stream.recv().await;
        let mut delta = delta::Stream::open(&server).await;
        delta
            .send(delta::request(ResourceType::Listener, &[], &[], ""))
            .await;
        delta.recv().await;

        let all = registry.snapshot();
        assert_eq!(all.len(), 2);
        assert!(
            all.iter()
                .all(|c| c.node_id == NODE && c.proxy.pod == "httpbin-0")
        );
        assert_eq!(all.iter().filter(|c| c.delta).count(), 1);
        assert_eq!(stats.connected(), 2);

        drop(stream);
        eventually("the SotW stream is unregistered", || registry.len() == 1).await;
        assert!(registry.snapshot()[0].delta);
        drop(delta);
        eventually("the delta stream is unregistered", || registry.is_empty()).await;
        assert_eq!(stats.connected(), 0);
    })
    .await;
}
