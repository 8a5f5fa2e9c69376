//! Start-up, until the node is ready. The steps before the node's name is claimed
//! (`prepare`) write nothing of this node to etcd: a node that cannot run pods (its
//! sysctls off) or that is not sure to be the only daemon on the machine (its lock held)
//! publishes nothing that other nodes would route to. Each step says in `/readyz` what it
//! waits for.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use anyhow::{ensure, Context, Result};
use ferry_netlink::{Netlink, VxlanSpec};
use ferry_registry::model::resolve;
use ferry_registry::{ClusterConfig, Liveness, Registry};

use super::reconcile::filter_shape;
use super::view::{peer_list, PeerList};
use super::Node;
use crate::args::Args;
use crate::cni_conf::CniConf;
use crate::datapath;
use crate::etcd_retry::{etcd, EtcdRetry};
use crate::identity::{self, NodeLock};
use crate::metrics::Metrics;
use crate::node_check::NodeCheck;
use crate::node_filter::Family;
use crate::peers::{diff, Entries, Peer, Reach};
use crate::refusals::RefusalLog;
use crate::status::Cause;
use crate::underlay::{self, Underlay};

struct Prepared {
    nl: Netlink,
    underlay: Underlay,
    reg: Registry,
    cfg: ClusterConfig,
    liveness: Liveness,
    /// Held for the life of the process.
    lock: NodeLock,
    retry: EtcdRetry,
    node_check: NodeCheck,
}

/// Identity, lock, underlay, etcd, cluster config and the node's sysctls, in this order;
/// `reg_slot` gets the etcd client as soon as there is one (to give the liveness key up
/// on the way out).
async fn prepare(
    args: &Args,
    metrics: &Arc<Metrics>,
    reg_slot: &OnceLock<Registry>,
) -> Result<Prepared> {
    let status = &metrics.status;
    status.step("starting: reading the node secret");
    let secret = identity::node_secret(&args.node_secret)?;
    let liveness = Liveness {
        instance: instance_id()?,
        machine: identity::machine_id(&secret),
    };
    status.step("starting: taking the node's lock");
    let lock = identity::lock(&args.state_dir, status).await?;

    status.step("starting: finding the underlay");
    let nl = Netlink::open().context("netlink")?;
    let underlay = underlay::find(&nl, args.iface.as_deref(), args.public_ip, &args.bridge).await?;
    ensure!(
        args.etcd.given(),
        "--etcd-endpoints (or FERRY_ETCD_ENDPOINTS) is required"
    );
    status.step(format!(
        "starting: connecting to etcd at {}",
        args.etcd.etcd_endpoints.join(",")
    ));
    let mut retry = EtcdRetry::new(&args.etcd.etcd_endpoints, metrics.clone());
    let mut reg = etcd!(retry, args.etcd.connect());
    let _ = reg_slot.set(reg.clone());

    let flags = args.config_flags();
    let mut node_check = NodeCheck::new();
    let cfg = loop {
        status.step("starting: reading the cluster config");
        // Read, not written: whether the cluster has IPv6 decides which sysctls it needs.
        let (planned, _) = etcd!(retry, reg.planned_config(&flags, &underlay.networks));
        let ipv6 = planned.ipv6.is_some();
        status.step("starting: checking the node's sysctls");
        node_check.wait(ipv6, status).await;
        status.step("starting: reading the cluster config");
        let cfg = etcd!(retry, reg.cluster_config(&flags, &underlay.networks));
        if cfg.ipv6.is_none() || ipv6 {
            break cfg;
        }
        // Another node stored a config with IPv6 meanwhile: its sysctls are needed too.
    };
    Ok(Prepared {
        nl,
        underlay,
        reg,
        cfg,
        liveness,
        lock,
        retry,
        node_check,
    })
}

/// What a started daemon goes on with.
pub(super) struct Started {
    pub(super) node: Node,
    pub(super) reg: Registry,
    /// The etcd revision the leases were last listed at.
    pub(super) rev: i64,
    pub(super) liveness: Liveness,
    /// Held for the life of the process.
    pub(super) lock: NodeLock,
}

