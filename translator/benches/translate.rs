//! Translating a generated mesh of 1,000 services and 2,000 workloads (two
//! replicas each, all with sidecars, 50 namespaces, a mesh STRICT policy,
//! some namespace and workload policies and DestinationRules) for all 2,000
//! sidecars. Run: `cargo bench -p translator --bench translate`.

use criterion::{Criterion, criterion_group, criterion_main};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use translator::model::*;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn meta(ns: &str, name: &str, created: i64) -> PolicyMeta {
    PolicyMeta {
        namespace: ns.into(),
        name: name.into(),
        created,
    }
}

pub fn generated_mesh(services: usize, replicas: usize, namespaces: usize) -> Mesh {
    let mut ns_list = Vec::new();
    let mut svcs = Vec::new();
    let mut wls = Vec::new();
    let mut pas = vec![PeerAuthentication {
        meta: meta("istio-system", "default", 0),
        selector: None,
        mode: PeerMode::Strict,
        port_modes: BTreeMap::new(),
    }];
    let mut drs = Vec::new();
    for n in 0..namespaces {
        let ns = format!("ns-{n}");
        ns_list.push(Namespace {
            name: ns.clone(),
            labels: labels(&[("istio-injection", "enabled".into())]),
        });
        if n % 5 == 0 {
            pas.push(PeerAuthentication {
                meta: meta(&ns, "default", 1),
                selector: None,
                mode: PeerMode::Permissive,
                port_modes: BTreeMap::new(),
            });
        }
    }
    for s in 0..services {
        let ns = format!("ns-{}", s % namespaces);
        let app = format!("svc-{s}");
        svcs.push(Service {
            namespace: ns.clone(),
            name: app.clone(),
            labels: Labels::new(),
            selector: Some(labels(&[("app", app.clone())])),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 8000,
                target_port: TargetPort::Number(8080),
                protocol: Protocol::Http,
            }],
            cluster_ip: None,
        });
        for r in 0..replicas {
            let i = (s * replicas + r) as u32;
            wls.push(Workload {
                namespace: ns.clone(),
                name: format!("{app}-{r}"),
                labels: labels(&[("app", app.clone()), ("version", "v1".into())]),
                service_account: app.clone(),
                ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                app_ip: None,
                ports: vec![ContainerPort {
                    name: None,
                    port: 8080,
                }],
                sidecar: true,
                ready: true,
                owner: Some(app.clone()),
            });
        }
        if s % 20 == 0 {
            pas.push(PeerAuthentication {
                meta: meta(&ns, &app, 2),
                selector: Some(labels(&[("app", app.clone())])),
                mode: PeerMode::Strict,
                port_modes: [(8080, PeerMode::Permissive)].into_iter().collect(),
            });
        }
        if s % 25 == 0 {
            drs.push(DestinationRule {
                meta: meta(&ns, &app, 3),
                host: app.clone(),
                export_to: Vec::new(),
                workload_selector: None,
                traffic_policy: Some(TrafficPolicy {
                    tls: Some(ClientTls {
                        mode: Some(ClientTlsMode::IstioMutual),
                        ..Default::default()
                    }),
                    port_tls: BTreeMap::new(),
                }),
                subsets: Vec::new(),
            });
        }
    }
    Mesh::new(MeshConfig::default(), ns_list, svcs, wls, pas, drs)
}

fn bench(c: &mut Criterion) {
    let mesh = generated_mesh(1000, 2, 50);
    let t = translator::translate(&mesh);
    assert_eq!(t.proxies.len(), 2000);
    let mut g = c.benchmark_group("translate");
    g.sample_size(10);
    g.bench_function("1000_services_2000_sidecars", |b| {
        b.iter(|| black_box(translator::translate(black_box(&mesh))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
