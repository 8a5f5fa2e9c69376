//! Lease records: what one says, the checks of one on its own, and how conflicting ones
//! are settled alike on every node.

use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use super::config::ClusterConfig;
use super::family::{both_overlap, constant, FORBIDDEN_V6};

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
    /// When the daemon published this figure (unix seconds): it publishes a figure when
    /// it changes, so a reader can say how old it is. Absent from older daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

impl Usage {
    /// The same figure, whenever each was published.
    pub fn same_figure(&self, other: &Usage) -> bool {
        (self.used, self.capacity) == (other.used, other.capacity)
    }

    /// This figure as published now.
    pub fn stamped(self) -> Usage {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Usage {
            at: Some(now),
            ..self
        }
    }
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
        IpAddr::V6(ip) => match FORBIDDEN_V6
            .iter()
            .find(|(r, _)| constant::<Ipv6Network>(r).contains(ip))
        {
            Some((_, why)) => why,
            None => return Ok(()),
        },
        IpAddr::V4(_) => return Ok(()),
    };
    Err(format!("public IP {ip} is {why}"))
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
        (Some(v4), Some(s)) => v4.check_subnet(s, underlay)?,
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
        (Some(v6), Some(s6)) => v6.check_subnet(s6, underlay)?,
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
/// Where each accepted record stands among the winners, by what two records may not
/// share.
#[derive(Default)]
struct Winners<'a> {
    v4: std::collections::HashMap<Ipv4Network, usize>,
    v6: std::collections::HashMap<Ipv6Network, usize>,
    nodes: std::collections::HashMap<&'a str, usize>,
    macs: std::collections::HashMap<String, usize>,
}

impl<'a> Winners<'a> {
    fn add(&mut self, i: usize, rec: &'a LeaseRecord) {
        if let Some(s) = rec.subnet {
            self.v4.insert(s, i);
        }
        if let Some(s) = rec.subnet_v6 {
            self.v6.insert(s, i);
        }
        self.nodes.insert(&rec.node, i);
        self.macs.insert(rec.vtep_mac.to_ascii_lowercase(), i);
    }
}

pub fn resolve(cfg: &ClusterConfig, underlay: &[IpNetwork], stored: &[StoredLease]) -> LeaseView {
    let mut view = LeaseView::default();
    let mut order: Vec<&StoredLease> = stored.iter().collect();
    order.sort_by(|a, b| (a.create_revision, &a.key).cmp(&(b.create_revision, &b.key)));
    let mut winners: Vec<(&str, &LeaseRecord)> = Vec::new();
    let mut idx = Winners::default();
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
        // The first winner that clashes, found through indexes rather than by comparing
        // with every winner (5,000 nodes would make that 12 million comparisons per
        // listing). Two subnets that passed `check_lease` are aligned prefixes of the one
        // node subnet length of their family, so they overlap exactly when they are equal.
        let first = [
            rec.subnet.and_then(|s| idx.v4.get(&s)),
            rec.subnet_v6.and_then(|s| idx.v6.get(&s)),
            idx.nodes.get(rec.node.as_str()),
            idx.macs.get(&rec.vtep_mac.to_ascii_lowercase()),
        ]
        .into_iter()
        .flatten()
        .min()
        .copied();
        let clash = first.and_then(|i| winners.get(i)).map(|(k, w)| {
            let what = if both_overlap(w.subnet, rec.subnet) {
                "its subnet overlaps"
            } else if both_overlap(w.subnet_v6, rec.subnet_v6) {
                "its IPv6 subnet overlaps"
            } else if w.node == rec.node {
                "its node name is"
            } else {
                "its VTEP MAC is"
            };
            format!("{what} that of {k}, which is older and wins")
        });
        match clash {
            Some(reason) => view.refused.push(refuse(reason)),
            None => {
                idx.add(winners.len(), rec);
                winners.push((&st.key, rec));
            }
        }
    }
    view.accepted = winners.into_iter().map(|(_, r)| r.clone()).collect();
    view
}
