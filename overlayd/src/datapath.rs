//! Setting up and reading the node's data path: the VXLAN device, the bridge, and the
//! per-peer entries.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use ferry_netlink::{Family, Link, Netlink, VxlanSpec};
use futures_util::stream::{self, StreamExt};
use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::peers::{self, foreign_routes, own_route, Entries, Guarded, Op, Path, Peer, Reach};

/// How many netlink requests run at once while applying: enough to hide round trips on a
/// cold start with thousands of peers, few enough to keep the socket's buffers calm.
const IN_FLIGHT: usize = 64;

/// The VXLAN device's name is this and the VNI (`ferry.1`).
pub const VXLAN_PREFIX: &str = "ferry.";

pub fn vxlan_name(vni: u32) -> String {
    format!("{VXLAN_PREFIX}{vni}")
}

/// The VXLAN device as `spec` says: kept when compatible (a restart must not drop
/// packets), recreated when not (another VNI, port, underlay or address).
pub async fn ensure_vxlan(nl: &Netlink, spec: &VxlanSpec) -> Result<Link> {
    if let Some(l) = nl.get_link(&spec.name).await? {
        match l.vxlan {
            Some(info) if spec.matches(&info) => {
                if l.mtu != spec.mtu {
                    nl.set_mtu(l.index, &spec.name, spec.mtu).await?;
                }
                if !l.up {
                    nl.set_up(l.index, &spec.name).await?;
                }
                return nl
                    .get_link(&spec.name)
                    .await?
                    .with_context(|| format!("{} vanished", spec.name));
            }
            _ => {
                tracing::warn!(device = %spec.name, "existing device is not the VXLAN device wanted; recreating it");
                nl.del_link(&spec.name).await?;
            }
        }
    }
    nl.create_vxlan(spec).await?;
    nl.get_link(&spec.name)
        .await?
        .with_context(|| format!("{} vanished after creation", spec.name))
}

/// The node subnet's network address as /32 on the VXLAN device: the source address of
/// host-to-remote-pod traffic, without creating broadcast routes (flannel's choice).
pub async fn ensure_vtep_addr(nl: &Netlink, vx: &Link, subnet: Ipv4Network) -> Result<()> {
    let want = (subnet.network(), 32);
    let have = nl.addrs_v4(vx.index).await?;
    if !have.contains(&want) {
        nl.add_addr(vx.index, &vx.name, IpAddr::V4(want.0), 32)
            .await?;
    }
    Ok(())
}

/// The IPv6 node subnet's network address as /128 on the VXLAN device (the source of
/// host-to-remote-pod IPv6 traffic), and its gateway as /len on the bridge (the pods'
/// default route), both without DAD.
pub async fn ensure_v6_addrs(
    nl: &Netlink,
    vx: &Link,
    bridge: &str,
    subnet: Ipv6Network,
) -> Result<()> {
    let vtep = (subnet.network(), 128);
    if !nl.addrs_v6(vx.index).await?.contains(&vtep) {
        nl.add_addr_nodad(vx.index, &vx.name, vtep.0, 128).await?;
    }
    let br = nl
        .get_link(bridge)
        .await?
        .with_context(|| format!("bridge {bridge} vanished"))?;
    let gw = (gateway_v6(subnet), subnet.prefix());
    if !nl.addrs_v6(br.index).await?.contains(&gw) {
        nl.add_addr_nodad(br.index, bridge, gw.0, gw.1).await?;
    }
    Ok(())
}

/// What the kernel holds on the VXLAN device, and ferry's direct routes (its protocol,
/// a gateway, another device), of both families.
pub async fn read(nl: &Netlink, vx_index: u32) -> Result<Entries> {
    let mut e = Entries::default();
    for family in Family::ALL {
        e.neighs.extend(nl.neighs(vx_index, family).await?);
    }
    for f in nl.fdb(vx_index).await? {
        if f.mac != [0; 6] {
            e.fdb.insert(f);
        }
    }
    for family in Family::ALL {
        for r in nl.routes(family).await? {
            if let Some((net, route)) = own_route(&r, vx_index) {
                // One per destination: the first, should several metrics hold one.
                e.routes.entry(net).or_insert(route);
            }
        }
    }
    Ok(e)
}

/// Applies `ops` phase by phase, each phase's requests concurrently; returns the ones
/// that failed, with why (the next full reconcile retries them), after logging each.
pub async fn apply(nl: &Netlink, vx_index: u32, ops: &[Op]) -> Vec<(Op, String)> {
    let mut failed = Vec::new();
    for phase in 0..4u8 {
        let this: Vec<&Op> = ops.iter().filter(|o| o.phase() == phase).collect();
        let results: Vec<(Op, Result<()>)> = stream::iter(this)
            .map(|op| async move { (*op, apply_one(nl, vx_index, op).await) })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for (op, r) in results {
            if let Err(e) = r {
                tracing::warn!("reconcile: {e:#}");
                failed.push((op, format!("{e:#}")));
            }
        }
    }
    failed
}

