//! The simulated sidecar's bookkeeping on hand-made responses: what it
//! ACKs and NACKs, which nonce and version each request carries, which
//! names it follows, when it counts as synced, what a reconnect resends.

use super::*;

fn sotw_response(
    kind: ResourceType,
    version: &str,
    nonce: &str,
    resources: Vec<Any>,
) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.to_string(),
        resources,
        type_url: kind.type_url().to_string(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

fn names_of(r: &DiscoveryRequest) -> Vec<&str> {
    r.resource_names.iter().map(String::as_str).collect()
}

/// A state-of-the-world sidecar that accepted CDS `v1` (clusters a and b,
/// a with TLS) with nonce `n1`.
fn sotw_with_clusters() -> (Sotw, Handled<DiscoveryRequest>) {
    let mut s = Sotw::new(NODE);
    s.open();
    let handled = s.on_response(sotw_response(
        ResourceType::Cluster,
        "v1",
        "n1",
        vec![cluster("a", true), cluster("b", false)],
    ));
    (s, handled)
}

#[test]
fn sotw_opens_with_wildcard_cds_and_lds_and_the_node_on_the_first_request_only() {
    let mut s = Sotw::new(NODE);
    let open = s.open();
    let kinds: Vec<_> = open.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(
        kinds,
        [
            ResourceType::Cluster.type_url(),
            ResourceType::Listener.type_url()
        ]
    );
    assert_eq!(open[0].node.as_ref().map(|n| n.id.as_str()), Some(NODE));
    assert!(open[1].node.is_none());
    assert!(open.iter().all(|r| r.resource_names.is_empty()
        && r.response_nonce.is_empty()
        && r.version_info.is_empty()));
    assert!(!s.synced());
}

#[test]
fn sotw_acks_version_and_nonce_then_subscribes_to_the_names_referenced() {
    let (s, handled) = sotw_with_clusters();
    assert_eq!(handled.nack, None);
    assert_eq!(handled.resources, 2);
    let [ack, eds, sds] = handled.requests.as_slice() else {
        panic!("ACK, EDS and SDS requests: {:?}", handled.requests);
    };
    assert_eq!(ack.type_url, ResourceType::Cluster.type_url());
    assert_eq!(
        (ack.version_info.as_str(), ack.response_nonce.as_str()),
        ("v1", "n1")
    );
    assert!(ack.error_detail.is_none() && ack.resource_names.is_empty());
    assert_eq!(eds.type_url, ResourceType::Endpoint.type_url());
    assert_eq!(names_of(eds), ["a", "b"]);
    // Nothing of that type arrived on this stream yet.
    assert_eq!(
        (eds.version_info.as_str(), eds.response_nonce.as_str()),
        ("", "")
    );
    assert_eq!(sds.type_url, ResourceType::Secret.type_url());
    assert_eq!(names_of(sds), ["ROOTCA", "default"]);
    assert_eq!(s.version(ResourceType::Cluster), Some("v1"));
}

#[test]
fn sotw_nack_names_the_last_accepted_version_and_changes_nothing() {
    let (mut s, _) = sotw_with_clusters();
    let garbage = Any {
        type_url: ResourceType::Cluster.type_url().to_string(),
        value: vec![0xff, 0xff, 0xff],
    };
    let handled = s.on_response(sotw_response(
        ResourceType::Cluster,
        "v2",
        "n2",
        vec![cluster("c", false), garbage],
    ));
    assert!(handled.nack.is_some(), "{handled:?}");
    let [nack] = handled.requests.as_slice() else {
        panic!("one NACK: {:?}", handled.requests);
    };
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("v1", "n2")
    );
    let detail = nack.error_detail.as_ref().expect("error_detail");
    assert!(detail.message.contains("does not decode"), "{detail:?}");
    assert_eq!(s.version(ResourceType::Cluster), Some("v1"));
    assert_eq!(
        s.names(ResourceType::Endpoint),
        ["a", "b"],
        "c was not followed"
    );

    // A resource of another type in the response is rejected too.
    let handled = s.on_response(sotw_response(
        ResourceType::Cluster,
        "v3",
        "n3",
        vec![listener("l", "r")],
    ));
    assert!(handled.nack.is_some_and(|m| m.contains("type")));
}

