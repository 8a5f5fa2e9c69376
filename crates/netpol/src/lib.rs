//! Kubernetes NetworkPolicy (networking.k8s.io/v1) and ClusterNetworkPolicy
//! (policy.networking.k8s.io/v1alpha2, [`api`]) for ferry, as pure logic:
//!
//! - [`model`]: the normalised form of namespaces, pods and policies, converted from the
//!   Kubernetes types with the API's defaulting and validated ([`Cluster::from_k8s`]);
//! - [`eval`]: the reference semantics, [`verdict`], which also explains itself;
//! - [`desired`]: the node's nftables state as data, [`Ruleset::compute`] (the compiler,
//!   `compile`, over the object model of [`nft`], with the names of [`naming`]);
//!   [`Incremental`] keeps each policy's rules and sets between rounds and, after a
//!   change, makes anew only those the change touches (always equal to
//!   [`Ruleset::compute`] of the same inputs: `tests/incremental.rs`);
//! - [`diff`]: the change from the applied state to the desired one as one atomic
//!   `nft -f -` transaction, [`plan`], or, when only set elements change, the elements
//!   alone ([`plan_elements`]), which the caller can write to the kernel without nft;
//! - [`nft::render`] and [`nft::parse`]: the objects written for `nft -f` and read back
//!   from `nft -j` ([`Ruleset::parse_json`]), side by side so that they stay each other's
//!   mirror.
//!
//! # The tables (two per node)
//!
//! ```text
//! table inet ferry_policy
//!   chain forward   hook forward, priority filter, policy accept
//!     ct state established,related accept
//!     ct state invalid drop
//!     icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
//!     ip  saddr . ip  daddr @self4 accept       (a local pod to itself, via a Service)
//!     ip6 saddr . ip6 daddr @self6 accept
//!     ip  saddr vmap @egress_pods4    (a local pod isolated for egress: jump to its chain)
//!     ip6 saddr vmap @egress_pods6
//!     ip  daddr vmap @ingress_pods4   (a local pod isolated for ingress: jump to its chain)
//!     ip6 daddr vmap @ingress_pods6
//!   chain input     hook input, priority filter, policy accept
//!     ct state established,related accept
//!     icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
//!     ip  saddr vmap @egress_pods4    (a local pod to this node's addresses)
//!     ip6 saddr vmap @egress_pods6
//!   map egress_pods4   type ipv4_addr : verdict   { 10.1.0.5 : jump egress_<hash>, ... }
//!   chain egress_<hash>   the rules of one combination of egress policies, `return` on a match
//!     ip saddr @eg_<ns>_<policy>_<i>_src4 [ip daddr @eg_..._dst4 | ip daddr . meta l4proto . th dport @eg_..._dst4] counter return
//!     ...   (one rule per policy rule and family, of each policy of the combination)
//!     update @denied_egress4 { ip saddr } limit rate 20/second log prefix "ferry-deny-egress " group 1720
//!     update @denied_egress6 { ip6 saddr } ...
//!     counter drop
//!   chain ingress_<hash>  the same for ingress, `accept` on a match
//!     [ip saddr @in_<ns>_<policy>_<i>_src4] ip daddr [. meta l4proto . th dport] @in_..._dst4 counter accept
//!     ...
//!     update @denied_ingress4 { ip daddr } ... log prefix "ferry-deny-ingress " group 1720
//!     counter drop
//!   chain ingress_closed, egress_closed   only the denial rules: pods not known yet
//!
//! table bridge ferry_policy
//!   chain forward   hook forward, priority filter, policy accept   (frames between two ports)
//!     icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
//!     oifname . ip  daddr @own4 accept     (unicast to the receiving pod's own address:
//!     oifname . ip6 daddr @own6 accept      the inet table judges it, via br_netfilter)
//!     meta protocol { ip, ip6 } oifname vmap @ingress_ports   (the rest, to an isolated pod)
//!   set own4   type ifname . ipv4_addr   { "fy…" . 10.1.0.5, ... }   every local pod's port
//!   map ingress_ports   type ifname : verdict   { "fy…" : jump ingress_<hash>, ... }
//!   chain ingress_<hash>   the ingress rules of the same combination, by port:
//!     [ip saddr @in_..._src4 | meta protocol ip] oifname [. meta l4proto . th dport] @in_..._dst4 counter accept
//!     ...
//!     counter drop
//!   chain ingress_closed   counter drop
//! ```
//!
//! - Every address a local pod can send from or be reached at is in the inet table's
//!   maps and sets: the API's, and its link-local address, which ferry derives from the
//!   pod's MAC and gives it (the kernel's own address generation off) and which the
//!   caller adds to [`LocalPods`]. Link-local unicast gets the verdict of the pod's
//!   policies as any unicast does; an ipBlock matches it by address (`fe80::/10`).
//! - Multicast and broadcast (and anything else sent to an address that is not the
//!   receiving pod's own) cannot be dispatched by destination address: the bridge floods
//!   it to every port. Towards a pod isolated for ingress it meets, at the pod's port,
//!   the same ingress rules as unicast, matched by source and port (the bridge table's
//!   copies of the peer sets, and the selected pods' ports with their resolved ports);
//!   every frame is judged (no conntrack) and counted where dropped, not logged. From a
//!   pod isolated for egress it meets the pod's egress chain in the inet table, by its
//!   source address, where only an ipBlock holding the group's address allows it (a group
//!   is no pod's address). ARP and IPv6 neighbour solicitations and advertisements always
//!   pass: without them no pod resolves its gateway or a neighbour.
//!
//! - Dispatch by pod: each local pod's address maps to the chain of the exact combination
//!   of policies that select it (`<dir>_<64-bit FNV-1a of their sorted ids>`), so a new
//!   connection meets the rules of its own pod's policies only, however many policies the
//!   cluster has. Pods with the same combination share a chain; a pod coming or going
//!   changes map elements, and adds or removes a chain only when its combination is new
//!   or was the last of its kind.
//! - ClusterNetworkPolicy tiers (`cin_<name>_<i>_<src|dst><4|6>` and `ceg_…` sets, the
//!   same shapes as a NetworkPolicy rule's): a pod that some ClusterNetworkPolicy selects
//!   jumps to a chain of its combination of all three tiers. The Admin part holds its
//!   rules in order (policies by priority, then name), each with its action as verdict:
//!   Accept `return`s (egress) or `accept`s (ingress), Deny `goto <dir>_closed` (counted,
//!   logged, dropped), Pass `goto`es the chain of the next tier; then that chain. The next
//!   tier is the pod's NetworkPolicy chain (the same chain, by name and content, as
//!   without ClusterNetworkPolicies: a NetworkPolicy always decides) or, when none isolates
//!   the pod, a Baseline chain (Accept and Pass allow, Deny goes to the closed chain, then
//!   allowed). Each tier's part starts with one rule per family,
//!   `ip saddr != @<chain>_peers4 goto <next>` (`daddr` for egress): a peer that none of
//!   the tier's rules names skips them all with one lookup, so a new connection meets the
//!   rules of a tier only when one of them can match it. Chain names hash the policy ids; a ClusterNetworkPolicy's id
//!   (`cnp:<tier>:<priority>:<name>`) holds a `:`, which no NetworkPolicy id does.
//! - Egress is decided on the source's node and ingress on the destination's node: the
//!   `*_pods` maps and the sets of selected pods (`in_*_dst`, `eg_*_src`) hold only this
//!   node's pods; the peer sets (`in_*_src`, `eg_*_dst`) hold addresses cluster-wide: pod
//!   addresses and ipBlock ranges (minus `except`, computed here, overlaps merged).
//! - A rule with ports matches `address . protocol . port` against a concatenated interval
//!   set: numeric ports and `endPort` ranges are intervals, named ports are resolved per
//!   destination pod. A rule without peers has no source (ingress) or destination (egress)
//!   match; without ports, no port match.
//! - The forward hook runs after kube-proxy's DNAT, so a Service address gets the verdict
//!   of the pod behind it. Pods of one node reach each other over the bridge, so the node
//!   needs `net.bridge.bridge-nf-call-iptables` (and `-ip6tables`) set to 1, as kube-proxy
//!   does, for that traffic to reach the hook.
//! - `denied_<dir><4|6>` are dynamic sets with a counter per local pod address (elements
//!   expire after an hour without denials); denials go to NFLOG group [`DENY_LOG_GROUP`]
//!   at most [`DENY_LOG_RATE`] a second per direction.
//! - Traffic the node itself sends to a pod (kubelet probes) takes the output hook and is
//!   never filtered, as Kubernetes requires; replies to it are `established`. A local pod's
//!   traffic to the node's own addresses takes the input hook and gets the egress check.
//!   This assumes kube-proxy in iptables or nftables mode (DNAT in prerouting); in IPVS
//!   mode the input chain would see Service addresses before IPVS rewrites them.
//! - IPv6 neighbour solicitations and advertisements (untracked by conntrack) always pass:
//!   without them an isolated pod could not resolve its gateway or a neighbour pod.
//! - `ct state invalid drop` applies to every forwarded packet, policy or not.
//! - Set names: `<in|eg>_<namespace>_<policy>_<rule index>_<src|dst><4|6>` (nft allows 255
//!   characters, checked on nft 1.0.6); when longer, or when a name is not a DNS name,
//!   `<ns>_<policy>` becomes `h` and a 64-bit FNV-1a hash of `ns/policy`. Rule comments
//!   (`ns/policy ingress[i]`) are left out in that case too.
//!   Every rule of every policy has its sets on every node, whether it selects a local pod
//!   or not, so pod churn and relabelling change set elements, not sets.
//!
//! After a restart the daemon reads the applied tables back with
//! `nft -j list table inet ferry_policy` (and `bridge`) and [`Ruleset::parse_json`] (which
//! keeps the denial counters) and plans from them. A table that is not there plans from
//! empty; when a listing holds anything this crate did not make, or a plan fails, it
//! replaces both tables in one transaction ([`Script::replace`]: `delete table` and the
//! full table together, for each). It keeps the applied [`Ruleset`] in memory and from
//! then on applies [`plan`]s.

pub mod api;
mod compile;
pub mod desired;
pub mod diff;
pub mod eval;
pub mod listing;
pub mod model;
pub mod naming;
pub mod nft;
pub mod ranges;

pub use api::ClusterNetworkPolicy;
pub use compile::Incremental;
pub use desired::{
    Ifname, LocalPods, Ruleset, Table, TableFamily, DENY_LOG_GROUP, DENY_LOG_RATE, TABLE,
};
pub use diff::{plan, plan_elements, Script, SetChange};
pub use eval::{verdict, verdict_at, Endpoint, Peer, Verdict};
pub use model::{
    Action, Cluster, ClusterPolicy, ContainerPort, ModelError, NodeInfo, Pod, PodKey, Policy,
    Protocol, Tier,
};
