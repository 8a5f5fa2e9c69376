//! ferry's own nftables table, `table inet ferry`: what may reach this node's VXLAN port,
//! and what a pod may never reach (the node-only services of `node_only`).
//!
//! Receiving, chain `vxlan-in` (hook prerouting, priority raw: before conntrack, so a
//! stranger's packets cost no conntrack entry, and before any translation). VXLAN to this
//! node is dropped when
//! - it is to another address of this node than its underlay address: the kernel's VXLAN
//!   socket listens on every address, the other nodes send only to that one, and the
//!   sending nodes' cut (below) knows the nodes by that one address;
//! - it comes from an address that is no node's (set `nodes`, the leases' public IPs): the
//!   VNI, the port and the VTEP MACs are no secret;
//! - its inner frame is neither IPv4 nor IPv6: the overlay carries nothing else (its
//!   neighbour entries are static), and a VLAN tag would move the inner header away from
//!   the offsets the next check reads;
//! - its inner source is not in a pod subnet of the node it comes from (sets `inner4`,
//!   `inner6`: node address . first-last address of a subnet). A node's own traffic into
//!   the overlay leaves from its VXLAN device, whose address is in its subnet, so only a
//!   forger sends anything else. nftables 1.0.6 names no header inside VXLAN, but raw
//!   payload from the UDP header works: 8 bytes of UDP, 8 of VXLAN, then the inner
//!   Ethernet header (its type at byte 28), the inner IPv4 source at byte 42 (bit 336),
//!   the inner IPv6 source at byte 38 (bit 304). The subnets are therefore integers. A
//!   frame too short for a load matches no rule (nft reads nothing past the packet's
//!   end), and is too short for the kernel to take as IPv4 or IPv6 after decapsulation.
//!
//! Sending, chains `pods-forward` and `pods-input` (hooks forward and input, after the
//! translations of prerouting and before the masquerade of postrouting): a packet from a
//! pod (a cluster CIDR source: the source guard makes a pod's packets carry its own
//! address) to a node-only service is dropped. Why the masquerade makes this necessary:
//! `node_only`.
//!
//! One table of family `inet`: pods and etcd endpoints may be of either family, whatever
//! the underlay's is, and one table keeps every rule of the node's own ports in one
//! transaction. A drop in any table is final, so a table of our own works (unlike for the
//! accepts of `rules`). The sets follow the leases by `add element`/`delete element`, one
//! small `nft -f -` transaction per change; the rules are fixed for the daemon's life and
//! written only when the table is missing or differs. Every rule counts what it drops; the
//! counters are read on every resync and become metrics.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::Value;

mod listing;
mod members;
mod rule;
mod script;

pub use listing::*;
pub use members::*;
pub use rule::*;
pub use script::*;

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "ferry";
pub const NODES: &str = "nodes";
pub const INNER4: &str = "inner4";
pub const INNER6: &str = "inner6";

/// ferry's tables before `inet ferry`, one per underlay family: an upgraded node's must
/// go, or its `nodes` set, no longer followed, would drop VXLAN from every new node.
pub const LEGACY: [(&str, &str); 2] = [("ip", TABLE), ("ip6", TABLE)];

/// A packet family (the underlay's, a cluster CIDR's): its protocol name in a rule.
pub use ferry_family::Family;

/// The inner frame's type, and where its source address is, counted in bits from the
/// start of the UDP header.
const INNER_TYPE: (u32, u32) = (224, 16);
const ETH_IPV4: u64 = 0x0800;
const ETH_IPV6: u64 = 0x86dd;
const INNER4_SRC: (u32, u32) = (336, 32);
const INNER6_SRC: (u32, u32) = (304, 128);

/// One base chain of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chain {
    name: &'static str,
    hook: &'static str,
    priority: &'static str,
    /// The priority's number, as `nft -j` lists it.
    prio: i64,
}

