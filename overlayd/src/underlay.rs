//! The underlay: which interface and address carry the VXLAN traffic.

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use netlink::{Link, Netlink};

#[derive(Debug, Clone)]
pub struct Underlay {
    pub link: Link,
    pub ip: Ipv4Addr,
    /// The host's own networks (its addresses with their prefixes, but loopback and
    /// ferry's devices): no node subnet may overlap one.
    pub networks: Vec<IpNetwork>,
}

/// Every IPv4 address of the host with its link, but ferry's own devices (`skip`).
async fn host_addrs(nl: &Netlink, skip: &[&str]) -> Result<Vec<(String, Ipv4Addr, u8)>> {
    let mut all = Vec::new();
    for l in nl.list_links().await? {
        if skip.contains(&l.name.as_str()) || l.vxlan.is_some() {
            continue;
        }
        for (ip, prefix) in nl.addrs_v4(l.index).await? {
            all.push((l.name.clone(), ip, prefix));
        }
    }
    Ok(all)
}

fn shown(addrs: &[(String, Ipv4Addr, u8)]) -> String {
    if addrs.is_empty() {
        return "none".into();
    }
    addrs
        .iter()
        .map(|(l, ip, p)| format!("{ip}/{p} on {l}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--iface`, else the interface holding `--public-ip`, else the default route's. A
/// `--public-ip` must be an address of that interface: other nodes would otherwise send
/// this node's VXLAN traffic to whoever holds it.
pub async fn find(
    nl: &Netlink,
    iface: Option<&str>,
    public_ip: Option<Ipv4Addr>,
    bridge: &str,
) -> Result<Underlay> {
    let addrs = host_addrs(nl, &[bridge]).await?;
    let link = match (iface, public_ip) {
        (Some(name), _) => nl
            .get_link(name)
            .await?
            .with_context(|| format!("underlay interface {name} does not exist"))?,
        (None, Some(ip)) => {
            let mut found = None;
            for l in nl.list_links().await? {
                if nl.addrs_v4(l.index).await?.iter().any(|(a, _)| *a == ip) {
                    found = Some(l);
                    break;
                }
            }
            found.with_context(|| {
                format!(
                    "--public-ip {ip} is not an address of this host (its addresses: {})",
                    shown(&addrs)
                )
            })?
        }
        (None, None) => {
            let routes = nl.routes_v4().await?;
            let oif = routes
                .iter()
                .find(|r| r.prefix == 0)
                .and_then(|r| r.oif)
                .context("no default route to find the underlay by: pass --iface or --public-ip")?;
            nl.list_links()
                .await?
                .into_iter()
                .find(|l| l.index == oif)
                .context("the default route's interface vanished")?
        }
    };
    let ip = match public_ip {
        Some(ip) if addrs.iter().any(|(l, a, _)| *a == ip && *l == link.name) => ip,
        Some(ip) => bail!(
            "--public-ip {ip} is not an address of the underlay interface {} (this host's addresses: {})",
            link.name,
            shown(&addrs)
        ),
        None => match nl.addrs_v4(link.index).await?.first() {
            Some((ip, _)) => *ip,
            None => bail!("underlay interface {} has no IPv4 address", link.name),
        },
    };
    if link.mtu < 68 + 50 {
        bail!(
            "underlay interface {} has MTU {}, too small for VXLAN",
            link.name,
            link.mtu
        );
    }
    let mut networks: Vec<IpNetwork> = addrs
        .iter()
        .filter(|(_, ip, _)| !ip.is_loopback())
        .filter_map(|(_, ip, p)| Ipv4Network::new(*ip, *p).ok())
        .map(|n| IpNetwork::V4(Ipv4Network::new(n.network(), n.prefix()).unwrap_or(n)))
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
