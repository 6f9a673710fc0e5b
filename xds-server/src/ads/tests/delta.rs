//! Delta (incremental) protocol properties.

use super::*;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;

/// One client-side delta stream.
pub(in crate::ads) type Stream = ClientStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

impl Stream {
    pub(in crate::ads) async fn open(server: &AdsServer<FakeSource>) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        let rx = client(server)
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream opens")
            .into_inner();
        Stream { tx, rx }
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse) {
        let kind = ResourceType::from_type_url(&response.type_url).expect("known type");
        self.send(request(kind, &[], &[], &response.nonce)).await;
    }
}

/// A NACK of the response with `nonce`, as Envoy sends it.
fn nack(kind: ResourceType, nonce: &str, message: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        error_detail: Some(RpcStatus {
            code: 3,
            message: message.to_string(),
            details: Vec::new(),
        }),
        ..request(kind, &[], &[], nonce)
    }
}

pub(in crate::ads) fn request(
    kind: ResourceType,
    subscribe: &[&str],
    unsubscribe: &[&str],
    nonce: &str,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(Node {
            id: NODE.to_string(),
            ..Default::default()
        }),
        type_url: kind.type_url().to_string(),
        resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
        resource_locators_subscribe: Vec::new(),
        resource_locators_unsubscribe: Vec::new(),
        initial_resource_versions: HashMap::new(),
        response_nonce: nonce.to_string(),
        error_detail: None,
    }
}

fn kind_of(response: &DeltaDiscoveryResponse) -> ResourceType {
    ResourceType::from_type_url(&response.type_url).expect("known type")
}

/// Names of the resources in a response, checking each carries its body
/// and the version of that body.
fn names(response: &DeltaDiscoveryResponse) -> Vec<String> {
    response
        .resources
        .iter()
        .map(|r| {
            let body = r.resource.as_ref().expect("a body");
            assert_eq!(name_of(body), r.name);
            assert_eq!(
                r.version,
                format!("{:016x}", translator::xds::fnv1a(&body.value))
            );
            r.name.clone()
        })
        .collect()
}

fn cluster(name: &str) -> String {
    format!("outbound|80||{name}.foo.svc.cluster.local")
}

#[tokio::test]
async fn delta_sends_only_changed_and_removed() {
    within(async {
        let (source, server) = setup();
        let mut stream = Stream::open(&server).await;
        stream
            .send(request(ResourceType::Cluster, &[], &[], ""))
            .await;
        let first = stream.recv().await;
        assert_eq!(kind_of(&first), ResourceType::Cluster);
        assert_eq!(names(&first), [cluster("a"), cluster("b")]);
        assert!(first.removed_resources.is_empty());
        stream.ack(&first).await;
        eventually("the ACK is recorded", || {
            server.registry().snapshot()[0].types[&ResourceType::Cluster].sync_state()
                == SyncState::Synced
        })
        .await;

        // a changes, b goes away, c appears.
        source.set(
            NODE,
            &base_with(
                &[
                    res(ResourceType::Cluster, &cluster("a"), 2),
                    res(ResourceType::Cluster, &cluster("c"), 1),
                ],
                &[(ResourceType::Cluster, &cluster("b"))],
            ),
        );
        let update = stream.recv().await;
        assert_eq!(kind_of(&update), ResourceType::Cluster);
        assert_eq!(names(&update), [cluster("a"), cluster("c")]);
        assert_eq!(update.removed_resources, [cluster("b")]);
        assert_ne!(update.system_version_info, first.system_version_info);
        stream.ack(&update).await;

        // A change to an unsubscribed type sends nothing; the probe is next.
        source.set(
            NODE,
            &base_with(
                &[
                    res(ResourceType::Cluster, &cluster("a"), 2),
                    res(ResourceType::Cluster, &cluster("c"), 1),
                    res(ResourceType::Listener, "virtualInbound", 7),
                ],
                &[(ResourceType::Cluster, &cluster("b"))],
            ),
        );
        stream
            .send(request(ResourceType::Secret, &["default"], &[], ""))
            .await;
        let sds = stream.recv().await;
        assert_eq!(kind_of(&sds), ResourceType::Secret);
        assert_eq!(names(&sds), ["default"]);

        let held = server.registry().snapshot()[0].types[&ResourceType::Cluster].clone();
        assert_eq!(
            held.sent.keys().collect::<Vec<_>>(),
            [&cluster("a"), &cluster("c")]
        );
        assert_eq!(held.sync_state(), SyncState::Synced);
    })
    .await;
}

