//! State-of-the-world protocol properties.

use super::*;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tonic::Code;
use translator::xds::set_version;

/// One client-side SotW stream.
pub(in crate::ads) type Stream = ClientStream<DiscoveryRequest, DiscoveryResponse>;

impl Stream {
    pub(in crate::ads) async fn open(server: &AdsServer<FakeSource>) -> Stream {
        Self::open_with(server, |_| {}).await
    }

    /// Opens a stream, letting the test adjust the gRPC request first.
    pub(in crate::ads) async fn open_with(
        server: &AdsServer<FakeSource>,
        adjust: impl FnOnce(&mut Request<ReceiverStream<DiscoveryRequest>>),
    ) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        let mut request = Request::new(ReceiverStream::new(rx));
        adjust(&mut request);
        let rx = client(server)
            .stream_aggregated_resources(request)
            .await
            .expect("stream opens")
            .into_inner();
        Stream { tx, rx }
    }

    /// Sends an ACK of `response`, subscribed to `names`.
    async fn ack(&self, response: &DiscoveryResponse, names: &[&str]) {
        let kind = ResourceType::from_type_url(&response.type_url).expect("known type");
        self.send(request(
            kind,
            names,
            &response.version_info,
            &response.nonce,
        ))
        .await;
    }
}

/// A request as Envoy sends it (node on every request, its default).
pub(in crate::ads) fn request(
    kind: ResourceType,
    names: &[&str],
    version: &str,
    nonce: &str,
) -> DiscoveryRequest {
    typed_request(kind.type_url(), names, version, nonce)
}

fn typed_request(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_string(),
        node: Some(Node {
            id: NODE.to_string(),
            ..Default::default()
        }),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        resource_locators: Vec::new(),
        type_url: type_url.to_string(),
        response_nonce: nonce.to_string(),
        error_detail: None,
    }
}

fn nack(
    kind: ResourceType,
    names: &[&str],
    version: &str,
    nonce: &str,
    message: &str,
) -> DiscoveryRequest {
    DiscoveryRequest {
        error_detail: Some(RpcStatus {
            code: Code::InvalidArgument as i32,
            message: message.to_string(),
            details: Vec::new(),
        }),
        ..request(kind, names, version, nonce)
    }
}

fn kind_of(response: &DiscoveryResponse) -> ResourceType {
    ResourceType::from_type_url(&response.type_url).expect("known type")
}

fn names(response: &DiscoveryResponse) -> Vec<String> {
    response.resources.iter().map(name_of).collect()
}

fn map_of(resources: &[Arc<Resource>]) -> ResourceMap {
    resources
        .iter()
        .map(|r| (r.name.clone(), Arc::clone(r)))
        .collect()
}

fn type_status(server: &AdsServer<FakeSource>, kind: ResourceType) -> Option<TypeStatus> {
    server
        .registry()
        .snapshot()
        .first()
        .and_then(|c| c.types.get(&kind).cloned())
}

/// Subscribes to CDS wildcard and returns the response.
async fn clusters(stream: &mut Stream) -> DiscoveryResponse {
    stream
        .send(request(ResourceType::Cluster, &[], "", ""))
        .await;
    let response = stream.recv().await;
    assert_eq!(kind_of(&response), ResourceType::Cluster);
    response
}

#[tokio::test]
async fn sotw_sends_clusters_then_listeners_on_wildcard_subscription() {
    within(async {
        let (_source, server) = setup();
        let mut stream = Stream::open(&server).await;
        stream
            .send(request(ResourceType::Cluster, &[], "", ""))
            .await;
        stream
            .send(request(ResourceType::Listener, &["*"], "", ""))
            .await;

        let cds = stream.recv().await;
        assert_eq!(kind_of(&cds), ResourceType::Cluster);
        assert_eq!(names(&cds), [EDS_A, EDS_B]);
        let expected: Vec<Arc<Resource>> = base()
            .into_iter()
            .filter(|r| r.kind == ResourceType::Cluster)
            .collect();
        assert_eq!(cds.version_info, set_version(&map_of(&expected)));
        assert!(!cds.nonce.is_empty());

        let lds = stream.recv().await;
        assert_eq!(kind_of(&lds), ResourceType::Listener);
        assert_eq!(names(&lds), ["virtualInbound", "virtualOutbound"]);
        assert_ne!(lds.nonce, cds.nonce);
        assert_eq!(server.stats().pushes(ResourceType::Cluster), 1);
        assert_eq!(server.stats().pushes(ResourceType::Listener), 1);
    })
    .await;
}

