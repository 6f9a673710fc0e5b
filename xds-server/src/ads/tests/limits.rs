//! What a misbehaving client can make the server hold or do: each bound of
//! [`Limits`] refuses clearly, ends only the offending stream, and leaves
//! the others served.

use super::*;
use crate::ads::limits::Limit;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use std::time::Instant;
use tonic::Code;

/// Opens a SotW stream subscribed to all clusters and reads the response.
async fn serving_stream(server: &AdsServer<FakeSource>) -> sotw::Stream {
    let mut stream = sotw::Stream::open(server).await;
    stream
        .send(sotw::request(ResourceType::Cluster, &[], "", ""))
        .await;
    let cds = stream.recv().await;
    assert_eq!(cds.resources.len(), 2);
    stream
}

/// A later stream of the same server is still served.
async fn assert_still_serving(server: &AdsServer<FakeSource>) {
    let _ = serving_stream(server).await;
}

#[tokio::test]
async fn request_larger_than_max_request_bytes_ends_stream_with_out_of_range() {
    within(async {
        let (_source, server) = setup();
        let other = serving_stream(&server).await;
        let mut stream = sotw::Stream::open(&server).await;
        // 5 MiB of names: past the default 4 MiB before any name is looked at.
        let names: Vec<String> = (0..5 * 1024).map(|i| format!("{i:01024}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        stream
            .send(sotw::request(ResourceType::Endpoint, &names, "", ""))
            .await;
        let status = stream.status().await;
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert!(
            status
                .message()
                .contains(&Limits::DEFAULT.max_request_bytes.to_string()),
            "{status:?}"
        );
        assert_eq!(server.stats().refused_requests(Limit::MessageSize), 1);
        assert_still_serving(&server).await;
        drop(other);

        // The limit is the configured one.
        let (_source, server) = setup_with(Limits {
            max_request_bytes: 16 * 1024,
            ..Limits::DEFAULT
        });
        let mut stream = sotw::Stream::open(&server).await;
        stream
            .send(sotw::request(ResourceType::Endpoint, &names[..20], "", ""))
            .await;
        let status = stream.status().await;
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert!(status.message().contains("16384"), "{status:?}");
        assert_still_serving(&server).await;
    })
    .await;
}

#[tokio::test]
async fn resource_name_of_one_mib_is_refused_with_invalid_argument() {
    within(async {
        let (_source, server) = setup();
        let huge = "n".repeat(1024 * 1024);

        let mut stream = sotw::Stream::open(&server).await;
        stream
            .send(sotw::request(
                ResourceType::Endpoint,
                &[EDS_A, &huge],
                "",
                "",
            ))
            .await;
        let status = stream.status().await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("1048576 bytes"), "{status:?}");
        assert!(status.message().contains("4096"), "{status:?}");
        assert!(status.message().contains("--max-name-bytes"), "{status:?}");
        assert!(status.message().len() < 300, "the name is not echoed back");
        assert!(server.registry().is_empty(), "refused before registering");

        // The same on a delta stream, on a later request this time.
        let mut delta = delta::Stream::open(&server).await;
        delta
            .send(delta::request(ResourceType::Endpoint, &[EDS_A], &[], ""))
            .await;
        delta.recv().await;
        delta
            .send(delta::request(ResourceType::Endpoint, &[&huge], &[], ""))
            .await;
        let status = delta.status().await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("--max-name-bytes"), "{status:?}");
        eventually("the delta stream is unregistered", || {
            server.registry().is_empty()
        })
        .await;
        assert_eq!(server.stats().refused_requests(Limit::NameLength), 2);
        assert_still_serving(&server).await;
    })
    .await;
}

#[tokio::test]
async fn too_many_names_in_one_request_are_refused() {
    within(async {
        let (_source, server) = setup();
        let names: Vec<String> = (0..=Limits::DEFAULT.max_names_per_request)
            .map(|i| i.to_string())
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut stream = sotw::Stream::open(&server).await;
        stream
            .send(sotw::request(ResourceType::Endpoint, &names, "", ""))
            .await;
        let status = stream.status().await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("50001 resources"), "{status:?}");
        assert!(
            status.message().contains("--max-names-per-request"),
            "{status:?}"
        );
        assert_eq!(server.stats().refused_requests(Limit::NamesPerRequest), 1);
        assert_still_serving(&server).await;
    })
    .await;
}

#[tokio::test]
async fn long_type_url_is_refused_and_unknown_short_ones_are_ignored() {
    within(async {
        let (_source, server) = setup();
        let mut stream = serving_stream(&server).await;
        let type_url = format!("type.googleapis.com/{}", "x".repeat(1024 * 1024));
        stream
            .send(DiscoveryRequest {
                type_url,
                ..sotw::request(ResourceType::Cluster, &[], "", "")
            })
            .await;
        let status = stream.status().await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("type_url"), "{status:?}");
        assert_eq!(server.stats().refused_requests(Limit::TypeUrlLength), 1);
        assert_still_serving(&server).await;
    })
    .await;
}

