//! The underlay: which interface and address carry the VXLAN traffic.

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use ferry_netlink::{BigTcp, Link, Netlink};
use ipnetwork::{IpNetwork, Ipv6Network};

#[derive(Debug, Clone)]
pub struct Underlay {
    pub link: Link,
    /// The VTEP's address: IPv4, or IPv6 on an IPv6-only underlay.
    pub ip: IpAddr,
    /// The host's own networks (its addresses with their prefixes, but loopback and
    /// ferry's devices): no node subnet may overlap one.
    pub networks: Vec<IpNetwork>,
}

impl Underlay {
    /// What VXLAN adds to a pod's packet on this underlay: outer IP header (20 for IPv4,
    /// 40 for IPv6) + UDP (8) + VXLAN (8) + inner Ethernet (14).
    pub fn overhead(&self) -> u32 {
        overhead(self.ip)
    }

    /// The pods' MTU: the underlay's less the VXLAN overhead.
    pub fn pod_mtu(&self) -> u32 {
        self.link.mtu.saturating_sub(self.overhead())
    }

    /// The GSO and GRO sizes of the pods' path: the underlay's, when it has BIG TCP. A pod
    /// may have the underlay's full size: TCP keeps its packets `MAX_TCP_HEADER` (over 200
    /// bytes) below its link's size.
    pub fn big_tcp(&self) -> Option<BigTcp> {
        BigTcp::of(&self.link.sizes)
    }
}

pub fn overhead(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(_) => 50,
        IpAddr::V6(_) => 70,
    }
}

/// An address the underlay may use: not loopback, not link-local (a VTEP's address must
/// route without a scope).
fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback(),
        IpAddr::V6(a) => !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80,
    }
}

/// Every usable address of the host with its link, but ferry's own devices (`skip`).
async fn host_addrs(nl: &Netlink, skip: &[&str]) -> Result<Vec<(String, IpAddr, u8)>> {
    let mut all = Vec::new();
    for l in nl.list_links().await? {
        if skip.contains(&l.name.as_str()) || l.vxlan.is_some() {
            continue;
        }
        for (ip, prefix) in nl.addrs(l.index).await? {
            if usable(ip) {
                all.push((l.name.clone(), ip, prefix));
            }
        }
    }
    Ok(all)
}

fn shown(addrs: &[(String, IpAddr, u8)]) -> String {
    if addrs.is_empty() {
        return "none".into();
    }
    addrs
        .iter()
        .map(|(l, ip, p)| format!("{ip}/{p} on {l}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--iface`, else the interface holding `--public-ip`, else the default route's (IPv4's,
/// else IPv6's: an IPv6-only host has only the latter). A `--public-ip` must be an
/// address of that interface: other nodes would otherwise send this node's VXLAN traffic
/// to whoever holds it. Without one, the interface's first IPv4 address, else its first
/// global IPv6 address.
pub async fn find(
    nl: &Netlink,
    iface: Option<&str>,
    public_ip: Option<IpAddr>,
    bridge: &str,
) -> Result<Underlay> {
    let addrs = host_addrs(nl, &[bridge]).await?;
    let link = match (iface, public_ip) {
        (Some(name), _) => nl
            .get_link(name)
            .await?
            .with_context(|| format!("underlay interface {name} does not exist"))?,
        (None, Some(ip)) => {
            let name = addrs
                .iter()
                .find(|(_, a, _)| *a == ip)
                .map(|(l, _, _)| l.clone())
                .with_context(|| {
                    format!(
                        "--public-ip {ip} is not an address of this host (its addresses: {})",
                        shown(&addrs)
                    )
                })?;
            nl.get_link(&name)
                .await?
                .with_context(|| format!("underlay interface {name} vanished"))?
        }
        (None, None) => {
            // IPv4's default route first, else IPv6's.
            let mut oif = None;
            for family in ferry_netlink::Family::ALL {
                oif = nl
                    .routes(family)
                    .await?
                    .iter()
                    .find(|r| r.prefix == 0)
                    .and_then(|r| r.oif);
                if oif.is_some() {
                    break;
                }
            }
            let oif = oif.context(
                "no default route (IPv4 or IPv6) to find the underlay by: pass --iface or --public-ip",
            )?;
            nl.list_links()
                .await?
                .into_iter()
                .find(|l| l.index == oif)
                .context("the default route's interface vanished")?
        }
    };
    let on_link = |ip: IpAddr| addrs.iter().any(|(l, a, _)| *a == ip && *l == link.name);
    let ip = match public_ip {
        Some(ip) if on_link(ip) => ip,
        Some(ip) => bail!(
            "--public-ip {ip} is not an address of the underlay interface {} (this host's addresses: {})",
            link.name,
            shown(&addrs)
        ),
        None => {
            let mine = || addrs.iter().filter(|(l, _, _)| *l == link.name);
            match mine()
                .find(|(_, a, _)| a.is_ipv4())
                .or_else(|| mine().next())
            {
                Some((_, ip, _)) => *ip,
                None => bail!(
                    "underlay interface {} has no IPv4 or global IPv6 address",
                    link.name
                ),
            }
        }
    };
    // The smallest packet an IP host must take (IPv4's 68, IPv6's 1280) must fit.
    let least = match ip {
        IpAddr::V4(_) => 68,
        IpAddr::V6(_) => 1280,
    };
    if link.mtu < least + overhead(ip) {
        bail!(
            "underlay interface {} has MTU {}, too small for VXLAN over {} (at least {})",
            link.name,
            link.mtu,
            if ip.is_ipv4() { "IPv4" } else { "IPv6" },
            least + overhead(ip)
        );
    }
    let mut networks: Vec<IpNetwork> = addrs
        .iter()
        .filter(|(_, ip, _)| ip.is_ipv4())
        .filter_map(|(_, ip, p)| IpNetwork::new(*ip, *p).ok())
        .map(|n| IpNetwork::new(n.network(), n.prefix()).unwrap_or(n))
        .collect();
    networks.extend(host_networks_v6(nl, &[bridge]).await?);
    Ok(Underlay { link, ip, networks })
}

/// The host's global IPv6 networks (not loopback, not link-local: every link has
/// fe80::/64, which no cluster CIDR may take anyway), but ferry's own devices.
async fn host_networks_v6(nl: &Netlink, skip: &[&str]) -> Result<Vec<IpNetwork>> {
    let mut out = Vec::new();
    for l in nl.list_links().await? {
        if skip.contains(&l.name.as_str()) || l.vxlan.is_some() {
            continue;
        }
        for (ip, prefix) in nl.addrs_v6(l.index).await? {
            if ip.is_loopback() || (ip.segments()[0] & 0xffc0) == 0xfe80 {
                continue;
            }
            if let Ok(n) = Ipv6Network::new(ip, prefix) {
                let net = Ipv6Network::new(n.network(), prefix).unwrap_or(n);
                out.push(IpNetwork::V6(net));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_overhead_follows_the_underlay_family() {
        // Outer IPv4 20 or IPv6 40, UDP 8, VXLAN 8, inner Ethernet 14.
        assert_eq!(overhead("192.0.2.1".parse().unwrap()), 50);
        assert_eq!(overhead("2001:db8::1".parse().unwrap()), 70);
        assert!(usable("2001:db8::1".parse().unwrap()));
        assert!(!usable("fe80::1".parse().unwrap()));
        assert!(!usable("::1".parse().unwrap()));
    }
}
