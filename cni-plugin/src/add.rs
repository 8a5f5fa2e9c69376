//! ADD: an address, the node bridge, a veth pair into the pod, the pod's address and
//! routes. Whatever fails after the address is taken is undone before the error returns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use cni::{CniResult, Code, Env, Error, Interface, NetConf};
use ipnetwork::IpNetwork;
use netlink::{Netlink, SourceGuard, VethSpec};

use crate::addressing::Addressing;
use crate::config::PluginConf;
use crate::kernel::{self, err};
use crate::reap;
use node_ipam::attachment;

pub fn run(conf: &NetConf, env: &Env) -> Result<String, Error> {
    let pc = PluginConf::parse(conf)?;
    let netns_path = env.netns.as_deref().ok_or_else(|| {
        Error::new(
            Code::InvalidEnv,
            "required env variables [CNI_NETNS] missing",
        )
    })?;
    let ns = crate::sandbox::open(netns_path)?;
    let steer = crate::steering::plan(&pc.steering)?;
    let addressing = Addressing::new(&pc.ipam, conf, env);
    let ipam_result = addressing.add()?;

    let host_veth = attachment::host_veth(&env.container_id, &env.ifname);
    let mut made_veth = false;
    let wired = kernel::runtime().and_then(|rt| {
        rt.block_on(wire(
            &pc,
            conf,
            env,
            &ns,
            netns_path,
            &host_veth,
            &ipam_result,
            steer.as_ref(),
            &mut made_veth,
        ))
    });
    let policy = pc.policy_hook();
    let covered = wired.and_then(|result| {
        if let Some(hook) = &policy {
            let ips = result
                .ips
                .iter()
                .filter_map(|c| c.address.split('/').next()?.parse::<IpAddr>().ok())
                .collect();
            crate::policy::attach(hook, env, ips)?;
        }
        Ok(result)
    });
    match covered {
        Ok(result) => Ok(result.to_json(&conf.cni_version)),
        Err(e) => {
            if let Some(hook) = &policy {
                crate::policy::detach(hook, env);
            }
            undo(&addressing, made_veth.then_some(host_veth.as_str()));
            Err(e)
        }
    }
}

/// Gives back the address and removes the veth if this ADD made it (one that was already
/// there belongs to someone else); the original error is what the runtime sees.
fn undo(addressing: &Addressing<'_>, made_veth: Option<&str>) {
    if let Some(host_veth) = made_veth {
        let removed = kernel::runtime().and_then(|rt| {
            rt.block_on(async {
                let host = Netlink::open()?;
                host.del_link(host_veth).await
            })
            .map_err(err)
        });
        if let Err(e) = removed {
            eprintln!("ferry: ADD failed and its veth {host_veth} could not be removed: {e}");
        }
    }
    if let Err(e) = addressing.del() {
        eprintln!("ferry: ADD failed and its address could not be released: {e}");
    }
}

/// One address of the pod: the address, its subnet's prefix length and gateway.
#[derive(Debug, Clone, Copy)]
struct PodAddr {
    ip: IpAddr,
    prefix: u8,
    gateway: IpAddr,
}

