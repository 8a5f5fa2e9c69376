//! CHECK: the attachment still is what prevResult says.

use std::collections::btree_map::{BTreeMap, Entry};
use std::net::IpAddr;

use ferry_cni::{CniResult, Code, Env, Error, NetConf};
use ferry_netlink::{Family, Netlink};
use ipnetwork::IpNetwork;

use crate::addressing::Addressing;
use crate::config::PluginConf;
use crate::kernel::{self, err};
use ferry_node_ipam::attachment;

fn failed(msg: String) -> Error {
    Error::new(Code::CheckFailed, msg)
}

pub fn run(conf: &NetConf, env: &Env) -> Result<(), Error> {
    conf.require_version("0.4.0", "CHECK")?;
    let pc = PluginConf::parse(conf)?;
    let prev = conf
        .prev_result()?
        .ok_or_else(|| Error::new(Code::InvalidConfig, "required prevResult missing"))?;
    let netns_path = env.require_netns()?;

    let pod_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && !i.sandbox.is_empty())
        .ok_or_else(|| {
            failed(format!(
                "prevResult lists no interface {} in a sandbox",
                env.ifname
            ))
        })?;
    let addrs: Vec<(IpAddr, u8, Option<IpAddr>)> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == pod_index))
        .filter_map(|ip| {
            let net = ip.address.parse::<IpNetwork>().ok()?;
            let gw = ip.gateway.filter(|g| g.is_ipv4() == net.is_ipv4());
            Some((net.ip(), net.prefix(), gw))
        })
        .collect();
    let ips: Vec<IpAddr> = addrs.iter().map(|a| a.0).collect();

    Addressing::new(&pc.ipam, conf, env).check(&ips)?;

    let ns = crate::sandbox::open(netns_path)?;
    kernel::runtime()?.block_on(check_kernel(
        &pc, env, &ns, netns_path, &prev, pod_index, &addrs,
    ))
}

async fn check_kernel(
    pc: &PluginConf,
    env: &Env,
    ns: &std::fs::File,
    netns_path: &std::path::Path,
    prev: &CniResult,
    pod_index: usize,
    addrs: &[(IpAddr, u8, Option<IpAddr>)],
) -> Result<(), Error> {
    let host = Netlink::open().map_err(err)?;
    let bridge = host
        .get_link(&pc.bridge)
        .await
        .map_err(err)?
        .filter(|b| b.kind.as_deref() == Some("bridge"))
        .ok_or_else(|| failed(format!("bridge {} is missing", pc.bridge)))?;
    let host_veth = attachment::host_veth(&env.container_id, &env.ifname);
    let hv = host
        .get_link(&host_veth)
        .await
        .map_err(err)?
        .ok_or_else(|| failed(format!("host veth {host_veth} is missing")))?;
    if hv.controller != Some(bridge.index) {
        return Err(failed(format!(
            "host veth {host_veth} is not a port of {}",
            pc.bridge
        )));
    }
    if !host.has_source_guard(hv.index).await.map_err(err)? {
        return Err(failed(format!(
            "host veth {host_veth} has lost its source guard (the pod could send from any address): re-create the pod"
        )));
    }

    let pod = Netlink::open_in(ns, netns_path).map_err(err)?;
    let link = pod
        .get_link(&env.ifname)
        .await
        .map_err(err)?
        .ok_or_else(|| {
            failed(format!(
                "{} is missing in {}",
                env.ifname,
                netns_path.display()
            ))
        })?;
    let want_mac = &prev.interfaces[pod_index].mac;
    if !want_mac.is_empty() && !want_mac.eq_ignore_ascii_case(&ferry_netlink::format_mac(&link.mac))
    {
        return Err(failed(format!(
            "{} has MAC {}, prevResult says {want_mac}",
            env.ifname,
            ferry_netlink::format_mac(&link.mac)
        )));
    }
    let have = pod.addrs(link.index).await.map_err(err)?;
    for (ip, prefix, _) in addrs {
        if !have.contains(&(*ip, *prefix)) {
            return Err(failed(format!(
                "address {ip}/{prefix} is missing on {}",
                env.ifname
            )));
        }
    }
    // The link-local address the guard lets the pod send from and the node's policy
    // rules know it by.
    let ips: Vec<IpAddr> = addrs.iter().map(|a| a.0).collect();
    if let Some(ll) = ferry_netlink::pod_link_local(&ips) {
        if !have.iter().any(|(ip, _)| *ip == IpAddr::V6(ll)) {
            return Err(failed(format!(
                "link-local address {ll} is missing on {}",
                env.ifname
            )));
        }
    }
    let gateway = |v4: bool| {
        addrs
            .iter()
            .filter(|a| a.0.is_ipv4() == v4)
            .find_map(|a| a.2)
    };
    // Listed once per family, when a route of it is to be found.
    let mut listed: BTreeMap<Family, Vec<ferry_netlink::Route>> = BTreeMap::new();
    for r in &prev.routes {
        let Ok(dst) = r.dst.parse::<IpNetwork>() else {
            continue;
        };
        let gw = match r.gw {
            Some(g) if g.is_ipv4() == dst.is_ipv4() => Some(g),
            Some(_) => continue,
            None => gateway(dst.is_ipv4()),
        };
        let family = Family::of(dst.network());
        let routes = match listed.entry(family) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert(pod.routes(family).await.map_err(err)?),
        };
        let found = routes.iter().any(|k| {
            k.dst == dst.network() && k.prefix == dst.prefix() && (gw.is_none() || k.gateway == gw)
        });
        if !found {
            let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(failed(format!(
                "route {}{via} is missing in the pod",
                r.dst
            )));
        }
    }
    Ok(())
}
