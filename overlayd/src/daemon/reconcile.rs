//! Reconcile: the kernel made to match the peers, as a difference after a lease change
//! and as a whole check on a timer, with table inet ferry's sets and peers.json beside it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use ferry_registry::ClusterConfig;
use ipnetwork::IpNetwork;

use ferry_node_ipam::drift::{self, Device, Drift, MAX_LISTED};

use super::Node;
use crate::args::Args;
use crate::datapath;
use crate::node_filter::{self, Members, Wrote};
use crate::node_only::NodeOnly;
use crate::peers::{diff, Entries, Hop, Op, Peer};

impl Node {
    /// Applies the difference between the peers and what was last programmed.
    pub(super) async fn apply_changes(&mut self) {
        self.refresh_reach().await;
        let want = self.desired(&self.programmed);
        let guarded = datapath::guard(&self.nl, self.vx.index, diff(&want, &self.programmed)).await;
        let now = want.applied(&self.programmed, &guarded.unmade());
        self.apply(&guarded.ops).await;
        self.note_spared(guarded);
        if let Err(e) = self.filter_node(&now, false) {
            self.metrics.reconcile_errors.fetch_add(1, Relaxed);
            tracing::warn!("node filter: {e:#}");
        }
        self.write_paths(&now);
        self.set_programmed(now);
    }

    /// Applies `ops` (guarded already), counting the failures; returns them.
    async fn apply(&mut self, ops: &[Op]) -> Vec<(Op, String)> {
        let failed = datapath::apply(&self.nl, self.vx.index, ops).await;
        self.metrics
            .reconcile_errors
            .fetch_add(failed.len() as u64, Relaxed);
        failed
    }

    /// Takes this round's spared destinations as the spared ones, logging each newly
    /// spared one once and counting them. Every round sees each of them again (ferry
    /// never counts a spared route as made, so each diff asks for it anew), but one whose
    /// family's routes could not be listed this round, which stays as it was.
    fn note_spared(&mut self, g: crate::peers::Guarded) {
        for net in g.spared.difference(&self.spared) {
            tracing::warn!(subnet = %net, "a lease wants a route where this host has one ferry did not make; left alone");
        }
        let held: Vec<IpNetwork> = self.spared.intersection(&g.postponed).copied().collect();
        self.spared = g.spared;
        self.spared.extend(held);
        self.metrics
            .routes_spared
            .store(self.spared.len() as u64, Relaxed);
    }

    /// Keeps table inet ferry's sets equal to `want`'s nodes and their subnets: changed as
    /// a diff from what was last applied, or from the kernel's on a full check (`whole`),
    /// which also reads the drop counters into the metrics.
    fn filter_node(&mut self, want: &Entries, whole: bool) -> Result<()> {
        let members = Members::new(want.nodes(), want.sources());
        let table = format!("{} {}", node_filter::FAMILY, node_filter::TABLE);
        match (&self.filtered, whole) {
            (Some(have), false) => {
                if let Some(script) = node_filter::update_script(&members, have) {
                    node_filter::run(&script)?;
                }
            }
            (first, _) => {
                let first = first.is_none();
                if first {
                    // An upgraded node's table of before, left as it was when the table
                    // of now is already there (a downgrade and an upgrade again).
                    node_filter::run(&node_filter::legacy_script())?;
                }
                let (wrote, dropped) = node_filter::ensure(&self.filter, &members)?;
                match (wrote, first) {
                    (Wrote::Whole, true) => tracing::info!(table = %table, "node filter installed"),
                    (Wrote::Whole, false) => {
                        self.metrics.repairs.fetch_add(1, Relaxed);
                        tracing::warn!(table = %table, "node filter was missing or differed; written again (its counters start again)");
                    }
                    _ => {}
                }
                self.report_drops(dropped, !first);
            }
        }
        self.filtered = Some(members);
        Ok(())
    }

    /// Puts the drop counters read from the table into the metrics; with `log`, says what
    /// was dropped since the last reading (an attempt the operator should know of).
    fn report_drops(&self, now: BTreeMap<node_filter::Check, u64>, log: bool) {
        let Ok(mut dropped) = self.metrics.dropped.lock() else {
            return;
        };
        for (check, n) in &now {
            let before = dropped.get(check).copied().unwrap_or(0);
            if log && *n > before {
                tracing::warn!(metric = check.metric(), labels = %check.labels(), packets = n - before, "{}", check.what());
            }
        }
        *dropped = now;
    }

