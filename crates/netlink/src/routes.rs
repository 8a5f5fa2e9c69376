//! Every route of one protocol, in every table and of both families: what a maker of
//! tagged routes finds again (and removes) without knowing where it put each one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteScope,
};
use netlink_packet_route::AddressFamily;

use crate::error::{Context, Result};
use crate::handle::Netlink;

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
            let msgs: Vec<RouteMessage> = self
                .handle
                .route()
                .get(req)
                .execute()
                .try_collect()
                .await
                .context(|| format!("list {family:?} routes in {}", self.place))?;
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
            Err(rtnetlink::Error::NetlinkError(e))
                if matches!(
                    e.raw_code().abs(),
                    libc::ESRCH | libc::ENOENT | libc::ENODEV
                ) =>
            {
                Ok(())
            }
            res => res.context(|| format!("delete route {r} in {}", self.place)),
        }
    }
}
