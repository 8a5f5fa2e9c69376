//! The daemon: set the node up once, then keep it true.

mod follow;
mod kube;
mod liveness;
mod reconcile;
mod startup;
mod view;

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_netlink::{Link, Netlink, VxlanSpec};
use ferry_node_ipam::NodeState;
use ferry_registry::{ClusterConfig, LeaseRecord, Refused};
use ipnetwork::IpNetwork;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use crate::args::{Args, Datastore};
use crate::cni_conf::CniConf;
use crate::datapath;
use crate::health;
use crate::metrics::Metrics;
use crate::node_check::NodeCheck;
use crate::node_filter::{self, Members};
use crate::peers::{Entries, Reach};
use crate::refusals::RefusalLog;
use crate::underlay::Underlay;
use liveness::{capacity, keep_alive, Identity, UsageSource};
use view::PeerList;

struct Node {
    args: Args,
    name: String,
    nl: Netlink,
    cfg: ClusterConfig,
    underlay: Underlay,
    me: LeaseRecord,
    vx_spec: VxlanSpec,
    vx: Link,
    /// The etcd lease that keeps this node's subnet.
    grace_lease: i64,
    /// The other nodes as the leases last showed them.
    view: PeerList,
    /// The peers reached on-link (DirectRouting), as last asked of the kernel.
    reach: Reach,
    /// The path to each peer as last written to peers.json.
    paths: Option<ferry_node_ipam::peer_paths::PeerPaths>,
    /// What the last full check could not mend, as last written to drift.json.
    drift: Option<ferry_node_ipam::drift::Drift>,
    /// peers.json, which the health prober writes too.
    peers_file: Arc<crate::health_probe::publish::PeersFile>,
    /// The health prober's feed: the paths to probe, sent whenever they may change.
    probe: tokio::sync::watch::Sender<Vec<crate::health_probe::Target>>,
    /// Records refused at the last listing (each told once, when first refused).
    refused: BTreeSet<Refused>,
    /// How the refused records are told: named up to a bound, then summed up.
    refusal_log: RefusalLog,
    /// Destinations, of either family, where a lease wants a route but the host has one
    /// ferry did not make: left alone (each logged once, when first spared).
    spared: BTreeSet<IpNetwork>,
    programmed: Entries,
    /// What table inet ferry's rules are made of.
    filter: node_filter::Shape,
    /// Its sets as last applied.
    filtered: Option<Members>,
    /// The iptables backend ferry's chains are in.
    iptables: crate::iptables::Selection,
    metrics: Arc<Metrics>,
    node_check: NodeCheck,
    cni: Option<CniConf>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Runs the daemon until it is stopped (SIGTERM, SIGINT: success) or can no longer be
/// this node (failure).
pub async fn run(args: Args) -> Result<ExitCode> {
    args.validate()?;
    let name = args.node_name.clone().unwrap_or_else(hostname);
    anyhow::ensure!(
        !name.is_empty() && !name.contains('/'),
        "invalid node name {name:?}: pass --node-name"
    );
    let metrics = Arc::new(Metrics::default());
    metrics.status.step("starting");
    // Served before anything else: a liveness probe must find the daemon alive however
    // long the start waits. A port in use is a configuration error worth failing on.
    if let Some(addr) = args.health_addr {
        tokio::spawn(health::serve(health::bind(addr).await?, metrics.clone()));
    }
    // A stop while the start waits (for etcd, the node, the lock) is as clean as later.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let alive_lease = Arc::new(AtomicI64::new(0));
    let reg_slot = OnceLock::new();
    let (lost_tx, mut lost) = oneshot::channel();
    // Everything runs in here, so that the liveness key is given up on every way out but
    // a lost node's.
    let work = async {
        if args.datastore == Datastore::Kubernetes {
            let kube::Started {
                mut node,
                client,
                watch,
                lock: _lock,
            } = kube::start(&args, name, &metrics).await?;
            drop(lost_tx);
            return node.follow_api(client, watch).await;
        }
        let startup::Started {
            mut node,
            reg,
            rev,
            liveness,
            lock: _lock,
        } = startup::start(&args, name, &metrics, &reg_slot, &alive_lease).await?;
        let usage = UsageSource {
            store: ferry_node_ipam::Store::new(&args.ipam_data_dir),
            capacity: capacity(&node.me),
        };
        tokio::spawn(keep_alive(
            reg.clone(),
            Identity {
                node: node.name.clone(),
                liveness,
            },
            node.grace_lease,
            usage,
            metrics.clone(),
            alive_lease.clone(),
            lost_tx,
        ));
        node.follow(reg.clone(), rev).await
    };
    let result = tokio::select! {
        r = work => r.map(|()| ExitCode::SUCCESS),
        _ = term.recv() => stop("SIGTERM"),
        _ = int.recv() => stop("SIGINT"),
        Ok(why) = &mut lost => {
            tracing::error!("{why}");
            // Left to time out, as this way out always left it: the name may be another
            // daemon's by now.
            return Ok(ExitCode::FAILURE);
        }
    };
    // Stopping, on purpose or failing: say so at once rather than when the liveness key
    // times out (a restart would otherwise wait for it).
    let id = alive_lease.load(Relaxed);
    if let (true, Some(reg)) = (id != 0, reg_slot.get()) {
        let mut reg = reg.clone();
        let _ = tokio::time::timeout(Duration::from_secs(1), reg.revoke(id)).await;
    }
    result
}

fn stop(sig: &str) -> Result<ExitCode> {
    tracing::info!("{sig}: exiting; the data path stays in place");
    Ok(ExitCode::SUCCESS)
}

impl Node {
    /// Installs or mends the CNI config, once the node can take pods.
    pub(super) fn keep_cni_conf(&mut self) {
        if let Some(c) = &mut self.cni {
            if self.metrics.data_ready() {
                c.keep(&self.metrics.status);
            }
        }
    }

    /// The pods' BIG TCP sizes: the underlay's, when `--big-tcp` asks for them.
    pub(super) fn big_tcp(&self) -> Option<ferry_netlink::BigTcp> {
        self.args.big_tcp.then(|| self.underlay.big_tcp()).flatten()
    }

    /// Writes node.json when it differs from what is there.
    pub(super) fn write_state(&self) -> Result<()> {
        let st = NodeState {
            node_name: self.name.clone(),
            pod_cidr: self.me.subnet.map(|s| s.to_string()),
            cluster_cidr: self.cfg.ipv4.map(|v| v.cluster_cidr.to_string()),
            gateway: self.me.subnet.map(datapath::gateway),
            pod_cidr_v6: self.me.subnet_v6.map(|s| s.to_string()),
            cluster_cidr_v6: self.cfg.ipv6.map(|v| v.cluster_cidr.to_string()),
            gateway_v6: self.me.subnet_v6.map(datapath::gateway_v6),
            mtu: self.underlay.pod_mtu(),
            network_policy: self.args.network_policy,
            big_tcp: self.big_tcp().map(|b| ferry_node_ipam::node_state::BigTcp {
                ipv4: b.ipv4,
                ipv6: b.ipv6,
            }),
        };
        if ferry_node_ipam::node_state::read(&self.args.state_dir)
            .ok()
            .flatten()
            .as_ref()
            != Some(&st)
        {
            ferry_node_ipam::node_state::write(&self.args.state_dir, &st).with_context(|| {
                format!(
                    "write {}",
                    ferry_node_ipam::node_state::path(&self.args.state_dir).display()
                )
            })?;
        }
        Ok(())
    }
}
