//! Where things live in etcd, under the prefix (default `/ferry`), in a versioned layout
//! (documented in docs/etcd.md):
//!
//! ```text
//! <prefix>/v1/config                     cluster config (JSON)
//! <prefix>/v1/leases/<a.b.c.d>-<len>     one node's subnet lease (JSON), on its grace lease
//! <prefix>/v1/nodes/<node>               the node's subnet key, on the same grace lease
//! <prefix>/v1/alive/<node>               heartbeat, on a short lease
//! <prefix>/v1/usage/<node>               addresses used on the node, on the same lease
//! ```

use ipnetwork::Ipv4Network;

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
        assert_eq!(l.node("n1"), "/ferry/v1/nodes/n1");
        assert_eq!(l.alive("n1"), "/ferry/v1/alive/n1");
    }
}
