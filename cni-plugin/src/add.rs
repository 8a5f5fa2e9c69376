//! ADD: an address, the node bridge, a veth pair into the pod, the pod's address and
//! routes. What it makes is pushed on a stack (`Made`) as it goes; whatever fails after
//! the address is taken unwinds that stack before the error returns.

use std::fs::File;
use std::net::IpAddr;
use std::path::Path;

use ferry_cni::{CniResult, Code, Env, Error, Interface, NetConf};
use ferry_netlink::{SourceGuard, VethSpec};
use ferry_node_ipam::{attachment, Lease};

use crate::addressing::Addressing;
use crate::config::PluginConf;
use crate::kernel::{self, err, Kernel, Netlinks, Side};
use crate::reap;
use crate::steering;

pub fn run(conf: &NetConf, env: &Env) -> Result<String, Error> {
    let pc = PluginConf::parse(conf)?;
    let netns_path = env.require_netns()?;
    let ns = crate::sandbox::open(netns_path)?;
    let steer = steering::plan(&pc.steering)?;
    let addressing = Addressing::new(&pc.ipam, conf, env);
    let taken = addressing.take(pc.node())?;
    let mut made = vec![Made::Lease];

    let host_veth = attachment::host_veth(&env.container_id, &env.ifname);
    let plan = Plan {
        bridge: &pc.bridge,
        mtu: pc.effective_mtu(),
        hairpin: pc.hairpin,
        big_tcp: pc.big_tcp(),
        host_veth: &host_veth,
        ifname: &env.ifname,
        container_id: &env.container_id,
        alias: attachment::alias(&conf.name, &env.container_id, &env.ifname),
        netns: &ns,
        netns_path,
        steer: steer.as_ref(),
    };
    let policy = pc.policy_hook();
    let cover = |ips: Vec<IpAddr>| match &policy {
        Some(hook) => crate::policy::attach(hook, env, ips),
        None => Ok(()),
    };
    let release = || addressing.del();
    let added = kernel::runtime().and_then(|rt| {
        rt.block_on(async {
            let mut k = match Netlinks::open() {
                Ok(k) => k,
                Err(e) => return Err(err(e)),
            };
            let added = add(&mut k, &plan, taken.lease(), cover, &mut made).await;
            if added.is_err() {
                if let Some(hook) = &policy {
                    crate::policy::detach(hook, env);
                }
                unwind(&mut k, &mut made, release).await;
            }
            added
        })
    });
    match added {
        Ok(result) => {
            let mut result = result;
            if let Some(dns) = &pc.dns {
                result.dns = dns.clone();
            }
            Ok(result.to_json(&conf.cni_version))
        }
        Err(e) => {
            // The runtime or the host's netlink socket failed: no kernel object was made,
            // but the address was taken.
            if !made.is_empty() {
                if let Some(hook) = &policy {
                    crate::policy::detach(hook, env);
                }
                release_lease(release);
            }
            Err(e)
        }
    }
}

/// What ADD has made so far, in order; undone in reverse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    /// The pod's addresses, taken from the IPAM.
    Lease,
    /// The veth pair, by its host end's name (its peer goes with it). Only one this ADD
    /// created: one that was already there belongs to someone else.
    Veth(String),
}

/// Everything the kernel work needs, fixed before it starts.
pub struct Plan<'a> {
    pub bridge: &'a str,
    pub mtu: u32,
    pub hairpin: bool,
    pub big_tcp: Option<ferry_netlink::BigTcp>,
    pub host_veth: &'a str,
    pub ifname: &'a str,
    pub container_id: &'a str,
    pub alias: String,
    pub netns: &'a File,
    pub netns_path: &'a Path,
    pub steer: Option<&'a steering::Plan>,
}

/// The kernel work, then the policy cover (`cover` gets every leased address), then the
/// CNI result, built here once from the typed lease and what the kernel made. On error,
/// `made` says what to undo (see `unwind`).
pub async fn add<K: Kernel>(
    k: &mut K,
    plan: &Plan<'_>,
    lease: Result<Lease, Error>,
    cover: impl FnOnce(Vec<IpAddr>) -> Result<(), Error>,
    made: &mut Vec<Made>,
) -> Result<CniResult, Error> {
    let lease = lease?;
    let addrs = pod_addresses(&lease)?;
    let wired = wire(k, plan, &lease, &addrs, made).await?;
    cover(lease.addresses().collect())?;
    Ok(result(plan, &lease, &wired))
}