#[test]
fn sotw_subscription_changes_carry_the_latest_nonce_and_version_of_their_type() {
    let (mut s, _) = sotw_with_clusters();
    s.on_response(sotw_response(
        ResourceType::Endpoint,
        "e1",
        "n2",
        vec![cla("a"), cla("b")],
    ));
    let handled = s.on_response(sotw_response(
        ResourceType::Cluster,
        "v2",
        "n3",
        vec![cluster("a", true), cluster("c", false)],
    ));
    let eds = handled
        .requests
        .iter()
        .find(|r| r.type_url == ResourceType::Endpoint.type_url())
        .expect("an EDS request");
    assert_eq!(names_of(eds), ["a", "c"]);
    assert_eq!(
        (eds.version_info.as_str(), eds.response_nonce.as_str()),
        ("e1", "n2")
    );
    // The secrets did not change: no SDS request.
    assert!(
        handled
            .requests
            .iter()
            .all(|r| r.type_url != ResourceType::Secret.type_url())
    );
}

#[test]
fn sotw_is_synced_once_every_type_answered_with_every_name_asked_for() {
    let (mut s, _) = sotw_with_clusters();
    s.on_response(sotw_response(
        ResourceType::Listener,
        "l1",
        "n2",
        vec![listener("inbound", "80")],
    ));
    s.on_response(sotw_response(
        ResourceType::Route,
        "r1",
        "n3",
        vec![route("80")],
    ));
    s.on_response(sotw_response(
        ResourceType::Secret,
        "s1",
        "n4",
        vec![secret("default"), secret("ROOTCA")],
    ));
    s.on_response(sotw_response(
        ResourceType::Endpoint,
        "e1",
        "n5",
        vec![cla("a")],
    ));
    assert!(!s.synced(), "b has not arrived");
    s.on_response(sotw_response(
        ResourceType::Endpoint,
        "e2",
        "n6",
        vec![cla("a"), cla("b")],
    ));
    assert!(s.synced());
}

#[test]
fn sotw_reconnect_resends_every_subscription_with_the_versions_held() {
    let (mut s, _) = sotw_with_clusters();
    s.on_response(sotw_response(
        ResourceType::Endpoint,
        "e1",
        "n2",
        vec![cla("a"), cla("b")],
    ));
    let open = s.open();
    let by_type: BTreeMap<&str, &DiscoveryRequest> =
        open.iter().map(|r| (r.type_url.as_str(), r)).collect();
    assert_eq!(by_type.len(), 4, "CDS, EDS, LDS, SDS: {open:?}");
    assert_eq!(open[0].type_url, ResourceType::Cluster.type_url());
    assert_eq!(open[0].node.as_ref().map(|n| n.id.as_str()), Some(NODE));
    let eds = by_type[ResourceType::Endpoint.type_url()];
    assert_eq!(
        (eds.version_info.as_str(), names_of(eds)),
        ("e1", vec!["a", "b"])
    );
    assert!(
        open.iter().all(|r| r.response_nonce.is_empty()),
        "a new stream has no nonce"
    );
    assert!(!s.synced(), "nothing answered on the new stream yet");
}

#[test]
fn a_response_of_an_unknown_type_is_ignored() {
    let mut s = Sotw::new(NODE);
    s.open();
    let mut response = sotw_response(ResourceType::Cluster, "v1", "n1", Vec::new());
    response.type_url = "type.googleapis.com/some.Other".to_string();
    let handled = s.on_response(response);
    assert_eq!((handled.kind, handled.requests.len()), (None, 0));
}