#[tokio::test]
async fn delta_unsubscribe_stops_updates() {
    within(async {
        let (source, server) = setup();
        let mut stream = Stream::open(&server).await;
        stream
            .send(request(ResourceType::Endpoint, &[EDS_A, EDS_B], &[], ""))
            .await;
        let first = stream.recv().await;
        assert_eq!(names(&first), [EDS_A, EDS_B]);
        stream.ack(&first).await;
        stream
            .send(request(ResourceType::Endpoint, &[], &[EDS_B], ""))
            .await;
        eventually("the unsubscription is applied", || {
            server.registry().snapshot()[0].types[&ResourceType::Endpoint]
                .subscription
                .as_ref()
                .is_some_and(|s| !s.names.contains(EDS_B))
        })
        .await;

        // Only the unsubscribed resource changes: nothing to send.
        source.set(
            NODE,
            &base_with(&[res(ResourceType::Endpoint, EDS_B, 2)], &[]),
        );
        stream
            .send(request(ResourceType::Listener, &[], &[], ""))
            .await;
        assert_eq!(kind_of(&stream.recv().await), ResourceType::Listener);

        // Both change: only the subscribed one is sent.
        source.set(
            NODE,
            &base_with(
                &[
                    res(ResourceType::Endpoint, EDS_A, 3),
                    res(ResourceType::Endpoint, EDS_B, 3),
                ],
                &[],
            ),
        );
        let update = stream.recv().await;
        assert_eq!(kind_of(&update), ResourceType::Endpoint);
        assert_eq!(names(&update), [EDS_A]);
        assert!(update.removed_resources.is_empty());

        // Subscribing again sends it again, current version.
        stream
            .send(request(ResourceType::Endpoint, &[EDS_B], &[], ""))
            .await;
        let again = stream.recv().await;
        assert_eq!(names(&again), [EDS_B]);
        assert_eq!(
            again.resources[0].version,
            res(ResourceType::Endpoint, EDS_B, 3).version()
        );
    })
    .await;
}

#[tokio::test]
async fn delta_initial_versions_skip_unchanged() {
    within(async {
        let (_source, server) = setup();
        let mut stream = Stream::open(&server).await;
        let a = res(ResourceType::Cluster, &cluster("a"), 1);
        let mut first = request(ResourceType::Cluster, &[], &[], "");
        first.initial_resource_versions = HashMap::from([
            (cluster("a"), a.version()),
            (cluster("b"), "0000000000000bad".to_string()),
            (cluster("gone"), "0000000000000001".to_string()),
        ]);
        stream.send(first).await;
        let response = stream.recv().await;
        assert_eq!(names(&response), [cluster("b")]);
        assert_eq!(response.removed_resources, [cluster("gone")]);

        // What the proxy holds includes the resource it already had.
        let held = server.registry().snapshot()[0].types[&ResourceType::Cluster].clone();
        assert_eq!(
            held.sent.keys().collect::<Vec<_>>(),
            [&cluster("a"), &cluster("b")]
        );
    })
    .await;
}