    fn set_programmed(&mut self, e: Entries) {
        let (n, f, r) = e.len();
        self.metrics.neighs.store(n as u64, Relaxed);
        self.metrics.fdb.store(f as u64, Relaxed);
        self.metrics.routes.store(r as u64, Relaxed);
        self.programmed = e;
    }

    /// Checks everything against what it should be and mends what differs: the device,
    /// its address, the bridge, the node-wide rules, and every peer's entries. What it
    /// found and could not mend goes to drift.json, for `ferry-ipam doctor`.
    pub(super) async fn full_reconcile(&mut self) -> Result<()> {
        let mut drift = Drift {
            underlay: Some(Device {
                name: self.underlay.link.name.clone(),
                mtu: self.underlay.link.mtu,
            }),
            overhead: self.underlay.overhead(),
            vxlan: Some(Device {
                name: self.vx_spec.name.clone(),
                mtu: self.vx_spec.mtu,
            }),
            bridge: Some(self.args.bridge.clone()),
            ..Drift::default()
        };
        let result = self.check_whole(&mut drift).await;
        if let Err(e) = &result {
            drift.error = Some(format!("{e:#}"));
        }
        let refused: Vec<&ferry_registry::Refused> = self.refused.iter().collect();
        drift.refused_total = refused.len();
        drift.refused = refused
            .iter()
            .take(MAX_LISTED)
            .map(|r| drift::Refused {
                key: r.key.clone(),
                reason: r.reason.clone(),
            })
            .collect();
        self.write_drift(drift);
        result
    }

