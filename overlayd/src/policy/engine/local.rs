//! This node's pods as the policy sees them: their addresses (link-local ones included)
//! and their ports on the node bridge, and what of the announced ones stays closed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferry_netpol::{Cluster, Ifname, LocalPods, PodKey};

use super::Engine;

/// The ports of the node bridge (the pods' host-side veths) by the MAC of each: ferry
/// gives a pod's host end `0a:59:<the address its MACs follow>`.
pub(super) type Ports = BTreeMap<[u8; 6], Ifname>;

/// Addresses and bridge ports of pods to keep closed.
#[derive(Debug, Default)]
pub(super) struct Closed {
    pub(super) ips: Vec<IpAddr>,
    pub(super) devs: Vec<Ifname>,
}

impl Engine {
    /// The link-local address a pod holding `ips` has, and its port on the bridge.
    pub(super) fn pod_extras(&self, ips: &[IpAddr]) -> (Option<IpAddr>, Option<Ifname>) {
        let ll = ferry_netlink::pod_link_local(ips).map(IpAddr::V6);
        let dev = ferry_netlink::mac_source(ips)
            .map(|ip| ferry_netlink::addr_mac(ferry_netlink::HOST_MAC_TAG, ip))
            .and_then(|mac| self.ports.get(&mac).copied());
        (ll, dev)
    }

    /// Adds what closes a pod holding `ips` (its link-local address included) to `closed`.
    pub(super) fn close_pod(&self, ips: &[IpAddr], closed: &mut Closed) {
        let (ll, dev) = self.pod_extras(ips);
        closed.ips.extend(ips.iter().copied().chain(ll));
        closed.devs.extend(dev);
    }

    /// This node's pods with their addresses (link-local ones included) and bridge ports,
    /// and what of announced pods must stay closed: unnamed, or not shown by the API while
    /// their namespace has policies.
    pub(super) fn local_pods(&mut self, cluster: &Cluster) -> (LocalPods, Closed) {
        let mut local = LocalPods::on_node(cluster, &self.node);
        let mut closed = Closed::default();
        self.attached.retain(|_, a| {
            let known = a
                .key
                .as_ref()
                .is_some_and(|k| cluster.pod(&k.namespace, &k.name).is_some());
            // Shown once and gone from a complete list: the pod was deleted.
            if a.seen && !known {
                return false;
            }
            a.seen |= known;
            true
        });
        for a in self.attached.values() {
            match &a.key {
                Some(k) if a.seen => {
                    local.pods.insert(k.clone(), a.ips.clone());
                }
                Some(k) if !cluster.policies.iter().any(|p| p.namespace == k.namespace) => {}
                _ => self.close_pod(&a.ips, &mut closed),
            }
        }
        let mut ports = BTreeMap::new();
        for (k, ips) in local.pods.iter_mut() {
            // A host-network pod holds the node's addresses: no veth, no link-local
            // address of ferry's, and no policy selects it.
            if cluster
                .pod(&k.namespace, &k.name)
                .is_some_and(|p| p.host_network)
            {
                continue;
            }
            let (ll, dev) = self.pod_extras(ips);
            if let Some(ll) = ll.filter(|ll| !ips.contains(ll)) {
                ips.push(ll);
            }
            if let Some(dev) = dev {
                ports.insert(k.clone(), dev);
            }
        }
        local.ports = ports;
        (local, closed)
    }

    pub(super) fn node_ips(&self, local: &LocalPods) -> BTreeMap<IpAddr, PodKey> {
        local
            .pods
            .iter()
            .flat_map(|(k, ips)| ips.iter().map(move |ip| (*ip, k.clone())))
            .collect()
    }
}

/// The live ports of `bridge`, by MAC; none when there is no bridge yet (no pod either).
/// A retired veth (a deleted pod's, down and waiting for the reaper, maybe renamed) can
/// still be a port with the MAC a new pod of the same address has: it is left out, so the
/// MAC names the new pod's port.
pub(super) async fn bridge_ports(
    nl: &ferry_netlink::Netlink,
    bridge: &str,
) -> anyhow::Result<Ports> {
    use ferry_node_ipam::attachment::{TOMBSTONE_GROUP, TOMBSTONE_PREFIX};
    let links = nl.list_links().await?;
    let Some(br) = links.iter().find(|l| l.name == bridge) else {
        return Ok(Ports::new());
    };
    Ok(links
        .iter()
        .filter(|l| l.controller == Some(br.index))
        .filter(|l| l.group != TOMBSTONE_GROUP && !l.name.starts_with(TOMBSTONE_PREFIX))
        .filter_map(|l| {
            Some((
                <[u8; 6]>::try_from(l.mac.as_slice()).ok()?,
                Ifname::new(&l.name)?,
            ))
        })
        .collect())
}