/// `ops` without a route where the host has one ferry did not make (a lease may name any
/// subnet of the cluster CIDR, where the host may have a route of its own), of either
/// family: the host's routes are listed for each family `ops` would make a route of. A
/// family whose listing fails makes no route this round (unknown ground): the next round
/// tries again.
pub async fn guard(nl: &Netlink, vx_index: u32, ops: Vec<Op>) -> Guarded {
    let families: BTreeSet<Family> = ops
        .iter()
        .filter_map(|o| match o {
            Op::SetRoute(net, _) => Some(Family::of_net(*net)),
            _ => None,
        })
        .collect();
    let mut foreign = BTreeSet::new();
    let mut unlisted = BTreeSet::new();
    for family in families {
        match nl.routes(family).await {
            Ok(routes) => foreign.extend(foreign_routes(&routes, vx_index)),
            Err(e) => {
                tracing::warn!("reconcile: {e:#}; no {family} route is made until the next round");
                unlisted.insert(family);
            }
        }
    }
    peers::spare_foreign(ops, &foreign, &unlisted)
}

/// `guard`, then `apply`: the failures, and what was left out.
pub async fn apply_guarded(nl: &Netlink, vx_index: u32, ops: Vec<Op>) -> (usize, Guarded) {
    let g = guard(nl, vx_index, ops).await;
    (apply(nl, vx_index, &g.ops).await.len(), g)
}

async fn apply_one(nl: &Netlink, vx: u32, op: &Op) -> Result<()> {
    match *op {
        Op::DelRoute(net, route) => nl.del_route(&route.kernel(net, vx)).await?,
        Op::DelNeigh(ip) => nl.del_neigh(vx, ip).await?,
        Op::DelFdb(e) => nl.del_fdb(vx, e).await?,
        Op::SetNeigh(ip, mac) => nl.set_neigh(vx, ip, mac).await?,
        Op::SetFdb(e) => nl.set_fdb(vx, e).await?,
        // Onlink: the gateway is the subnet's network address, known to the kernel only
        // through ferry's neighbour entry on the VXLAN device.
        Op::SetRoute(net, Path::Vxlan(gw)) => {
            nl.replace_route(net.network(), net.prefix(), gw, vx, true)
                .await?
        }
        // Not onlink: the kernel itself checks that the peer is a neighbour on `dev`.
        Op::SetRoute(net, Path::Direct(h)) => {
            nl.replace_route(net.network(), net.prefix(), h.via, h.dev, false)
                .await?
        }
    }
    Ok(())
}

/// The peers (of the underlay's family) whose underlay address the kernel reaches on-link
/// through the underlay device `dev`: no gateway, not the VXLAN device, a plain unicast
/// route. Asked of the kernel (`ip route get`), so its own routing decides. A lookup that
/// fails leaves its peer on VXLAN, which always works.
pub async fn reach(nl: &Netlink, peers: &[Peer], dev: u32) -> Reach {
    let lookups: Vec<(IpAddr, Option<u32>)> = stream::iter(peers.iter().map(|p| p.public_ip))
        .map(|ip| async move {
            match nl.route_get(ip).await {
                Ok(r) => (ip, r.and_then(|r| r.on_link())),
                Err(e) => {
                    tracing::warn!("direct routing: {e:#}");
                    (ip, None)
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    lookups
        .into_iter()
        .filter_map(|(ip, oif)| Some((ip, oif.filter(|o| *o == dev)?)))
        .collect()
}

/// The gateway of a node subnet, by the IPAM's one rule (`ferry_node_ipam::config::gateway`).
pub fn gateway(subnet: Ipv4Network) -> Ipv4Addr {
    match ferry_node_ipam::config::gateway(subnet.into()) {
        IpAddr::V4(g) => g,
        IpAddr::V6(_) => unreachable!("the first host of an IPv4 subnet is IPv4"),
    }
}

/// The IPv6 gateway of a node subnet, by the same rule as for IPv4.
pub fn gateway_v6(subnet: Ipv6Network) -> Ipv6Addr {
    match ferry_node_ipam::config::gateway(subnet.into()) {
        IpAddr::V6(g) => g,
        IpAddr::V4(_) => unreachable!("the first host of an IPv6 subnet is IPv6"),
    }
}

/// A random locally administered unicast MAC, for a VTEP that has none yet.
pub fn random_mac() -> Result<[u8; 6]> {
    let mut mac: [u8; 6] = random_bytes("a VTEP MAC")?;
    mac[0] = (mac[0] & 0xfe) | 0x02;
    Ok(mac)
}

/// `N` bytes from the kernel's random source, for `what`.
pub fn random_bytes<const N: usize>(what: &str) -> Result<[u8; N]> {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .with_context(|| format!("read /dev/urandom for {what}"))?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_are_the_first_hosts() {
        assert_eq!(
            gateway("10.1.2.0/24".parse().unwrap()),
            Ipv4Addr::new(10, 1, 2, 1)
        );
        let g = gateway_v6("fd00:10:0:3::/64".parse().unwrap());
        assert_eq!(g, "fd00:10:0:3::1".parse::<Ipv6Addr>().unwrap());
    }
}