    /// The body of `full_reconcile`, noting in `drift` what it mends and what it cannot.
    async fn check_whole(&mut self, drift: &mut Drift) -> Result<()> {
        let start = Instant::now();
        let vx = datapath::ensure_vxlan(&self.nl, &self.vx_spec).await?;
        if vx.index != self.vx.index {
            tracing::warn!(device = %vx.name, "VXLAN device was missing or replaced; recreated");
        }
        self.vx = vx;
        if !self.args.vxlan_checksum_offload {
            self.checksum_offload_off()?;
        }
        let mut bridge = None;
        if let Some(s) = self.me.subnet {
            datapath::ensure_vtep_addr(&self.nl, &self.vx, s).await?;
            let gw = datapath::gateway(s);
            bridge = Some(
                self.nl
                    .ensure_bridge(
                        &self.args.bridge,
                        ferry_netlink::bridge_mac(gw),
                        gw,
                        s.prefix(),
                    )
                    .await?,
            );
        }
        if let Some(s6) = self.me.subnet_v6 {
            if self.me.subnet.is_none() {
                // The bridge's MAC as the plugin would make it on an IPv6-only node.
                let gw = IpAddr::V6(datapath::gateway_v6(s6));
                bridge = Some(
                    self.nl
                        .ensure_bridge_link(&self.args.bridge, ferry_netlink::bridge_mac_of(gw))
                        .await?,
                );
            }
            datapath::ensure_v6_addrs(&self.nl, &self.vx, &self.args.bridge, s6).await?;
        }
        // The VXLAN device keeps 64 KiB: a larger packet would leave it as one UDP
        // packet over 64 KiB, which a veth underlay (kind's, this project's tests') hands
        // on whole and the receiver truncates. At 64 KiB the kernel cuts bigger ones to
        // wire size before encapsulating them.
        if let (Some(big), Some(bridge)) = (self.big_tcp(), &bridge) {
            // A bridge without ports takes only 64 KiB: the plugin raises it when the
            // first pod's port has joined, and this mends it afterwards.
            match self.nl.ensure_big_tcp(bridge, big).await {
                Ok(true) => {
                    tracing::info!(device = %bridge.name, sizes = %big, "GSO/GRO sizes set to the underlay's (BIG TCP)")
                }
                Ok(false) => {}
                // Slower pods, not broken ones: no reason to stop.
                Err(e) => {
                    self.metrics.reconcile_errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "BIG TCP sizes not set")
                }
            }
        }
        self.node_check
            .resync(self.cfg.ipv6.is_some(), &self.metrics.status);
        self.iptables.recheck();
        let backend = self.iptables.backend();
        if let Some(v4) = self.cfg.ipv4 {
            if crate::rules::ensure_iptables(backend, v4.cluster_cidr.into())? {
                tracing::info!(backend = backend.name(), "iptables rules installed");
            }
        }
        if let Some(v6) = self.cfg.ipv6 {
            if crate::rules::ensure_iptables(backend, v6.cluster_cidr.into())? {
                tracing::info!(backend = backend.name(), "ip6tables rules installed");
            }
        }
        crate::rules::leave_stale(&mut self.iptables);
        let have = datapath::read(&self.nl, self.vx.index).await?;
        self.refresh_reach().await;
        let want = self.desired(&have);
        let guarded = datapath::guard(&self.nl, self.vx.index, diff(&want, &have)).await;
        let now = want.applied(&have, &guarded.unmade());
        self.filter_node(&now, true)?;
        // A spared route is no difference to mend: the host's own route is what it has.
        let ops = &guarded.ops;
        if !ops.is_empty() && self.metrics.ready.load(Relaxed) {
            self.metrics.repairs.fetch_add(1, Relaxed);
            let shown: Vec<String> = ops.iter().take(5).map(|o| format!("{o:?}")).collect();
            tracing::warn!(ops = ops.len(), first = %shown.join(", "), "kernel differed from the leases; mending");
            // Before ready, the ops are the node's first programming, not a mend.
            drift.mended = ops
                .iter()
                .take(MAX_LISTED)
                .map(|o| format!("{o:?}"))
                .collect();
            drift.mended_total = ops.len();
            drift.mended_at = Some(unix_now());
        }
        let failed = self.apply(ops).await;
        drift.failed_total = failed.len();
        drift.failed = failed
            .into_iter()
            .take(MAX_LISTED)
            .map(|(op, error)| drift::Failed {
                op: format!("{op:?}"),
                error,
            })
            .collect();
        drift.postponed = guarded.postponed.iter().map(|n| n.to_string()).collect();
        self.note_spared(guarded);
        drift.spared = self
            .spared
            .iter()
            .map(|net| drift::Spared {
                subnet: net.to_string(),
                node: self.node_of(*net),
            })
            .collect();
        self.write_paths(&now);
        self.set_programmed(now);
        let micros = start.elapsed().as_micros() as u64;
        self.metrics.reconciles.fetch_add(1, Relaxed);
        self.metrics.reconcile_micros_last.store(micros, Relaxed);
        self.metrics.reconcile_micros_sum.fetch_add(micros, Relaxed);
        Ok(())
    }

    /// The node whose subnet `net` is, of either family.
    fn node_of(&self, net: IpNetwork) -> Option<String> {
        let (key, _) = self
            .view
            .peers
            .iter()
            .find(|(_, p)| p.subnets().any(|s| s == net))?;
        self.view.names.get(key).cloned()
    }

    /// Writes drift.json when it changed (a clean node's file stays as it is).
    fn write_drift(&mut self, d: Drift) {
        if self.drift.as_ref() == Some(&d) {
            return;
        }
        match drift::write(&self.args.state_dir, &d) {
            Ok(()) => self.drift = Some(d),
            Err(e) => tracing::warn!("write {}: {e}", drift::path(&self.args.state_dir).display()),
        }
    }

    /// Turns the VXLAN device's transmit checksum offload off when it is on (a recreated
    /// device, or a hand change, comes back with it on).
    fn checksum_offload_off(&self) -> Result<()> {
        let name = &self.vx.name;
        if ferry_netlink::ethtool::tx_checksum(name)? {
            ferry_netlink::ethtool::set_tx_checksum(name, false)?;
            tracing::info!(device = %name, "transmit checksum offload turned off (--vxlan-checksum-offload=false)");
        }
        Ok(())
    }

    /// What the kernel should hold, given what it holds (for held subnets).
    pub(super) fn desired(&self, have: &Entries) -> Entries {
        Entries::desired(self.view.peers.values(), &self.reach).keeping(&self.view.held, have)
    }

    /// Asks the kernel again which peers are on-link: a node that moved to another
    /// segment, or an underlay route that changed, switches path at the next round.
    pub(super) async fn refresh_reach(&mut self) {
        if !self.args.direct_routing {
            return;
        }
        let peers: Vec<Peer> = self.view.peers.values().copied().collect();
        self.reach = datapath::reach(&self.nl, &peers, self.underlay.link.index).await;
    }

    /// Writes peers.json (the path to each peer, for `ferry-ipam leases --state-dir`) when
    /// it changed, logging each peer whose path changed; gives the health prober the
    /// paths to probe (it is told only when they differ).
    pub(super) fn write_paths(&mut self, programmed: &Entries) {
        use ferry_node_ipam::peer_paths::{PathKind, PeerPath, PeerPaths};
        let peers: Vec<Peer> = self.view.peers.values().copied().collect();
        let hops = programmed.paths(&peers);
        let mut out = PeerPaths::default();
        let mut targets = Vec::new();
        for (s, p) in &self.view.peers {
            let hop: Option<Hop> = hops.get(&p.public_ip).copied().flatten();
            let path = if hop.is_some() {
                PathKind::Direct
            } else {
                PathKind::Vxlan
            };
            let node = self.view.names.get(s).cloned().unwrap_or_default();
            targets.extend(self.probe_targets(&node, p, path));
            out.peers.push(PeerPath {
                node,
                public_ip: p.public_ip,
                path,
                device: hop.map(|_| self.underlay.link.name.clone()),
                health: None,
                health_v6: None,
            });
        }
        self.probe.send_if_modified(|t| {
            let changed = *t != targets;
            if changed {
                *t = targets;
            }
            changed
        });
        if self.paths.as_ref() == Some(&out) {
            return;
        }
        let before = self.paths.take().unwrap_or_default();
        let big = self.big_tcp();
        for p in &out.peers {
            if !before.peers.contains(p) {
                tracing::info!(node = %p.node, public_ip = %p.public_ip, path = %p.shown(), "path to node");
                if big.is_some() && p.path == PathKind::Vxlan {
                    tracing::warn!(node = %p.node, "--big-tcp is on but this node is reached over VXLAN: pods' packets to it are cut to wire size in software (slower)");
                }
            }
        }
        let direct = out
            .peers
            .iter()
            .filter(|p| p.path == PathKind::Direct)
            .count();
        self.metrics.direct_peers.store(direct as u64, Relaxed);
        match self.peers_file.set_paths(out.clone()) {
            Ok(()) => self.paths = Some(out),
            Err(e) => tracing::warn!("write {}: {e}", self.peers_file.path().display()),
        }
    }

    /// The paths to probe to one peer: from this node's gateway to the peer's, in each
    /// family both have. `path` is that of the underlay's family; the other family always
    /// goes over VXLAN (`Entries::desired`).
    fn probe_targets(
        &self,
        node: &str,
        p: &Peer,
        path: ferry_node_ipam::peer_paths::PathKind,
    ) -> Vec<crate::health_probe::Target> {
        use ferry_node_ipam::peer_paths::PathKind;
        let underlay_v4 = p.public_ip.is_ipv4();
        let mut out = Vec::new();
        if let (Some(mine), Some(theirs)) = (self.me.subnet, p.subnet) {
            out.push(crate::health_probe::Target {
                peer: node.to_string(),
                public_ip: p.public_ip,
                path: if underlay_v4 { path } else { PathKind::Vxlan },
                src: IpAddr::V4(datapath::gateway(mine)),
                dst: IpAddr::V4(datapath::gateway(theirs)),
                second: false,
            });
        }
        if let (Some(mine), Some(theirs)) = (self.me.subnet_v6, p.subnet_v6) {
            out.push(crate::health_probe::Target {
                peer: node.to_string(),
                public_ip: p.public_ip,
                path: if underlay_v4 { PathKind::Vxlan } else { path },
                src: IpAddr::V6(datapath::gateway_v6(mine)),
                dst: IpAddr::V6(datapath::gateway_v6(theirs)),
                second: p.subnet.is_some(),
            });
        }
        out
    }
}

/// What table inet ferry's rules are made of: this node's underlay address, the cluster
/// CIDRs, the node-only services. An etcd endpoint given by name cannot be a rule: said
/// once.
pub(super) fn filter_shape(
    args: &Args,
    cfg: &ClusterConfig,
    underlay: IpAddr,
) -> node_filter::Shape {
    let tls = args.etcd.etcd_cacert.is_some() || args.etcd.etcd_cert.is_some();
    let node_only = NodeOnly::new(cfg.port, &args.etcd.etcd_endpoints, tls);
    for e in &node_only.by_name {
        tracing::warn!(endpoint = %e, "an etcd endpoint given by name: pods are not kept from it (give its IP address to have them kept out)");
    }
    let pods = [
        cfg.ipv4.map(|v| IpNetwork::V4(v.cluster_cidr)),
        cfg.ipv6.map(|v| IpNetwork::V6(v.cluster_cidr)),
    ];
    node_filter::Shape {
        underlay,
        pods: pods.into_iter().flatten().collect(),
        node_only,
    }
}

/// Seconds since the epoch (0 on a clock before it: a date for a person, nothing decides
/// by it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
