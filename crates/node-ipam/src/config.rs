//! The `ipam` section of a network configuration, resolved into concrete pools: one per
//! address family the pod gets (IPv4, IPv6 or both).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ferry_cni::Route;
use ipnetwork::{IpNetwork, Ipv4Network};
use serde::Deserialize;

use crate::error::IpamError;
use crate::node_state::{self, NodeState};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/ferry/ipam";

/// One range of host-local's `ranges` format.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RangeConf {
    pub subnet: String,
    pub range_start: Option<String>,
    pub range_end: Option<String>,
    pub gateway: Option<String>,
}

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
    /// host-local's format: one range set per address family.
    pub ranges: Option<Vec<Vec<RangeConf>>>,
    pub routes: Option<Vec<Route>>,
}

impl IpamConf {
    pub fn data_dir(&self) -> &Path {
        self.data_dir
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_DATA_DIR))
    }

    /// Whether the pools are given here rather than by the node state.
    pub fn is_static(&self) -> bool {
        self.subnet.is_some() || self.ranges.is_some()
    }
}

/// A resolved address pool of one family: the addresses from `start` to `end`, but
/// `gateway`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    pub gateway: IpAddr,
}

/// The pools of an attachment (at least one) and the routes its pod gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pools {
    pub v4: Option<Pool>,
    pub v6: Option<Pool>,
    pub routes: Vec<Route>,
}

use ferry_family::{from_int, to_int, Family};

fn parse_ip(key: &str, s: &str) -> Result<IpAddr, IpamError> {
    s.parse()
        .map_err(|_| IpamError::Config(format!("{key} {s:?} is not an IP address")))
}

/// Parses `a.b.c.d/n`, refusing host bits and subnets too small to hold a pod.
pub fn parse_subnet(key: &str, s: &str) -> Result<Ipv4Network, IpamError> {
    match parse_network(key, s)? {
        IpNetwork::V4(n) => Ok(n),
        IpNetwork::V6(_) => Err(IpamError::Config(format!(
            "{key} {s:?} is not an IPv4 CIDR"
        ))),
    }
}

/// Parses a CIDR of either family, refusing host bits and subnets too small to hold a
/// gateway and a pod (IPv4 at most /30, IPv6 at most /126).
pub fn parse_network(key: &str, s: &str) -> Result<IpNetwork, IpamError> {
    let net: IpNetwork = s
        .parse()
        .map_err(|_| IpamError::Config(format!("{key} {s:?} is not a CIDR")))?;
    if net.network() != net.ip() {
        return Err(IpamError::Config(format!(
            "{key} {s} has host bits set; the network address is {}/{}",
            net.network(),
            net.prefix()
        )));
    }
    let max = if net.is_ipv4() { 30 } else { 126 };
    if net.prefix() > max {
        return Err(IpamError::Config(format!(
            "{key} {s} is too small to allocate from (at most /{max})"
        )));
    }
    Ok(net)
}

/// The gateway of a pod subnet unless a config names another: its first host address.
/// The plugin, the IPAM and the daemon all take it from here, so that the bridge's
/// address, the pods' default route and the node state agree.
pub fn gateway(net: IpNetwork) -> IpAddr {
    let (first, _) = ferry_family::bounds(net);
    from_int(Family::of_net(net), first + 1)
}

/// The first and last host addresses of `net`: not the network address, and for IPv4
/// not the broadcast (IPv6 has none).
pub fn host_bounds(net: IpNetwork) -> (IpAddr, IpAddr) {
    let (_, last) = ferry_family::bounds(net);
    // IPv4's last address is the broadcast; IPv6 has none.
    let last = if net.is_ipv4() { last - 1 } else { last };
    (gateway(net), from_int(Family::of_net(net), last))
}

impl Pools {
    /// Resolves the pools from the config, falling back to the node state.
    pub fn resolve(conf: &IpamConf, state_dir: &Path) -> Result<Pools, IpamError> {
        Self::resolve_in(conf, state_dir, None)
    }