/// Undoes `made`, last first. Failures are only reported: the original error is what the
/// runtime sees.
pub async fn unwind<K: Kernel>(
    k: &mut K,
    made: &mut Vec<Made>,
    release: impl FnOnce() -> Result<(), Error>,
) {
    let mut release = Some(release);
    while let Some(m) = made.pop() {
        match m {
            Made::Veth(host_veth) => {
                if let Err(e) = k.del_link(&host_veth).await.map_err(err) {
                    eprintln!(
                        "ferry: ADD failed and its veth {host_veth} could not be removed: {e}"
                    );
                }
            }
            Made::Lease => {
                if let Some(release) = release.take() {
                    release_lease(release);
                }
            }
        }
    }
}

fn release_lease(release: impl FnOnce() -> Result<(), Error>) {
    if let Err(e) = release() {
        eprintln!("ferry: ADD failed and its address could not be released: {e}");
    }
}

/// One address of the pod: the address, its subnet's prefix length and gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddr {
    pub ip: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
}

/// The pod's addresses in a lease: the first of each family, IPv4 first. A gateway the
/// IPAM did not name (or named of the other family) is the subnet's by the IPAM's rule.
pub fn pod_addresses(lease: &Lease) -> Result<Vec<PodAddr>, Error> {
    let mut out: Vec<PodAddr> = Vec::new();
    for leased in &lease.ips {
        let net = leased.net;
        if out.iter().any(|a| a.ip.is_ipv4() == net.is_ipv4()) {
            continue;
        }
        let gateway = match leased.gateway {
            Some(g) if g.is_ipv4() == net.is_ipv4() => g,
            _ => ferry_node_ipam::config::gateway(net),
        };
        out.push(PodAddr {
            ip: net.ip(),
            prefix: net.prefix(),
            gateway,
        });
    }
    out.sort_by_key(|a| a.ip.is_ipv6());
    if out.is_empty() {
        let ips = lease.to_result().ips;
        return Err(Error::new(Code::InvalidConfig, "IPAM returned no address")
            .with_details(format!("{ips:?}")));
    }
    Ok(out)
}

/// The MACs ADD gave the bridge and the two ends of the veth pair.
#[derive(Debug)]
pub struct Wired {
    bridge_mac: Vec<u8>,
    host_mac: [u8; 6],
    pod_mac: [u8; 6],
}

