//! Which Envoy layout a sidecar gets: Istio decides it per proxy from the
//! node metadata `INTERCEPTION_MODE` (the injector sets it from the pod's
//! `sidecar.istio.io/interceptionMode` annotation), and so do we.

use std::fmt;

/// The node metadata key that selects the layout.
pub const INTERCEPTION_MODE_KEY: &str = "INTERCEPTION_MODE";

/// How traffic reaches the sidecar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Interception {
    /// No iptables: inbound listeners bind the workload's IP, the
    /// application calls the outbound listener explicitly (Istio's
    /// `captureMode: NONE`). What a node without the key gets.
    #[default]
    None,
    /// iptables REDIRECT sends every TCP connection to Envoy: outbound to
    /// `virtualOutbound` (15001), inbound to `virtualInbound` (15006).
    Redirect,
}

impl Interception {
    /// The mode a node's metadata value names; `None` (the value is absent)
    /// is [`Interception::None`]. Istio's third mode, TPROXY, keeps the
    /// client's source address, which needs Envoy transparent sockets and
    /// mangle-table rules we do not generate: it is refused by name rather
    /// than served a layout that would silently not work.
    pub fn from_metadata(value: Option<&str>) -> Result<Interception, String> {
        match value {
            None | Some("NONE") => Ok(Interception::None),
            Some("REDIRECT") => Ok(Interception::Redirect),
            Some("TPROXY") => Err(format!(
                "{INTERCEPTION_MODE_KEY} TPROXY is not supported; use REDIRECT (iptables \
                 capture, `xds-server iptables`) or NONE"
            )),
            Some(other) => Err(format!(
                "{INTERCEPTION_MODE_KEY} {other:?} is not one of REDIRECT, NONE"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Interception::None => "NONE",
            Interception::Redirect => "REDIRECT",
        }
    }
}

impl fmt::Display for Interception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_value_selects_the_layout_and_unknown_ones_are_refused() {
        assert_eq!(Interception::from_metadata(None), Ok(Interception::None));
        assert_eq!(
            Interception::from_metadata(Some("NONE")),
            Ok(Interception::None)
        );
        assert_eq!(
            Interception::from_metadata(Some("REDIRECT")),
            Ok(Interception::Redirect)
        );
        let tproxy = Interception::from_metadata(Some("TPROXY")).expect_err("unsupported");
        assert!(tproxy.contains("TPROXY is not supported"), "{tproxy}");
        let typo = Interception::from_metadata(Some("redirect")).expect_err("case matters");
        assert!(typo.contains("\"redirect\""), "{typo}");
    }
}
