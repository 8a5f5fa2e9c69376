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

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), String> {
        let c = self.cluster_cidr;
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
    fn mac_parsing() {
        assert_eq!(
            parse_mac("0a:58:0a:01:02:ff"),
            Some([0x0a, 0x58, 10, 1, 2, 255])
        );
        assert_eq!(parse_mac("0a:58"), None);
        assert_eq!(parse_mac("0a:58:0a:01:02:ff:00"), None);
    }
}