async fn wire<K: Kernel>(
    k: &mut K,
    plan: &Plan<'_>,
    lease: &Lease,
    addrs: &[PodAddr],
    made: &mut Vec<Made>,
) -> Result<Wired, Error> {
    // IPv4 first: a new bridge takes its MAC from the IPv4 gateway whenever there is one.
    let primary = addrs[0];
    let host_veth = plan.host_veth;
    let ifname = plan.ifname;

    // The node bridge: created once per node, then only looked at.
    let bridge = k
        .ensure_bridge(plan.bridge, ferry_netlink::bridge_mac_of(primary.gateway))
        .await
        .map_err(|e| match e {
            ferry_netlink::Error::NotABridge { .. } => {
                Error::new(Code::InvalidConfig, e.to_string())
            }
            e => err(e),
        })?;
    let on_bridge = k.addrs(bridge.index).await.map_err(err)?;
    for a in addrs {
        if !on_bridge.contains(&(a.gateway, a.prefix)) {
            k.add_addr(Side::Host, bridge.index, plan.bridge, a.gateway, a.prefix)
                .await
                .map_err(err)?;
        }
    }
    // Pods reach beyond the bridge only through the host's forwarding.
    for a in addrs {
        let key = match a.ip {
            IpAddr::V4(_) => "net/ipv4/ip_forward",
            IpAddr::V6(_) => "net/ipv6/conf/all/forwarding",
        };
        k.enable_forwarding(key).map_err(err)?;
    }

    let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip).collect();
    // The daemon finds the pod's port on the bridge and its link-local address by the
    // same rule (`mac_source`), so the MACs must follow it, not this list's order.
    let mac_ip = ferry_netlink::mac_source(&ips).unwrap_or(primary.ip);
    let pod_mac = ferry_netlink::addr_mac(ferry_netlink::POD_MAC_TAG, mac_ip);
    let host_mac = ferry_netlink::addr_mac(ferry_netlink::HOST_MAC_TAG, mac_ip);
    // The pod's one link-local address (for a pod with IPv6): the plugin adds it below
    // with the kernel's own address generation off, so the guard's and the policies'
    // idea of it is the kernel's.
    let link_local = ferry_netlink::pod_link_local(&ips);
    let spec = VethSpec {
        host_name: host_veth,
        host_mac,
        peer_name: ifname,
        peer_mac: pod_mac,
        peer_netns: plan.netns,
        mtu: plan.mtu,
        controller: bridge.index,
        big_tcp: plan.big_tcp,
    };
    let mut created = k.create_veth(&spec).await;
    if matches!(&created, Err(e) if e.is_exists()) && rename_tombstone(k, host_veth).await {
        created = k.create_veth(&spec).await;
    }
    match created {
        Ok(()) => made.push(Made::Veth(host_veth.to_string())),
        Err(e) if e.is_exists() => return Err(exists_error(k, plan).await),
        Err(e) => return Err(err(e)),
    }
    k.configure_port(host_veth, plan.hairpin, &plan.alias)
        .await
        .map_err(err)?;
    if let Some(big) = spec.big_tcp {
        raise_bridge(k, &bridge, big).await;
    }
    // The pod may send only from its own MAC and addresses; the host end comes up only
    // once that holds, so not one frame passes unguarded.
    let host_link = created_link(k, Side::Host, host_veth, String::new()).await?;
    let mut guard = SourceGuard {
        mac: pod_mac,
        ipv4: Vec::new(),
        ipv6: Vec::new(),
    };
    for a in addrs {
        match a.ip {
            IpAddr::V4(ip) => guard.ipv4.push(ip),
            IpAddr::V6(ip) => guard.ipv6.push(ip),
        }
    }
    guard.ipv6.extend(link_local);
    k.guard_source(host_link.index, host_veth, &guard)
        .await
        .map_err(err)?;
    let steered = steering::apply(
        k,
        plan.steer,
        ferry_netlink::rps::LinkId {
            name: host_veth,
            index: host_link.index,
            mac: host_mac,
        },
    )?;
    k.set_up(Side::Host, host_link.index, host_veth)
        .await
        .map_err(err)?;

    k.enter_pod(plan.netns, plan.netns_path)
        .await
        .map_err(err)?;
    let link = created_link(
        k,
        Side::Pod,
        ifname,
        format!(" in {}", plan.netns_path.display()),
    )
    .await?;
    // Before any address and before the link is up: the kernel must never make a
    // link-local (or any other IPv6) address of its own, which no policy rule would know
    // (a pod reached at it would bypass its isolation) and the guard would not let answer.
    k.set_addr_gen_none(link.index, ifname, link_local.is_some())
        .await
        .map_err(err)?;
    if let Some(ll) = link_local {
        k.add_addr(Side::Pod, link.index, ifname, IpAddr::V6(ll), 64)
            .await
            .map_err(err)?;
    }
    for a in addrs {
        k.add_addr(Side::Pod, link.index, ifname, a.ip, a.prefix)
            .await
            .map_err(err)?;
    }
    k.set_up(Side::Pod, link.index, ifname).await.map_err(err)?;
    // The loopback device is index 1 in every network namespace.
    k.set_up(Side::Pod, 1, "lo").await.map_err(err)?;
    for r in &lease.routes {
        // A route of a family the pod has no address of cannot work: skipped.
        let Some(own) = addrs.iter().find(|a| a.ip.is_ipv4() == r.dst.is_ipv4()) else {
            continue;
        };
        let gw = match r.gw {
            Some(g) if g.is_ipv4() == r.dst.is_ipv4() => g,
            Some(_) => continue,
            None => own.gateway,
        };
        k.add_route(r.dst, gw, link.index).await.map_err(err)?;
    }

    if let Some(s) = &steered {
        s.hash_by_flow(k, link.index, ifname).await?;
    }
    Ok(Wired {
        bridge_mac: bridge.mac,
        host_mac,
        pod_mac,
    })
}

