//! The cluster config and leases as data, and the decisions about them.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

pub const DEFAULT_SUBNET_LEN: u8 = 24;
pub const DEFAULT_VNI: u32 = 1;
pub const DEFAULT_PORT: u16 = 4789;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Ipv4Network,
    pub subnet_len: u8,
    pub vni: u32,
    pub port: u16,
}

/// What the daemon's flags say about the cluster config; `None` is "not given".
#[derive(Debug, Clone, Default)]
pub struct ConfigFlags {
    pub cluster_cidr: Option<Ipv4Network>,
    pub subnet_len: Option<u8>,
    pub vni: Option<u32>,
    pub port: Option<u16>,
}

/// One node's lease, as stored in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    pub node: String,
    pub subnet: Ipv4Network,
    pub public_ip: Ipv4Addr,
    /// `aa:bb:cc:dd:ee:ff`
    pub vtep_mac: String,
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

/// Whether two networks share an address.
pub fn overlap(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// An address another node may be sent VXLAN to: unicast, routable, not ours to forge.
fn check_unicast(ip: Ipv4Addr) -> Result<(), String> {
    let why = if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_broadcast() {
        "broadcast"
    } else if ip.octets()[0] == 0 || ip.octets()[0] >= 240 {
        "reserved"
    } else {
        return Ok(());
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

impl ClusterConfig {
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
        if self.vni == 0 || self.vni > 0x00ff_ffff {
            return Err(format!("VNI {} is out of range (1 to 16777215)", self.vni));
        }
        if self.port == 0 {
            return Err("VXLAN port 0 is not a port".into());
        }
        Ok(())
    }

    /// The cluster CIDR must not share an address with the node's own networks, or a
    /// node subnet could take the place of the underlay.
    pub fn check_underlay(&self, underlay: &[Ipv4Network]) -> Result<(), String> {
        match underlay.iter().find(|u| overlap(self.cluster_cidr, **u)) {
            Some(u) => Err(format!(
                "cluster CIDR {} overlaps this node's network {u}",
                self.cluster_cidr
            )),
            None => Ok(()),
        }
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

    /// The config the flags ask for, when none is stored.
    pub fn from_flags(f: &ConfigFlags) -> Option<ClusterConfig> {
        Some(ClusterConfig {
            cluster_cidr: f.cluster_cidr?,
            subnet_len: f.subnet_len.unwrap_or(DEFAULT_SUBNET_LEN),
            vni: f.vni.unwrap_or(DEFAULT_VNI),
            port: f.port.unwrap_or(DEFAULT_PORT),
        })
    }

    /// Every flag that was given must agree with the stored config: a daemon never
    /// silently overwrites it.
    pub fn check_flags(&self, f: &ConfigFlags) -> Result<(), String> {
        let mut diffs = Vec::new();
        if let Some(c) = f.cluster_cidr.filter(|c| *c != self.cluster_cidr) {
            diffs.push(format!("--cluster-cidr {c} (stored {})", self.cluster_cidr));
        }
        if let Some(l) = f.subnet_len.filter(|l| *l != self.subnet_len) {
            diffs.push(format!("--subnet-len {l} (stored {})", self.subnet_len));
        }
        if let Some(v) = f.vni.filter(|v| *v != self.vni) {
            diffs.push(format!("--vni {v} (stored {})", self.vni));
        }
        if let Some(p) = f.port.filter(|p| *p != self.port) {
            diffs.push(format!("--port {p} (stored {})", self.port));
        }
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
    /// The subnet the key names, when it names one.
    pub key_subnet: Option<Ipv4Network>,
    /// The value, or why it is not a lease record.
    pub record: Result<LeaseRecord, String>,
    pub create_revision: i64,
}

/// A record ferry will not use, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refused {
    pub key: String,
    pub reason: String,
}

/// What a node makes of every lease record: the ones it uses, the subnets whose record it
/// cannot read (kept as they were: unreadable is no reason to cut a node off), and the
/// refused ones.
#[derive(Debug, Clone, Default)]
pub struct LeaseView {
    pub accepted: Vec<LeaseRecord>,
    pub unreadable: Vec<Ipv4Network>,
    pub refused: Vec<Refused>,
}

/// The checks of one record that need no other record.
pub fn check_lease(
    cfg: &ClusterConfig,
    underlay: &[Ipv4Network],
    key_subnet: Option<Ipv4Network>,
    rec: &LeaseRecord,
) -> Result<(), String> {
    let s = rec.subnet;
    if key_subnet != Some(s) {
        return Err(format!(
            "the value's subnet {s} is not the one the key names"
        ));
    }
    if s.ip() != s.network() || !cfg.holds(s) {
        return Err(format!(
            "subnet {s} is not a /{} of the cluster CIDR {}",
            cfg.subnet_len, cfg.cluster_cidr
        ));
    }
    if let Some(u) = underlay.iter().find(|u| overlap(s, **u)) {
        return Err(format!("subnet {s} overlaps this node's network {u}"));
    }
    if rec.node.is_empty() || rec.node.contains('/') {
        return Err(format!("node name {:?} is not a node name", rec.node));
    }
    check_unicast(rec.public_ip)?;
    if cfg.cluster_cidr.contains(rec.public_ip) {
        return Err(format!(
            "public IP {} is inside the cluster CIDR {}",
            rec.public_ip, cfg.cluster_cidr
        ));
    }
    check_mac(&rec.vtep_mac)?;
    Ok(())
}

/// Every record checked, and conflicts settled by one rule that every node applies alike:
/// the record whose key was created first wins (then the smaller key). Two records
/// conflict when their subnets overlap, or they name the same node or VTEP MAC (one MAC
/// has one FDB entry: a second record with it would take the first node's traffic). Two
/// records may share a public IP (traffic to a subnet then reaches that host, nothing
/// else).
pub fn resolve(cfg: &ClusterConfig, underlay: &[Ipv4Network], stored: &[StoredLease]) -> LeaseView {
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
                let reason = match st.key_subnet.filter(|s| cfg.holds(*s)) {
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
        let clash = winners.iter().find_map(|(k, w)| {
            let what = if overlap(w.subnet, rec.subnet) {
                "its subnet overlaps"
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
pub fn pick_free(
    cfg: &ClusterConfig,
    taken: &HashSet<Ipv4Network>,
    seed: u64,
) -> Option<Ipv4Network> {
    const SPREAD: usize = 64;
    let free: Vec<Ipv4Network> = (0..cfg.subnet_count())
        .map(|i| cfg.subnet(i))
        .filter(|s| !taken.contains(s))
        .take(SPREAD)
        .collect();
    if free.is_empty() {
        return None;
    }
    Some(free[(seed % free.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Layout;

    fn cfg(cidr: &str, len: u8) -> ClusterConfig {
        ClusterConfig {
            cluster_cidr: cidr.parse().unwrap(),
            subnet_len: len,
            vni: 1,
            port: 4789,
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
        let c = cfg("10.244.0.0/16", 24);
        assert_eq!(c.subnet_count(), 256);
        assert_eq!(c.subnet(3).to_string(), "10.244.3.0/24");
        assert!(c.holds("10.244.9.0/24".parse().unwrap()));
        assert!(!c.holds("10.245.9.0/24".parse().unwrap()));
    }

    #[test]
    fn picks_only_free_and_reports_full() {
        let c = cfg("10.9.0.0/28", 30);
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
            cluster_cidr: Some(c.cluster_cidr),
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
        let e = c
            .check_underlay(&["192.0.2.0/24".parse().unwrap()])
            .unwrap_err();
        assert!(e.contains("192.0.2.0/24"), "{e}");
        assert!(c
            .check_underlay(&["198.51.100.0/24".parse().unwrap()])
            .is_ok());
    }

    fn rec(node: &str, subnet: &str, ip: u8, mac: u8) -> LeaseRecord {
        LeaseRecord {
            node: node.into(),
            subnet: subnet.parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, ip),
            vtep_mac: format!("0e:00:00:00:00:{mac:02x}"),
        }
    }

    fn stored(key: &str, r: Result<LeaseRecord, String>, rev: i64) -> StoredLease {
        StoredLease {
            key: Layout::new("/f").lease(key.parse().unwrap()),
            key_subnet: Some(key.parse().unwrap()),
            record: r,
            create_revision: rev,
        }
    }

    fn underlay() -> Vec<Ipv4Network> {
        vec!["192.0.2.0/24".parse().unwrap()]
    }

    #[test]
    fn each_record_is_checked_on_its_own() {
        let c = cfg("10.244.0.0/16", 24);
        let ok = rec("a", "10.244.1.0/24", 11, 1);
        assert!(check_lease(&c, &underlay(), Some(ok.subnet), &ok).is_ok());
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
            let e = check_lease(&c, &underlay(), key.map(|k| k.parse().unwrap()), &r).unwrap_err();
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
            r.public_ip = ip;
            let e = check_lease(&c, &underlay(), Some(r.subnet), &r).unwrap_err();
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
            let e = check_lease(&c, &underlay(), Some(r.subnet), &r).unwrap_err();
            assert!(e.contains(why), "{mac}: {e}");
        }
        // A cluster CIDR over the underlay (refused elsewhere) still never yields a lease
        // over it.
        let wide = cfg("192.0.0.0/16", 24);
        let r = rec("x", "192.0.2.0/24", 11, 1);
        let e = check_lease(&wide, &underlay(), Some(r.subnet), &r).unwrap_err();
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
        assert_eq!(view.unreadable, vec!["10.244.7.0/24".parse().unwrap()]);
        assert_eq!(view.refused.len(), 3);
        assert!(view
            .refused
            .iter()
            .all(|r| r.key.starts_with("/f/v1/leases/")));
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
