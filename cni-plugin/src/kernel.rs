//! The kernel as ADD uses it: one small trait (`Kernel`), so that ADD's order, its undo
//! and its mapping of failures to CNI codes are tested without root against a recording
//! fake, and `Netlinks`, the netlink-backed one the plugin runs with. Also the mapping of
//! kernel failures to CNI errors and the runtime every verb runs its netlink work on.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::IpAddr;
use std::path::Path;

use ferry_cni::{Code, Error};
use ferry_netlink::{BigTcp, Link, Netlink, SourceGuard, VethSpec};
use ipnetwork::IpNetwork;

pub fn err(e: ferry_netlink::Error) -> Error {
    Error::new(Code::Kernel, e.to_string())
}

/// A current-thread runtime: the plugin enters the pod's namespace on this thread to open
/// its netlink socket, so nothing may run on another one.
pub fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| {
            Error::new(Code::Kernel, "cannot start the netlink runtime").with_details(e.to_string())
        })
}

/// Which network namespace an operation is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Host,
    Pod,
}

/// What ADD asks of the kernel, one call per step, so that a fake can record the order
/// and fail any step. Addresses are typed; an IPv6 one is always added without DAD (see
/// `ferry_netlink::Netlink::add_addr_nodad`).
// Futures need no `Send`: everything runs on the one thread `runtime` gives.
#[allow(async_fn_in_trait)]
pub trait Kernel {
    /// The node bridge, created (with `mac`) when missing.
    async fn ensure_bridge(&mut self, name: &str, mac: [u8; 6]) -> ferry_netlink::Result<Link>;
    async fn addrs(&mut self, index: u32) -> ferry_netlink::Result<Vec<(IpAddr, u8)>>;
    async fn add_addr(
        &mut self,
        side: Side,
        index: u32,
        name: &str,
        ip: IpAddr,
        prefix: u8,
    ) -> ferry_netlink::Result<()>;
    /// Sets a forwarding sysctl (`net/ipv4/ip_forward`, …) to 1.
    fn enable_forwarding(&mut self, key: &str) -> ferry_netlink::Result<()>;
    async fn create_veth(&mut self, spec: &VethSpec<'_>) -> ferry_netlink::Result<()>;
    async fn get_link(&mut self, side: Side, name: &str) -> ferry_netlink::Result<Option<Link>>;
    /// Renames the host link `index` to `to` in `group`; true when it did.
    async fn retire(
        &mut self,
        index: u32,
        name: &str,
        to: &str,
        group: u32,
    ) -> ferry_netlink::Result<bool>;
    async fn configure_port(
        &mut self,
        name: &str,
        hairpin: bool,
        alias: &str,
    ) -> ferry_netlink::Result<()>;
    async fn ensure_big_tcp(&mut self, link: &Link, big: BigTcp) -> ferry_netlink::Result<bool>;
    async fn guard_source(
        &mut self,
        index: u32,
        name: &str,
        guard: &SourceGuard,
    ) -> ferry_netlink::Result<()>;
    fn steer(
        &mut self,
        link: ferry_netlink::rps::LinkId<'_>,
        cpus: &BTreeSet<u32>,
    ) -> ferry_netlink::Result<()>;
    async fn set_up(&mut self, side: Side, index: u32, name: &str) -> ferry_netlink::Result<()>;
    /// Opens the pod's side: every later `Side::Pod` call is in `ns`.
    async fn enter_pod(&mut self, ns: &File, path: &Path) -> ferry_netlink::Result<()>;
    async fn set_addr_gen_none(
        &mut self,
        index: u32,
        name: &str,
        needs_ipv6: bool,
    ) -> ferry_netlink::Result<()>;
    async fn add_route(
        &mut self,
        dst: IpNetwork,
        gw: IpAddr,
        index: u32,
    ) -> ferry_netlink::Result<()>;
    async fn hash_by_flow(&mut self, index: u32, name: &str) -> ferry_netlink::Result<()>;
    /// Deletes a host link; false when there was none.
    async fn del_link(&mut self, name: &str) -> ferry_netlink::Result<bool>;
}

/// The kernel through netlink: the host's namespace, and the pod's once entered.
pub struct Netlinks {
    host: Netlink,
    pod: Option<Netlink>,
}

impl Netlinks {
    /// Opens the host side; must run inside the runtime.
    pub fn open() -> ferry_netlink::Result<Self> {
        Ok(Netlinks {
            host: Netlink::open()?,
            pod: None,
        })
    }

