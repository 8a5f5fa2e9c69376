//! Routes of both families: the main table as ferry reads it (`Route`), the routes it
//! adds, replaces and deletes, and every route of one protocol in every table
//! (`TaggedRoute`: what a maker of tagged routes finds again, and removes, without knowing
//! where it put each one). A family is a parameter (`Family`) or the family of the
//! addresses given, never a function of its own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use crate::error::{Context, Error, Result};
use crate::handle::Netlink;

pub use ferry_family::Family;

/// The kernel's name of a family, where a request is for one family.
pub(crate) fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

/// A route of the main table, of its destination's family: as ferry reads one, and as it
/// names one to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// Who made it (`RTPROT_*`; `ROUTE_PROTO_FERRY` for ferry's).
    pub protocol: u8,
}

impl Route {
    pub fn family(&self) -> Family {
        Family::of(self.dst)
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.dst, self.prefix)?;
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(o) = self.oif {
            write!(f, " dev #{o}")?;
        }
        write!(f, " proto {}", self.protocol)
    }
}

/// The fields of `m` when it is a main-table route.
fn main_route(m: RouteMessage) -> Option<Route> {
    if m.header.table != 254 && !m.attributes.contains(&RouteAttribute::Table(254)) {
        return None;
    }
    let family = match m.header.address_family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return None,
    };
    let mut r = Route {
        dst: family.unspecified(),
        prefix: m.header.destination_prefix_length,
        gateway: None,
        oif: None,
        protocol: u8::from(m.header.protocol),
    };
    for a in m.attributes {
        match a {
            RouteAttribute::Destination(d) => r.dst = addr(&d).unwrap_or(r.dst),
            RouteAttribute::Gateway(g) => r.gateway = addr(&g),
            RouteAttribute::Oif(o) => r.oif = Some(o),
            _ => {}
        }
    }
    Some(r)
}

/// A main-table route `dst/prefix` (via `gateway`) out of `oif`, of `dst`'s family; a
/// gateway of the other family, or a prefix too long for it, is an error.
fn message(
    dst: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
) -> Result<RouteMessage> {
    let shown = || format!("{dst}/{prefix}");
    if let Some(g) = gateway.filter(|g| Family::of(*g) != Family::of(dst)) {
        return Err(Error::FamilyMismatch {
            dst: shown(),
            gw: g.to_string(),
        });
    }
    let invalid = |why: String| Error::InvalidRoute {
        route: shown(),
        why,
    };
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst, prefix)
        .map_err(|e| invalid(e.to_string()))?;
    if let Some(oif) = oif {
        b = b.output_interface(oif);
    }
    if let Some(g) = gateway {
        b = b.gateway(g).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(b.build())
}

/// The request that deletes `r` (see `Netlink::del_route`).
fn delete_message(r: &Route) -> Result<RouteMessage> {
    let mut msg = message(r.dst, r.prefix, r.gateway, r.oif)?;
    // 0 (`RTPROT_UNSPEC`) would match any protocol: only a route read with no protocol
    // is deleted so.
    msg.header.protocol = RouteProtocol::from(r.protocol);
    // The wildcard scope of `ip route del`: a route's scope is the kernel's choice.
    msg.header.scope = RouteScope::NoWhere;
    Ok(msg)
}

impl Netlink {
    /// The routes the dump request `req` selects; `what` names them in an error.
    async fn dump_routes(&self, req: RouteMessage, what: &str) -> Result<Vec<RouteMessage>> {
        self.handle
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .context(|| format!("list {what} routes in {}", self.place))
    }

    /// The main table's routes of `family`.
    pub async fn routes(&self, family: Family) -> Result<Vec<Route>> {
        let mut req = RouteMessageBuilder::<IpAddr>::new().build();
        req.header.address_family = address_family(family);
        let msgs = self.dump_routes(req, &family.to_string()).await?;
        Ok(msgs.into_iter().filter_map(main_route).collect())
    }

    /// Adds `dst/prefix` (via `gateway`) out of `oif` to the main table, either family;
    /// one already there is not an error.
    pub async fn add_route(
        &self,
        dst: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        oif: u32,
    ) -> Result<()> {
        let msg = message(dst, prefix, gateway, Some(oif))?;
        match self.handle.route().add(msg).execute().await {
            Err(e) if crate::error::exists(&e) => Ok(()),
            r => r.context(|| {
                let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
                format!("add route {dst}/{prefix}{via} in {}", self.place)
            }),
        }
    }