#[tokio::test]
async fn delta_nack_is_recorded_and_not_resent() {
    within(async {
        let (source, server) = setup();
        let mut stream = Stream::open(&server).await;
        stream
            .send(request(ResourceType::Listener, &[], &[], ""))
            .await;
        stream
            .send(request(ResourceType::Route, &["80"], &[], ""))
            .await;
        let lds = stream.recv().await;
        assert_eq!(kind_of(&lds), ResourceType::Listener);
        assert_eq!(kind_of(&stream.recv().await), ResourceType::Route);
        stream
            .send(nack(ResourceType::Listener, &lds.nonce, "bad listener"))
            .await;
        eventually("the NACK is recorded", || {
            server.stats().nacks(ResourceType::Listener) == 1
        })
        .await;
        // A change pushes in CDS, EDS, LDS, RDS order: had the rejected
        // listeners been resent, they would come before the routes.
        source.set(NODE, &base_with(&[res(ResourceType::Route, "80", 2)], &[]));
        assert_eq!(kind_of(&stream.recv().await), ResourceType::Route);

        let status = server.registry().snapshot()[0].types[&ResourceType::Listener].clone();
        let nack = status.last_nack.clone().expect("NACK recorded");
        assert_eq!(nack.message, "bad listener");
        assert_eq!(Some(nack.version), status.sent_version);
        assert_eq!(status.sync_state(), SyncState::Nacked);
        assert_eq!(server.stats().nacks(ResourceType::Listener), 1);

        // A fixed listener is pushed.
        source.set(
            NODE,
            &base_with(
                &[
                    res(ResourceType::Route, "80", 2),
                    res(ResourceType::Listener, "virtualOutbound", 2),
                ],
                &[],
            ),
        );
        let fixed = stream.recv().await;
        assert_eq!(kind_of(&fixed), ResourceType::Listener);
        assert_eq!(names(&fixed), ["virtualOutbound"]);
    })
    .await;
}

#[tokio::test]
async fn delta_eds_naming_every_cluster_shares_the_view_keys_and_the_registry_the_stream_s() {
    within(async {
        let (source, server) = setup();
        let mut stream = Stream::open(&server).await;
        stream
            .send(request(ResourceType::Endpoint, &[EDS_A, EDS_B], &[], ""))
            .await;
        let first = stream.recv().await;
        stream.ack(&first).await;
        let endpoints = || server.registry().snapshot()[0].types[&ResourceType::Endpoint].clone();
        eventually("the ACK is recorded", || {
            endpoints().sync_state() == SyncState::Synced
        })
        .await;
        assert_subscription_shares_the_view(&server, &source, ResourceType::Endpoint);

        // New endpoints, same names: the push moves the names to the new
        // map (delta requests do not repeat them).
        source.set(
            NODE,
            &base_with(&[res(ResourceType::Endpoint, EDS_A, 2)], &[]),
        );
        let update = stream.recv().await;
        assert_eq!(names(&update), [EDS_A]);
        let view = source.current(NODE);
        eventually("the names refer to the new map", || {
            endpoints()
                .subscription
                .is_some_and(|s| s.names.are_keys_of(view.of(ResourceType::Endpoint)))
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn delta_eds_nacked_while_naming_every_cluster_is_not_resent() {
    within(async {
        let (source, server) = setup();
        let mut stream = Stream::open(&server).await;
        stream
            .send(request(ResourceType::Endpoint, &[EDS_A, EDS_B], &[], ""))
            .await;
        let eds = stream.recv().await;
        assert_eq!(names(&eds), [EDS_A, EDS_B]);
        stream
            .send(request(ResourceType::Route, &["80"], &[], ""))
            .await;
        assert_eq!(kind_of(&stream.recv().await), ResourceType::Route);
        stream
            .send(nack(ResourceType::Endpoint, &eds.nonce, "bad endpoints"))
            .await;
        eventually("the NACK is recorded", || {
            server.stats().nacks(ResourceType::Endpoint) == 1
        })
        .await;
        // Every map is new after a change: EDS comes before RDS, so had the
        // rejected endpoints been resent they would be next.
        source.set(NODE, &base_with(&[res(ResourceType::Route, "80", 2)], &[]));
        assert_eq!(kind_of(&stream.recv().await), ResourceType::Route);

        // One changes: only it is sent.
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
        let fixed = stream.recv().await;
        assert_eq!(kind_of(&fixed), ResourceType::Endpoint);
        assert_eq!(names(&fixed), [EDS_B]);

        // Unsubscribed and subscribed again: sent again though unchanged.
        stream
            .send(request(ResourceType::Endpoint, &[], &[EDS_A], ""))
            .await;
        stream
            .send(request(ResourceType::Endpoint, &[EDS_A], &[], ""))
            .await;
        let again = stream.recv().await;
        assert_eq!(names(&again), [EDS_A]);
        assert!(again.removed_resources.is_empty());
    })
    .await;
}