/// Everything from the node's identity to ready: the name claimed (its liveness lease in
/// `alive_lease`), the data path to the other nodes programmed, the subnet leased, the
/// node reconciled once, the policy started and node.json written.
pub(super) async fn start(
    args: &Args,
    name: String,
    metrics: &Arc<Metrics>,
    reg_slot: &OnceLock<Registry>,
    alive_lease: &AtomicI64,
) -> Result<Started> {
    let Prepared {
        nl,
        underlay,
        mut reg,
        cfg,
        liveness,
        lock,
        mut retry,
        node_check,
    } = prepare(args, metrics, reg_slot).await?;
    metrics.status.step("starting: claiming this node's name");
    // Before anything of this node is written: no second daemon under one name.
    let alive_id =
        identity::claim_name(&mut reg, &name, &liveness, &mut retry, &metrics.status).await?;
    alive_lease.store(alive_id, Relaxed);
    metrics
        .status
        .step("starting: programming the data path and leasing the subnet");
    let previous = etcd!(retry, reg.lease_of(&name));
    let (vx_spec, vx) = vxlan(
        &nl,
        &cfg,
        &underlay,
        previous.as_ref().and_then(|p| p.vtep_mac_bytes()),
    )
    .await?;
    // The device and the routes to every other node come first, the lease second: when
    // this node's address changed, the others switch to it only once it can answer there.
    let (stored, _) = etcd!(retry, reg.list(&cfg));
    let view = resolve(&cfg, &underlay.networks, &stored);
    let reach = early_routes(&nl, args, &vx, &underlay, &view, &name).await?;

    // The subnet this node had, so that its pods keep their addresses: node.json's, else
    // the one its lease names.
    let state = ferry_node_ipam::node_state::read(&args.state_dir)
        .ok()
        .flatten();
    let prefer = state
        .as_ref()
        .and_then(|s| s.pod_cidr.as_ref()?.parse().ok())
        .or(previous.as_ref().and_then(|p| p.subnet));
    let prefer_v6 = state
        .as_ref()
        .and_then(|s| s.pod_cidr_v6.as_ref()?.parse().ok())
        .or(previous.as_ref().and_then(|p| p.subnet_v6));
    let acquired = etcd!(
        retry,
        reg.acquire(
            &cfg,
            &name,
            underlay.ip,
            &ferry_netlink::format_mac(&vx_spec.mac),
            args.lease_grace,
            prefer,
            prefer_v6,
        )
    );
    tracing::info!(
        node = %name, subnet = ?acquired.record.subnet,
        subnet_v6 = ?acquired.record.subnet_v6, public_ip = %underlay.ip,
        vtep_mac = %acquired.record.vtep_mac, reused = acquired.reused, "subnet leased"
    );

    let mut node = Node::new(
        args,
        Parts {
            name,
            nl,
            cfg,
            underlay,
            me: acquired.record,
            vx_spec,
            vx,
            grace_lease: acquired.grace_lease,
            reach,
            node_check,
        },
        metrics,
    );
    let rev = etcd!(retry, node.refresh(&mut reg));
    go_ready(&mut node, args, metrics).await?;
    metrics.etcd_connected.store(true, Relaxed);
    Ok(Started {
        node,
        reg,
        rev,
        liveness,
        lock,
    })
}

/// The VXLAN device, its MAC kept across restarts: the device's own, else `previous`
/// (the one this node last published), else a new one.
pub(super) async fn vxlan(
    nl: &Netlink,
    cfg: &ClusterConfig,
    underlay: &Underlay,
    previous: Option<[u8; 6]>,
) -> Result<(VxlanSpec, ferry_netlink::Link)> {
    let vx_name = datapath::vxlan_name(cfg.vni);
    let existing = nl.get_link(&vx_name).await?.filter(|l| l.vxlan.is_some());
    let own: Option<[u8; 6]> = existing.and_then(|l| l.mac.as_slice().try_into().ok());
    let mac = match own.or(previous) {
        Some(m) => m,
        None => datapath::random_mac()?,
    };
    let vx_spec = VxlanSpec {
        name: vx_name,
        vni: cfg.vni,
        port: cfg.port,
        local: underlay.ip,
        dev: underlay.link.index,
        mtu: underlay.pod_mtu(),
        mac,
    };
    let vx = datapath::ensure_vxlan(nl, &vx_spec).await?;
    Ok((vx_spec, vx))
}

/// Routes, FDB and neighbour entries to every peer of `view`, made before this node
/// publishes itself; what is reached on-link (DirectRouting).
pub(super) async fn early_routes(
    nl: &Netlink,
    args: &Args,
    vx: &ferry_netlink::Link,
    underlay: &Underlay,
    view: &ferry_registry::LeaseView,
    name: &str,
) -> Result<Reach> {
    let first = peer_list(
        view,
        name,
        None,
        Family::of(underlay.ip),
        &PeerList::default(),
    );
    let others: Vec<Peer> = first.peers.values().copied().collect();
    let have = datapath::read(nl, vx.index).await?;
    let reach = if args.direct_routing {
        datapath::reach(nl, &others, underlay.link.index).await
    } else {
        Reach::new()
    };
    let early = diff(
        &Entries::desired(&others, &reach).keeping(&first.held, &have),
        &have,
    );
    datapath::apply_guarded(nl, vx.index, early).await;
    Ok(reach)
}