    /// `ip route replace <dst>/<prefix> via <gw> dev <oif> [onlink] proto 102`, either
    /// family: tagged, so that a route ferry made is told from one it did not. `onlink`:
    /// the gateway is taken as a neighbour of `oif` unchecked (the VXLAN device's, whose
    /// neighbour entries are static); without it the kernel checks that it is one (a
    /// direct route's next hop, the peer's underlay address).
    pub async fn replace_route(
        &self,
        dst: IpAddr,
        prefix: u8,
        gw: IpAddr,
        oif: u32,
        onlink: bool,
    ) -> Result<()> {
        let mut msg = message(dst, prefix, Some(gw), Some(oif))?;
        msg.header.protocol = RouteProtocol::Other(crate::ROUTE_PROTO_FERRY);
        if onlink {
            msg.header.flags |= RouteFlags::Onlink;
        }
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .context(|| {
                format!(
                    "replace route {dst}/{prefix} via {gw} dev #{oif} in {}",
                    self.place
                )
            })
    }

    /// Deletes the main-table route `r` and no other: its destination, and each of its
    /// device, gateway and protocol that it names, must match (IPv4's `fib_table_delete`
    /// and IPv6's `ip6_route_del` compare every one given), so a route of another
    /// protocol, next hop or device to the same destination is never the one removed.
    /// Scope and metric are not named (any matches). A route already gone is not an error.
    pub async fn del_route(&self, r: &Route) -> Result<()> {
        match self.handle.route().del(delete_message(r)?).execute().await {
            Err(e) if crate::error::errno_in(&e, crate::error::GONE) => Ok(()),
            res => res.context(|| format!("delete route {r} in {}", self.place)),
        }
    }
}

/// A route as the kernel reported it, with the fields that name it.
#[derive(Debug, Clone)]
pub struct TaggedRoute {
    pub dst: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub protocol: u8,
    pub metric: Option<u32>,
    /// The kernel's own message: sent back, it deletes this route and no other.
    msg: RouteMessage,
}

impl TaggedRoute {
    fn from_message(msg: RouteMessage) -> TaggedRoute {
        let unspecified = match msg.header.address_family {
            AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let mut r = TaggedRoute {
            dst: unspecified,
            prefix: msg.header.destination_prefix_length,
            gateway: None,
            oif: None,
            table: u32::from(msg.header.table),
            protocol: u8::from(msg.header.protocol),
            metric: None,
            msg: RouteMessage::default(),
        };
        for a in &msg.attributes {
            match a {
                RouteAttribute::Destination(d) => r.dst = addr(d).unwrap_or(r.dst),
                RouteAttribute::Gateway(g) => r.gateway = addr(g),
                RouteAttribute::Oif(o) => r.oif = Some(*o),
                // Tables past 255 only fit the attribute.
                RouteAttribute::Table(t) => r.table = *t,
                RouteAttribute::Priority(p) => r.metric = Some(*p),
                _ => {}
            }
        }
        r.msg = msg;
        r
    }

    /// The request that deletes exactly this route: its destination, table, protocol,
    /// metric and next hops must all match, so another route to the same prefix (another
    /// protocol or metric, another table) is never the one removed.
    fn delete_message(&self) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header = self.msg.header.clone();
        // The wildcard scope of `ip route del`; the kernel refuses flags it reported.
        m.header.scope = RouteScope::NoWhere;
        m.header.flags = RouteFlags::empty();
        m.attributes = self
            .msg
            .attributes
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    RouteAttribute::Destination(_)
                        | RouteAttribute::Source(_)
                        | RouteAttribute::Gateway(_)
                        | RouteAttribute::Via(_)
                        | RouteAttribute::Oif(_)
                        | RouteAttribute::Table(_)
                        | RouteAttribute::Priority(_)
                        | RouteAttribute::MultiPath(_)
                )
            })
            .cloned()
            .collect();
        m
    }
}