fn delta_response(
    kind: ResourceType,
    nonce: &str,
    resources: Vec<(&str, &str, Any)>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: format!("sys-{nonce}"),
        resources: resources
            .into_iter()
            .map(|(name, version, any)| DeltaResource {
                name: name.to_string(),
                version: version.to_string(),
                resource: Some(any),
                ..Default::default()
            })
            .collect(),
        type_url: kind.type_url().to_string(),
        removed_resources: removed.iter().map(|n| n.to_string()).collect(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

fn delta_with_clusters() -> Delta {
    let mut d = Delta::new(NODE);
    d.open();
    d.on_response(delta_response(
        ResourceType::Cluster,
        "n1",
        vec![
            ("a", "1", cluster("a", true)),
            ("b", "1", cluster("b", false)),
        ],
        &[],
    ));
    d
}

#[test]
fn delta_acks_by_nonce_and_subscribes_and_unsubscribes_as_clusters_come_and_go() {
    let mut d = Delta::new(NODE);
    let open = d.open();
    assert_eq!(open.len(), 2);
    assert_eq!(open[0].node.as_ref().map(|n| n.id.as_str()), Some(NODE));
    assert!(
        open.iter().all(|r| r.resource_names_subscribe.is_empty()),
        "legacy wildcard"
    );

    let handled = d.on_response(delta_response(
        ResourceType::Cluster,
        "n1",
        vec![
            ("a", "1", cluster("a", true)),
            ("b", "1", cluster("b", false)),
        ],
        &[],
    ));
    let [ack, eds, sds] = handled.requests.as_slice() else {
        panic!("ACK, EDS and SDS: {:?}", handled.requests);
    };
    assert_eq!(
        (ack.response_nonce.as_str(), ack.error_detail.is_none()),
        ("n1", true)
    );
    assert_eq!(eds.resource_names_subscribe, ["a", "b"]);
    assert_eq!(sds.resource_names_subscribe, ["ROOTCA", "default"]);

    let handled = d.on_response(delta_response(
        ResourceType::Cluster,
        "n2",
        vec![("c", "1", cluster("c", false))],
        &["b"],
    ));
    let eds = handled
        .requests
        .iter()
        .find(|r| r.type_url == ResourceType::Endpoint.type_url())
        .expect("an EDS change");
    assert_eq!(eds.resource_names_subscribe, ["c"]);
    assert_eq!(eds.resource_names_unsubscribe, ["b"]);
    assert_eq!(d.names(ResourceType::Endpoint), ["a", "c"]);
    assert_eq!(
        d.held(ResourceType::Cluster).keys().collect::<Vec<_>>(),
        ["a", "c"]
    );
}

#[test]
fn delta_nack_applies_nothing_of_the_response() {
    let mut d = delta_with_clusters();
    let handled = d.on_response(delta_response(
        ResourceType::Cluster,
        "n2",
        vec![
            ("c", "2", cluster("c", false)),
            ("d", "2", cluster("x", false)),
        ],
        &["a"],
    ));
    let message = handled.nack.expect("rejected: d carries a cluster named x");
    assert!(message.contains("named \"x\""), "{message}");
    let [nack] = handled.requests.as_slice() else {
        panic!("one NACK: {:?}", handled.requests);
    };
    assert_eq!(nack.response_nonce, "n2");
    assert!(nack.error_detail.is_some());
    assert_eq!(
        d.held(ResourceType::Cluster).keys().collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(d.names(ResourceType::Endpoint), ["a", "b"]);
}

#[test]
fn delta_is_synced_when_every_name_arrived_or_was_said_not_to_exist() {
    let mut d = delta_with_clusters();
    d.on_response(delta_response(
        ResourceType::Listener,
        "n2",
        vec![("inbound", "1", listener("inbound", "80"))],
        &[],
    ));
    d.on_response(delta_response(
        ResourceType::Route,
        "n3",
        vec![("80", "1", route("80"))],
        &[],
    ));
    d.on_response(delta_response(
        ResourceType::Secret,
        "n4",
        vec![
            ("default", "1", secret("default")),
            ("ROOTCA", "1", secret("ROOTCA")),
        ],
        &[],
    ));
    d.on_response(delta_response(
        ResourceType::Endpoint,
        "n5",
        vec![("a", "1", cla("a"))],
        &[],
    ));
    assert!(!d.synced(), "b is neither held nor known to be absent");
    d.on_response(delta_response(
        ResourceType::Endpoint,
        "n6",
        Vec::new(),
        &["b"],
    ));
    assert!(d.synced());
}

#[test]
fn delta_reconnect_sends_the_versions_held_as_initial_resource_versions() {
    let mut d = delta_with_clusters();
    d.on_response(delta_response(
        ResourceType::Endpoint,
        "n2",
        vec![("a", "7", cla("a"))],
        &[],
    ));
    let open = d.open();
    let cds = &open[0];
    assert_eq!(cds.type_url, ResourceType::Cluster.type_url());
    assert_eq!(cds.node.as_ref().map(|n| n.id.as_str()), Some(NODE));
    assert!(
        cds.resource_names_subscribe.is_empty(),
        "still the wildcard"
    );
    assert_eq!(
        cds.initial_resource_versions.get("a").map(String::as_str),
        Some("1")
    );
    let eds = open
        .iter()
        .find(|r| r.type_url == ResourceType::Endpoint.type_url())
        .expect("EDS resubscribed");
    assert_eq!(eds.resource_names_subscribe, ["a", "b"]);
    assert_eq!(
        eds.initial_resource_versions
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
        [("a", "7")]
    );
    assert!(open.iter().all(|r| r.response_nonce.is_empty()));
}
