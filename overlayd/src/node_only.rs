//! The node-only services: what ferry runs for nodes that a pod must never reach. The one
//! list of them; `node_filter` makes the rules from it.
//!
//! Why a pod must be kept out even of a service that checks who sends: a pod reaches any
//! address outside the cluster CIDRs masqueraded to its node's own address (`rules`,
//! chain `FERRY-POSTRTG`). A node's VXLAN port trusts the other nodes by their address
//! (`nodes` in `node_filter`), so a pod's crafted VXLAN packet, masqueraded, arrives as
//! its node's and delivers any inner packet to any pod. And etcd is where every node's
//! lease is kept: a pod has no business there, whatever etcd's own authentication says.
//! So these are cut on the sending node, before the masquerade, in the forward path (to
//! another host) and the input path (to this node).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// One node-only service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    /// The VXLAN port on every node's underlay address (the `nodes` set) and on any
    /// address of this node.
    Vxlan { port: u16 },
    /// An etcd client endpoint the daemon was given: TCP to that address and port,
    /// before or after a translation (a ClusterIP is the usual form).
    Etcd(SocketAddr),
}

impl Service {
    /// The service's name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Vxlan { .. } => "vxlan",
            Service::Etcd(_) => "etcd",
        }
    }
}

/// Every node-only service of this node, from the daemon's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOnly {
    pub vxlan_port: u16,
    /// The etcd endpoints given as IP literals.
    pub etcd: Vec<SocketAddr>,
    /// The etcd endpoints given by name: no rule can name them, said once at start.
    pub by_name: Vec<String>,
}

impl NodeOnly {
    /// `endpoints` as `--etcd-endpoints` has them; `tls`: the etcd TLS flags are given (a
    /// URL without a scheme is then https, as the etcd client reads it).
    pub fn new(vxlan_port: u16, endpoints: &[String], tls: bool) -> NodeOnly {
        let mut etcd = Vec::new();
        let mut by_name = Vec::new();
        for e in endpoints {
            match endpoint_addr(e, tls) {
                Some(a) if !etcd.contains(&a) => etcd.push(a),
                Some(_) => {}
                None => by_name.push(e.clone()),
            }
        }
        NodeOnly {
            vxlan_port,
            etcd,
            by_name,
        }
    }

    pub fn services(&self) -> Vec<Service> {
        let mut v = vec![Service::Vxlan {
            port: self.vxlan_port,
        }];
        v.extend(self.etcd.iter().copied().map(Service::Etcd));
        v
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Vxlan { port } => write!(f, "VXLAN (UDP {port})"),
            Service::Etcd(a) => write!(f, "etcd {a}"),
        }
    }
}

/// The address and port of an etcd endpoint given as an IP literal (`http://10.0.0.5:2379`,
/// `https://[fd00::5]:2379`, `10.0.0.5:2379`, `https://10.96.0.66`); `None` for a name.
/// Without a port, the scheme's, as the etcd client's HTTP/2 connector takes it: 443 for
/// https (and for no scheme with `tls`), else 80.
pub fn endpoint_addr(url: &str, tls: bool) -> Option<SocketAddr> {
    let (https, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.eq_ignore_ascii_case("https"), rest),
        None => (tls, url),
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    // Credentials before the host are no part of the address.
    let host_port = authority.rsplit('@').next()?;
    if let Ok(a) = host_port.parse::<SocketAddr>() {
        return Some(a);
    }
    let default = if https { 443 } else { 80 };
    let bare = host_port
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host_port);
    bare.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_endpoint_is_its_ip_literal_and_port() {
        assert_eq!(
            endpoint_addr("http://10.0.0.5:2379", false),
            a("10.0.0.5:2379")
        );
        assert_eq!(
            endpoint_addr("https://10.96.0.66:6666", true),
            a("10.96.0.66:6666")
        );
        assert_eq!(
            endpoint_addr("https://[fd00::5]:2379/", true),
            a("[fd00::5]:2379")
        );
        assert_eq!(endpoint_addr("10.0.0.5:2379", false), a("10.0.0.5:2379"));
        assert_eq!(
            endpoint_addr("http://user:pw@10.0.0.5:2379", false),
            a("10.0.0.5:2379")
        );
        // No port: the scheme's.
        assert_eq!(endpoint_addr("https://10.0.0.5", false), a("10.0.0.5:443"));
        assert_eq!(endpoint_addr("http://[fd00::5]", true), a("[fd00::5]:80"));
        assert_eq!(endpoint_addr("10.0.0.5", true), a("10.0.0.5:443"));
        // A name cannot be a rule.
        assert_eq!(
            endpoint_addr("https://etcd.kube-system.svc:2379", true),
            None
        );
        assert_eq!(endpoint_addr("localhost:2379", false), None);
    }

    #[test]
    fn every_node_only_service_is_listed_once() {
        let n = NodeOnly::new(
            4789,
            &[
                "http://192.0.2.2:2379".into(),
                "http://192.0.2.2:2379".into(),
                "https://etcd.example:2379".into(),
                "http://[2001:db8::2]:2379".into(),
            ],
            false,
        );
        assert_eq!(
            n.services(),
            [
                Service::Vxlan { port: 4789 },
                Service::Etcd("192.0.2.2:2379".parse().unwrap()),
                Service::Etcd("[2001:db8::2]:2379".parse().unwrap()),
            ]
        );
        assert_eq!(n.by_name, ["https://etcd.example:2379"]);
    }
}
