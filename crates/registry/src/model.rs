//! The cluster config and leases as data, and the decisions about them.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

pub const DEFAULT_SUBNET_LEN: u8 = 24;
/// A node's IPv6 subnet, as flannel's: room for SLAAC-sized pools.
pub const DEFAULT_SUBNET_LEN_V6: u8 = 64;
pub const DEFAULT_VNI: u32 = 1;
pub const DEFAULT_PORT: u16 = 4789;

/// The cluster config: one pod network per address family the cluster has (IPv4-only,
/// dual-stack or IPv6-only), the VXLAN VNI and port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ConfigWire", into = "ConfigWire")]
pub struct ClusterConfig {
    /// Absent in an IPv6-only cluster.
    pub ipv4: Option<ClusterV4>,
    pub vni: u32,
    pub port: u16,
    /// Absent (and ignored by a release that predates it) in an IPv4-only cluster.
    pub ipv6: Option<ClusterV6>,
}

/// The config as stored: the IPv4 network's keys at the top level, as every release
/// before IPv6-only clusters wrote them (an IPv4-only or dual-stack config is the same
/// bytes, and an older release reads it), absent in an IPv6-only one.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigWire {
    #[serde(
        rename = "clusterCIDR",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    cluster_cidr: Option<Ipv4Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subnet_len: Option<u8>,
    vni: u32,
    port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ipv6: Option<ClusterV6>,
}

impl TryFrom<ConfigWire> for ClusterConfig {
    type Error = String;
    fn try_from(w: ConfigWire) -> Result<Self, String> {
        let ipv4 = match (w.cluster_cidr, w.subnet_len) {
            (Some(cluster_cidr), Some(subnet_len)) => Some(ClusterV4 {
                cluster_cidr,
                subnet_len,
            }),
            (None, None) => None,
            (Some(c), None) => return Err(format!("clusterCIDR {c} without subnetLen")),
            (None, Some(l)) => return Err(format!("subnetLen {l} without clusterCIDR")),
        };
        Ok(ClusterConfig {
            ipv4,
            vni: w.vni,
            port: w.port,
            ipv6: w.ipv6,
        })
    }
}

impl From<ClusterConfig> for ConfigWire {
    fn from(c: ClusterConfig) -> Self {
        ConfigWire {
            cluster_cidr: c.ipv4.map(|v| v.cluster_cidr),
            subnet_len: c.ipv4.map(|v| v.subnet_len),
            vni: c.vni,
            port: c.port,
            ipv6: c.ipv6,
        }
    }
}

/// A cluster's IPv4 pod network, split into one subnet per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterV4 {
    pub cluster_cidr: Ipv4Network,
    pub subnet_len: u8,
}

/// A cluster's IPv6 pod network, split into one subnet per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterV6 {
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Ipv6Network,
    pub subnet_len: u8,
}

/// What the daemon's flags say about the cluster config; `None` is "not given".
#[derive(Debug, Clone, Default)]
pub struct ConfigFlags {
    pub cluster_cidr: Option<Ipv4Network>,
    pub subnet_len: Option<u8>,
    pub cluster_cidr_v6: Option<Ipv6Network>,
    pub subnet_len_v6: Option<u8>,
    pub vni: Option<u32>,
    pub port: Option<u16>,
}

/// One node's lease, as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    pub node: String,
    /// The node's IPv4 subnet; absent in an IPv6-only cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Network>,
    /// Where other nodes send this node's VXLAN traffic: an address of either family
    /// (the underlay's, whatever the pods' families are).
    pub public_ip: IpAddr,
    /// `aa:bb:cc:dd:ee:ff`
    pub vtep_mac: String,
    /// The node's IPv6 subnet in a dual-stack or IPv6-only cluster, leased in the same
    /// transaction and on the same etcd lease as the rest of the record.
    #[serde(rename = "subnetV6", default, skip_serializing_if = "Option::is_none")]
    pub subnet_v6: Option<Ipv6Network>,
}

/// How many pod addresses a node uses, as its daemon publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub used: u32,
    pub capacity: u32,
}

impl LeaseRecord {
    pub fn vtep_mac_bytes(&self) -> Option<[u8; 6]> {
        parse_mac(&self.vtep_mac)
    }

