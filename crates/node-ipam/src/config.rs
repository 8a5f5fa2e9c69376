//! The `ipam` section of a network configuration, resolved into a concrete pool.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use cni::Route;
use ipnetwork::Ipv4Network;
use serde::Deserialize;

use crate::error::IpamError;
use crate::node_state::{self, NodeState};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/ferry/ipam";

/// The keys `ferry-ipam` reads from `ipam`. Addresses stay strings here so that a
/// malformed one is an invalid configuration (code 7) that names the key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    pub data_dir: Option<PathBuf>,
    pub subnet: Option<String>,
    pub range_start: Option<String>,
    pub range_end: Option<String>,
    pub gateway: Option<String>,
    pub routes: Option<Vec<Route>>,
}

impl IpamConf {
    pub fn data_dir(&self) -> &Path {
        self.data_dir
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_DATA_DIR))
    }
}

/// A resolved address pool: the addresses from `start` to `end`, but `gateway`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub subnet: Ipv4Network,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub routes: Vec<Route>,
}

fn parse_ip(key: &str, s: &str) -> Result<Ipv4Addr, IpamError> {
    s.parse()
        .map_err(|_| IpamError::Config(format!("{key} {s:?} is not an IPv4 address")))
}

/// Parses `a.b.c.d/n`, refusing host bits and subnets too small to hold a pod.
pub fn parse_subnet(key: &str, s: &str) -> Result<Ipv4Network, IpamError> {
    let net: Ipv4Network = s
        .parse()
        .map_err(|_| IpamError::Config(format!("{key} {s:?} is not an IPv4 CIDR")))?;
    if net.network() != net.ip() {
        return Err(IpamError::Config(format!(
            "{key} {s} has host bits set; the network address is {}/{}",
            net.network(),
            net.prefix()
        )));
    }
    if net.prefix() > 30 {
        return Err(IpamError::Config(format!(
            "{key} {s} is too small to allocate from (at most /30)"
        )));
    }
    Ok(net)
}

impl Pool {
    /// Resolves the pool from the config, falling back to the node state for the subnet.
    pub fn resolve(conf: &IpamConf, state_dir: &Path) -> Result<Pool, IpamError> {
        let (subnet, node_gateway) = match &conf.subnet {
            Some(s) => (parse_subnet("subnet", s)?, None),
            None => {
                let st: NodeState = node_state::require(state_dir)?;
                let invalid = |detail: String| IpamError::NodeStateInvalid {
                    path: node_state::path(state_dir),
                    detail,
                };
                let (cidr, gateway) = st.ipv4().ok_or_else(|| invalid("no IPv4 podCIDR".into()))?;
                let net = parse_subnet("podCIDR", cidr).map_err(|e| invalid(e.to_string()))?;
                (net, gateway)
            }
        };
        Self::from_parts(conf, subnet, node_gateway)
    }

    fn from_parts(
        conf: &IpamConf,
        subnet: Ipv4Network,
        node_gateway: Option<Ipv4Addr>,
    ) -> Result<Pool, IpamError> {
        let first = u32::from(subnet.network()) + 1;
        let last = u32::from(subnet.broadcast()) - 1;
        let inside = |key: &str, ip: Ipv4Addr| {
            if subnet.contains(ip) && ip != subnet.network() && ip != subnet.broadcast() {
                Ok(ip)
            } else {
                Err(IpamError::Config(format!(
                    "{key} {ip} is not a host address of subnet {subnet}"
                )))
            }
        };
        let gateway = match (&conf.gateway, node_gateway) {
            (Some(g), _) => inside("gateway", parse_ip("gateway", g)?)?,
            (None, Some(g)) => inside("gateway", g)?,
            (None, None) => Ipv4Addr::from(first),
        };
        let start = match &conf.range_start {
            Some(s) => inside("rangeStart", parse_ip("rangeStart", s)?)?,
            None => Ipv4Addr::from(first),
        };
        let end = match &conf.range_end {
            Some(s) => inside("rangeEnd", parse_ip("rangeEnd", s)?)?,
            None => Ipv4Addr::from(last),
        };
        if start > end {
            return Err(IpamError::Config(format!(
                "rangeStart {start} is after rangeEnd {end}"
            )));
        }
        let routes = conf.routes.clone().unwrap_or_else(|| {
            vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: None,
            }]
        });
        for r in &routes {
            if r.dst.parse::<ipnetwork::IpNetwork>().is_err() {
                return Err(IpamError::Config(format!(
                    "route dst {:?} is not a CIDR",
                    r.dst
                )));
            }
        }
        let pool = Pool {
            subnet,
            start,
            end,
            gateway,
            routes,
        };
        if pool.capacity() == 0 {
            return Err(IpamError::Config(format!(
                "range {} holds no address but the gateway",
                pool.range()
            )));
        }
        Ok(pool)
    }

    /// How many addresses can be handed out.
    pub fn capacity(&self) -> u32 {
        let n = u32::from(self.end) - u32::from(self.start) + 1;
        n - u32::from(self.contains(self.gateway))
    }

    /// Whether `ip` is within `start..=end` (the gateway included).
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start <= ip && ip <= self.end
    }

    pub fn range(&self) -> String {
        format!("{}-{}", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(subnet: &str) -> IpamConf {
        IpamConf {
            subnet: Some(subnet.into()),
            ..Default::default()
        }
    }

    fn resolve(c: &IpamConf) -> Result<Pool, IpamError> {
        Pool::resolve(c, Path::new("/nonexistent"))
    }

    #[test]
    fn defaults_of_a_slash_24() {
        let p = resolve(&conf("10.1.2.0/24")).unwrap();
        assert_eq!(p.gateway, Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(p.start, Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(p.end, Ipv4Addr::new(10, 1, 2, 254));
        assert_eq!(p.capacity(), 253);
        assert_eq!(p.routes[0].dst, "0.0.0.0/0");
    }

    #[test]
    fn rejects_bad_subnets_and_ranges() {
        for bad in ["10.1.2.0/31", "10.1.2.5/24", "nope", "10.1.2.0/33"] {
            let e = resolve(&conf(bad)).unwrap_err();
            assert_eq!(e.code(), cni::Code::InvalidConfig, "{bad}");
        }
        let mut c = conf("10.1.2.0/24");
        c.range_start = Some("10.1.3.1".into());
        assert!(resolve(&c).unwrap_err().to_string().contains("rangeStart"));
        c.range_start = Some("10.1.2.50".into());
        c.range_end = Some("10.1.2.40".into());
        assert!(resolve(&c).unwrap_err().to_string().contains("after"));
        let mut c = conf("10.1.2.0/24");
        c.gateway = Some("10.1.2.255".into());
        assert!(resolve(&c).is_err());
    }

    #[test]
    fn missing_node_state_is_try_again() {
        let e = resolve(&IpamConf::default()).unwrap_err();
        assert_eq!(e.code(), cni::Code::TryAgainLater);
        assert!(e.to_string().contains("ferry-overlayd"));
    }

    #[test]
    fn a_slash_30_holds_one_pod() {
        let p = resolve(&conf("10.9.0.0/30")).unwrap();
        assert_eq!(p.capacity(), 1);
    }
}
