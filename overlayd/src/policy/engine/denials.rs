//! The per-pod denial counters, read from the kernel's counter sets into the metrics.

use std::net::IpAddr;

use ferry_netpol::desired::denied_set;
use ferry_netpol::model::Direction;
use ferry_netpol::ranges::Family;
use ferry_netpol::{Cluster, LocalPods, TABLE};

use super::Engine;

impl Engine {
    /// Reads the per-pod denial counters into the metrics.
    pub(super) fn count_denials(&self, cluster: &Cluster, local: &LocalPods) {
        let by_ip = self.node_ips(local);
        let mut lines = Vec::new();
        for (dir, name) in [
            (Direction::Ingress, "ingress"),
            (Direction::Egress, "egress"),
        ] {
            for fam in [Family::V4, Family::V6] {
                // The counter sets alone: small, unlike the whole table.
                let set = denied_set(dir, fam);
                let Ok(listing) =
                    crate::nft::nft(&["-j", "list", "set", "inet", TABLE, &set], None)
                else {
                    continue;
                };
                for (ip, packets) in denied_counts(&listing, &set) {
                    let who = by_ip
                        .get(&ip)
                        .map(|k| (k.namespace.clone(), k.name.clone()))
                        .or_else(|| {
                            cluster
                                .pods
                                .iter()
                                .find(|p| p.ips.contains(&ip))
                                .map(|p| (p.namespace.clone(), p.name.clone()))
                        })
                        .unwrap_or_default();
                    lines.push((who.0, who.1, ip, name, packets));
                }
            }
        }
        if let Ok(mut d) = self.metrics.policy.denied.lock() {
            *d = lines
                .into_iter()
                .map(|(ns, pod, ip, dir, n)| crate::metrics::Denied {
                    namespace: ns,
                    pod,
                    ip,
                    direction: dir,
                    packets: n,
                })
                .collect();
        }
    }
}

/// `(address, packets)` of each element of the counter set `set` in an `nft -j` listing.
pub(super) fn denied_counts(listing: &str, set: &str) -> Vec<(IpAddr, u64)> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(listing) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        let s = &item["set"];
        if s["name"].as_str() != Some(set) {
            continue;
        }
        for e in s["elem"].as_array().into_iter().flatten() {
            let el = &e["elem"];
            let ip = el["val"].as_str().and_then(|t| t.parse::<IpAddr>().ok());
            let packets = el["counter"]["packets"].as_u64().unwrap_or(0);
            if let Some(ip) = ip {
                out.push((ip, packets));
            }
        }
    }
    out
}
