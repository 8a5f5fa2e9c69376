//! Setting up and reading the node's data path: the VXLAN device, the bridge, and the
//! per-peer entries.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use futures_util::stream::{self, StreamExt};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use netlink::{Link, Netlink, VxlanSpec};

use crate::peers::{foreign_routes, spare_foreign, Entries, Hop, Op, Peer, Reach};

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
/// a gateway, another device).
pub async fn read(nl: &Netlink, vx_index: u32) -> Result<Entries> {
    let mut e = Entries::default();
    for n in nl.neighs_v4(vx_index).await? {
        e.neighs.insert(n.ip, n.mac);
    }
    for f in nl.fdb(vx_index).await? {
        if f.mac != [0; 6] {
            e.fdb.insert(f);
        }
    }
    for (ip, mac) in nl.neighs_v6(vx_index).await? {
        e.neighs6.insert(ip, mac);
    }
    let v4 = nl.routes_v4().await?.into_iter().map(|r| {
        let gw = r.gateway.map(IpAddr::V4);
        (IpAddr::V4(r.dst), r.prefix, gw, r.oif, r.protocol)
    });
    let v6 = nl.routes_v6().await?.into_iter().map(|r| {
        let gw = r.gateway.map(IpAddr::V6);
        (IpAddr::V6(r.dst), r.prefix, gw, r.oif, r.protocol)
    });
    for (dst, prefix, gw, oif, protocol) in v4.chain(v6) {
        let (Some(gw), Some(dev), Ok(net)) = (gw, oif, IpNetwork::new(dst, prefix)) else {
            continue;
        };
        match (net, gw) {
            (IpNetwork::V4(n), IpAddr::V4(g)) if dev == vx_index => {
                e.routes.insert(n, g);
            }
            (IpNetwork::V6(n), IpAddr::V6(g)) if dev == vx_index => {
                e.routes6.insert(n, g);
            }
            _ if dev != vx_index && protocol == netlink::ROUTE_PROTO_FERRY => {
                e.direct.insert(net, Hop { via: gw, dev });
            }
            _ => {}
        }
    }
    Ok(e)
}

/// Applies `ops` phase by phase, each phase's requests concurrently; returns how many
/// failed (the next full reconcile retries them) after logging each.
pub async fn apply(nl: &Netlink, vx_index: u32, ops: &[Op]) -> usize {
    let mut failed = 0;
    for phase in 0..4u8 {
        let this: Vec<&Op> = ops.iter().filter(|o| o.phase() == phase).collect();
        let results: Vec<Result<()>> = stream::iter(this)
            .map(|op| async move { apply_one(nl, vx_index, op).await })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for r in results {
            if let Err(e) = r {
                tracing::warn!("reconcile: {e:#}");
                failed += 1;
            }
        }
    }
    failed
}

/// `apply`, but never over a route ferry did not make (a lease may name any subnet of
/// the cluster CIDR, where the host may have a route of its own): the failures, and the
/// destinations spared.
pub async fn apply_guarded(
    nl: &Netlink,
    vx_index: u32,
    ops: &[Op],
) -> (usize, BTreeSet<Ipv4Network>) {
    let mut ops = ops.to_vec();
    let mut spared = Vec::new();
    let sets_v4 = |o: &Op| matches!(o, Op::SetRoute(..) | Op::SetDirect(IpNetwork::V4(_), _));
    if ops.iter().any(sets_v4) {
        match nl.routes_v4().await {
            Ok(routes) => {
                (ops, spared) = spare_foreign(ops, &foreign_routes(&routes, vx_index));
            }
            Err(e) => {
                // Unknown ground: make no route this time, the next resync tries again.
                tracing::warn!("reconcile: {e:#}");
                ops.retain(|o| !sets_v4(o));
            }
        }
    }
    (
        apply(nl, vx_index, &ops).await,
        spared.into_iter().collect(),
    )
}

async fn apply_one(nl: &Netlink, vx: u32, op: &Op) -> Result<()> {
    match *op {
        Op::DelRoute(net) => nl.del_route_v4(net.network(), net.prefix(), vx).await?,
        Op::DelNeigh(ip) => nl.del_neigh(vx, ip).await?,
        Op::DelFdb(e) => nl.del_fdb(vx, e).await?,
        Op::SetNeigh(n) => nl.set_neigh(vx, n).await?,
        Op::SetFdb(e) => nl.set_fdb(vx, e).await?,
        Op::SetRoute(net, gw) => {
            nl.replace_route_onlink(net.network(), net.prefix(), gw, vx)
                .await?
        }
        Op::DelRoute6(net) => nl.del_route_v6(net.network(), net.prefix(), vx).await?,
        Op::DelNeigh6(ip) => nl.del_neigh_v6(vx, ip).await?,
        Op::SetNeigh6(ip, mac) => nl.set_neigh_v6(vx, ip, mac).await?,
        Op::SetRoute6(net, gw) => {
            nl.replace_route_onlink_v6(net.network(), net.prefix(), gw, vx)
                .await?
        }
        Op::DelDirect(IpNetwork::V4(net), dev) => {
            nl.del_route_v4(net.network(), net.prefix(), dev).await?
        }
        Op::DelDirect(IpNetwork::V6(net), dev) => {
            nl.del_route_v6(net.network(), net.prefix(), dev).await?
        }
        Op::SetDirect(net, hop) => {
            nl.replace_route_via(net.network(), net.prefix(), hop.via, hop.dev)
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

/// The gateway of a node subnet: its first host address.
pub fn gateway(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// The IPv6 gateway of a node subnet: its first host address, as for IPv4.
pub fn gateway_v6(subnet: Ipv6Network) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()) + 1)
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
