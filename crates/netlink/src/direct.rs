//! Direct routing: how the kernel would reach a peer's underlay address (the pod-subnet
//! routes via that address on the underlay device are `routes.rs`'s `replace_route`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::RouteMessageBuilder;

use crate::error::{Context, Result};
use crate::handle::Netlink;

/// The kernel's answer to `ip route get <ip>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLookup {
    /// The next hop, when the address is not on-link.
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// A plain unicast route (not local, blackhole, unreachable, ...).
    pub unicast: bool,
}

impl RouteLookup {
    /// The device `ip` is on-link through: a unicast route without a gateway.
    pub fn on_link(&self) -> Option<u32> {
        match (self.unicast, self.gateway) {
            (true, None) => self.oif,
            _ => None,
        }
    }
}

impl Netlink {
    /// `ip route get <ip>` (RTM_GETROUTE for one address): the kernel's own decision,
    /// policy rules and all. `None` when the kernel has no route to it.
    pub async fn route_get(&self, ip: IpAddr) -> Result<Option<RouteLookup>> {
        let msg = match ip {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .build(),
        };
        let got = self.handle.route().get(msg).execute().try_next().await;
        let m = match got {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e)
                if crate::error::errno_in(
                    &e,
                    &[
                        libc::ENETUNREACH,
                        libc::EHOSTUNREACH,
                        libc::ENETDOWN,
                        libc::EINVAL,
                    ],
                ) =>
            {
                return Ok(None)
            }
            Err(e) => {
                return Err(e).context(|| format!("look up the route to {ip} in {}", self.place))
            }
        };
        let mut r = RouteLookup {
            gateway: None,
            oif: None,
            unicast: m.header.kind == RouteType::Unicast,
        };
        for a in m.attributes {
            match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => r.gateway = Some(g.into()),
                RouteAttribute::Gateway(RouteAddress::Inet6(g)) => r.gateway = Some(g.into()),
                RouteAttribute::Oif(o) => r.oif = Some(o),
                _ => {}
            }
        }
        Ok(Some(r))
    }
}
