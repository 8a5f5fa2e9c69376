//! The cluster config: as stored, as the flags give it, and whether they agree.

use std::net::IpAddr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use super::family::{ClusterV4, ClusterV6};

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
            v4.check_underlay(underlay)?;
        }
        match self.ipv6 {
            Some(v6) => v6.check_underlay(underlay),
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

    /// The cluster CIDR of `ip`'s family, when `ip` is inside it.
    pub(super) fn inside(&self, ip: IpAddr) -> Option<IpNetwork> {
        (self.ipv4.and_then(|v| v.cidr_holding(ip))).or(self.ipv6.and_then(|v| v.cidr_holding(ip)))
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
