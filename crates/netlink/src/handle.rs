use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth};

use crate::error::{Context, Error, Result};
use crate::link::Link;
use crate::netns;

/// A veth pair whose peer is created directly in the pod's namespace: one message, no
/// move, no rename (neither end ever exists under a temporary name). Both ends start
/// down: the caller guards the host end (`guard_source`) before any frame can pass, then
/// sets each end up.
pub struct VethSpec<'a> {
    pub host_name: &'a str,
    pub host_mac: [u8; 6],
    pub peer_name: &'a str,
    pub peer_mac: [u8; 6],
    pub peer_netns: &'a File,
    pub mtu: u32,
    pub controller: u32,
    /// Both ends' GSO and GRO sizes; `None` leaves the kernel's.
    pub big_tcp: Option<crate::BigTcp>,
}

/// A netlink connection bound to one network namespace.
pub struct Netlink {
    pub(crate) handle: Handle,
    /// Where this connection works, for error messages.
    pub(crate) place: String,
}

impl Netlink {
    /// Connects in the current thread's network namespace. Needs a tokio runtime.
    pub fn open() -> Result<Self> {
        Self::connect("host network namespace".into())
    }

    /// Connects inside the namespace `ns` (opened from `path`).
    pub fn open_in(ns: &File, path: &Path) -> Result<Self> {
        netns::run_in(ns, path, || {
            Self::connect(format!("network namespace {}", path.display()))
        })?
    }

