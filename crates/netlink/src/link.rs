//! What ferry reads of a link: parsed from the kernel's messages, no I/O, so that both the
//! handle's link queries and the overlay's device checks share one reading.

use std::net::IpAddr;

use crate::big_tcp::Sizes;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};

/// What ferry reads of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    /// Set for VXLAN devices.
    pub vxlan: Option<VxlanInfo>,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub up: bool,
    pub controller: Option<u32>,
    pub kind: Option<String>,
    pub alias: Option<String>,
    /// The link group (0 unless set).
    pub group: u32,
    /// Its GSO and GRO packet sizes.
    pub sizes: Sizes,
}

impl From<LinkMessage> for Link {
    fn from(m: LinkMessage) -> Self {
        let mut l = Link {
            vxlan: VxlanInfo::from_link_message(&m),
            index: m.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            controller: None,
            kind: None,
            alias: None,
            group: 0,
            sizes: Sizes::from_attributes(&m.attributes),
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n,
                LinkAttribute::Address(mac) => l.mac = mac,
                LinkAttribute::Mtu(mtu) => l.mtu = mtu,
                LinkAttribute::Controller(c) => l.controller = Some(c),
                LinkAttribute::IfAlias(a) => l.alias = Some(a),
                LinkAttribute::Group(g) => l.group = g,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// The attributes of a VXLAN device that must match for it to be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub port: u16,
    pub local: Option<IpAddr>,
    pub dev: Option<u32>,
    pub learning: bool,
}

impl VxlanInfo {
    fn from_link_message(m: &LinkMessage) -> Option<Self> {
        let infos = m.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => Some(i),
            _ => None,
        })?;
        let is_vxlan = infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
        if !is_vxlan {
            return None;
        }
        let mut v = VxlanInfo {
            vni: 0,
            port: 0,
            local: None,
            dev: None,
            learning: true,
        };
        for i in infos {
            if let LinkInfo::Data(InfoData::Vxlan(attrs)) = i {
                for a in attrs {
                    match a {
                        InfoVxlan::Id(id) => v.vni = *id,
                        InfoVxlan::Port(p) => v.port = *p,
                        InfoVxlan::Local(l) => v.local = Some(IpAddr::V4(*l)),
                        InfoVxlan::Local6(l) => v.local = Some(IpAddr::V6(*l)),
                        InfoVxlan::Link(d) => v.dev = Some(*d),
                        InfoVxlan::Learning(l) => v.learning = *l,
                        _ => {}
                    }
                }
            }
        }
        Some(v)
    }
}
