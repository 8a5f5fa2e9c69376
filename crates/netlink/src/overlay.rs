//! What the VXLAN overlay programs: the device, and per remote node one neighbour entry,
//! one FDB entry and one route (flannel's layout).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::AddressFamily;
use rtnetlink::{LinkVxlan, RouteMessageBuilder};

use crate::error::{Context, Result};
use crate::handle::Netlink;
use crate::link::VxlanInfo;

/// A VXLAN device to create.
#[derive(Debug, Clone)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The VTEP's underlay address, of either family.
    pub local: IpAddr,
    pub dev: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
}

impl VxlanSpec {
    /// Whether an existing device can be kept as it is.
    pub fn matches(&self, info: &VxlanInfo) -> bool {
        info.vni == self.vni
            && info.port == self.port
            && info.local == Some(self.local)
            && info.dev == Some(self.dev)
            && !info.learning
    }
}

/// A permanent IPv4 neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NeighV4 {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A forwarding entry of a VXLAN device: frames for `mac` go to the VTEP at `dst` (of the
/// device's underlay family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: IpAddr,
}

fn mac6(v: &[u8]) -> Option<[u8; 6]> {
    v.try_into().ok()
}

/// A VTEP address from raw bytes: 4 for IPv4, 16 for IPv6.
fn vtep_addr(b: &[u8]) -> Option<IpAddr> {
    if let Ok(a) = <[u8; 4]>::try_from(b) {
        return Some(IpAddr::from(a));
    }
    <[u8; 16]>::try_from(b).ok().map(IpAddr::from)
}

impl Netlink {
    /// Creates a VXLAN device (learning off, UDP checksums on), up.
    pub async fn create_vxlan(&self, s: &VxlanSpec) -> Result<()> {
        let vx = LinkVxlan::new(&s.name, s.vni).dev(s.dev);
        let vx = match s.local {
            IpAddr::V4(a) => vx.local(a),
            IpAddr::V6(a) => vx.local6(a),
        };
        let msg = vx
            .port(s.port)
            .learning(false)
            .udp_csum(true)
            .mtu(s.mtu)
            .address(s.mac.to_vec())
            .up()
            .build();
        self.handle.link().add(msg).execute().await.context(|| {
            format!(
                "create VXLAN device {} (VNI {}) in {}",
                s.name, s.vni, self.place
            )
        })
    }

