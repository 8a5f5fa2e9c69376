//! What the VXLAN overlay programs: the device, and per remote node one FDB entry and a
//! neighbour entry per pod subnet (flannel's layout; the routes are `routes.rs`'s).

use std::net::IpAddr;

use futures_util::TryStreamExt;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::AddressFamily;
use rtnetlink::LinkVxlan;

use crate::error::{Context, Result};
use crate::handle::Netlink;
use crate::link::VxlanInfo;
use crate::routes::{address_family, Family};

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

    /// The permanent neighbour entries of `family` on a link: (address, MAC).
    pub async fn neighs(&self, index: u32, family: Family) -> Result<Vec<(IpAddr, [u8; 6])>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(address_family(family))
            .execute()
            .try_collect()
            .await
            .context(|| format!("list {family} neighbours in {}", self.place))?;
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
            .filter(|(ip, _)| Family::of(*ip) == family)
            .collect())
    }

    /// Adds or replaces a permanent neighbour entry, either family.
    pub async fn set_neigh(&self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
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

    /// Deletes a neighbour entry, either family; one already gone is not an error.
    pub async fn del_neigh(&self, index: u32, ip: IpAddr) -> Result<()> {
        let mut m = NeighbourMessage::default();
        let addr = match ip {
            IpAddr::V4(i) => NeighbourAddress::Inet(i),
            IpAddr::V6(i) => NeighbourAddress::Inet6(i),
        };
        m.header.family = address_family(Family::of(ip));
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
}

/// Deleting what is already gone is success.
fn tolerate_missing(
    r: std::result::Result<(), rtnetlink::Error>,
) -> std::result::Result<(), rtnetlink::Error> {
    match r {
        Err(e) if crate::error::errno_in(&e, crate::error::GONE) => Ok(()),
        r => r,
    }
}