#[tokio::test]
async fn nack_message_is_truncated_where_it_is_kept() {
    within(async {
        let (_source, server) = setup();
        let mut stream = sotw::Stream::open(&server).await;
        stream
            .send(sotw::request(ResourceType::Cluster, &[], "", ""))
            .await;
        let cds = stream.recv().await;
        let message = "e".repeat(1024 * 1024);
        stream
            .send(DiscoveryRequest {
                error_detail: Some(RpcStatus {
                    code: Code::InvalidArgument as i32,
                    message,
                    details: Vec::new(),
                }),
                ..sotw::request(ResourceType::Cluster, &[], "", &cds.nonce)
            })
            .await;
        let kept = || {
            server
                .registry()
                .snapshot()
                .first()
                .and_then(|c| c.types.get(&ResourceType::Cluster).cloned())
                .and_then(|t| t.last_nack)
                .map(|n| n.message)
        };
        eventually("the NACK is recorded", || kept().is_some()).await;
        let kept = kept().expect("recorded");
        let max = Limits::DEFAULT.max_nack_message_bytes;
        assert!(kept.len() <= max + 64, "{} bytes kept", kept.len());
        assert!(kept.starts_with("eeee"));
        assert!(
            kept.ends_with("(truncated from 1048576 bytes)"),
            "{kept:.80}"
        );
        // A NACK is not a refusal: the stream goes on.
        stream
            .send(sotw::request(ResourceType::Listener, &[], "", ""))
            .await;
        assert_eq!(stream.recv().await.resources.len(), 2);
    })
    .await;
}

#[tokio::test]
async fn delta_subscriptions_past_the_limit_are_refused() {
    within(async {
        let limits = Limits {
            max_delta_subscriptions: 100,
            ..Limits::DEFAULT
        };
        let (_source, server) = setup_with(limits);
        let names = |prefix: &str, n: usize| -> Vec<String> {
            (0..n).map(|i| format!("{prefix}-{i}")).collect()
        };
        let mut stream = delta::Stream::open(&server).await;
        // 60 endpoint names, then 40 cluster names: exactly at the limit.
        let eds = names("eds", 60);
        let eds: Vec<&str> = eds.iter().map(String::as_str).collect();
        stream
            .send(delta::request(ResourceType::Endpoint, &eds, &[], ""))
            .await;
        stream.recv().await;
        let cds = names("cds", 40);
        let cds: Vec<&str> = cds.iter().map(String::as_str).collect();
        stream
            .send(delta::request(ResourceType::Cluster, &cds, &[], ""))
            .await;
        stream.recv().await;
        // Names already subscribed do not count twice...
        stream
            .send(delta::request(ResourceType::Endpoint, &eds[..10], &[], ""))
            .await;
        // ...and one more is one too many.
        stream
            .send(delta::request(ResourceType::Route, &["80"], &[], ""))
            .await;
        let status = stream.status().await;
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("101 resource names"),
            "{status:?}"
        );
        assert!(
            status.message().contains("--max-delta-subscriptions"),
            "{status:?}"
        );
        assert_eq!(
            server.stats().refused_requests(Limit::DeltaSubscriptions),
            1
        );
        eventually("the stream is unregistered", || {
            server.registry().is_empty()
        })
        .await;
        assert_still_serving(&server).await;
    })
    .await;
}

#[tokio::test]
async fn response_larger_than_max_response_bytes_ends_stream_with_a_clear_status() {
    within(async {
        let limits = Limits {
            max_response_bytes: 64,
            ..Limits::DEFAULT
        };
        let (_source, server) = setup_with(limits);
        let mut stream = sotw::Stream::open(&server).await;
        stream
            .send(sotw::request(ResourceType::Cluster, &[], "", ""))
            .await;
        let status = stream.status().await;
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("--max-response-bytes"),
            "{status:?}"
        );
        assert_eq!(server.stats().oversized_responses(), 1);
    })
    .await;
}

/// Requests a client has sent that the server has not taken yet, at most:
/// the test client's queue (16), one chunk tonic encoded from it (at most
/// those 16) and the request being handled. Buffering on the server's side
/// would let thousands pile up.
const MAX_LAG: u64 = 64;

const FLOOD: u64 = 10_000;