    fn connect(place: String) -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| Error::Io {
            what: format!("open a netlink socket in {place}"),
            source,
        })?;
        tokio::spawn(conn);
        Ok(Netlink { handle, place })
    }

    /// The link called `name`, or `None`.
    pub async fn get_link(&self, name: &str) -> Result<Option<Link>> {
        let mut req = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match req.try_next().await {
            Ok(m) => Ok(m.map(Link::from)),
            Err(e) if crate::error::errno_in(&e, &[libc::ENODEV]) => Ok(None),
            Err(source) => Err(Error::Netlink {
                what: format!("get link {name} in {}", self.place),
                source,
            }),
        }
    }

    pub async fn list_links(&self) -> Result<Vec<Link>> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .context(|| format!("list links in {}", self.place))?;
        Ok(links.into_iter().map(Link::from).collect())
    }

    /// The bridge `name`, created if missing (MAC fixed) and up, without touching its
    /// addresses. Another link of that name that is not a bridge is an error.
    pub async fn ensure_bridge_link(&self, name: &str, mac: [u8; 6]) -> Result<Link> {
        let bridge = match self.get_link(name).await? {
            Some(b) => b,
            None => {
                self.create_bridge(name, mac).await?;
                self.get_link(name).await?.ok_or_else(|| Error::Io {
                    what: format!("bridge {name} vanished after creation in {}", self.place),
                    source: std::io::ErrorKind::NotFound.into(),
                })?
            }
        };
        if bridge.kind.as_deref() != Some("bridge") {
            return Err(Error::NotABridge {
                name: name.to_string(),
                kind: bridge.kind.clone().unwrap_or_else(|| "of no kind".into()),
            });
        }
        if !bridge.up {
            self.set_up(bridge.index, name).await?;
        }
        Ok(bridge)
    }

    /// Creates a bridge with a fixed MAC (so it never follows its ports' addresses), up.
    /// Another creator winning the race is not an error.
    pub async fn create_bridge(&self, name: &str, mac: [u8; 6]) -> Result<()> {
        let msg = LinkBridge::new(name).address(mac.to_vec()).up().build();
        match self.handle.link().add(msg).execute().await {
            Err(e) if crate::error::exists(&e) => Ok(()),
            r => r.context(|| format!("create bridge {name} in {}", self.place)),
        }
    }

    /// The bridge `name`, created if missing (MAC fixed), up, holding `gateway/prefix`.
    /// Another link of that name that is not a bridge is an error.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mac: [u8; 6],
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> Result<Link> {
        let bridge = self.ensure_bridge_link(name, mac).await?;
        if !self
            .addrs_v4(bridge.index)
            .await?
            .contains(&(gateway, prefix))
        {
            self.add_addr(bridge.index, name, IpAddr::V4(gateway), prefix)
                .await?;
        }
        Ok(bridge)
    }

    pub async fn set_mtu(&self, index: u32, name: &str, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.set_link(msg, || format!("set MTU {mtu} on {name}"))
            .await
    }

    pub async fn set_up(&self, index: u32, name: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set_link(msg, || format!("set link {name} up")).await
    }

    /// Stops the kernel from making IPv6 addresses of its own on the link
    /// (`addr_gen_mode` 1, `none`): no link-local address from the MAC, none from a
    /// stable-privacy secret or at random. Set while the link is down, before it ever has
    /// one. ferry then adds the one link-local address it derives itself
    /// ([`crate::link_local`]), which the source guard and the NetworkPolicy rules know.
    ///
    /// A kernel without IPv6 (`ipv6.disable=1`) refuses the request; that is an error only
    /// when `needs_ipv6`: a link with no IPv6 stack has no address to speak of.
    pub async fn set_addr_gen_none(&self, index: u32, name: &str, needs_ipv6: bool) -> Result<()> {
        use netlink_packet_route::link::{AfSpecInet6, AfSpecUnspec, In6AddrGenMode};
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]))
            .build();
        match self
            .set_link(msg, || format!("set addr_gen_mode none on {name}"))
            .await
        {
            Err(e) if !needs_ipv6 && e.errno() == Some(libc::EAFNOSUPPORT) => Ok(()),
            r => r,
        }
    }

    /// One change to a link; `what` says which, for the error.
    pub(crate) async fn set_link(
        &self,
        msg: LinkMessage,
        what: impl FnOnce() -> String,
    ) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .context(|| format!("{} in {}", what(), self.place))
    }

    /// IPv4 addresses (address, prefix length) on a link.
    pub async fn addrs_v4(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        Ok(self
            .addrs(index)
            .await?
            .into_iter()
            .filter_map(|(ip, p)| match ip {
                IpAddr::V4(a) => Some((a, p)),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    /// IPv6 addresses (address, prefix length) on a link, link-local ones included.
    pub async fn addrs_v6(&self, index: u32) -> Result<Vec<(std::net::Ipv6Addr, u8)>> {
        Ok(self
            .addrs(index)
            .await?
            .into_iter()
            .filter_map(|(ip, p)| match ip {
                IpAddr::V6(ip) => Some((ip, p)),
                IpAddr::V4(_) => None,
            })
            .collect())
    }

    /// The addresses (address, prefix length) of both families on a link.
    pub async fn addrs(&self, index: u32) -> Result<Vec<(IpAddr, u8)>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .context(|| format!("list addresses of link {index} in {}", self.place))?;
        let mut out = Vec::new();
        for m in msgs {
            let family_ok = matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6);
            if !family_ok || m.header.index != index {
                continue;
            }
            // IPv4 reports its address as Local; IPv6 as Address only.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(addr) {
                out.push((ip, m.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Adds an address; one already there is not an error.
    pub async fn add_addr(&self, index: u32, name: &str, ip: IpAddr, prefix: u8) -> Result<()> {
        match self.handle.address().add(index, ip, prefix).execute().await {
            Err(e) if crate::error::exists(&e) => Ok(()),
            r => r.context(|| format!("add address {ip}/{prefix} to {name} in {}", self.place)),
        }
    }

    /// Adds an IPv6 address usable at once: IFA_F_NODAD skips duplicate address
    /// detection, which would hold it "tentative" (unusable) for a second or more. ferry
    /// hands each address to one attachment only, so there is no duplicate to detect.
    /// One already there is not an error.
    pub async fn add_addr_nodad(
        &self,
        index: u32,
        name: &str,
        ip: Ipv6Addr,
        prefix: u8,
    ) -> Result<()> {
        let mut req = self.handle.address().add(index, IpAddr::V6(ip), prefix);
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        match req.execute().await {
            Err(e) if crate::error::exists(&e) => Ok(()),
            r => r.context(|| format!("add address {ip}/{prefix} to {name} in {}", self.place)),
        }
    }

    pub async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<()> {
        let peer = LinkUnspec::new_with_name(spec.peer_name)
            .address(spec.peer_mac.to_vec())
            .mtu(spec.mtu)
            .setns_by_fd(spec.peer_netns.as_raw_fd());
        let peer = crate::big_tcp::with(peer, spec.big_tcp).build();
        let msg = LinkVeth::new(spec.host_name, spec.peer_name)
            .set_info_data(netlink_packet_route::link::InfoData::Veth(
                netlink_packet_route::link::InfoVeth::Peer(peer),
            ))
            .address(spec.host_mac.to_vec())
            .mtu(spec.mtu)
            .controller(spec.controller);
        let msg = crate::big_tcp::with(msg, spec.big_tcp).build();
        self.handle.link().add(msg).execute().await.context(|| {
            format!(
                "create veth {} (peer {} in the pod) in {}",
                spec.host_name, spec.peer_name, self.place
            )
        })
    }

    /// Sets a bridge port's hairpin flag and the link's alias in one request, addressing
    /// the port by name (no lookup). The alias goes here because the kernel ignores
    /// IFLA_IFALIAS when it creates a link.
    pub async fn configure_port(&self, name: &str, hairpin: bool, alias: &str) -> Result<()> {
        let msg = LinkBridgePort::new(0)
            .name(name)
            .hairpin(hairpin)
            .append_extra_attribute(LinkAttribute::IfAlias(alias.to_string()))
            .build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .context(|| {
                format!(
                    "set hairpin {hairpin} and alias on bridge port {name} in {}",
                    self.place
                )
            })
    }

    /// Deletes a link by name; returns false when it was not there.
    pub async fn del_link(&self, name: &str) -> Result<bool> {
        let Some(link) = self.get_link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if crate::error::errno_in(&e, &[libc::ENODEV, libc::ENOENT]) => Ok(false),
            Err(source) => Err(Error::Netlink {
                what: format!("delete link {name} in {}", self.place),
                source,
            }),
        }
    }

    /// Retires a link at once, in one request: down (off the network: a down bridge port
    /// neither sends nor receives) and into link group `group`, where `del_group` finds
    /// it; renamed to `new_name` too when given, to free its name. Returns false when it
    /// was not there. Cheap, unlike a delete, which waits for RCU grace periods; leaving
    /// the bridge is left to that delete too, as it costs a grace period of its own.
    pub async fn detach_index(
        &self,
        index: u32,
        name: &str,
        new_name: Option<&str>,
        group: u32,
    ) -> Result<bool> {
        let mut msg = LinkUnspec::new_with_index(index).down();
        if let Some(new_name) = new_name {
            msg = msg.name(new_name);
        }
        let msg = msg
            .append_extra_attribute(LinkAttribute::Group(group))
            .build();
        match self.handle.link().set(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if crate::error::errno_in(&e, &[libc::ENODEV, libc::ENOENT]) => Ok(false),
            Err(source) => Err(Error::Netlink {
                what: match new_name {
                    Some(n) => format!("detach link {name} (as {n}) in {}", self.place),
                    None => format!("detach link {name} in {}", self.place),
                },
                source,
            }),
        }
    }

    /// Deletes every link of group `group` in one request (RTM_DELLINK with IFLA_GROUP
    /// and no index): the kernel unregisters them as one batch, sharing the RCU waits
    /// that make deleting links one by one slow. Returns false when the group was empty.
    pub async fn del_group(&self, group: u32) -> Result<bool> {
        let mut req = self.handle.link().del(0);
        req.message_mut()
            .attributes
            .push(LinkAttribute::Group(group));
        match req.execute().await {
            Ok(()) => Ok(true),
            Err(e) if crate::error::errno_in(&e, &[libc::ENODEV]) => Ok(false),
            Err(source) => Err(Error::Netlink {
                what: format!("delete link group {group} in {}", self.place),
                source,
            }),
        }
    }
}