    /// `resolve` with the node state a caller has already read (`None`: read it here,
    /// only if the config has no static pool).
    pub fn resolve_in(
        conf: &IpamConf,
        state_dir: &Path,
        node: Option<&node_state::View>,
    ) -> Result<Pools, IpamError> {
        let legacy = conf.subnet.is_some()
            || conf.range_start.is_some()
            || conf.range_end.is_some()
            || conf.gateway.is_some();
        let mut pools = Vec::new();
        if let Some(sets) = &conf.ranges {
            if legacy {
                return Err(IpamError::Config(
                    "ranges and subnet/rangeStart/rangeEnd/gateway are exclusive: use one form"
                        .into(),
                ));
            }
            if sets.is_empty() {
                return Err(IpamError::Config("ranges is empty".into()));
            }
            for (i, set) in sets.iter().enumerate() {
                let [r] = set.as_slice() else {
                    return Err(IpamError::Config(format!(
                        "ranges[{i}] holds {} ranges; ferry takes exactly one per address family",
                        set.len()
                    )));
                };
                let key = format!("ranges[{i}][0]");
                let subnet = parse_network(&format!("{key}.subnet"), &r.subnet)?;
                pools.push(Pool::from_parts(
                    &key,
                    subnet,
                    r.range_start.as_deref(),
                    r.range_end.as_deref(),
                    r.gateway.as_deref(),
                    None,
                )?);
            }
        } else if let Some(s) = &conf.subnet {
            pools.push(Pool::from_parts(
                "",
                parse_network("subnet", s)?,
                conf.range_start.as_deref(),
                conf.range_end.as_deref(),
                conf.gateway.as_deref(),
                None,
            )?);
        } else {
            let read;
            let st: &NodeState = match node {
                Some(view) => view.require()?,
                None => {
                    read = node_state::require(state_dir)?;
                    &read
                }
            };
            let invalid = |detail: String| IpamError::NodeStateInvalid {
                path: node_state::path(state_dir),
                detail,
            };
            let families = [
                (
                    "podCIDR",
                    st.pod_cidr.as_deref(),
                    st.gateway.map(IpAddr::V4),
                ),
                (
                    "podCIDRv6",
                    st.pod_cidr_v6.as_deref(),
                    st.gateway_v6.map(IpAddr::V6),
                ),
            ];
            for (key, cidr, gw) in families {
                let Some(cidr) = cidr else { continue };
                let net = parse_network(key, cidr).map_err(|e| invalid(e.to_string()))?;
                let want_v4 = key == "podCIDR";
                if net.is_ipv4() != want_v4 {
                    return Err(invalid(format!("{key} {cidr} is of the wrong family")));
                }
                pools.push(
                    Pool::from_parts(key, net, None, None, None, gw)
                        .map_err(|e| invalid(e.to_string()))?,
                );
            }
            if pools.is_empty() {
                return Err(invalid(
                    "neither podCIDR nor podCIDRv6 is set: the node has no pod subnet".into(),
                ));
            }
        }
        let mut out = Pools {
            v4: None,
            v6: None,
            routes: Vec::new(),
        };
        for p in pools {
            let slot = if p.subnet.is_ipv4() {
                &mut out.v4
            } else {
                &mut out.v6
            };
            if slot.is_some() {
                return Err(IpamError::Config(format!(
                    "two {} pools ({} and {}): ferry takes one per address family",
                    Family::of(p.gateway),
                    slot.as_ref()
                        .map(|s| s.subnet.to_string())
                        .unwrap_or_default(),
                    p.subnet
                )));
            }
            *slot = Some(p);
        }
        out.routes = match &conf.routes {
            Some(r) => r.clone(),
            None => {
                let mut r = Vec::new();
                if out.v4.is_some() {
                    r.push(Route {
                        dst: "0.0.0.0/0".into(),
                        gw: None,
                    });
                }
                if out.v6.is_some() {
                    r.push(Route {
                        dst: "::/0".into(),
                        gw: None,
                    });
                }
                r
            }
        };
        for r in &out.routes {
            let dst = r
                .dst
                .parse::<IpNetwork>()
                .map_err(|_| IpamError::Config(format!("route dst {:?} is not a CIDR", r.dst)))?;
            let has_family = if dst.is_ipv4() {
                out.v4.is_some()
            } else {
                out.v6.is_some()
            };
            if !has_family {
                return Err(IpamError::Config(format!(
                    "route {} is {} but no {} pool is configured",
                    r.dst,
                    Family::of(dst.ip()),
                    Family::of(dst.ip())
                )));
            }
            if let Some(gw) = r.gw {
                if gw.is_ipv4() != dst.is_ipv4() {
                    return Err(IpamError::Config(format!(
                        "route {} has a gateway {gw} of the other family",
                        r.dst
                    )));
                }
            }
        }
        Ok(out)
    }