/// The link ADD has just created, as the kernel shows it; `place` (" in <netns>") says
/// where it was looked for.
async fn created_link<K: Kernel>(
    k: &mut K,
    side: Side,
    name: &str,
    place: String,
) -> Result<ferry_netlink::Link, Error> {
    k.get_link(side, name).await.map_err(err)?.ok_or_else(|| {
        Error::new(
            Code::Kernel,
            format!("{name} is missing{place} right after creation"),
        )
    })
}

/// The ADD result: the lease's addresses on the pod's interface (index 2), after the
/// bridge and the host end.
fn result(plan: &Plan<'_>, lease: &Lease, wired: &Wired) -> CniResult {
    let mut result = lease.to_result();
    result.interfaces = vec![
        Interface {
            name: plan.bridge.to_string(),
            mac: ferry_netlink::format_mac(&wired.bridge_mac),
            ..Default::default()
        },
        Interface {
            name: plan.host_veth.to_string(),
            mac: ferry_netlink::format_mac(&wired.host_mac),
            ..Default::default()
        },
        Interface {
            name: plan.ifname.to_string(),
            mac: ferry_netlink::format_mac(&wired.pod_mac),
            mtu: Some(plan.mtu),
            sandbox: plan.netns_path.display().to_string(),
        },
    ];
    for ipc in &mut result.ips {
        ipc.interface = Some(2);
    }
    result
}

/// When the host end's name is held by this attachment's retired veth, not yet reaped
/// (a DEL and an ADD of the same container and interface in quick succession), renames
/// it to a tombstone so the name is free. True when it did.
async fn rename_tombstone<K: Kernel>(k: &mut K, host_veth: &str) -> bool {
    let Ok(Some(link)) = k.get_link(Side::Host, host_veth).await else {
        return false;
    };
    if link.group != reap::TOMBSTONE_GROUP {
        return false;
    }
    let tomb = reap::tombstone(host_veth);
    matches!(
        k.retire(link.index, host_veth, &tomb, reap::TOMBSTONE_GROUP)
            .await,
        Ok(true)
    )
}

/// A bridge without ports takes only 64 KiB: once this pod's port has joined, the bridge
/// gets the node's BIG TCP sizes, so that packets routed to pods cross it whole. Once per
/// node; a failure costs speed, not the pod, so it is only reported.
async fn raise_bridge<K: Kernel>(
    k: &mut K,
    bridge: &ferry_netlink::Link,
    big: ferry_netlink::BigTcp,
) {
    if bridge.sizes.has(big) {
        return;
    }
    let raised = match k.get_link(Side::Host, &bridge.name).await {
        Ok(Some(now)) => k.ensure_big_tcp(&now, big).await.map(|_| ()),
        Ok(None) => return,
        Err(e) => Err(e),
    };
    if let Err(e) = raised {
        eprintln!("ferry: bridge {} keeps its GSO/GRO sizes: {e}", bridge.name);
    }
}

/// Says which end already existed.
async fn exists_error<K: Kernel>(k: &mut K, plan: &Plan<'_>) -> Error {
    match k.get_link(Side::Host, plan.host_veth).await {
        Ok(Some(_)) => Error::new(
            Code::Kernel,
            format!(
                "host interface {} of container {} interface {} already exists: a previous attachment was not deleted (run DEL for it, or see `ferry-ipam check`)",
                plan.host_veth, plan.container_id, plan.ifname
            ),
        ),
        _ => Error::new(
            Code::Kernel,
            format!(
                "interface {} already exists in network namespace {}",
                plan.ifname,
                plan.netns_path.display()
            ),
        ),
    }
}

#[cfg(test)]
#[path = "add_tests.rs"]
mod tests;