    /// The permanent IPv4 neighbour entries on a link.
    pub async fn neighs_v4(&self, index: u32) -> Result<Vec<NeighV4>> {
        Ok(self
            .neighs(index, AddressFamily::Inet)
            .await?
            .into_iter()
            .filter_map(|(ip, mac)| match ip {
                IpAddr::V4(ip) => Some(NeighV4 { ip, mac }),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    /// The permanent neighbour entries of one family on a link.
    async fn neighs(&self, index: u32, family: AddressFamily) -> Result<Vec<(IpAddr, [u8; 6])>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .context(|| format!("list neighbours in {}", self.place))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.ifindex == index && m.header.state == NeighbourState::Permanent)
            .filter_map(|m| {
                let mut ip = None;
                let mut mac = None;
                for a in m.attributes {
                    match a {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => {
                            ip = Some(IpAddr::V4(i))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(i)) => {
                            ip = Some(IpAddr::V6(i))
                        }
                        NeighbourAttribute::LinkLayerAddress(l) => mac = mac6(&l),
                        _ => {}
                    }
                }
                Some((ip?, mac?))
            })
            .collect())
    }

    /// Adds or replaces a permanent neighbour entry.
    pub async fn set_neigh(&self, index: u32, n: NeighV4) -> Result<()> {
        self.set_neigh_ip(index, IpAddr::V4(n.ip), n.mac).await
    }

    async fn set_neigh_ip(&self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .context(|| format!("set neighbour {ip} on link {index} in {}", self.place))
    }

    pub async fn del_neigh(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        self.del_neigh_ip(index, IpAddr::V4(ip)).await
    }

    async fn del_neigh_ip(&self, index: u32, ip: IpAddr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        let (family, addr) = match ip {
            IpAddr::V4(i) => (AddressFamily::Inet, NeighbourAddress::Inet(i)),
            IpAddr::V6(i) => (AddressFamily::Inet6, NeighbourAddress::Inet6(i)),
        };
        m.header.family = family;
        m.header.ifindex = index;
        m.attributes.push(NeighbourAttribute::Destination(addr));
        tolerate_missing(self.handle.neighbours().del(m).execute().await)
            .context(|| format!("delete neighbour {ip} on link {index} in {}", self.place))
    }

    /// The FDB entries with a remote destination on a (VXLAN) link.
    pub async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .context(|| format!("list FDB entries in {}", self.place))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(|m| {
                let mut dst = None;
                let mut mac = None;
                for a in m.attributes {
                    match a {
                        // In an AF_BRIDGE message the parser cannot tell the destination's
                        // family, so a VTEP arrives as 4 or 16 raw bytes.
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => {
                            dst = Some(IpAddr::V4(i))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(i)) => {
                            dst = Some(IpAddr::V6(i))
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                            dst = vtep_addr(&b)
                        }
                        NeighbourAttribute::LinkLayerAddress(l) => mac = mac6(&l),
                        _ => {}
                    }
                }
                Some(FdbEntry {
                    mac: mac?,
                    dst: dst?,
                })
            })
            .collect())
    }

    /// `bridge fdb replace <mac> dev <link> dst <dst> self permanent`.
    pub async fn set_fdb(&self, index: u32, e: FdbEntry) -> Result<()> {
        self.handle
            .neighbours()
            .add_bridge(index, &e.mac)
            .destination(e.dst)
            .flags(NeighbourFlags::Own)
            .replace()
            .execute()
            .await
            .context(|| {
                format!(
                    "set FDB entry {} dst {} on link {index} in {}",
                    crate::format_mac(&e.mac),
                    e.dst,
                    self.place
                )
            })
    }

    pub async fn del_fdb(&self, index: u32, e: FdbEntry) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.flags = NeighbourFlags::Own;
        m.header.state = NeighbourState::Permanent;
        m.header.kind = RouteType::Unspec;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
        let dst = match e.dst {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        };
        m.attributes.push(NeighbourAttribute::Destination(dst));
        tolerate_missing(self.handle.neighbours().del(m).execute().await).context(|| {
            format!(
                "delete FDB entry {} dst {} on link {index} in {}",
                crate::format_mac(&e.mac),
                e.dst,
                self.place
            )
        })
    }

    /// `ip route replace <dst>/<prefix> via <gw> dev <oif> onlink proto 102`: tagged, so
    /// that a route ferry made is told from one it did not.
    pub async fn replace_route_onlink(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        gw: Ipv4Addr,
        oif: u32,
    ) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .gateway(gw)
            .output_interface(oif)
            .onlink()
            .protocol(RouteProtocol::Other(crate::ROUTE_PROTO_FERRY))
            .build();
        self.replace_route(msg, || format!("{dst}/{prefix} via {gw}"))
            .await
    }

    /// Deletes the route to `dst/prefix` out of `oif`, whoever added it (protocol and
    /// scope are wildcards, or a route added by hand would not match).
    pub async fn del_route_v4(&self, dst: Ipv4Addr, prefix: u8, oif: u32) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, prefix)
            .output_interface(oif)
            .protocol(RouteProtocol::Unspec)
            .scope(RouteScope::NoWhere)
            .build();
        self.del_route(msg, || format!("{dst}/{prefix}")).await
    }

    /// Sends a route replace of either family; `what` names the route for the error.
    pub(crate) async fn replace_route(
        &self,
        msg: netlink_packet_route::route::RouteMessage,
        what: impl FnOnce() -> String,
    ) -> Result<()> {
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .context(|| format!("replace route {} in {}", what(), self.place))
    }

    /// Sends a route delete of either family; a route already gone is not an error.
    async fn del_route(
        &self,
        msg: netlink_packet_route::route::RouteMessage,
        what: impl FnOnce() -> String,
    ) -> Result<()> {
        tolerate_missing(self.handle.route().del(msg).execute().await)
            .context(|| format!("delete route {} in {}", what(), self.place))
    }
}

