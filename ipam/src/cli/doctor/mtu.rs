//! MTU consistency, as arithmetic on what was read: a VXLAN packet is the pod's packet
//! plus the overhead (50 bytes over IPv4, 70 over IPv6), so the VXLAN device, node.json's
//! `mtu` (what pods get) and every pod's veth must be at most the underlay's MTU less it.

use super::{Check, Finding, Severity};

/// A device's name and MTU.
pub type Dev = (String, u32);

#[derive(Debug, Default)]
pub struct Facts {
    /// The underlay device's MTU now.
    pub underlay: Option<Dev>,
    /// The underlay's MTU when the daemon started (what it made the pods' MTU from).
    pub underlay_at_start: Option<u32>,
    pub overhead: u32,
    /// The VXLAN device: its name, the MTU the daemon keeps, and the one it has now
    /// (None: the device is not there).
    pub vxlan: Option<(String, u32, Option<u32>)>,
    /// node.json's `mtu`.
    pub node_mtu: Option<u32>,
    /// The bridge's ports (the pods' host veths), each with its MTU.
    pub ports: Vec<Dev>,
}

const WHY_UNDERLAY: &str = "a packet between pods of two nodes is the pod's packet plus the VXLAN overhead; when that is more than the underlay's MTU, full-size packets are dropped (or fragmented) on the way: small requests work, large transfers hang";
const WHY_VXLAN: &str = "the VXLAN device must carry what pods send at their MTU; smaller, it drops their full-size packets; larger, it sends more than the underlay carries";
const WHY_NODE: &str = "node.json's mtu is what new pods get: it must be the VXLAN device's, which is the underlay's less the overhead";
const WHY_PORTS: &str = "a pod whose interface has a larger MTU than the node's path sends packets the path drops; pods keep the MTU they were made with";

pub fn findings(f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    let restart = "restart ferry-overlayd on this node (it reads the underlay's MTU when it starts), then the pods made before (they keep their MTU)";
    if let (Some((dev, now)), Some((vx, want, _))) = (&f.underlay, &f.vxlan) {
        let room = now.saturating_sub(f.overhead);
        if room < *want {
            out.push(Finding::new(
                Severity::Error,
                Check::Mtu,
                format!(
                    "underlay {dev} has MTU {now}: {now} - {} (VXLAN overhead) = {room}, less than {vx}'s {want}{}",
                    f.overhead,
                    f.underlay_at_start
                        .filter(|s| s != now)
                        .map_or(String::new(), |s| format!(" (it was {s} when ferry-overlayd started)"))
                ),
                WHY_UNDERLAY,
                format!("give {dev} back its MTU, or, if the smaller one is right, {restart}"),
            ));
        }
    }
    if let Some((vx, want, Some(now))) = &f.vxlan {
        if now != want {
            out.push(Finding::new(
                Severity::Error,
                Check::Mtu,
                format!("{vx} has MTU {now}, ferry-overlayd keeps it at {want} (changed by hand?)"),
                WHY_VXLAN,
                format!("a running ferry-overlayd sets it back at its next check; by hand: ip link set {vx} mtu {want}"),
            ));
        }
    }
    if let (Some(node), Some((vx, want, _))) = (f.node_mtu, &f.vxlan) {
        if node != *want {
            out.push(Finding::new(
                Severity::Error,
                Check::Mtu,
                format!("node.json says mtu {node}, {vx} is kept at {want}"),
                WHY_NODE,
                format!("node.json is stale: {restart}"),
            ));
        }
    }
    if let Some(node) = f.node_mtu {
        let big: Vec<String> = f
            .ports
            .iter()
            .filter(|(_, m)| *m > node)
            .map(|(n, m)| format!("{n} {m}"))
            .collect();
        if !big.is_empty() {
            out.push(Finding::new(
                Severity::Warning,
                Check::Mtu,
                format!(
                    "{} pod veth{} with an MTU above node.json's {node}: {}",
                    big.len(),
                    if big.len() == 1 { "" } else { "s" },
                    big.join(", ")
                ),
                WHY_PORTS,
                "delete those pods (their controllers make them anew with the node's MTU); a network config's own \"mtu\" must not exceed node.json's".into(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Facts {
        Facts {
            underlay: Some(("eth0".into(), 1500)),
            underlay_at_start: Some(1500),
            overhead: 50,
            vxlan: Some(("ferry.1".into(), 1450, Some(1450))),
            node_mtu: Some(1450),
            ports: vec![("fy1".into(), 1450)],
        }
    }

    #[test]
    fn a_consistent_node_has_none() {
        assert!(findings(&healthy()).is_empty());
        // A bigger underlay leaves room: no fault.
        let grown = Facts {
            underlay: Some(("eth0".into(), 9000)),
            ..healthy()
        };
        assert!(findings(&grown).is_empty());
    }

    #[test]
    fn a_shrunk_underlay_is_named_with_the_arithmetic() {
        let f = Facts {
            underlay: Some(("eth0".into(), 1400)),
            ..healthy()
        };
        let out = findings(&f);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0]
            .saw
            .starts_with("underlay eth0 has MTU 1400: 1400 - 50 (VXLAN overhead) = 1350, less than ferry.1's 1450 (it was 1500"));
        // Exactly the overhead: fits.
        let edge = Facts {
            underlay: Some(("eth0".into(), 1500)),
            vxlan: Some(("ferry.1".into(), 1450, Some(1450))),
            ..healthy()
        };
        assert!(findings(&edge).is_empty());
        // IPv6 underlay: 70.
        let v6 = Facts {
            overhead: 70,
            ..healthy()
        };
        assert!(findings(&v6)[0].saw.contains("1500 - 70"));
    }

    #[test]
    fn hand_changes_stale_state_and_big_pods_are_each_named() {
        let f = Facts {
            vxlan: Some(("ferry.1".into(), 1450, Some(1300))),
            node_mtu: Some(1400),
            ports: vec![("fy1".into(), 1450), ("fy2".into(), 1400)],
            ..healthy()
        };
        let saw: Vec<String> = findings(&f).into_iter().map(|f| f.saw).collect();
        assert_eq!(saw.len(), 3, "{saw:?}");
        assert!(saw[0].contains("ferry.1 has MTU 1300, ferry-overlayd keeps it at 1450"));
        assert!(saw[1].contains("node.json says mtu 1400"));
        assert!(saw[2].contains("1 pod veth with an MTU above node.json's 1400: fy1 1450"));
        // A missing device is the data path's finding, not an MTU one.
        let gone = Facts {
            vxlan: Some(("ferry.1".into(), 1450, None)),
            ..healthy()
        };
        assert!(findings(&gone).is_empty());
    }
}
