//! ADD: an address, the node bridge, a veth pair into the pod, the pod's address and
//! routes. Whatever fails after the address is taken is undone before the error returns.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use cni::{CniResult, Code, Env, Error, Interface, NetConf};
use ipnetwork::Ipv4Network;
use netlink::{Netlink, SourceGuard, VethSpec};

use crate::addressing::Addressing;
use crate::config::PluginConf;
use crate::kernel::{self, err};
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
            &mut made_veth,
        ))
    });
    match wired {
        Ok(result) => Ok(result.to_json(&conf.cni_version)),
        Err(e) => {
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

/// The first IPv4 address of an IPAM result, its subnet and gateway.
fn pod_address(r: &CniResult) -> Result<(Ipv4Addr, Ipv4Network, Ipv4Addr), Error> {
    for ip in &r.ips {
        let Ok(net) = ip.address.parse::<Ipv4Network>() else {
            continue;
        };
        let subnet = Ipv4Network::new(net.network(), net.prefix()).map_err(|e| {
            Error::new(Code::InvalidConfig, format!("IPAM returned {}", ip.address))
                .with_details(e.to_string())
        })?;
        let gateway = match ip.gateway {
            Some(IpAddr::V4(g)) => g,
            _ => Ipv4Addr::from(u32::from(subnet.network()) + 1),
        };
        return Ok((net.ip(), subnet, gateway));
    }
    Err(
        Error::new(Code::InvalidConfig, "IPAM returned no IPv4 address")
            .with_details(format!("{:?}", r.ips)),
    )
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
    made_veth: &mut bool,
) -> Result<CniResult, Error> {
    let (ip, subnet, gateway) = pod_address(ipam_result)?;
    let mtu = pc.effective_mtu();
    let host = Netlink::open().map_err(err)?;

    // The node bridge: created once per node, then only looked at.
    let bridge = host
        .ensure_bridge(
            &pc.bridge,
            netlink::bridge_mac(gateway),
            gateway,
            subnet.prefix(),
        )
        .await
        .map_err(|e| match e {
            netlink::Error::NotABridge { .. } => Error::new(Code::InvalidConfig, e.to_string()),
            e => err(e),
        })?;
    // Pods reach beyond the bridge only through the host's forwarding.
    netlink::sysctl::ensure("net/ipv4/ip_forward", "1").map_err(err)?;

    let pod_mac = netlink::ip_mac(netlink::POD_MAC_TAG, ip);
    let host_mac = netlink::ip_mac(netlink::HOST_MAC_TAG, ip);
    let alias = attachment::alias(&conf.name, &env.container_id, &env.ifname);
    let created = host
        .create_veth(&VethSpec {
            host_name: host_veth,
            host_mac,
            peer_name: &env.ifname,
            peer_mac: pod_mac,
            peer_netns: ns,
            mtu,
            controller: bridge.index,
        })
        .await;
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
    let guard = SourceGuard {
        mac: pod_mac,
        ipv4: vec![ip],
    };
    host.guard_source(host_link.index, host_veth, &guard)
        .await
        .map_err(err)?;
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
    pod.add_addr(link.index, &env.ifname, IpAddr::V4(ip), subnet.prefix())
        .await
        .map_err(err)?;
    pod.set_up(link.index, &env.ifname).await.map_err(err)?;
    // The loopback device is index 1 in every network namespace.
    pod.set_up(1, "lo").await.map_err(err)?;
    for r in &ipam_result.routes {
        let Ok(dst) = r.dst.parse::<Ipv4Network>() else {
            continue; // IPv6 routes: ferry configures IPv4 only
        };
        let gw = match r.gw {
            Some(IpAddr::V4(g)) => Some(g),
            Some(IpAddr::V6(_)) => continue,
            None => Some(gateway),
        };
        pod.add_route_v4(dst.network(), dst.prefix(), gw, link.index)
            .await
            .map_err(err)?;
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
