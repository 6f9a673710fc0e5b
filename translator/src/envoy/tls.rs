//! TLS contexts: the server side of inbound chains and the client side of
//! outbound clusters. Certificates come over ADS as SDS secrets `default`
//! and `ROOTCA` (decision 1): stock Envoy has no istio-agent to ask.

use super::names::{SECRET_DEFAULT, SECRET_ROOTCA};
use super::{ads_config_source, any};
use crate::model::{ClientTls, ClientTlsMode};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TransportSocket, UpstreamHttpProtocolOptions, data_source, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, TlsParameters, UpstreamTlsContext, common_tls_context,
    subject_alt_name_matcher::SanType, tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::BoolValue;

/// ALPN the client cluster offers on Istio mTLS. The server's PERMISSIVE
/// TLS chain matches exactly these, so an application's own TLS (other
/// ALPN) is never terminated by the sidecar (decision 2).
pub const ISTIO_ALPN: &[&str] = &["istio"];
/// ALPNs an inbound PERMISSIVE chain accepts as Istio mTLS (Istio's
/// `allIstioMtlsALPNs`, so istio-proxy clients are recognised too).
pub const ISTIO_MTLS_ALPNS: &[&str] = &[
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
/// ALPN the server advertises: "istio" is matched, never advertised.
const SERVER_ALPN: &[&str] = &["h2", "http/1.1"];
/// Istio's default cipher list for TLS 1.2.
const CIPHERS: &[&str] = &[
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

pub const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
pub const RAW_SOCKET: &str = "envoy.transport_sockets.raw_buffer";

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads_config_source(true)),
    }
}

fn tls_params() -> TlsParameters {
    TlsParameters {
        tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
        tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
        cipher_suites: strings(CIPHERS),
        ..Default::default()
    }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn uri_matcher(pattern: MatchPattern) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(pattern),
            ignore_case: false,
        }),
        oid: String::new(),
    }
}

/// The inbound mTLS context: require a client certificate from any
/// workload of the trust domain (per-identity checks are authorization's
/// job, as in Istio).
pub fn downstream_mtls(trust_domain: &str) -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(tls_params()),
            tls_certificate_sds_secret_configs: vec![sds(SECRET_DEFAULT)],
            alpn_protocols: strings(SERVER_ALPN),
            validation_context_type: Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(CertificateValidationContext {
                            match_typed_subject_alt_names: vec![uri_matcher(MatchPattern::Prefix(
                                format!("spiffe://{trust_domain}/"),
                            ))],
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds(SECRET_ROOTCA)),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// Istio mTLS to a service: our certificate, the server's SPIFFE IDs
/// verified exactly, SNI and ALPN as istio-proxy would send them.
pub fn upstream_istio_mutual(sans: &[String], sni: String, h2: bool) -> UpstreamTlsContext {
    let mut alpn = strings(ISTIO_ALPN);
    if h2 {
        alpn.push("h2".into());
    }
    UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(tls_params()),
            tls_certificate_sds_secret_configs: vec![sds(SECRET_DEFAULT)],
            alpn_protocols: alpn,
            validation_context_type: Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(CertificateValidationContext {
                            match_typed_subject_alt_names: sans
                                .iter()
                                .map(|s| uri_matcher(MatchPattern::Exact(s.clone())))
                                .collect(),
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds(SECRET_ROOTCA)),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        sni,
        ..Default::default()
    }
}

/// A SAN matcher for one `subjectAltNames` entry. Istio matches the entry
/// against SANs of any type (the untyped `match_subject_alt_names`, which
/// Envoy deprecates); typed matchers need a type, read from the entry's
/// shape: a URI (`spiffe://...`), an IP address, an e-mail address, else a
/// DNS name.
fn san_matcher(san: &str) -> SubjectAltNameMatcher {
    let san_type = if san.contains("://") {
        SanType::Uri
    } else if san.parse::<std::net::IpAddr>().is_ok() {
        SanType::IpAddress
    } else if san.contains('@') {
        SanType::Email
    } else {
        SanType::Dns
    };
    SubjectAltNameMatcher {
        san_type: san_type as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(san.to_string())),
            ignore_case: false,
        }),
        oid: String::new(),
    }
}

/// SDS over ADS for a `credentialName`, as istiod names it
/// (`kubernetes://NAME`, and `kubernetes://NAME-cacert` for the CA). These
/// keep Envoy's default fetch timeout, so a missing Secret does not hold
/// the cluster back for ever (istiod's `SDSAdsConfig`).
fn credential_sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: format!("kubernetes://{name}"),
        sds_config: Some(ads_config_source(false)),
    }
}

