//! The floor a server's push time is compared with (issue #13, item 5):
//! protobuf-encode the distinct resources of one full push once, then
//! write those bytes to N sockets. No control plane can do a full push to
//! N proxies for less on the same machine; the ratio of the server's time
//! to this says how much it spends beyond the unavoidable.
//!
//! Measured in the load generator, with no server running, over loopback
//! TCP to readers that discard what they read (their reading is part of
//! the cost, as the proxies' is). At most [`SOCKETS`] connections are open
//! at once, each written its share of the N pushes, so the floor needs no
//! more file descriptors than a modest load.

use super::proxy::proxies_of;
use anyhow::Context;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use translator::ResourceType;
use translator::model::MeshConfig;
use translator::model::build::Addressing;

/// Connections open at once.
const SOCKETS: usize = 1000;

/// What the floor took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Floor {
    /// Encoding the distinct resources of one full push, once.
    pub encode: Duration,
    /// Writing the encoded push to N sockets (and its reading).
    pub write: Duration,
    /// Bytes of one full push.
    pub bytes: u64,
}

impl Floor {
    pub fn total(&self) -> Duration {
        self.encode + self.write
    }
}

/// Messages of one type, decoded from a translation (untimed), so that
/// encoding them is what is timed.
enum Decoded {
    Clusters(Vec<Cluster>),
    Endpoints(Vec<ClusterLoadAssignment>),
    Listeners(Vec<Listener>),
    Routes(Vec<RouteConfiguration>),
}

fn decode_all<M: Message + Default>(map: &translator::ResourceMap) -> anyhow::Result<Vec<M>> {
    map.values()
        .map(|r| M::decode(r.body.value.as_slice()).context("decoding a translated resource"))
        .collect()
}

fn response<M: Message + Name>(kind: ResourceType, messages: &[M]) -> Vec<u8> {
    DiscoveryResponse {
        version_info: "0000000000000000".into(),
        resources: messages
            .iter()
            .map(|m| Any {
                type_url: M::type_url(),
                value: m.encode_to_vec(),
            })
            .collect(),
        type_url: kind.type_url().to_string(),
        nonce: "1".into(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Measures the floor for `n` proxies receiving the full push of the first
/// sidecar of the mesh in `config_dir`.
pub async fn measure(
    config_dir: &Path,
    mesh: &MeshConfig,
    addressing: &Addressing,
    n: usize,
) -> anyhow::Result<Floor> {
    let first = proxies_of(config_dir, mesh, addressing)?
        .into_iter()
        .next()
        .context("the mesh has no sidecar")?;
    let snapshot = crate::source::files::FileLoader::new(vec![config_dir.to_path_buf()]).load();
    let (built, _) = snapshot.build_mesh(mesh.clone(), addressing);
    let translation = translator::translate(&built);
    let plan = translation
        .proxy(&first.namespace, &first.pod)
        .context("the first sidecar has no plan")?;
    let all = plan.resources();
    let decoded = [
        Decoded::Clusters(decode_all(&all.clusters)?),
        Decoded::Endpoints(decode_all(&all.endpoints)?),
        Decoded::Listeners(decode_all(&all.listeners)?),
        Decoded::Routes(decode_all(&all.routes)?),
    ];

    let started = Instant::now();
    let push: Vec<bytes::Bytes> = decoded
        .iter()
        .map(|d| match d {
            Decoded::Clusters(m) => response(ResourceType::Cluster, m),
            Decoded::Endpoints(m) => response(ResourceType::Endpoint, m),
            Decoded::Listeners(m) => response(ResourceType::Listener, m),
            Decoded::Routes(m) => response(ResourceType::Route, m),
        })
        .map(bytes::Bytes::from)
        .collect();
    let encode = started.elapsed();
    let bytes: u64 = push.iter().map(|b| b.len() as u64).sum();

    let write = write_to_sockets(&push, n, SOCKETS).await?;
    Ok(Floor {
        encode,
        write,
        bytes,
    })
}

/// Writes `push` `n` times, spread over up to `max_sockets` loopback
/// connections, until every byte was read on the other side.
async fn write_to_sockets(
    push: &[bytes::Bytes],
    n: usize,
    max_sockets: usize,
) -> anyhow::Result<Duration> {
    let sockets = n.clamp(1, max_sockets.max(1));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accept = tokio::spawn(async move {
        let mut accepted = Vec::with_capacity(sockets);
        for _ in 0..sockets {
            accepted.push(listener.accept().await?.0);
        }
        anyhow::Ok(accepted)
    });
    let mut writers = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        writers.push(stream);
    }
    let readers = accept.await.context("accepting")??;

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut reader in readers {
        tasks.spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut read = 0u64;
            loop {
                match reader.read(&mut buf).await? {
                    0 => return anyhow::Ok(read),
                    k => read += k as u64,
                }
            }
        });
    }
    for (i, mut writer) in writers.into_iter().enumerate() {
        // Socket i carries pushes i, i + sockets, i + 2 * sockets, ...
        let times = (n + sockets - 1 - i) / sockets;
        let push = push.to_vec();
        tasks.spawn(async move {
            for _ in 0..times {
                for part in &push {
                    writer.write_all(part).await?;
                }
            }
            writer.shutdown().await?;
            anyhow::Ok(0)
        });
    }
    let mut total = 0u64;
    while let Some(done) = tasks.join_next().await {
        total += done.context("a floor task")??;
    }
    let elapsed = started.elapsed();
    let expected = push.iter().map(|b| b.len() as u64).sum::<u64>() * n as u64;
    anyhow::ensure!(total == expected, "read {total} bytes, expected {expected}");
    Ok(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_push_reaches_a_reader_once() {
        let push = vec![
            bytes::Bytes::from(vec![1u8; 1000]),
            bytes::Bytes::from(vec![2u8; 10]),
        ];
        // More pushes than sockets, and not a multiple of them; fewer.
        write_to_sockets(&push, 11, 4)
            .await
            .expect("all bytes read");
        write_to_sockets(&push, 3, 4).await.expect("all bytes read");
    }
}