/// An IPv6 route of the main table, as the overlay reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteV6 {
    pub dst: Ipv6Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv6Addr>,
    pub oif: Option<u32>,
    pub protocol: u8,
}

/// IPv6 pods over the same VXLAN device: per remote node a permanent neighbour entry for
/// its IPv6 subnet's network address and an onlink route via it (the FDB entry of the
/// node's VTEP MAC is the IPv4 one's: the device is L2).
impl Netlink {
    /// The permanent IPv6 neighbour entries on a link.
    pub async fn neighs_v6(&self, index: u32) -> Result<Vec<(Ipv6Addr, [u8; 6])>> {
        Ok(self
            .neighs(index, AddressFamily::Inet6)
            .await?
            .into_iter()
            .filter_map(|(ip, mac)| match ip {
                IpAddr::V6(ip) => Some((ip, mac)),
                IpAddr::V4(_) => None,
            })
            .collect())
    }

    /// Adds or replaces a permanent IPv6 neighbour entry.
    pub async fn set_neigh_v6(&self, index: u32, ip: Ipv6Addr, mac: [u8; 6]) -> Result<()> {
        self.set_neigh_ip(index, IpAddr::V6(ip), mac).await
    }

    pub async fn del_neigh_v6(&self, index: u32, ip: Ipv6Addr) -> Result<()> {
        self.del_neigh_ip(index, IpAddr::V6(ip)).await
    }

    /// `ip -6 route replace <dst>/<prefix> via <gw> dev <oif> onlink proto 102`.
    pub async fn replace_route_onlink_v6(
        &self,
        dst: Ipv6Addr,
        prefix: u8,
        gw: Ipv6Addr,
        oif: u32,
    ) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst, prefix)
            .gateway(gw)
            .output_interface(oif)
            .onlink()
            .protocol(RouteProtocol::Other(crate::ROUTE_PROTO_FERRY))
            .build();
        self.replace_route(msg, || format!("{dst}/{prefix} via {gw}"))
            .await
    }

    /// Deletes the IPv6 route to `dst/prefix` out of `oif`, whoever added it.
    pub async fn del_route_v6(&self, dst: Ipv6Addr, prefix: u8, oif: u32) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst, prefix)
            .output_interface(oif)
            .protocol(RouteProtocol::Unspec)
            .scope(RouteScope::NoWhere)
            .build();
        self.del_route(msg, || format!("{dst}/{prefix}")).await
    }

    /// IPv6 routes of the main table.
    pub async fn routes_v6(&self) -> Result<Vec<RouteV6>> {
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .context(|| format!("list IPv6 routes in {}", self.place))?;
        Ok(msgs
            .into_iter()
            .filter_map(crate::handle::main_route)
            .map(|r| RouteV6 {
                dst: match r.dst {
                    Some(IpAddr::V6(d)) => d,
                    _ => Ipv6Addr::UNSPECIFIED,
                },
                prefix: r.prefix,
                gateway: match r.gateway {
                    Some(IpAddr::V6(g)) => Some(g),
                    _ => None,
                },
                oif: r.oif,
                protocol: r.protocol,
            })
            .collect())
    }
}

/// Deleting what is already gone is success.
fn tolerate_missing(
    r: std::result::Result<(), rtnetlink::Error>,
) -> std::result::Result<(), rtnetlink::Error> {
    match r {
        Err(rtnetlink::Error::NetlinkError(e))
            if matches!(
                e.raw_code().abs(),
                libc::ENOENT | libc::ENODEV | libc::ESRCH
            ) =>
        {
            Ok(())
        }
        r => r,
    }
}