    /// The pools, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.v4.iter().chain(self.v6.iter())
    }

    /// The pool `ip` belongs to.
    pub fn of(&self, ip: IpAddr) -> Option<&Pool> {
        if ip.is_ipv4() {
            self.v4.as_ref()
        } else {
            self.v6.as_ref()
        }
    }
}

impl Pool {
    /// A pool of `subnet`; `key` prefixes the keys errors name (`ranges[1][0]`).
    fn from_parts(
        key: &str,
        subnet: IpNetwork,
        range_start: Option<&str>,
        range_end: Option<&str>,
        gateway: Option<&str>,
        node_gateway: Option<IpAddr>,
    ) -> Result<Pool, IpamError> {
        let name = |k: &str| {
            if key.is_empty() || key.starts_with("podCIDR") {
                k.to_string()
            } else {
                format!("{key}.{k}")
            }
        };
        let (first, last) = host_bounds(subnet);
        let inside = |k: &str, ip: IpAddr| {
            if subnet.contains(ip) && first <= ip && ip <= last {
                Ok(ip)
            } else {
                Err(IpamError::Config(format!(
                    "{} {ip} is not a host address of subnet {subnet}",
                    name(k)
                )))
            }
        };
        let parse = |k: &str, s: &str| inside(k, parse_ip(&name(k), s)?);
        let gateway = match (gateway, node_gateway) {
            (Some(g), _) => parse("gateway", g)?,
            (None, Some(g)) => inside("gateway", g)?,
            (None, None) => self::gateway(subnet),
        };
        let start = match range_start {
            Some(s) => parse("rangeStart", s)?,
            None => first,
        };
        let end = match range_end {
            Some(s) => parse("rangeEnd", s)?,
            None => last,
        };
        if start > end {
            return Err(IpamError::Config(format!(
                "{} {start} is after {} {end}",
                name("rangeStart"),
                name("rangeEnd")
            )));
        }
        let pool = Pool {
            subnet,
            start,
            end,
            gateway,
        };
        if pool.capacity() == 0 {
            return Err(IpamError::Config(format!(
                "range {} holds no address but the gateway",
                pool.range()
            )));
        }
        Ok(pool)
    }

    /// How many addresses can be handed out (an IPv6 /64 holds 2^64 - 1: a u128).
    pub fn capacity(&self) -> u128 {
        let n = to_int(self.end) - to_int(self.start) + 1;
        n - u128::from(self.contains(self.gateway))
    }

    /// Whether `ip` is within `start..=end` (the gateway included).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4() && self.start <= ip && ip <= self.end
    }

    pub fn range(&self) -> String {
        format!("{}-{}", self.start, self.end)
    }

    pub fn prefix(&self) -> u8 {
        self.subnet.prefix()
    }
}

/// A capacity as people read it: exact up to a billion, else a power of two.
pub fn show_capacity(n: u128) -> String {
    if n < 1_000_000_000 {
        n.to_string()
    } else {
        format!("~2^{}", 128 - n.leading_zeros())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