/// The pod's addresses in an IPAM result: the first of each family, IPv4 first.
fn pod_addresses(r: &CniResult) -> Result<Vec<PodAddr>, Error> {
    let mut out: Vec<PodAddr> = Vec::new();
    for ip in &r.ips {
        let net = ip.address.parse::<IpNetwork>().map_err(|e| {
            Error::new(Code::InvalidConfig, format!("IPAM returned {}", ip.address))
                .with_details(e.to_string())
        })?;
        if out.iter().any(|a| a.ip.is_ipv4() == net.is_ipv4()) {
            continue;
        }
        let gateway = match (ip.gateway, net) {
            (Some(g), _) if g.is_ipv4() == net.is_ipv4() => g,
            (_, IpNetwork::V4(n)) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + 1)),
            (_, IpNetwork::V6(n)) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + 1)),
        };
        out.push(PodAddr {
            ip: net.ip(),
            prefix: net.prefix(),
            gateway,
        });
    }
    out.sort_by_key(|a| a.ip.is_ipv6());
    if out.is_empty() {
        return Err(Error::new(Code::InvalidConfig, "IPAM returned no address")
            .with_details(format!("{:?}", r.ips)));
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn wire(
    pc: &PluginConf,
    conf: &NetConf,
    env: &Env,
    ns: &std::fs::File,
    netns_path: &Path,
    host_veth: &str,
    ipam_result: &CniResult,
    steer: Option<&crate::steering::Plan>,
    made_veth: &mut bool,
) -> Result<CniResult, Error> {
    let addrs = pod_addresses(ipam_result)?;
    // IPv4 first: a new bridge takes its MAC from the IPv4 gateway whenever there is one.
    let primary = addrs[0];
    let mtu = pc.effective_mtu();
    let host = Netlink::open().map_err(err)?;

    // The node bridge: created once per node, then only looked at.
    let bridge = host
        .ensure_bridge_link(&pc.bridge, netlink::bridge_mac_of(primary.gateway))
        .await
        .map_err(|e| match e {
            netlink::Error::NotABridge { .. } => Error::new(Code::InvalidConfig, e.to_string()),
            e => err(e),
        })?;
    let on_bridge = host.addrs(bridge.index).await.map_err(err)?;
    for a in &addrs {
        if on_bridge.contains(&(a.gateway, a.prefix)) {
            continue;
        }
        match a.gateway {
            IpAddr::V4(_) => {
                host.add_addr(bridge.index, &pc.bridge, a.gateway, a.prefix)
                    .await
            }
            IpAddr::V6(g) => {
                host.add_addr_nodad(bridge.index, &pc.bridge, g, a.prefix)
                    .await
            }
        }
        .map_err(err)?;
    }
    // Pods reach beyond the bridge only through the host's forwarding.
    for a in &addrs {
        let key = match a.ip {
            IpAddr::V4(_) => "net/ipv4/ip_forward",
            IpAddr::V6(_) => "net/ipv6/conf/all/forwarding",
        };
        netlink::sysctl::ensure(key, "1").map_err(err)?;
    }

    let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip).collect();
    // The daemon finds the pod's port on the bridge and its link-local address by the
    // same rule (`mac_source`), so the MACs must follow it, not this list's order.
    let mac_ip = netlink::mac_source(&ips).unwrap_or(primary.ip);
    let pod_mac = netlink::addr_mac(netlink::POD_MAC_TAG, mac_ip);
    let host_mac = netlink::addr_mac(netlink::HOST_MAC_TAG, mac_ip);
    // The pod's one link-local address (for a pod with IPv6): the plugin adds it below
    // with the kernel's own address generation off, so the guard's and the policies'
    // idea of it is the kernel's.
    let link_local = netlink::pod_link_local(&ips);
    let alias = attachment::alias(&conf.name, &env.container_id, &env.ifname);
    let spec = VethSpec {
        host_name: host_veth,
        host_mac,
        peer_name: &env.ifname,
        peer_mac: pod_mac,
        peer_netns: ns,
        mtu,
        controller: bridge.index,
        big_tcp: pc.big_tcp(),
    };
    let mut created = host.create_veth(&spec).await;
    if matches!(&created, Err(e) if e.errno() == Some(libc::EEXIST))
        && rename_tombstone(&host, host_veth).await
    {
        created = host.create_veth(&spec).await;
    }
    if let Err(e) = created {
        if e.errno() == Some(libc::EEXIST) {
            return Err(exists_error(&host, host_veth, env, netns_path).await);
        }
        return Err(err(e));
    }
    *made_veth = true;
    host.configure_port(host_veth, pc.hairpin, &alias)
        .await
        .map_err(err)?;
    if let Some(big) = spec.big_tcp {
        raise_bridge(&host, &bridge, big).await;
    }
    // The pod may send only from its own MAC and addresses; the host end comes up only
    // once that holds, so not one frame passes unguarded.
    let host_link = host
        .get_link(host_veth)
        .await
        .map_err(err)?
        .ok_or_else(|| {
            Error::new(
                Code::Kernel,
                format!("{host_veth} is missing right after creation"),
            )
        })?;
    let mut guard = SourceGuard {
        mac: pod_mac,
        ipv4: Vec::new(),
        ipv6: Vec::new(),
    };
    for a in &addrs {
        match a.ip {
            IpAddr::V4(ip) => guard.ipv4.push(ip),
            IpAddr::V6(ip) => guard.ipv6.push(ip),
        }
    }
    guard.ipv6.extend(link_local);
    host.guard_source(host_link.index, host_veth, &guard)
        .await
        .map_err(err)?;
    let steered = crate::steering::apply(
        steer,
        netlink::rps::LinkId {
            name: host_veth,
            index: host_link.index,
            mac: host_mac,
        },
    )?;
    host.set_up(host_link.index, host_veth).await.map_err(err)?;

    let pod = Netlink::open_in(ns, netns_path).map_err(err)?;
    let link = pod
        .get_link(&env.ifname)
        .await
        .map_err(err)?
        .ok_or_else(|| {
            Error::new(
                Code::Kernel,
                format!(
                    "{} is missing in {} right after creation",
                    env.ifname,
                    netns_path.display()
                ),
            )
        })?;
    // Before any address and before the link is up: the kernel must never make a
    // link-local (or any other IPv6) address of its own, which no policy rule would know
    // (a pod reached at it would bypass its isolation) and the guard would not let answer.
    pod.set_addr_gen_none(link.index, &env.ifname, link_local.is_some())
        .await
        .map_err(err)?;
    if let Some(ll) = link_local {
        pod.add_addr_nodad(link.index, &env.ifname, ll, 64)
            .await
            .map_err(err)?;
    }
    for a in &addrs {
        match a.ip {
            IpAddr::V4(_) => pod.add_addr(link.index, &env.ifname, a.ip, a.prefix).await,
            IpAddr::V6(ip) => {
                pod.add_addr_nodad(link.index, &env.ifname, ip, a.prefix)
                    .await
            }
        }
        .map_err(err)?;
    }
    pod.set_up(link.index, &env.ifname).await.map_err(err)?;
    // The loopback device is index 1 in every network namespace.
    pod.set_up(1, "lo").await.map_err(err)?;
    for r in &ipam_result.routes {
        let dst = r.dst.parse::<IpNetwork>().map_err(|e| {
            Error::new(
                Code::InvalidConfig,
                format!("route dst {:?} is not a CIDR", r.dst),
            )
            .with_details(e.to_string())
        })?;
        // A route of a family the pod has no address of cannot work: skipped.
        let Some(own) = addrs.iter().find(|a| a.ip.is_ipv4() == dst.is_ipv4()) else {
            continue;
        };
        let gw = match r.gw {
            Some(g) if g.is_ipv4() == dst.is_ipv4() => g,
            Some(_) => continue,
            None => own.gateway,
        };
        pod.add_route(dst.network(), dst.prefix(), Some(gw), link.index)
            .await
            .map_err(err)?;
    }

    if let Some(s) = &steered {
        s.hash_by_flow(&pod, link.index, &env.ifname).await?;
    }

    let mut result = ipam_result.clone();
    result.interfaces = vec![
        Interface {
            name: pc.bridge.clone(),
            mac: netlink::format_mac(&bridge.mac),
            ..Default::default()
        },
        Interface {
            name: host_veth.to_string(),
            mac: netlink::format_mac(&host_mac),
            ..Default::default()
        },
        Interface {
            name: env.ifname.clone(),
            mac: netlink::format_mac(&pod_mac),
            mtu: Some(mtu),
            sandbox: netns_path.display().to_string(),
        },
    ];
    for ipc in &mut result.ips {
        ipc.interface = Some(2);
    }
    if let Some(dns) = &pc.dns {
        result.dns = dns.clone();
    }
    Ok(result)
}