    /// The subnet the record's key names: the IPv4 one when there is one (IPv4-only and
    /// dual-stack clusters), else the IPv6 one (IPv6-only clusters).
    pub fn primary(&self) -> Option<IpNetwork> {
        self.subnet
            .map(IpNetwork::V4)
            .or(self.subnet_v6.map(IpNetwork::V6))
    }
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Address ranges a cluster CIDR may never touch, and why.
const FORBIDDEN: [(&str, &str); 6] = [
    ("0.0.0.0/8", "the unspecified range"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (and broadcast)"),
    ("255.255.255.255/32", "broadcast"),
];

/// The shortest cluster CIDR accepted: anything shorter would swallow the underlay's
/// neighbours and the rest of the internet.
pub const MIN_CLUSTER_PREFIX: u8 = 8;

fn net(s: &str) -> Ipv4Network {
    s.parse().expect("constant network")
}

/// IPv6 ranges a cluster CIDR may never touch, and why (the first match is named).
const FORBIDDEN_V6: [(&str, &str); 5] = [
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("::/8", "reserved (unspecified, loopback, IPv4-compatible)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// The shortest IPv6 cluster CIDR accepted, for the same reason as `MIN_CLUSTER_PREFIX`.
pub const MIN_CLUSTER_PREFIX_V6: u8 = 16;
/// The longest IPv6 node subnet: a node needs room for its pods.
pub const MAX_SUBNET_LEN_V6: u8 = 120;

fn net6(s: &str) -> Ipv6Network {
    s.parse().expect("constant network")
}

/// Whether two networks share an address.
pub fn overlap(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// Whether two IPv6 networks share an address.
pub fn overlap_v6(a: Ipv6Network, b: Ipv6Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The IPv4 networks of a host's networks.
fn v4s(nets: &[IpNetwork]) -> impl Iterator<Item = Ipv4Network> + '_ {
    nets.iter().filter_map(|n| match n {
        IpNetwork::V4(n) => Some(*n),
        IpNetwork::V6(_) => None,
    })
}

/// The IPv6 networks of a host's networks.
fn v6s(nets: &[IpNetwork]) -> impl Iterator<Item = Ipv6Network> + '_ {
    nets.iter().filter_map(|n| match n {
        IpNetwork::V6(n) => Some(*n),
        IpNetwork::V4(_) => None,
    })
}

impl ClusterV4 {
    pub fn validate(&self) -> Result<(), String> {
        let c = self.cluster_cidr;
        if c.prefix() < MIN_CLUSTER_PREFIX {
            return Err(format!(
                "cluster CIDR {c} is too short: /{} (at least /{MIN_CLUSTER_PREFIX})",
                c.prefix()
            ));
        }
        for (range, why) in FORBIDDEN {
            if overlap(c, net(range)) {
                return Err(format!("cluster CIDR {c} overlaps {range}: {why}"));
            }
        }
        if c.network() != c.ip() {
            return Err(format!("cluster CIDR {c} has host bits set"));
        }
        if self.subnet_len <= c.prefix() || self.subnet_len > 30 {
            return Err(format!(
                "node subnet length /{} must be longer than the cluster CIDR's /{} and at most /30",
                self.subnet_len,
                c.prefix()
            ));
        }
        if self.subnet_len - c.prefix() > 24 {
            return Err(format!(
                "cluster CIDR {c} split into /{} would make more than 2^24 node subnets",
                self.subnet_len
            ));
        }
        Ok(())
    }

    /// How many node subnets the cluster CIDR holds.
    pub fn subnet_count(&self) -> u32 {
        1u32 << (self.subnet_len - self.cluster_cidr.prefix())
    }

    /// The `i`th node subnet.
    pub fn subnet(&self, i: u32) -> Ipv4Network {
        let size = 1u32 << (32 - self.subnet_len);
        let base = u32::from(self.cluster_cidr.network()) + i * size;
        Ipv4Network::new(Ipv4Addr::from(base), self.subnet_len).expect("valid prefix")
    }

    /// Whether `s` is one of this config's node subnets.
    pub fn holds(&self, s: Ipv4Network) -> bool {
        s.prefix() == self.subnet_len && self.cluster_cidr.contains(s.network())
    }
}

impl ClusterV6 {
    pub fn validate(&self) -> Result<(), String> {
        let c = self.cluster_cidr;
        if c.prefix() < MIN_CLUSTER_PREFIX_V6 {
            return Err(format!(
                "IPv6 cluster CIDR {c} is too short: /{} (at least /{MIN_CLUSTER_PREFIX_V6})",
                c.prefix()
            ));
        }
        for (range, why) in FORBIDDEN_V6 {
            if overlap_v6(c, net6(range)) {
                return Err(format!("IPv6 cluster CIDR {c} overlaps {range}: {why}"));
            }
        }
        if c.network() != c.ip() {
            return Err(format!("IPv6 cluster CIDR {c} has host bits set"));
        }
        let len = self.subnet_len;
        if len <= c.prefix() || len > MAX_SUBNET_LEN_V6 {
            return Err(format!(
                "IPv6 node subnet length /{len} must be longer than the cluster CIDR's /{} and at most /{MAX_SUBNET_LEN_V6}",
                c.prefix()
            ));
        }
        if len - c.prefix() > 24 {
            return Err(format!(
                "IPv6 cluster CIDR {c} split into /{len} would make more than 2^24 node subnets"
            ));
        }
        Ok(())
    }

    pub fn subnet_count(&self) -> u32 {
        1u32 << (self.subnet_len - self.cluster_cidr.prefix())
    }

    /// The `i`th node subnet.
    pub fn subnet(&self, i: u32) -> Ipv6Network {
        let size = 1u128 << (128 - u32::from(self.subnet_len));
        let base = u128::from(self.cluster_cidr.network()) + u128::from(i) * size;
        Ipv6Network::new(Ipv6Addr::from(base), self.subnet_len).expect("valid prefix")
    }

    /// Whether `s` is one of this config's node subnets.
    pub fn holds(&self, s: Ipv6Network) -> bool {
        s.prefix() == self.subnet_len && self.cluster_cidr.contains(s.network())
    }
}

/// An address another node may be sent VXLAN to: unicast, routable, not ours to forge.
fn check_unicast(ip: IpAddr) -> Result<(), String> {
    let why = match ip {
        IpAddr::V4(ip) if ip.is_unspecified() => "unspecified",
        IpAddr::V4(ip) if ip.is_loopback() => "loopback",
        IpAddr::V4(ip) if ip.is_multicast() => "multicast",
        IpAddr::V4(ip) if ip.is_broadcast() => "broadcast",
        IpAddr::V4(ip) if ip.octets()[0] == 0 || ip.octets()[0] >= 240 => "reserved",
        IpAddr::V6(ip) if ip.is_unspecified() => "unspecified",
        // Link-local would need a scope, IPv4-mapped is another family's address.
        IpAddr::V6(ip) => match FORBIDDEN_V6.iter().find(|(r, _)| net6(r).contains(ip)) {
            Some((_, why)) => why,
            None => return Ok(()),
        },
        IpAddr::V4(_) => return Ok(()),
    };
    Err(format!("public IP {ip} is {why}"))
}

fn shown<T: ToString>(v: Option<T>) -> Option<String> {
    v.map(|v| v.to_string())
}

/// A VXLAN network identifier (24 bits, not 0) and UDP port.
pub fn check_vxlan(vni: u32, port: u16) -> Result<(), String> {
    if vni == 0 || vni > 0x00ff_ffff {
        return Err(format!("VNI {vni} is out of range (1 to 16777215)"));
    }
    if port == 0 {
        return Err("VXLAN port 0 is not a port".into());
    }
    Ok(())
}

/// A VTEP MAC: six octets, unicast, not all zero.
fn check_mac(s: &str) -> Result<[u8; 6], String> {
    let mac = parse_mac(s).ok_or_else(|| format!("VTEP MAC {s:?} is not a MAC address"))?;
    if mac == [0; 6] {
        return Err(format!("VTEP MAC {s} is all zero"));
    }
    if mac[0] & 1 == 1 {
        return Err(format!("VTEP MAC {s} is multicast"));
    }
    Ok(mac)
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.ipv4.is_none() && self.ipv6.is_none() {
            return Err(
                "the cluster has no pod network: give an IPv4 or an IPv6 cluster CIDR, or both"
                    .into(),
            );
        }
        if let Some(v4) = &self.ipv4 {
            v4.validate()?;
        }
        check_vxlan(self.vni, self.port)?;
        if let Some(v6) = &self.ipv6 {
            v6.validate()?;
        }
        Ok(())
    }

    /// An IPv6-only cluster: its leases are keyed by their IPv6 subnet.
    pub fn v6_only(&self) -> bool {
        self.ipv4.is_none()
    }

    /// The cluster CIDRs must not share an address with the node's own networks, or a
    /// node subnet could take the place of the underlay.
    pub fn check_underlay(&self, underlay: &[IpNetwork]) -> Result<(), String> {
        if let Some(v4) = self.ipv4 {
            if let Some(u) = v4s(underlay).find(|u| overlap(v4.cluster_cidr, *u)) {
                return Err(format!(
                    "cluster CIDR {} overlaps this node's network {u}",
                    v4.cluster_cidr
                ));
            }
        }
        let Some(v6) = self.ipv6 else {
            return Ok(());
        };
        match v6s(underlay).find(|u| overlap_v6(v6.cluster_cidr, *u)) {
            Some(u) => Err(format!(
                "IPv6 cluster CIDR {} overlaps this node's network {u}",
                v6.cluster_cidr
            )),
            None => Ok(()),
        }
    }

    /// Whether `s` is one of this config's node subnets, of either family.
    pub fn holds_any(&self, s: IpNetwork) -> bool {
        match s {
            IpNetwork::V4(s) => self.ipv4.is_some_and(|v| v.holds(s)),
            IpNetwork::V6(s) => self.ipv6.is_some_and(|v| v.holds(s)),
        }
    }

    /// Whether `ip` is inside a cluster CIDR of its family.
    fn inside(&self, ip: IpAddr) -> Option<IpNetwork> {
        match ip {
            IpAddr::V4(a) => self
                .ipv4
                .map(|v| v.cluster_cidr)
                .filter(|c| c.contains(a))
                .map(IpNetwork::V4),
            IpAddr::V6(a) => self
                .ipv6
                .map(|v| v.cluster_cidr)
                .filter(|c| c.contains(a))
                .map(IpNetwork::V6),
        }
    }

    /// The config the flags ask for, when none is stored: either cluster CIDR (or both)
    /// makes one.
    pub fn from_flags(f: &ConfigFlags) -> Option<ClusterConfig> {
        let ipv4 = f.cluster_cidr.map(|c| ClusterV4 {
            cluster_cidr: c,
            subnet_len: f.subnet_len.unwrap_or(DEFAULT_SUBNET_LEN),
        });
        let ipv6 = f.cluster_cidr_v6.map(|c| ClusterV6 {
            cluster_cidr: c,
            subnet_len: f.subnet_len_v6.unwrap_or(DEFAULT_SUBNET_LEN_V6),
        });
        (ipv4.is_some() || ipv6.is_some()).then(|| ClusterConfig {
            ipv4,
            vni: f.vni.unwrap_or(DEFAULT_VNI),
            port: f.port.unwrap_or(DEFAULT_PORT),
            ipv6,
        })
    }

    /// Every flag that was given must agree with the stored config: a daemon never
    /// silently overwrites it.
    pub fn check_flags(&self, f: &ConfigFlags) -> Result<(), String> {
        let mut diffs = Vec::new();
        let (v4, v6) = (self.ipv4, self.ipv6);
        let mut differ = |flag: &str, given: Option<String>, stored: Option<String>| {
            if let Some(g) = given.filter(|g| Some(g) != stored.as_ref()) {
                let stored = stored.unwrap_or_else(|| "none".to_string());
                diffs.push(format!("{flag} {g} (stored {stored})"));
            }
        };
        differ(
            "--cluster-cidr",
            shown(f.cluster_cidr),
            shown(v4.map(|v| v.cluster_cidr)),
        );
        differ(
            "--subnet-len",
            shown(f.subnet_len),
            shown(v4.map(|v| v.subnet_len)),
        );
        differ("--vni", shown(f.vni), shown(Some(self.vni)));
        differ("--port", shown(f.port), shown(Some(self.port)));
        differ(
            "--cluster-cidr-v6",
            shown(f.cluster_cidr_v6),
            shown(v6.map(|v| v.cluster_cidr)),
        );
        differ(
            "--subnet-len-v6",
            shown(f.subnet_len_v6),
            shown(v6.map(|v| v.subnet_len)),
        );
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(diffs.join(", "))
        }
    }
}

/// A lease key's record as read: what the key names, what the value says, and when the
/// key was created (etcd's `create_revision`, the same on every node).
#[derive(Debug, Clone)]
pub struct StoredLease {
    pub key: String,
    /// The subnet the key names, when it names one: IPv4 (`leases/`), or IPv6
    /// (`leases-v6/`) in an IPv6-only cluster.
    pub key_subnet: Option<IpNetwork>,
    /// The value, or why it is not a lease record.
    pub record: Result<LeaseRecord, String>,
    pub create_revision: i64,
    /// In a dual-stack cluster, the lease key that the `leases-v6/` index of the record's
    /// IPv6 subnet names, when that index key exists: the subnet's owner.
    pub v6_owner: Option<String>,
}

/// A record ferry will not use, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refused {
    pub key: String,
    pub reason: String,
}

/// What a node makes of every lease record: the ones it uses, the subnets (the ones
/// their keys name) whose record it cannot read (kept as they were: unreadable is no
/// reason to cut a node off), and the refused ones.
#[derive(Debug, Clone, Default)]
pub struct LeaseView {
    pub accepted: Vec<LeaseRecord>,
    pub unreadable: Vec<IpNetwork>,
    pub refused: Vec<Refused>,
}

/// The checks of one record that need no other record.
pub fn check_lease(
    cfg: &ClusterConfig,
    underlay: &[IpNetwork],
    key_subnet: Option<IpNetwork>,
    rec: &LeaseRecord,
) -> Result<(), String> {
    let named = rec.primary();
    if key_subnet != named {
        let shown = named.map_or("none".to_string(), |n| n.to_string());
        return Err(format!(
            "the value's subnet {shown} is not the one the key names"
        ));
    }
    match (cfg.ipv4, rec.subnet) {
        (Some(v4), Some(s)) => {
            if s.ip() != s.network() || !v4.holds(s) {
                return Err(format!(
                    "subnet {s} is not a /{} of the cluster CIDR {}",
                    v4.subnet_len, v4.cluster_cidr
                ));
            }
            if let Some(u) = v4s(underlay).find(|u| overlap(s, *u)) {
                return Err(format!("subnet {s} overlaps this node's network {u}"));
            }
        }
        (Some(v4), None) => {
            return Err(format!(
                "no IPv4 subnet in a cluster with the cluster CIDR {}",
                v4.cluster_cidr
            ))
        }
        (None, Some(s)) => {
            return Err(format!(
                "IPv4 subnet {s} in a cluster without an IPv4 cluster CIDR"
            ))
        }
        (None, None) => {}
    }
    match (cfg.ipv6, rec.subnet_v6) {
        (_, None) if cfg.v6_only() => {
            return Err("no IPv6 subnet in an IPv6-only cluster".to_string())
        }
        (_, None) => {}
        (None, Some(s6)) => {
            return Err(format!(
                "IPv6 subnet {s6} in a cluster without an IPv6 cluster CIDR"
            ))
        }
        (Some(v6), Some(s6)) => {
            if s6.ip() != s6.network() || !v6.holds(s6) {
                return Err(format!(
                    "IPv6 subnet {s6} is not a /{} of the IPv6 cluster CIDR {}",
                    v6.subnet_len, v6.cluster_cidr
                ));
            }
            if let Some(u) = v6s(underlay).find(|u| overlap_v6(s6, *u)) {
                return Err(format!("IPv6 subnet {s6} overlaps this node's network {u}"));
            }
        }
    }
    if rec.node.is_empty() || rec.node.contains('/') {
        return Err(format!("node name {:?} is not a node name", rec.node));
    }
    check_unicast(rec.public_ip)?;
    if let Some(c) = cfg.inside(rec.public_ip) {
        return Err(format!(
            "public IP {} is inside the cluster CIDR {c}",
            rec.public_ip
        ));
    }
    check_mac(&rec.vtep_mac)?;
    Ok(())
}

/// Every record checked, and conflicts settled by one rule that every node applies alike:
/// the record whose key was created first wins (then the smaller key). Two records
/// conflict when their subnets of either family overlap, or they name the same node or
/// VTEP MAC (one MAC has one FDB entry: a second record with it would take the first
/// node's traffic). Two records may share a public IP (traffic to a subnet then reaches
/// that host, nothing else).
pub fn resolve(cfg: &ClusterConfig, underlay: &[IpNetwork], stored: &[StoredLease]) -> LeaseView {
    let mut view = LeaseView::default();
    let mut order: Vec<&StoredLease> = stored.iter().collect();
    order.sort_by(|a, b| (a.create_revision, &a.key).cmp(&(b.create_revision, &b.key)));
    let mut winners: Vec<(&str, &LeaseRecord)> = Vec::new();
    for st in order {
        let refuse = |reason: String| Refused {
            key: st.key.clone(),
            reason,
        };
        let rec = match &st.record {
            Ok(rec) => rec,
            Err(e) => {
                let reason = match st.key_subnet.filter(|s| cfg.holds_any(*s)) {
                    Some(s) => {
                        view.unreadable.push(s);
                        format!("unreadable ({e}); its node's entries are kept as they were")
                    }
                    None => format!("not a lease record: {e}"),
                };
                view.refused.push(refuse(reason));
                continue;
            }
        };
        if let Err(reason) = check_lease(cfg, underlay, st.key_subnet, rec) {
            view.refused.push(refuse(reason));
            continue;
        }
        // The index decides whose an IPv6 subnet is, whatever the records' ages: it is
        // what the allocator reads, so a record claiming a subnet the index gave to
        // another node must not take that node's traffic.
        if let (Some(s6), Some(owner)) = (rec.subnet_v6, &st.v6_owner) {
            if *owner != st.key {
                view.refused.push(refuse(format!(
                    "its IPv6 subnet {s6} is leased to {owner} (the leases-v6 index says so)"
                )));
                continue;
            }
        }
        let clash = winners.iter().find_map(|(k, w)| {
            let v4_clash = match (w.subnet, rec.subnet) {
                (Some(a), Some(b)) => overlap(a, b),
                _ => false,
            };
            let v6_clash = match (w.subnet_v6, rec.subnet_v6) {
                (Some(a), Some(b)) => overlap_v6(a, b),
                _ => false,
            };
            let what = if v4_clash {
                "its subnet overlaps"
            } else if v6_clash {
                "its IPv6 subnet overlaps"
            } else if w.node == rec.node {
                "its node name is"
            } else if w.vtep_mac.eq_ignore_ascii_case(&rec.vtep_mac) {
                "its VTEP MAC is"
            } else {
                return None;
            };
            Some(format!("{what} that of {k}, which is older and wins"))
        });
        match clash {
            Some(reason) => view.refused.push(refuse(reason)),
            None => winners.push((&st.key, rec)),
        }
    }
    view.accepted = winners.into_iter().map(|(_, r)| r.clone()).collect();
    view
}

/// A free node subnet, chosen among the first free ones by `seed` so that nodes starting
/// together mostly try different subnets; `None` when the cluster CIDR is full.
pub fn pick_free(v4: &ClusterV4, taken: &HashSet<Ipv4Network>, seed: u64) -> Option<Ipv4Network> {
    pick_among(v4.subnet_count(), |i| v4.subnet(i), taken, seed)
}
/// `pick_free` for the IPv6 subnets.
pub fn pick_free_v6(
    v6: &ClusterV6,
    taken: &HashSet<Ipv6Network>,
    seed: u64,
) -> Option<Ipv6Network> {
    pick_among(v6.subnet_count(), |i| v6.subnet(i), taken, seed)
}

fn pick_among<N: Copy + Eq + std::hash::Hash>(
    count: u32,
    subnet: impl Fn(u32) -> N,
    taken: &HashSet<N>,
    seed: u64,
) -> Option<N> {
    const SPREAD: usize = 64;
    let free: Vec<N> = (0..count)
        .map(subnet)
        .filter(|s| !taken.contains(s))
        .take(SPREAD)
        .collect();
    free.get((seed % free.len().max(1) as u64) as usize)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Layout;

    fn cfg(cidr: &str, len: u8) -> ClusterConfig {
        ClusterConfig {
            ipv4: Some(ClusterV4 {
                cluster_cidr: cidr.parse().unwrap(),
                subnet_len: len,
            }),
            vni: 1,
            port: 4789,
            ipv6: None,
        }
    }

    fn dual(cidr6: &str, len6: u8) -> ClusterConfig {
        ClusterConfig {
            ipv6: Some(ClusterV6 {
                cluster_cidr: cidr6.parse().unwrap(),
                subnet_len: len6,
            }),
            ..cfg("10.244.0.0/16", 24)
        }
    }

    #[test]
    fn validation() {
        assert!(cfg("10.244.0.0/16", 24).validate().is_ok());
        assert!(cfg("10.244.0.0/16", 16).validate().is_err());
        assert!(cfg("10.244.0.0/16", 31).validate().is_err());
        assert!(cfg("10.244.1.0/16", 24).validate().is_err());
        let mut c = cfg("10.244.0.0/16", 24);
        c.vni = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn subnets() {
        let c = cfg("10.244.0.0/16", 24).ipv4.unwrap();
        assert_eq!(c.subnet_count(), 256);
        assert_eq!(c.subnet(3).to_string(), "10.244.3.0/24");
        assert!(c.holds("10.244.9.0/24".parse().unwrap()));
        assert!(!c.holds("10.245.9.0/24".parse().unwrap()));
    }

    #[test]
    fn picks_only_free_and_reports_full() {
        let c = cfg("10.9.0.0/28", 30).ipv4.unwrap();
        let mut taken = HashSet::new();
        for seed in 0..4 {
            let s = pick_free(&c, &taken, seed * 7).unwrap();
            assert!(taken.insert(s));
        }
        assert_eq!(pick_free(&c, &taken, 1), None);
    }

    #[test]
    fn flags_never_overwrite() {
        let c = cfg("10.244.0.0/16", 24);
        let same = ConfigFlags {
            cluster_cidr: c.ipv4.map(|v| v.cluster_cidr),
            ..Default::default()
        };
        assert!(c.check_flags(&same).is_ok());
        let other = ConfigFlags {
            cluster_cidr: Some("10.99.0.0/16".parse().unwrap()),
            vni: Some(7),
            ..Default::default()
        };
        let e = c.check_flags(&other).unwrap_err();
        assert!(
            e.contains("--cluster-cidr 10.99.0.0/16 (stored 10.244.0.0/16)"),
            "{e}"
        );
        assert!(e.contains("--vni 7"), "{e}");
        assert_eq!(ClusterConfig::from_flags(&ConfigFlags::default()), None);
    }

    #[test]
    fn cluster_cidrs_that_would_swallow_the_host_are_refused() {
        for (cidr, why) in [
            ("0.0.0.0/0", "too short"),
            ("10.0.0.0/4", "too short"),
            ("127.0.0.0/16", "loopback"),
            ("224.1.0.0/16", "multicast"),
            ("169.254.0.0/16", "link-local"),
            ("240.0.0.0/8", "reserved"),
        ] {
            let e = cfg(cidr, 24).validate().unwrap_err();
            assert!(e.contains(cidr) && e.contains(why), "{cidr}: {e}");
        }
        let c = cfg("192.0.0.0/16", 24);
        let e = c.check_underlay(&underlay()).unwrap_err();
        assert!(e.contains("192.0.2.0/24"), "{e}");
        assert!(c
            .check_underlay(&["198.51.100.0/24".parse().unwrap()])
            .is_ok());
    }

    fn rec(node: &str, subnet: &str, ip: u8, mac: u8) -> LeaseRecord {
        LeaseRecord {
            node: node.into(),
            subnet: Some(subnet.parse().unwrap()),
            public_ip: Ipv4Addr::new(192, 0, 2, ip).into(),
            vtep_mac: format!("0e:00:00:00:00:{mac:02x}"),
            subnet_v6: None,
        }
    }

    fn rec6(node: &str, subnet: &str, subnet_v6: &str, ip: u8, mac: u8) -> LeaseRecord {
        LeaseRecord {
            subnet_v6: Some(subnet_v6.parse().unwrap()),
            ..rec(node, subnet, ip, mac)
        }
    }

    fn stored(key: &str, r: Result<LeaseRecord, String>, rev: i64) -> StoredLease {
        StoredLease {
            key: Layout::new("/f").lease(key.parse().unwrap()),
            key_subnet: Some(IpNetwork::V4(key.parse().unwrap())),
            record: r,
            create_revision: rev,
            v6_owner: None,
        }
    }

    fn underlay() -> Vec<IpNetwork> {
        vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::/64".parse().unwrap(),
        ]
    }

    #[test]
    fn each_record_is_checked_on_its_own() {
        let c = cfg("10.244.0.0/16", 24);
        let ok = rec("a", "10.244.1.0/24", 11, 1);
        assert!(check_lease(&c, &underlay(), ok.primary(), &ok).is_ok());
        let bad = [
            (
                Some("10.244.2.0/24"),
                rec("a", "10.244.1.0/24", 11, 1),
                "not the one the key names",
            ),
            (
                Some("192.0.2.0/24"),
                rec("x", "192.0.2.0/24", 11, 1),
                "not a /24 of the cluster",
            ),
            (
                Some("10.244.1.0/25"),
                rec("x", "10.244.1.0/25", 11, 1),
                "not a /24",
            ),
            (
                Some("10.244.1.0/24"),
                rec("", "10.244.1.0/24", 11, 1),
                "not a node name",
            ),
        ];
        for (key, r, why) in bad {
            let e = check_lease(
                &c,
                &underlay(),
                key.map(|k| IpNetwork::V4(k.parse().unwrap())),
                &r,
            )
            .unwrap_err();
            assert!(e.contains(why), "{r:?}: {e}");
        }
        let mut r = ok.clone();
        for (ip, why) in [
            (Ipv4Addr::UNSPECIFIED, "unspecified"),
            (Ipv4Addr::LOCALHOST, "loopback"),
            (Ipv4Addr::new(239, 1, 1, 1), "multicast"),
            (Ipv4Addr::BROADCAST, "broadcast"),
            (Ipv4Addr::new(10, 244, 9, 1), "inside the cluster CIDR"),
        ] {
            r.public_ip = ip.into();
            let e = check_lease(&c, &underlay(), r.primary(), &r).unwrap_err();
            assert!(e.contains(why), "{ip}: {e}");
        }
        let mut r = ok.clone();
        for (mac, why) in [
            ("00:00:00:00:00:00", "all zero"),
            ("01:00:5e:00:00:01", "multicast"),
            ("ff:ff:ff:ff:ff:ff", "multicast"),
            ("zz", "not a MAC"),
        ] {
            r.vtep_mac = mac.into();
            let e = check_lease(&c, &underlay(), r.primary(), &r).unwrap_err();
            assert!(e.contains(why), "{mac}: {e}");
        }
        // A cluster CIDR over the underlay (refused elsewhere) still never yields a lease
        // over it.
        let wide = cfg("192.0.0.0/16", 24);
        let r = rec("x", "192.0.2.0/24", 11, 1);
        let e = check_lease(&wide, &underlay(), r.primary(), &r).unwrap_err();
        assert!(e.contains("overlaps this node's network"), "{e}");
    }

    #[test]
    fn the_older_record_wins_a_conflict_on_every_node() {
        let c = cfg("10.244.0.0/16", 24);
        let real = stored("10.244.1.0/24", Ok(rec("a", "10.244.1.0/24", 11, 1)), 5);
        let others = [
            stored("10.244.2.0/24", Ok(rec("a", "10.244.2.0/24", 12, 2)), 9),
            stored("10.244.3.0/24", Ok(rec("c", "10.244.1.0/24", 13, 3)), 9),
            stored("10.244.4.0/24", Ok(rec("d", "10.244.4.0/24", 14, 1)), 9),
            stored("10.244.5.0/24", Ok(rec("e", "10.244.5.0/24", 15, 5)), 9),
        ];
        let mut all = vec![real.clone()];
        all.extend(others.iter().cloned());
        // Whatever order etcd lists them in, the outcome is the same.
        let a = resolve(&c, &underlay(), &all);
        all.reverse();
        let b = resolve(&c, &underlay(), &all);
        assert_eq!(a.accepted, b.accepted);
        let nodes: Vec<&str> = a.accepted.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(nodes, ["a", "e"]);
        // The loser's key is named, and the winner's.
        assert!(a.refused.iter().all(|r| r.key != real.key));
        let mut refused: Vec<String> = a.refused.iter().map(|r| r.reason.clone()).collect();
        refused.sort();
        assert!(refused[0].contains("its VTEP MAC is that of /f/v1/leases/10.244.1.0-24"));
        assert!(refused[1].contains("its node name is"));
        assert!(refused[2].contains("not the one the key names"));
    }

    #[test]
    fn a_claim_on_a_live_subnet_loses_and_an_unreadable_record_is_held() {
        let c = cfg("10.244.0.0/16", 24);
        let view = resolve(
            &c,
            &underlay(),
            &[
                stored("10.244.1.0/24", Ok(rec("a", "10.244.1.0/24", 11, 1)), 5),
                // The same subnet under another key, and half of it under its own.
                stored("10.244.250.0/24", Ok(rec("x", "10.244.1.0/24", 99, 9)), 3),
                stored("10.244.1.0/25", Ok(rec("y", "10.244.1.0/25", 98, 8)), 2),
                stored("10.244.7.0/24", Err("expected value".into()), 4),
            ],
        );
        assert_eq!(view.accepted, vec![rec("a", "10.244.1.0/24", 11, 1)]);
        assert_eq!(
            view.unreadable,
            vec!["10.244.7.0/24".parse::<IpNetwork>().unwrap()]
        );
        assert_eq!(view.refused.len(), 3);
        assert!(view
            .refused
            .iter()
            .all(|r| r.key.starts_with("/f/v1/leases/")));
    }

    #[test]
    fn ipv6_cluster_cidrs_are_checked_like_ipv4_ones() {
        assert!(dual("fd00:10::/56", 64).validate().is_ok());
        for (cidr, len, why) in [
            ("::/0", 64, "too short"),
            ("fd00::/12", 64, "too short"),
            ("::1/128", 128, "loopback"),
            ("::ffff:0:0/96", 112, "IPv4-mapped"),
            ("::/16", 64, "loopback"),
            ("0:1::/32", 64, "reserved"),
            ("fe80::/16", 64, "link-local"),
            ("ff02::/16", 64, "multicast"),
            ("fd00:10::1/56", 64, "host bits"),
            ("fd00:10::/56", 56, "longer than"),
            ("fd00:10::/56", 124, "at most /120"),
            ("fd00::/16", 64, "2^24"),
        ] {
            let e = dual(cidr, len).validate().unwrap_err();
            assert!(e.contains(why), "{cidr}/{len}: {e}");
        }
        let over = dual("2001:db8::/48", 64);
        let e = over.check_underlay(&underlay()).unwrap_err();
        assert!(e.contains("2001:db8::/64"), "{e}");
        assert!(dual("fd00:10::/56", 64).check_underlay(&underlay()).is_ok());
        let v6 = dual("fd00:10::/56", 64).ipv6.unwrap();
        assert_eq!(v6.subnet_count(), 256);
        assert_eq!(v6.subnet(3).to_string(), "fd00:10:0:3::/64");
        assert!(v6.holds("fd00:10:0:ff::/64".parse().unwrap()));
        assert!(!v6.holds("fd00:11::/64".parse().unwrap()));
    }

    #[test]
    fn ipv6_flags_never_overwrite() {
        let c = dual("fd00:10::/56", 64);
        let f = ConfigFlags {
            cluster_cidr: c.ipv4.map(|v| v.cluster_cidr),
            cluster_cidr_v6: Some("fd00:10::/56".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            ClusterConfig::from_flags(&ConfigFlags {
                cluster_cidr: c.ipv4.map(|v| v.cluster_cidr),
                ..f.clone()
            }),
            Some(c.clone())
        );
        assert!(c.check_flags(&f).is_ok());
        let v4_only = cfg("10.244.0.0/16", 24);
        let e = v4_only.check_flags(&f).unwrap_err();
        assert!(
            e.contains("--cluster-cidr-v6 fd00:10::/56 (stored none)"),
            "{e}"
        );
        let f = ConfigFlags {
            subnet_len_v6: Some(80),
            ..Default::default()
        };
        let e = c.check_flags(&f).unwrap_err();
        assert!(e.contains("--subnet-len-v6 80 (stored 64)"), "{e}");
    }

    #[test]
    fn an_ipv4_only_record_and_config_read_as_before() {
        // What the previous release stored, and what it reads of ours: the IPv6 keys are
        // additive and optional.
        let old = r#"{"clusterCIDR":"10.244.0.0/16","subnetLen":24,"vni":1,"port":4789}"#;
        let c: ClusterConfig = serde_json::from_str(old).unwrap();
        assert_eq!(c, cfg("10.244.0.0/16", 24));
        assert_eq!(serde_json::to_string(&c).unwrap(), old);
        let r = rec("a", "10.244.1.0/24", 11, 1);
        assert!(!serde_json::to_string(&r).unwrap().contains("V6"));
        let d = serde_json::to_value(dual("fd00:10::/56", 64)).unwrap();
        assert_eq!(d["ipv6"]["clusterCIDR"], "fd00:10::/56");
        assert_eq!(d["ipv6"]["subnetLen"], 64);
        let r6 = serde_json::to_value(rec6("a", "10.244.1.0/24", "fd00:10:0:1::/64", 11, 1));
        assert_eq!(r6.unwrap()["subnetV6"], "fd00:10:0:1::/64");
    }

    #[test]
    fn ipv6_subnets_are_checked_and_conflicts_settled() {
        let c = dual("fd00:10::/56", 64);
        let ok = rec6("a", "10.244.1.0/24", "fd00:10:0:1::/64", 11, 1);
        assert!(check_lease(&c, &underlay(), ok.primary(), &ok).is_ok());
        // A node of the previous release, IPv4 only, in a dual-stack cluster.
        let old = rec("o", "10.244.9.0/24", 19, 9);
        assert!(check_lease(&c, &underlay(), old.primary(), &old).is_ok());
        for (s6, why) in [
            ("fd00:10:0:1::/80", "not a /64"),
            ("fd00:11::/64", "not a /64 of the IPv6 cluster CIDR"),
            ("2001:db8::/64", "not a /64"),
        ] {
            let r = rec6("a", "10.244.1.0/24", s6, 11, 1);
            let e = check_lease(&c, &underlay(), r.primary(), &r).unwrap_err();
            assert!(e.contains(why), "{s6}: {e}");
        }
        // The underlay itself, under a cluster CIDR that (wrongly) covers it.
        let wide = dual("2001:db8::/56", 64);
        let r = rec6("x", "10.244.1.0/24", "2001:db8::/64", 11, 1);
        let e = check_lease(&wide, &underlay(), r.primary(), &r).unwrap_err();
        assert!(
            e.contains("overlaps this node's network 2001:db8::/64"),
            "{e}"
        );
        // An IPv6 subnet where the cluster has no IPv6.
        let e = check_lease(&cfg("10.244.0.0/16", 24), &underlay(), ok.primary(), &ok).unwrap_err();
        assert!(e.contains("without an IPv6 cluster CIDR"), "{e}");
        // A younger record claiming a live node's IPv6 subnet loses, everywhere.
        let view = resolve(
            &c,
            &underlay(),
            &[
                stored("10.244.1.0/24", Ok(ok.clone()), 5),
                stored(
                    "10.244.2.0/24",
                    Ok(rec6("b", "10.244.2.0/24", "fd00:10:0:1::/64", 12, 2)),
                    7,
                ),
                stored(
                    "10.244.3.0/24",
                    Ok(rec6("c", "10.244.3.0/24", "fd00:10:0:3::/64", 13, 3)),
                    8,
                ),
            ],
        );
        let nodes: Vec<&str> = view.accepted.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(nodes, ["a", "c"]);
        assert!(view.refused[0].reason.contains("its IPv6 subnet overlaps"));
    }

    #[test]
    fn the_ipv6_index_names_the_owner_of_an_ipv6_subnet() {
        let c = dual("fd00:10::/56", 64);
        let l = Layout::new("/f");
        let owner = l.lease("10.244.2.0/24".parse().unwrap());
        // An older record claims the IPv6 subnet the index gave to a younger one (the
        // allocator reads only the index): the index wins.
        let mut squatter = stored(
            "10.244.1.0/24",
            Ok(rec6("a", "10.244.1.0/24", "fd00:10:0:2::/64", 11, 1)),
            3,
        );
        squatter.v6_owner = Some(owner.clone());
        let mut real = stored(
            "10.244.2.0/24",
            Ok(rec6("b", "10.244.2.0/24", "fd00:10:0:2::/64", 12, 2)),
            9,
        );
        real.v6_owner = Some(owner.clone());
        let view = resolve(&c, &underlay(), &[squatter.clone(), real]);
        let nodes: Vec<&str> = view.accepted.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(nodes, ["b"]);
        assert_eq!(view.refused[0].key, squatter.key);
        assert!(
            view.refused[0]
                .reason
                .contains(&format!("leased to {owner} (the leases-v6 index")),
            "{:?}",
            view.refused
        );
        // No index key (written by hand): judged among the records as before.
        squatter.v6_owner = None;
        assert_eq!(resolve(&c, &underlay(), &[squatter]).accepted.len(), 1);
    }

    #[test]
    fn picks_free_ipv6_subnets() {
        let v6 = dual("fd00:10::/56", 57).ipv6.unwrap();
        let mut taken = HashSet::new();
        for seed in 0..2 {
            assert!(taken.insert(pick_free_v6(&v6, &taken, seed).unwrap()));
        }
        assert_eq!(pick_free_v6(&v6, &taken, 1), None);
    }

    fn v6_only(cidr6: &str, len6: u8) -> ClusterConfig {
        ClusterConfig {
            ipv4: None,
            ..dual(cidr6, len6)
        }
    }

    fn rec_v6(node: &str, s6: &str, ip: &str, mac: u8) -> LeaseRecord {
        LeaseRecord {
            node: node.into(),
            subnet: None,
            public_ip: ip.parse().unwrap(),
            vtep_mac: format!("0e:00:00:00:00:{mac:02x}"),
            subnet_v6: Some(s6.parse().unwrap()),
        }
    }

    fn stored_v6(key: &str, r: Result<LeaseRecord, String>, rev: i64) -> StoredLease {
        let net: Ipv6Network = key.parse().unwrap();
        StoredLease {
            key: Layout::new("/f").lease_v6(net),
            key_subnet: Some(IpNetwork::V6(net)),
            record: r,
            create_revision: rev,
            v6_owner: None,
        }
    }

    #[test]
    fn an_ipv6_only_config_has_no_ipv4_keys_and_needs_a_family() {
        let c = v6_only("fd00:10::/56", 64);
        assert!(c.validate().is_ok() && c.v6_only());
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(
            text,
            r#"{"vni":1,"port":4789,"ipv6":{"clusterCIDR":"fd00:10::/56","subnetLen":64}}"#
        );
        assert_eq!(serde_json::from_str::<ClusterConfig>(&text).unwrap(), c);
        // Neither family, or half of the IPv4 one, is no config.
        let none = ClusterConfig {
            ipv6: None,
            ..c.clone()
        };
        assert!(none.validate().unwrap_err().contains("no pod network"));
        for half in [
            r#"{"clusterCIDR":"10.1.0.0/16","vni":1,"port":4789}"#,
            r#"{"subnetLen":24,"vni":1,"port":4789}"#,
        ] {
            assert!(
                serde_json::from_str::<ClusterConfig>(half).is_err(),
                "{half}"
            );
        }
        // From the flags: --cluster-cidr-v6 alone.
        let f = ConfigFlags {
            cluster_cidr_v6: Some("fd00:10::/56".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(ClusterConfig::from_flags(&f), Some(c.clone()));
        let e = c
            .check_flags(&ConfigFlags {
                cluster_cidr: Some("10.1.0.0/16".parse().unwrap()),
                ..f
            })
            .unwrap_err();
        assert!(
            e.contains("--cluster-cidr 10.1.0.0/16 (stored none)"),
            "{e}"
        );
        // The underlay's IPv6 network is as forbidden as in a dual-stack cluster.
        let e = v6_only("2001:db8::/56", 64)
            .check_underlay(&underlay())
            .unwrap_err();
        assert!(
            e.contains("overlaps this node's network 2001:db8::/64"),
            "{e}"
        );
    }

    #[test]
    fn ipv6_only_records_are_keyed_by_their_ipv6_subnet_and_checked() {
        let c = v6_only("fd00:10::/56", 64);
        let ok = rec_v6("a", "fd00:10:0:1::/64", "2001:db8::11", 1);
        assert_eq!(ok.primary(), Some("fd00:10:0:1::/64".parse().unwrap()));
        assert!(check_lease(&c, &underlay(), ok.primary(), &ok).is_ok());
        let text = serde_json::to_string(&ok).unwrap();
        assert_eq!(
            text,
            r#"{"node":"a","publicIp":"2001:db8::11","vtepMac":"0e:00:00:00:00:01","subnetV6":"fd00:10:0:1::/64"}"#
        );
        let mut r = ok.clone();
        for (ip, why) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:192.0.2.1", "IPv4-mapped"),
            ("fd00:10:0:9::1", "inside the cluster CIDR fd00:10::/56"),
        ] {
            r.public_ip = ip.parse().unwrap();
            let e = check_lease(&c, &underlay(), r.primary(), &r).unwrap_err();
            assert!(e.contains(why), "{ip}: {e}");
        }
        // An IPv4 subnet in an IPv6-only cluster, a record without a subnet, another key.
        let with_v4 = LeaseRecord {
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            ..ok.clone()
        };
        let e = check_lease(&c, &underlay(), with_v4.primary(), &with_v4).unwrap_err();
        assert!(e.contains("without an IPv4 cluster CIDR"), "{e}");
        let bare = LeaseRecord {
            subnet_v6: None,
            ..ok.clone()
        };
        assert!(check_lease(&c, &underlay(), None, &bare).is_err());
        let e = check_lease(
            &c,
            &underlay(),
            Some("fd00:10:0:2::/64".parse().unwrap()),
            &ok,
        )
        .unwrap_err();
        assert!(e.contains("not the one the key names"), "{e}");
        // A dual-stack cluster wants an IPv4 subnet in every record.
        let e = check_lease(&dual("fd00:10::/56", 64), &underlay(), ok.primary(), &ok).unwrap_err();
        assert!(e.contains("no IPv4 subnet"), "{e}");
        // Conflicts are settled as for IPv4; an unreadable record holds its IPv6 subnet.
        let view = resolve(
            &c,
            &underlay(),
            &[
                stored_v6("fd00:10:0:1::/64", Ok(ok.clone()), 5),
                stored_v6(
                    "fd00:10:0:2::/64",
                    Ok(rec_v6("a", "fd00:10:0:2::/64", "2001:db8::12", 2)),
                    6,
                ),
                stored_v6("fd00:10:0:3::/64", Err("expected value".into()), 7),
            ],
        );
        assert_eq!(view.accepted, vec![ok]);
        assert!(view.refused[0].reason.contains("its node name is"));
        assert_eq!(
            view.unreadable,
            vec!["fd00:10:0:3::/64".parse::<IpNetwork>().unwrap()]
        );
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(
            parse_mac("0a:58:0a:01:02:ff"),
            Some([0x0a, 0x58, 10, 1, 2, 255])
        );
        assert_eq!(parse_mac("0a:58"), None);
        assert_eq!(parse_mac("0a:58:0a:01:02:ff:00"), None);
    }
}