    fn side(&self, side: Side) -> ferry_netlink::Result<&Netlink> {
        match (side, &self.pod) {
            (Side::Host, _) => Ok(&self.host),
            (Side::Pod, Some(pod)) => Ok(pod),
            (Side::Pod, None) => Err(ferry_netlink::Error::Io {
                what: "the pod's network namespace".into(),
                source: std::io::Error::other("not entered yet"),
            }),
        }
    }
}

impl Kernel for Netlinks {
    async fn ensure_bridge(&mut self, name: &str, mac: [u8; 6]) -> ferry_netlink::Result<Link> {
        self.host.ensure_bridge_link(name, mac).await
    }

    async fn addrs(&mut self, index: u32) -> ferry_netlink::Result<Vec<(IpAddr, u8)>> {
        self.host.addrs(index).await
    }

    async fn add_addr(
        &mut self,
        side: Side,
        index: u32,
        name: &str,
        ip: IpAddr,
        prefix: u8,
    ) -> ferry_netlink::Result<()> {
        let nl = self.side(side)?;
        match ip {
            IpAddr::V4(_) => nl.add_addr(index, name, ip, prefix).await,
            IpAddr::V6(ip) => nl.add_addr_nodad(index, name, ip, prefix).await,
        }
    }

    fn enable_forwarding(&mut self, key: &str) -> ferry_netlink::Result<()> {
        ferry_netlink::sysctl::ensure(key, "1")
    }

    async fn create_veth(&mut self, spec: &VethSpec<'_>) -> ferry_netlink::Result<()> {
        self.host.create_veth(spec).await
    }

    async fn get_link(&mut self, side: Side, name: &str) -> ferry_netlink::Result<Option<Link>> {
        self.side(side)?.get_link(name).await
    }

    async fn retire(
        &mut self,
        index: u32,
        name: &str,
        to: &str,
        group: u32,
    ) -> ferry_netlink::Result<bool> {
        self.host.detach_index(index, name, Some(to), group).await
    }

    async fn configure_port(
        &mut self,
        name: &str,
        hairpin: bool,
        alias: &str,
    ) -> ferry_netlink::Result<()> {
        self.host.configure_port(name, hairpin, alias).await
    }

    async fn ensure_big_tcp(&mut self, link: &Link, big: BigTcp) -> ferry_netlink::Result<bool> {
        self.host.ensure_big_tcp(link, big).await
    }

    async fn guard_source(
        &mut self,
        index: u32,
        name: &str,
        guard: &SourceGuard,
    ) -> ferry_netlink::Result<()> {
        self.host.guard_source(index, name, guard).await
    }

    fn steer(
        &mut self,
        link: ferry_netlink::rps::LinkId<'_>,
        cpus: &BTreeSet<u32>,
    ) -> ferry_netlink::Result<()> {
        ferry_netlink::rps::steer(link, cpus)
    }

    async fn set_up(&mut self, side: Side, index: u32, name: &str) -> ferry_netlink::Result<()> {
        self.side(side)?.set_up(index, name).await
    }

    async fn enter_pod(&mut self, ns: &File, path: &Path) -> ferry_netlink::Result<()> {
        self.pod = Some(Netlink::open_in(ns, path)?);
        Ok(())
    }

    async fn set_addr_gen_none(
        &mut self,
        index: u32,
        name: &str,
        needs_ipv6: bool,
    ) -> ferry_netlink::Result<()> {
        self.side(Side::Pod)?
            .set_addr_gen_none(index, name, needs_ipv6)
            .await
    }

    async fn add_route(
        &mut self,
        dst: IpNetwork,
        gw: IpAddr,
        index: u32,
    ) -> ferry_netlink::Result<()> {
        self.side(Side::Pod)?
            .add_route(dst.network(), dst.prefix(), Some(gw), index)
            .await
    }

    async fn hash_by_flow(&mut self, index: u32, name: &str) -> ferry_netlink::Result<()> {
        self.side(Side::Pod)?.hash_by_flow(index, name).await
    }

    async fn del_link(&mut self, name: &str) -> ferry_netlink::Result<bool> {
        self.host.del_link(name).await
    }
}