/// When the host end's name is held by this attachment's retired veth, not yet reaped
/// (a DEL and an ADD of the same container and interface in quick succession), renames
/// it to a tombstone so the name is free. True when it did.
async fn rename_tombstone(host: &Netlink, host_veth: &str) -> bool {
    let Ok(Some(link)) = host.get_link(host_veth).await else {
        return false;
    };
    if link.group != reap::TOMBSTONE_GROUP {
        return false;
    }
    let tomb = reap::tombstone(host_veth);
    matches!(
        host.detach_index(link.index, host_veth, Some(&tomb), reap::TOMBSTONE_GROUP)
            .await,
        Ok(true)
    )
}

/// A bridge without ports takes only 64 KiB: once this pod's port has joined, the bridge
/// gets the node's BIG TCP sizes, so that packets routed to pods cross it whole. Once per
/// node; a failure costs speed, not the pod, so it is only reported.
async fn raise_bridge(host: &Netlink, bridge: &netlink::Link, big: netlink::BigTcp) {
    if bridge.sizes.has(big) {
        return;
    }
    let raised = match host.get_link(&bridge.name).await {
        Ok(Some(now)) => host.ensure_big_tcp(&now, big).await.map(|_| ()),
        Ok(None) => return,
        Err(e) => Err(e),
    };
    if let Err(e) = raised {
        eprintln!("ferry: bridge {} keeps its GSO/GRO sizes: {e}", bridge.name);
    }
}

/// Says which end already existed.
async fn exists_error(host: &Netlink, host_veth: &str, env: &Env, netns_path: &Path) -> Error {
    match host.get_link(host_veth).await {
        Ok(Some(_)) => Error::new(
            Code::Kernel,
            format!(
                "host interface {host_veth} of container {} interface {} already exists: a previous attachment was not deleted (run DEL for it, or see `ferry-ipam check`)",
                env.container_id, env.ifname
            ),
        ),
        _ => Error::new(
            Code::Kernel,
            format!(
                "interface {} already exists in network namespace {}",
                env.ifname,
                netns_path.display()
            ),
        ),
    }
}
