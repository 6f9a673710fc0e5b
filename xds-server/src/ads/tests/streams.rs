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

/// A first request whose node metadata carries `INTERCEPTION_MODE`.
fn with_interception(
    value: envoy_types::pb::google::protobuf::Value,
) -> envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
    let mut first = sotw::request(ResourceType::Cluster, &[], "", "");
    if let Some(node) = first.node.as_mut() {
        node.metadata = Some(envoy_types::pb::google::protobuf::Struct {
            fields: [("INTERCEPTION_MODE".to_string(), value)].into(),
        });
    }
    first
}

fn string(s: &str) -> envoy_types::pb::google::protobuf::Value {
    envoy_types::pb::google::protobuf::Value {
        kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
            s.to_string(),
        )),
    }
}

#[tokio::test]
async fn the_node_metadata_picks_the_layout_for_the_whole_stream() {
    within(async {
        let (source, server) = setup();
        let mut stream = sotw::Stream::open(&server).await;
        stream.send(with_interception(string("REDIRECT"))).await;
        stream.recv().await;
        // A later request without metadata (Envoy sends the node once)
        // keeps the stream's layout: a change to the config asks again.
        let mut changed = base();
        changed[0] = res(ResourceType::Cluster, EDS_A, 2);
        source.set(NODE, &changed);
        stream.recv().await;
        let asked = source.interceptions();
        assert!(asked.len() >= 2, "{asked:?}");
        assert!(
            asked.iter().all(|i| *i == Interception::Redirect),
            "{asked:?}"
        );
        assert_eq!(
            server.registry().snapshot()[0].interception,
            Interception::Redirect
        );

        // Without the key: the explicit-bind layout.
        let mut plain = sotw::Stream::open(&server).await;
        plain
            .send(sotw::request(ResourceType::Cluster, &[], "", ""))
            .await;
        plain.recv().await;
        assert_eq!(source.interceptions().last(), Some(&Interception::None));
    })
    .await;
}

#[tokio::test]
async fn an_unsupported_interception_mode_ends_the_stream_naming_it() {
    within(async {
        let (source, server) = setup();
        for (value, says) in [
            (string("TPROXY"), "TPROXY is not supported"),
            (
                envoy_types::pb::google::protobuf::Value {
                    kind: Some(envoy_types::pb::google::protobuf::value::Kind::BoolValue(
                        true,
                    )),
                },
                "must be a string",
            ),
        ] {
            let mut stream = sotw::Stream::open(&server).await;
            stream.send(with_interception(value)).await;
            let status = stream
                .rx
                .message()
                .await
                .expect_err("the stream ends with a status");
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                status.message().contains("INTERCEPTION_MODE"),
                "{}",
                status.message()
            );
            assert!(status.message().contains(says), "{}", status.message());
        }
        assert!(source.interceptions().is_empty(), "no view was asked for");
        assert!(server.registry().is_empty());
    })
    .await;
}