#[tokio::test]
async fn a_proxy_that_connects_before_the_first_config_waits_for_it() {
    within(async {
        let (source, server) = setup();
        source.unload();
        let mut stream = Stream::open(&server).await;
        stream
            .send(request(ResourceType::Cluster, &[], "", ""))
            .await;
        // Loaded once the stream has asked and been told "not ready": the
        // stream gets it instead of UNAVAILABLE (`within` bounds the wait).
        while source.peers().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        source.set(NODE, &base());
        let cds = stream.recv().await;
        assert_eq!(kind_of(&cds), ResourceType::Cluster);
        assert_eq!(names(&cds), [EDS_A, EDS_B]);
    })
    .await;
}

#[tokio::test]
async fn ack_records_acked_version() {
    within(async {
        let (_source, server) = setup();
        let mut stream = Stream::open(&server).await;
        let cds = clusters(&mut stream).await;
        let before = type_status(&server, ResourceType::Cluster).expect("registered");
        assert_eq!(before.sent_version.as_ref(), Some(&cds.version_info));
        assert_eq!(before.acked_version, None);

        stream.ack(&cds, &[]).await;
        eventually("the ACK is recorded", || {
            type_status(&server, ResourceType::Cluster)
                .is_some_and(|s| s.acked_version.as_ref() == Some(&cds.version_info))
        })
        .await;
        let proxy = server.registry().snapshot()[0].proxy.clone();
        let states = server.registry().sync_state(&proxy).expect("connected");
        assert_eq!(states[&ResourceType::Cluster], SyncState::Synced);
        assert_eq!(states[&ResourceType::Listener], SyncState::NotSent);
        let sent = type_status(&server, ResourceType::Cluster)
            .expect("registered")
            .sent;
        assert_eq!(sent.keys().collect::<Vec<_>>(), [EDS_A, EDS_B]);
    })
    .await;
}

#[tokio::test]
async fn nack_is_recorded_and_same_version_not_resent() {
    within(async {
        let (source, server) = setup();
        let mut stream = Stream::open(&server).await;
        let cds = clusters(&mut stream).await;
        stream
            .send(nack(
                ResourceType::Cluster,
                &[],
                "",
                &cds.nonce,
                "bad cluster",
            ))
            .await;
        // A change elsewhere must not resend the rejected clusters.
        stream
            .send(request(ResourceType::Listener, &[], "", ""))
            .await;
        assert_eq!(kind_of(&stream.recv().await), ResourceType::Listener);
        source.set(
            NODE,
            &base_with(&[res(ResourceType::Listener, "virtualInbound", 2)], &[]),
        );
        let next = stream.recv().await;
        assert_eq!(kind_of(&next), ResourceType::Listener, "no CDS resend");

        let status = type_status(&server, ResourceType::Cluster).expect("registered");
        let nack = status.last_nack.clone().expect("NACK recorded");
        assert_eq!(nack.version, cds.version_info);
        assert_eq!(nack.message, "bad cluster");
        assert_eq!(status.sync_state(), SyncState::Nacked);
        assert_eq!(server.stats().nacks(ResourceType::Cluster), 1);
        assert_eq!(server.stats().pushes(ResourceType::Cluster), 1);
    })
    .await;
}