impl TaggedRoute {
    /// As `ip route` shows it, with its device's name when the caller knows it.
    pub fn show(&self, dev: Option<&str>) -> String {
        let mut s = format!("{}/{}", self.dst, self.prefix);
        if let Some(g) = self.gateway {
            s += &format!(" via {g}");
        }
        match (dev, self.oif) {
            (Some(d), _) => s += &format!(" dev {d}"),
            (None, Some(i)) => s += &format!(" dev #{i}"),
            (None, None) => {}
        }
        s += &format!(" proto {}", self.protocol);
        if let Some(m) = self.metric {
            s += &format!(" metric {m}");
        }
        match self.table {
            254 => {}
            255 => s += " table local",
            t => s += &format!(" table {t}"),
        }
        s
    }
}

impl std::fmt::Display for TaggedRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.show(None))
    }
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

impl Netlink {
    /// Every route of `protocol`, IPv4 then IPv6, of every table.
    pub async fn routes_of_protocol(&self, protocol: u8) -> Result<Vec<TaggedRoute>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = family;
            // Unspecified table: the dump covers all of them.
            req.header.table = 0;
            let msgs = self.dump_routes(req, &format!("{family:?}")).await?;
            out.extend(
                msgs.into_iter()
                    .map(TaggedRoute::from_message)
                    .filter(|r| r.protocol == protocol),
            );
        }
        Ok(out)
    }

    /// Deletes one route found by `routes_of_protocol`; one already gone is not an error.
    pub async fn del_tagged_route(&self, r: &TaggedRoute) -> Result<()> {
        match self.handle.route().del(r.delete_message()).execute().await {
            Err(e) if crate::error::errno_in(&e, crate::error::GONE) => Ok(()),
            res => res.context(|| format!("delete route {r} in {}", self.place)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ferrys(dst: &str, prefix: u8, gw: &str, oif: u32) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            prefix,
            gateway: Some(gw.parse().unwrap()),
            oif: Some(oif),
            protocol: crate::ROUTE_PROTO_FERRY,
        }
    }

    #[test]
    fn a_delete_names_the_route_whole_in_either_family() {
        for r in [
            ferrys("10.244.1.0", 24, "192.0.2.11", 2),
            ferrys("fd00:10:0:1::", 64, "2001:db8::11", 2),
        ] {
            let m = delete_message(&r).unwrap();
            assert_eq!(m.header.address_family, address_family(r.family()));
            assert_eq!(m.header.destination_prefix_length, r.prefix);
            // What the kernel compares: protocol, gateway, device (and not the scope).
            assert_eq!(
                m.header.protocol,
                RouteProtocol::Other(crate::ROUTE_PROTO_FERRY)
            );
            assert_eq!(m.header.scope, RouteScope::NoWhere);
            let gw = r.gateway.unwrap();
            assert!(m
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(g) if addr(g) == Some(gw))));
            assert!(m.attributes.contains(&RouteAttribute::Oif(2)));
            assert!(m
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(d) if addr(d) == Some(r.dst))));
        }
    }

    #[test]
    fn a_route_of_mixed_families_or_too_long_a_prefix_is_refused() {
        let mixed = Route {
            gateway: Some("192.0.2.11".parse().unwrap()),
            ..ferrys("fd00:10:0:1::", 64, "2001:db8::11", 2)
        };
        assert!(matches!(
            delete_message(&mixed),
            Err(Error::FamilyMismatch { .. })
        ));
        let long = ferrys("10.244.1.0", 33, "192.0.2.11", 2);
        assert!(matches!(
            delete_message(&long),
            Err(Error::InvalidRoute { .. })
        ));
    }

    #[test]
    fn a_main_table_route_is_read_with_its_family() {
        let mut m = delete_message(&ferrys("fd00:10:0:1::", 64, "2001:db8::11", 7)).unwrap();
        m.header.table = 254;
        let r = main_route(m).unwrap();
        assert_eq!(r, ferrys("fd00:10:0:1::", 64, "2001:db8::11", 7));
        assert_eq!(r.family(), Family::V6);
        // A default route has no destination attribute: its family's unspecified address.
        let mut d = RouteMessage::default();
        d.header.address_family = AddressFamily::Inet6;
        d.header.table = 254;
        assert_eq!(
            main_route(d).unwrap().dst,
            IpAddr::from(Ipv6Addr::UNSPECIFIED)
        );
    }
}