const VXLAN_IN: Chain = Chain {
    name: "vxlan-in",
    hook: "prerouting",
    priority: "raw",
    prio: -300,
};
const PODS_FORWARD: Chain = Chain {
    name: "pods-forward",
    hook: "forward",
    priority: "filter",
    prio: 0,
};
const PODS_INPUT: Chain = Chain {
    name: "pods-input",
    hook: "input",
    priority: "filter",
    prio: 0,
};
const CHAINS: [Chain; 3] = [VXLAN_IN, PODS_FORWARD, PODS_INPUT];

/// What a rule drops, as metrics and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// VXLAN to an address of this node but its underlay address.
    NotToUnderlay,
    /// VXLAN from a host that is no node.
    NotFromNode,
    /// VXLAN whose inner frame is not IPv4 or IPv6.
    InnerType,
    /// VXLAN whose inner source is not in its node's pod subnets.
    InnerSource,
    /// A pod's packet to a node-only service, on the forward or the input path.
    Pod {
        service: &'static str,
        path: &'static str,
    },
}

impl Check {
    pub const VXLAN_METRIC: &'static str = "ferry_vxlan_dropped_packets_total";
    pub const POD_METRIC: &'static str = "ferry_pod_to_node_dropped_packets_total";

    pub fn metric(self) -> &'static str {
        match self {
            Check::Pod { .. } => Self::POD_METRIC,
            _ => Self::VXLAN_METRIC,
        }
    }

    /// The metric's labels, as the text format writes them.
    pub fn labels(self) -> String {
        let check = match self {
            Check::NotToUnderlay => "not-to-underlay-address",
            Check::NotFromNode => "not-from-a-node",
            Check::InnerType => "inner-type",
            Check::InnerSource => "inner-source",
            Check::Pod { service, path } => {
                return format!("service=\"{service}\",path=\"{path}\"");
            }
        };
        format!("check=\"{check}\"")
    }

    /// What was dropped, in a log line.
    pub fn what(self) -> &'static str {
        match self {
            Check::NotToUnderlay => {
                "VXLAN to another address of this node than its underlay address dropped"
            }
            Check::NotFromNode => "VXLAN from a host that is no node dropped",
            Check::InnerType => "VXLAN carrying neither IPv4 nor IPv6 dropped",
            Check::InnerSource => {
                "VXLAN whose inner source is not in its node's pod subnets dropped"
            }
            Check::Pod { .. } => "a pod's packets to a node-only service dropped",
        }
    }
}

/// The table as the kernel holds it; `None` when it is missing or not ferry's.
pub fn read(shape: &Shape) -> Result<Option<Read>> {
    match crate::nft::list_table(FAMILY, TABLE)? {
        Some(text) => {
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("parse `nft -j list table {FAMILY} {TABLE}`"))?;
            Ok(parse(&v, shape))
        }
        None => Ok(None),
    }
}

pub fn run(script: &str) -> Result<()> {
    crate::nft::apply(script).with_context(|| format!("nftables table {FAMILY} {TABLE}"))
}

/// What `ensure` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    Nothing,
    Elements,
    /// The table was missing or differed, and was written whole (its counters start again).
    Whole,
}

/// Makes the kernel's table hold `want`: the sets changed as a diff when the table is
/// ferry's, the whole table written when not. Returns what it did and the drops counted
/// so far (all 0 for a table just written).
pub fn ensure(shape: &Shape, want: &Members) -> Result<(Wrote, BTreeMap<Check, u64>)> {
    match read(shape)? {
        Some(have) => match update_script(want, &have.members) {
            Some(s) => run(&s).map(|()| (Wrote::Elements, have.dropped)),
            None => Ok((Wrote::Nothing, have.dropped)),
        },
        None => {
            run(&create_script(shape, want))?;
            let zero = shape.checks().into_iter().map(|c| (c, 0)).collect();
            Ok((Wrote::Whole, zero))
        }
    }
}

#[cfg(test)]
mod tests;