/// SIMPLE / MUTUAL origination, as istiod's `constructUpstreamTLS`
/// (cluster_tls.go) builds it for a DestinationRule. Files are paths on the
/// sidecar's filesystem, read by Envoy itself (stock Envoy has no agent to
/// serve them over SDS). Without `caCertificates` the server is verified
/// against `trust_bundle` (istiod's `file-root:system`); `insecureSkipVerify`
/// turns verification off. `sni` is the rule's or empty: the cluster then
/// sets `auto_sni` (see [`auto_sni_options`]). With a `credentialName`
/// (rules with a workloadSelector) certificate and CA come over SDS.
pub fn upstream_user_tls(
    tls: &ClientTls,
    trust_bundle: &str,
    credential: Option<&str>,
    h2: bool,
) -> UpstreamTlsContext {
    let file = |p: &str| DataSource {
        specifier: Some(data_source::Specifier::Filename(p.to_string())),
        ..Default::default()
    };
    fn set(v: &Option<String>) -> Option<&str> {
        v.as_deref().filter(|s| !s.is_empty())
    }
    let mut common = CommonTlsContext {
        // istiod's defaultUpstreamCommonTLSContext: TLS 1.3 at most, Envoy's
        // client defaults otherwise (the server is not ours to restrict).
        tls_params: Some(TlsParameters {
            tls_maximum_protocol_version: TlsProtocol::TlSv13 as i32,
            ..Default::default()
        }),
        alpn_protocols: if h2 { vec!["h2".into()] } else { Vec::new() },
        ..Default::default()
    };
    let sans: Vec<SubjectAltNameMatcher> = tls
        .subject_alt_names
        .iter()
        .map(|s| san_matcher(s))
        .collect();
    if let Some(name) = credential {
        if tls.mode() == ClientTlsMode::Mutual {
            common.tls_certificate_sds_secret_configs = vec![credential_sds(name)];
        }
        if !tls.insecure_skip_verify {
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(CertificateValidationContext {
                            match_typed_subject_alt_names: sans,
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(credential_sds(&format!(
                            "{name}-cacert"
                        ))),
                        ..Default::default()
                    },
                ),
            );
        }
    } else {
        if tls.mode() == ClientTlsMode::Mutual
            && let (Some(cert), Some(key)) = (set(&tls.client_certificate), set(&tls.private_key))
        {
            common.tls_certificates = vec![TlsCertificate {
                certificate_chain: Some(file(cert)),
                private_key: Some(file(key)),
                ..Default::default()
            }];
        }
        let validation = if tls.insecure_skip_verify {
            // istiod's empty validation context: nothing is verified.
            CertificateValidationContext::default()
        } else {
            CertificateValidationContext {
                trusted_ca: Some(file(set(&tls.ca_certificates).unwrap_or(trust_bundle))),
                match_typed_subject_alt_names: sans,
                crl: set(&tls.ca_crl).map(file),
                ..Default::default()
            }
        };
        common.validation_context_type =
            Some(common_tls_context::ValidationContextType::ValidationContext(validation));
    }
    UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls.sni.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// istiod's `setAutoSniAndAutoSanValidation` for a cluster that is not a
/// dynamic forward proxy: `auto_sni` when the rule names no SNI (Envoy sends
/// the request's host), and `auto_san_validation` when it also names no
/// SANs and verification is on (the server certificate must match that
/// host). `None` when neither applies.
pub fn auto_sni_options(tls: &ClientTls) -> Option<UpstreamHttpProtocolOptions> {
    let auto_sni = tls.sni.as_deref().is_none_or(str::is_empty);
    let auto_san_validation =
        auto_sni && tls.subject_alt_names.is_empty() && !tls.insecure_skip_verify;
    (auto_sni || auto_san_validation).then(|| UpstreamHttpProtocolOptions {
        auto_sni,
        auto_san_validation,
        ..Default::default()
    })
}

pub fn tls_socket_upstream(ctx: &UpstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: TLS_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(ctx))),
    }
}

pub fn tls_socket_downstream(ctx: &DownstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: TLS_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(ctx))),
    }
}

pub fn raw_socket() -> TransportSocket {
    TransportSocket {
        name: RAW_SOCKET.into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(
            &RawBuffer {},
        ))),
    }
}