#[tokio::test]
async fn new_version_after_nack_is_pushed() {
    within(async {
        let (source, server) = setup();
        let mut stream = Stream::open(&server).await;
        let cds = clusters(&mut stream).await;
        stream
            .send(nack(
                ResourceType::Cluster,
                &[],
                "",
                &cds.nonce,
                "bad cluster",
            ))
            .await;
        eventually("the NACK is recorded", || {
            type_status(&server, ResourceType::Cluster).is_some_and(|s| s.last_nack.is_some())
        })
        .await;
        source.set(
            NODE,
            &base_with(&[res(ResourceType::Cluster, EDS_A, 2)], &[]),
        );
        let fixed = stream.recv().await;
        assert_eq!(kind_of(&fixed), ResourceType::Cluster);
        assert_ne!(fixed.version_info, cds.version_info);
        assert_ne!(fixed.nonce, cds.nonce);

        stream.ack(&fixed, &[]).await;
        eventually("the fix is ACKed", || {
            type_status(&server, ResourceType::Cluster)
                .is_some_and(|s| s.sync_state() == SyncState::Synced)
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn stale_nonce_is_ignored() {
    within(async {
        let (source, server) = setup();
        let mut stream = Stream::open(&server).await;
        stream
            .send(request(ResourceType::Endpoint, &[EDS_A], "", ""))
            .await;
        let first = stream.recv().await;
        source.set(
            NODE,
            &base_with(&[res(ResourceType::Endpoint, EDS_A, 2)], &[]),
        );
        let second = stream.recv().await;
        assert_ne!(first.nonce, second.nonce);

        // Envoy's answer to the first response arrives after the second was
        // sent: it must change nothing, not even the subscription.
        stream
            .send(request(
                ResourceType::Endpoint,
                &[EDS_A, EDS_B],
                &first.version_info,
                &first.nonce,
            ))
            .await;
        stream
            .send(request(ResourceType::Route, &["80"], "", ""))
            .await;
        assert_eq!(kind_of(&stream.recv().await), ResourceType::Route);

        let status = type_status(&server, ResourceType::Endpoint).expect("registered");
        assert_eq!(status.acked_version, None);
        let subscription = status.subscription.expect("subscribed");
        assert_eq!(subscription.names.iter().collect::<Vec<_>>(), [EDS_A]);
        assert_eq!(status.sent_nonce, Some(second.nonce));
    })
    .await;
}

#[tokio::test]
async fn eds_names_change_gets_response() {
    within(async {
        let (_source, server) = setup();
        let mut stream = Stream::open(&server).await;
        stream
            .send(request(ResourceType::Endpoint, &[EDS_A], "", ""))
            .await;
        let first = stream.recv().await;
        assert_eq!(names(&first), [EDS_A]);

        // An ACK that also asks for another cluster's endpoints.
        stream.ack(&first, &[EDS_A, EDS_B]).await;
        let second = stream.recv().await;
        assert_eq!(kind_of(&second), ResourceType::Endpoint);
        assert_eq!(names(&second), [EDS_A, EDS_B]);

        // A plain ACK with the same names gets nothing.
        stream.ack(&second, &[EDS_A, EDS_B]).await;
        stream
            .send(request(ResourceType::Route, &["80"], "", ""))
            .await;
        let rds = stream.recv().await;
        assert_eq!(kind_of(&rds), ResourceType::Route, "no EDS resend");

        // Asking for a name that does not exist gets an answer without it.
        stream.ack(&rds, &["80", "9090"]).await;
        let rds = stream.recv().await;
        assert_eq!(kind_of(&rds), ResourceType::Route);
        assert_eq!(names(&rds), ["80"]);
    })
    .await;
}

#[tokio::test]
async fn unknown_type_url_does_not_break_stream() {
    within(async {
        let (_source, server) = setup();
        let mut stream = Stream::open(&server).await;
        let unknown = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
        stream.send(typed_request(unknown, &[], "", "")).await;
        stream.send(typed_request(unknown, &["x"], "", "")).await;
        let cds = clusters(&mut stream).await;
        assert_eq!(names(&cds), [EDS_A, EDS_B]);
        assert_eq!(server.registry().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn unknown_node_ends_stream_with_not_found() {
    within(async {
        let (_source, server) = setup();
        let mut stream = Stream::open(&server).await;
        let mut first = request(ResourceType::Cluster, &[], "", "");
        if let Some(node) = first.node.as_mut() {
            node.id = "sidecar~10.0.0.9~ghost-0.foo~foo.svc.cluster.local".to_string();
        }
        stream.send(first).await;
        let status = stream
            .rx
            .message()
            .await
            .expect_err("the stream ends with a status");
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("ghost-0"), "{}", status.message());
        assert!(server.registry().is_empty());
        assert_eq!(server.stats().rejected_streams(), 1);

        // No node id at all is a caller error.
        let mut stream = Stream::open(&server).await;
        stream
            .send(DiscoveryRequest {
                node: None,
                ..request(ResourceType::Cluster, &[], "", "")
            })
            .await;
        let status = stream
            .rx
            .message()
            .await
            .expect_err("the stream ends with a status");
        assert_eq!(status.code(), Code::InvalidArgument);
    })
    .await;
}

#[tokio::test]
async fn reconnect_with_stale_version_gets_current_state() {
    within(async {
        let (_source, server) = setup();
        // A version and nonce from an earlier server's life.
        let mut stream = Stream::open(&server).await;
        stream
            .send(request(
                ResourceType::Cluster,
                &[],
                "0123456789abcdef",
                "41",
            ))
            .await;
        let cds = stream.recv().await;
        assert_eq!(names(&cds), [EDS_A, EDS_B]);
        drop(stream);

        // Even the current version is answered on a new stream: the server
        // cannot know the proxy still holds it.
        let mut stream = Stream::open(&server).await;
        stream
            .send(request(
                ResourceType::Cluster,
                &[],
                &cds.version_info,
                &cds.nonce,
            ))
            .await;
        let again = stream.recv().await;
        assert_eq!(again.version_info, cds.version_info);
        assert_eq!(names(&again), [EDS_A, EDS_B]);
    })
    .await;
}

#[tokio::test]
async fn change_pushes_only_changed_types() {
    within(async {
        let (source, server) = setup();
        let mut stream = Stream::open(&server).await;
        stream
            .send(request(ResourceType::Cluster, &[], "", ""))
            .await;
        stream
            .send(request(ResourceType::Endpoint, &[EDS_A, EDS_B], "", ""))
            .await;
        stream
            .send(request(ResourceType::Listener, &[], "", ""))
            .await;
        stream
            .send(request(ResourceType::Route, &["80"], "", ""))
            .await;
        for expected in [
            ResourceType::Cluster,
            ResourceType::Endpoint,
            ResourceType::Listener,
            ResourceType::Route,
        ] {
            let response = stream.recv().await;
            assert_eq!(kind_of(&response), expected);
            let names: Vec<&str> = match expected {
                ResourceType::Endpoint => vec![EDS_A, EDS_B],
                ResourceType::Route => vec!["80"],
                _ => Vec::new(),
            };
            stream.ack(&response, &names).await;
        }
        eventually("every type is ACKed", || {
            let proxy = ProxyId {
                namespace: "foo".to_string(),
                pod: "httpbin-0".to_string(),
            };
            server.registry().sync_state(&proxy).is_some_and(|states| {
                states.values().filter(|s| **s == SyncState::Synced).count() == 4
            })
        })
        .await;

        // Routes and endpoints change; clusters and listeners do not. The
        // push follows CDS, EDS, LDS, RDS order whatever order they changed.
        source.set(
            NODE,
            &base_with(
                &[
                    res(ResourceType::Route, "80", 2),
                    res(ResourceType::Endpoint, EDS_B, 2),
                ],
                &[],
            ),
        );
        let eds = stream.recv().await;
        assert_eq!(kind_of(&eds), ResourceType::Endpoint);
        assert_eq!(
            names(&eds),
            [EDS_A, EDS_B],
            "SotW sends the whole subscribed set"
        );
        let rds = stream.recv().await;
        assert_eq!(kind_of(&rds), ResourceType::Route);

        // Secrets were never asked for, so this probe is the next answer.
        stream
            .send(request(
                ResourceType::Secret,
                &["default", "ROOTCA"],
                "",
                "",
            ))
            .await;
        let sds = stream.recv().await;
        assert_eq!(kind_of(&sds), ResourceType::Secret);
        assert_eq!(names(&sds), ["ROOTCA", "default"]);
        assert_eq!(server.stats().pushes(ResourceType::Cluster), 1);
        assert_eq!(server.stats().pushes(ResourceType::Listener), 1);
    })
    .await;
}

/// The subscription of `kind` as the registry holds it.
fn subscription_of(server: &AdsServer<FakeSource>, kind: ResourceType) -> Arc<Subscription> {
    type_status(server, kind)
        .and_then(|s| s.subscription)
        .expect("subscribed")
}

#[tokio::test]
async fn sotw_eds_naming_every_cluster_shares_the_view_keys_and_the_registry_the_stream_s() {
    within(async {
        let (source, server) = setup();
        let mut stream = Stream::open(&server).await;
        stream
            .send(request(ResourceType::Endpoint, &[EDS_B, EDS_A], "", ""))
            .await;
        let first = stream.recv().await;
        stream.ack(&first, &[EDS_A, EDS_B]).await;
        eventually("the ACK is recorded", || {
            type_status(&server, ResourceType::Endpoint)
                .is_some_and(|s| s.sync_state() == SyncState::Synced)
        })
        .await;
        assert_subscription_shares_the_view(&server, &source, ResourceType::Endpoint);

        // New endpoints, same names: the ACK moves the names to the new
        // map, letting the old one go.
        source.set(
            NODE,
            &base_with(&[res(ResourceType::Endpoint, EDS_A, 2)], &[]),
        );
        let update = stream.recv().await;
        assert_eq!(names(&update), [EDS_A, EDS_B]);
        stream.ack(&update, &[EDS_A, EDS_B]).await;
        let view = source.current(NODE);
        eventually("the names refer to the new map", || {
            subscription_of(&server, ResourceType::Endpoint)
                .names
                .are_keys_of(view.of(ResourceType::Endpoint))
        })
        .await;

        // Naming fewer: names of its own, covering exactly those.
        stream.ack(&update, &[EDS_A]).await;
        let fewer = stream.recv().await;
        assert_eq!(names(&fewer), [EDS_A]);
        let subscription = subscription_of(&server, ResourceType::Endpoint);
        assert!(
            !subscription
                .names
                .are_keys_of(view.of(ResourceType::Endpoint))
        );
        assert!(subscription.covers(EDS_A) && !subscription.covers(EDS_B));
    })
    .await;
}

#[tokio::test]
async fn sotw_version_of_a_shared_map_is_computed_once_for_all_streams() {
    within(async {
        let (_source, server) = setup();
        let mut one = Stream::open(&server).await;
        let mut two = Stream::open(&server).await;
        let first = clusters(&mut one).await;
        let second = clusters(&mut two).await;
        assert_eq!(first.version_info, second.version_info);
        assert_eq!(
            server.shared.versions.computed(),
            1,
            "both streams send the view's cluster map: hashed once"
        );
    })
    .await;
}
