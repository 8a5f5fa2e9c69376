//! Where things live in etcd, under the prefix (default `/ferry`), in a versioned layout
//! (documented in docs/etcd.md):
//!
//! ```text
//! <prefix>/v1/config                     cluster config (JSON)
//! <prefix>/v1/leases/<a.b.c.d>-<len>     one node's subnet lease (JSON), on its grace lease
//! <prefix>/v1/leases-v6/<ipv6>-<len>     dual-stack: the lease key holding that IPv6
//!                                        subnet, on the same grace lease: one IPv6
//!                                        subnet, one node. IPv6-only: the node's lease
//!                                        record itself (there is no IPv4 key to index)
//! <prefix>/v1/nodes/<node>               the node's subnet key, on the same grace lease
//! <prefix>/v1/alive/<node>               heartbeat, on a short lease
//! <prefix>/v1/usage/<node>               addresses used on the node, on the same lease
//! ```

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

pub const VERSION: &str = "v1";
pub const DEFAULT_PREFIX: &str = "/ferry";

#[derive(Debug, Clone)]
pub struct Layout {
    base: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Layout {
        Layout {
            base: format!("{}/{VERSION}", prefix.trim_end_matches('/')),
        }
    }

    pub fn config(&self) -> String {
        format!("{}/config", self.base)
    }

    pub fn leases(&self) -> String {
        format!("{}/leases/", self.base)
    }

    pub fn lease(&self, subnet: Ipv4Network) -> String {
        format!("{}{}-{}", self.leases(), subnet.network(), subnet.prefix())
    }

    /// The subnet of a lease key, when `key` is one.
    pub fn subnet_of(&self, key: &str) -> Option<Ipv4Network> {
        let rest = key.strip_prefix(&self.leases())?;
        let (ip, len) = rest.rsplit_once('-')?;
        Ipv4Network::new(ip.parse().ok()?, len.parse().ok()?).ok()
    }

    /// The index key of an IPv6 subnet: its value is the lease key that holds it, and its
    /// existence keeps any other node from leasing it (a key per subnet, as for IPv4, so
    /// that uniqueness is one etcd compare).
    pub fn lease_v6(&self, subnet: Ipv6Network) -> String {
        format!(
            "{}{}-{}",
            self.leases_v6(),
            subnet.network(),
            subnet.prefix()
        )
    }

    pub fn leases_v6(&self) -> String {
        format!("{}/leases-v6/", self.base)
    }

    /// The IPv6 subnet of an IPv6 index key, when `key` is one.
    pub fn subnet_v6_of(&self, key: &str) -> Option<Ipv6Network> {
        let rest = key.strip_prefix(&self.leases_v6())?;
        let (ip, len) = rest.rsplit_once('-')?;
        Ipv6Network::new(ip.parse().ok()?, len.parse().ok()?).ok()
    }

    /// Where the lease records are: under `leases/`, keyed by their IPv4 subnet, or in an
    /// IPv6-only cluster under `leases-v6/`, keyed by their IPv6 subnet.
    pub fn records(&self, v6_only: bool) -> String {
        if v6_only {
            self.leases_v6()
        } else {
            self.leases()
        }
    }

    /// The key of the record whose primary subnet (`LeaseRecord::primary`) is `net`.
    pub fn record_key(&self, net: IpNetwork) -> String {
        match net {
            IpNetwork::V4(n) => self.lease(n),
            IpNetwork::V6(n) => self.lease_v6(n),
        }
    }

    /// The subnet a record key names, of either family.
    pub fn net_of(&self, key: &str) -> Option<IpNetwork> {
        self.subnet_of(key)
            .map(IpNetwork::V4)
            .or(self.subnet_v6_of(key).map(IpNetwork::V6))
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}/nodes/{name}", self.base)
    }

    pub fn alive_prefix(&self) -> String {
        format!("{}/alive/", self.base)
    }

    pub fn alive(&self, name: &str) -> String {
        format!("{}{name}", self.alive_prefix())
    }

    pub fn usage_prefix(&self) -> String {
        format!("{}/usage/", self.base)
    }

    pub fn usage(&self, name: &str) -> String {
        format!("{}{name}", self.usage_prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let l = Layout::new("/ferry/");
        let s: Ipv4Network = "10.244.3.0/24".parse().unwrap();
        assert_eq!(l.config(), "/ferry/v1/config");
        assert_eq!(l.lease(s), "/ferry/v1/leases/10.244.3.0-24");
        assert_eq!(l.subnet_of(&l.lease(s)), Some(s));
        assert_eq!(l.subnet_of("/ferry/v1/nodes/x"), None);
        let s6: Ipv6Network = "fd00:10:0:3::/64".parse().unwrap();
        assert_eq!(l.lease_v6(s6), "/ferry/v1/leases-v6/fd00:10:0:3::-64");
        // Outside the IPv4 leases' prefix: a previous release lists only those.
        assert!(!l.lease_v6(s6).starts_with(&l.leases()));
        assert_eq!(l.subnet_v6_of(&l.lease_v6(s6)), Some(s6));
        assert_eq!(l.subnet_v6_of(&l.lease(s)), None);
        assert_eq!(l.records(false), l.leases());
        assert_eq!(l.records(true), l.leases_v6());
        assert_eq!(l.record_key(IpNetwork::V6(s6)), l.lease_v6(s6));
        assert_eq!(l.net_of(&l.lease_v6(s6)), Some(IpNetwork::V6(s6)));
        assert_eq!(l.net_of(&l.lease(s)), Some(IpNetwork::V4(s)));
        assert_eq!(l.node("n1"), "/ferry/v1/nodes/n1");
        assert_eq!(l.alive("n1"), "/ferry/v1/alive/n1");
    }
}
