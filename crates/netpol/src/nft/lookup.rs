//! Set lookups as the kernel does them, for the tests and benchmarks that check what a
//! ruleset lets through without a kernel; the daemon never matches packets itself.

use std::net::IpAddr;

use crate::model::Protocol;
use crate::nft::{Element, Field, Ifname};
use crate::ranges;

/// What a set lookup takes from a packet: its addresses, its protocol and destination
/// port, and (bridged between two pods) the port it leaves the bridge on.
#[derive(Debug, Clone, Copy)]
pub struct Lookup {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub oif: Option<Ifname>,
}

impl Element {
    /// Whether the element holds what `field` takes from the packet `p`, as the kernel's
    /// lookup does.
    pub fn matches(&self, field: Field, p: &Lookup) -> bool {
        let within = |lo: IpAddr, hi: IpAddr, ip: IpAddr| {
            lo.is_ipv4() == ip.is_ipv4()
                && (ranges::to_int(lo)..=ranges::to_int(hi)).contains(&ranges::to_int(ip))
        };
        let addr = match field {
            Field::Saddr(_) | Field::SaddrDaddr(_) => p.src,
            _ => p.dst,
        };
        let service = |protocol: Protocol, lo: u16, hi: u16| {
            protocol == p.protocol && (lo..=hi).contains(&p.port)
        };
        match (*self, field) {
            (Element::Addr(ip), Field::Saddr(_) | Field::Daddr(_)) => ip == addr,
            (Element::Range { lo, hi }, Field::Saddr(_) | Field::Daddr(_)) => within(lo, hi, addr),
            (Element::Pair(a, b), Field::SaddrDaddr(_)) => a == p.src && b == p.dst,
            (
                Element::Ports {
                    lo,
                    hi,
                    protocol,
                    port_lo,
                    port_hi,
                },
                Field::DaddrPort(_),
            ) => within(lo, hi, p.dst) && service(protocol, port_lo, port_hi),
            (Element::Dev(d), Field::Oif) => p.oif == Some(d),
            (
                Element::DevService {
                    dev,
                    protocol,
                    port_lo,
                    port_hi,
                },
                Field::OifService,
            ) => p.oif == Some(dev) && service(protocol, port_lo, port_hi),
            (Element::DevAddr(d, ip), Field::OifDaddr(_)) => p.oif == Some(d) && ip == p.dst,
            _ => false,
        }
    }
}