#[tokio::test]
async fn request_flood_on_one_stream_is_not_buffered_and_other_streams_stay_served() {
    within(async {
        let (source, server) = setup();
        let stats = server.stats();
        let flooder = serving_stream(&server).await;
        let mut other = serving_stream(&server).await;
        let base = stats.requests();

        // ACKs with a stale nonce, as fast as the stream takes them.
        let flood_stats = Arc::clone(&stats);
        let flood = tokio::spawn(async move {
            let mut max_lag = 0;
            for sent in 1..=FLOOD {
                flooder
                    .send(sotw::request(ResourceType::Cluster, &[], "v", "stale"))
                    .await;
                let taken = flood_stats.requests() - base;
                max_lag = max_lag.max(sent.saturating_sub(taken));
            }
            (flooder, max_lag)
        });

        // In the middle of the flood, a change reaches the other stream.
        eventually("the flood is under way", || {
            stats.requests() - base >= FLOOD / 10
        })
        .await;
        source.set(
            NODE,
            &base_with(&[res(ResourceType::Cluster, EDS_A, 2)], &[]),
        );
        let changed = Instant::now();
        let update = other.recv().await;
        assert_eq!(update.resources.len(), 2);
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "the other stream waited {:?} for its update",
            changed.elapsed()
        );
        assert!(
            stats.requests() - base < FLOOD,
            "the update arrived while the flood was still going"
        );

        let (mut flooder, max_lag) = flood.await.expect("the flood task");
        assert!(max_lag <= MAX_LAG, "{max_lag} requests were in flight");
        eventually("every request was taken", || {
            stats.requests() - base == FLOOD
        })
        .await;
        // The flooder's stream is still served, and the flood changed
        // nothing it holds: stale ACKs are ignored.
        assert_eq!(flooder.recv().await.version_info, update.version_info);
        for connection in server.registry().snapshot() {
            let cds = &connection.types[&ResourceType::Cluster];
            assert_eq!(cds.acked_version, None);
            assert_eq!(cds.sent_version.as_ref(), Some(&update.version_info));
        }
    })
    .await;
}

#[tokio::test]
async fn delta_flood_of_repeated_subscriptions_holds_one_name_and_sends_once() {
    within(async {
        let (_source, server) = setup();
        let stats = server.stats();
        let mut stream = delta::Stream::open(&server).await;
        stream
            .send(delta::request(ResourceType::Endpoint, &[EDS_A], &[], ""))
            .await;
        stream.recv().await;
        let base = stats.requests();
        let mut max_lag = 0;
        for sent in 1..=FLOOD {
            stream
                .send(delta::request(ResourceType::Endpoint, &[EDS_A], &[], ""))
                .await;
            max_lag = max_lag.max(sent.saturating_sub(stats.requests() - base));
        }
        assert!(max_lag <= MAX_LAG, "{max_lag} requests were in flight");
        eventually("every request was taken", || {
            stats.requests() - base == FLOOD
        })
        .await;
        let connection = &server.registry().snapshot()[0];
        let eds = &connection.types[&ResourceType::Endpoint];
        let subscription = eds.subscription.as_ref().expect("subscribed");
        assert_eq!(subscription.names.len(), 1);
        assert_eq!(stats.pushes(ResourceType::Endpoint), 1, "nothing resent");
        // A probe on the same stream is the next answer.
        stream
            .send(delta::request(ResourceType::Route, &["80"], &[], ""))
            .await;
        let rds = stream.recv().await;
        assert_eq!(rds.type_url, ResourceType::Route.type_url());
    })
    .await;
}

#[tokio::test]
async fn proxy_that_never_reads_is_dropped_after_the_send_timeout() {
    within(async {
        let send_timeout = Duration::from_millis(300);
        let limits = Limits {
            send_timeout,
            ..Limits::DEFAULT
        };
        let (source, server) = setup_with(limits);
        let stats = server.stats();
        let registry = server.registry();
        // Subscribes, then never reads a response.
        let mut stuck = sotw::Stream::open(&server).await;
        stuck
            .send(sotw::request(ResourceType::Cluster, &[], "", ""))
            .await;
        let mut reader = serving_stream(&server).await;
        eventually("both streams are registered", || registry.len() == 2).await;

        // Config keeps changing; the reader gets every change. The stuck
        // stream's queue fills after RESPONSE_QUEUE responses, and
        // send_timeout later it is dropped.
        let started = Instant::now();
        let mut rev = 1;
        while stats.slow_streams_dropped() == 0 {
            assert!(
                started.elapsed() < send_timeout + Duration::from_secs(3),
                "the stuck stream was not dropped in time"
            );
            rev += 1;
            source.set(
                NODE,
                &base_with(&[res(ResourceType::Cluster, EDS_A, rev)], &[]),
            );
            let update = reader.recv().await;
            assert_eq!(update.resources.len(), 2);
        }
        assert!(
            rev > RESPONSE_QUEUE as u32,
            "dropped only once its queue was full"
        );
        eventually("the stuck stream is unregistered", || registry.len() == 1).await;
        assert_eq!(stats.connected(), 1);

        // The reader keeps getting updates.
        source.set(
            NODE,
            &base_with(&[res(ResourceType::Cluster, EDS_A, rev + 1)], &[]),
        );
        assert_eq!(reader.recv().await.resources.len(), 2);

        // Should the stuck client read after all, it learns why it was
        // dropped; the queued responses are gone.
        let status = stuck.status().await;
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("--send-timeout"), "{status:?}");
    })
    .await;
}

#[test]
fn ads_serve_flags_default_to_the_documented_limits() {
    use clap::Parser as _;
    let cli = crate::cli::Cli::try_parse_from(["xds-server", "serve", "--config-dir", "x"])
        .expect("serve parses");
    let crate::cli::Command::Serve(args) = cli.command else {
        panic!("not serve");
    };
    assert_eq!(args.limits.limits(), Limits::DEFAULT);
}