/// What start-up has made of the node, whichever the datastore.
pub(super) struct Parts {
    pub(super) name: String,
    pub(super) nl: Netlink,
    pub(super) cfg: ClusterConfig,
    pub(super) underlay: Underlay,
    pub(super) me: ferry_registry::LeaseRecord,
    pub(super) vx_spec: VxlanSpec,
    pub(super) vx: ferry_netlink::Link,
    /// 0 with the Kubernetes datastore.
    pub(super) grace_lease: i64,
    pub(super) reach: Reach,
    pub(super) node_check: NodeCheck,
}

impl Node {
    pub(super) fn new(args: &Args, p: Parts, metrics: &Arc<Metrics>) -> Node {
        let filter = filter_shape(args, &p.cfg, p.underlay.ip);
        let peers_file = Arc::new(crate::health_probe::publish::PeersFile::new(
            &args.state_dir,
        ));
        // Its own task from the start; it probes once the first reconcile gave it the
        // peers (the gateway addresses it sends from are in place by then).
        let probe = if !args.peer_health {
            // Nobody listens: the targets are kept and dropped.
            tokio::sync::watch::channel(Vec::new()).0
        } else {
            crate::health_probe::spawn(
                crate::health_probe::Settings {
                    rates: crate::health_probe::state::Rates {
                        echo: args.health_probe_interval,
                        mtu: args.health_mtu_interval,
                    },
                    mtu: p.underlay.pod_mtu(),
                },
                metrics.clone(),
                peers_file.clone(),
            )
        };
        let node = Node {
            args: args.clone(),
            name: p.name,
            nl: p.nl,
            cfg: p.cfg,
            underlay: p.underlay,
            me: p.me,
            vx_spec: p.vx_spec,
            vx: p.vx,
            grace_lease: p.grace_lease,
            view: PeerList::default(),
            reach: p.reach,
            paths: None,
            drift: None,
            peers_file,
            probe,
            refused: BTreeSet::new(),
            refusal_log: RefusalLog::default(),
            spared: BTreeSet::new(),
            programmed: Entries::default(),
            filter,
            filtered: None,
            iptables: crate::iptables::Selection::choose(args.iptables_backend),
            metrics: metrics.clone(),
            node_check: p.node_check,
            cni: CniConf::new(args.cni_conf_dir.as_deref(), args.cni_conflist.as_deref()),
        };
        if args.big_tcp {
            match node.big_tcp() {
                Some(big) => {
                    tracing::info!(underlay = %node.underlay.link.name, sizes = %big, "BIG TCP: pods take the underlay's GSO/GRO sizes")
                }
                None => {
                    tracing::warn!(underlay = %node.underlay.link.name, "--big-tcp is on but the underlay's GSO/GRO sizes are the kernel's 64 KiB: pods keep them")
                }
            }
        }
        node
    }
}

/// The node reconciled once, the policy started, node.json written: ready.
pub(super) async fn go_ready(node: &mut Node, args: &Args, metrics: &Arc<Metrics>) -> Result<()> {
    node.full_reconcile().await?;
    // The plugin's notice socket exists before node.json does, so that no pod is
    // added on this node before NetworkPolicy can cover it.
    if args.network_policy {
        crate::policy::start(
            crate::policy::Settings {
                node: node.name.clone(),
                state_dir: args.state_dir.clone(),
                kubeconfig: args.kubeconfig.clone(),
                bridge: args.bridge.clone(),
            },
            metrics.clone(),
        )
        .await?;
    }
    node.write_state()?;
    if let Some(c) = &node.cni {
        metrics.status.set(
            Cause::CniConf,
            format!("{} is not installed yet", c.path().display()),
        );
    }
    metrics.ready.store(true, Relaxed);
    metrics.status.clear(Cause::Starting);
    node.keep_cni_conf();
    tracing::info!(peers = node.view.peers.len(), "ready");
    Ok(())
}

/// A random ID of this process, held in the node's liveness key beside the machine's.
fn instance_id() -> Result<String> {
    let b: [u8; 8] = crate::datapath::random_bytes("an instance ID")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
