//! The daemon: set the node up once, then keep it true.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;
use netlink::{Link, Netlink, VxlanSpec};
use node_ipam::NodeState;
use registry::{
    ClusterConfig, ConfigFlags, LeaseError, LeaseEvent, LeaseRecord, Registry, Usage,
    WatchResponse, WatchStream,
};
use tokio::signal::unix::{signal, SignalKind};

use crate::args::Args;
use crate::datapath::{self, VXLAN_OVERHEAD};
use crate::metrics::Metrics;
use crate::peers::{diff, Entries, Peer};
use crate::underlay::{self, Underlay};
use crate::{health, rules};

/// How often etcd leases are refreshed, and the liveness key's lifetime.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
const ALIVE_TTL: Duration = Duration::from_secs(20);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct Node {
    args: Args,
    name: String,
    nl: Netlink,
    cfg: ClusterConfig,
    underlay: Underlay,
    me: LeaseRecord,
    vx_spec: VxlanSpec,
    vx: Link,
    peers: BTreeMap<Ipv4Network, Peer>,
    programmed: Entries,
    metrics: Arc<Metrics>,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub async fn run(args: Args) -> Result<()> {
    let name = args.node_name.clone().unwrap_or_else(hostname);
    anyhow::ensure!(
        !name.is_empty() && !name.contains('/'),
        "invalid node name {name:?}: pass --node-name"
    );
    let metrics = Arc::new(Metrics::default());
    // Bind first: a port in use is a configuration error worth failing on at once.
    let health = match args.health_addr {
        Some(addr) => Some(health::bind(addr).await?),
        None => None,
    };

    let nl = Netlink::open().context("netlink")?;
    let underlay = underlay::find(&nl, args.iface.as_deref(), args.public_ip).await?;
    anyhow::ensure!(
        args.etcd.given(),
        "--etcd-endpoints (or FERRY_ETCD_ENDPOINTS) is required"
    );
    let mut reg = args.etcd.connect().await?;
    let flags = ConfigFlags {
        cluster_cidr: args.cluster_cidr,
        subnet_len: args.subnet_len,
        vni: args.vni,
        port: args.port,
    };
    let cfg = reg.cluster_config(&flags).await?;

    // The VTEP MAC survives restarts: the device's own, else the one in our lease.
    let vx_name = format!("ferry.{}", cfg.vni);
    let existing = nl.get_link(&vx_name).await?.filter(|l| l.vxlan.is_some());
    let previous = reg.lease_of(&name).await?;
    let mac = match (&existing, &previous) {
        (Some(l), _) if l.mac.len() == 6 => l.mac.as_slice().try_into().expect("6 bytes"),
        (_, Some(p)) => p.vtep_mac_bytes().unwrap_or(datapath::random_mac()?),
        _ => datapath::random_mac()?,
    };
    let vx_spec = VxlanSpec {
        name: vx_name,
        vni: cfg.vni,
        port: cfg.port,
        local: underlay.ip,
        dev: underlay.link.index,
        mtu: underlay.link.mtu - VXLAN_OVERHEAD,
        mac,
    };
    // The device and the routes to every other node come first, the lease second: when
    // this node's address changed, the others switch to it only once it can answer there.
    let vx = datapath::ensure_vxlan(&nl, &vx_spec).await?;
    let (leases, _) = reg.list().await?;
    let others: Vec<Peer> = leases
        .iter()
        .filter(|l| l.node != name)
        .filter_map(peer)
        .collect();
    let early = diff(
        &Entries::desired(&others),
        &datapath::read(&nl, vx.index).await?,
    );
    datapath::apply(&nl, vx.index, &early).await;

    let prefer = node_ipam::node_state::read(&args.state_dir)
        .ok()
        .flatten()
        .and_then(|s| s.pod_cidr.parse().ok());
    let acquired = reg
        .acquire(
            &cfg,
            &name,
            underlay.ip,
            &netlink::format_mac(&mac),
            args.lease_grace,
            prefer,
        )
        .await?;
    tracing::info!(
        node = %name, subnet = %acquired.record.subnet, public_ip = %underlay.ip,
        vtep_mac = %acquired.record.vtep_mac, reused = acquired.reused, "subnet leased"
    );

    let mut node = Node {
        args: args.clone(),
        name,
        nl,
        cfg,
        underlay,
        me: acquired.record,
        vx_spec,
        vx,
        peers: BTreeMap::new(),
        programmed: Entries::default(),
        metrics: metrics.clone(),
    };
    let (leases, rev) = reg.list().await?;
    node.set_peers(leases);
    node.full_reconcile().await?;
    node.write_state()?;
    metrics.ready.store(true, Relaxed);
    metrics.etcd_connected.store(true, Relaxed);
    tracing::info!(peers = node.peers.len(), "ready");

    if let Some(listener) = health {
        tokio::spawn(health::serve(listener, metrics.clone()));
    }
    let usage = UsageSource {
        store: node_ipam::Store::new(&args.ipam_data_dir),
        capacity: capacity(node.me.subnet),
    };
    let alive_lease = Arc::new(AtomicI64::new(0));
    tokio::spawn(keep_alive(
        reg.clone(),
        node.name.clone(),
        acquired.grace_lease,
        usage,
        metrics.clone(),
        alive_lease.clone(),
    ));
    let result = node.follow(reg.clone(), rev).await;
    // Stopping on purpose: say so at once rather than when the liveness key times out.
    let id = alive_lease.load(Relaxed);
    if id != 0 {
        let _ = tokio::time::timeout(Duration::from_secs(1), reg.revoke(id)).await;
    }
    result
}

/// Where the node's address usage comes from: the IPAM store's snapshot (no lock taken).
struct UsageSource {
    store: node_ipam::Store,
    capacity: u32,
}

impl UsageSource {
    fn read(&self) -> Option<Usage> {
        let data = self.store.snapshot().ok()?;
        Some(Usage {
            used: data.allocations.len() as u32,
            capacity: self.capacity,
        })
    }
}

/// Host addresses of a node subnet but the gateway.
fn capacity(subnet: Ipv4Network) -> u32 {
    (1u32 << (32 - u32::from(subnet.prefix()))).saturating_sub(3)
}

/// Refreshes the subnet lease and the liveness key for as long as the daemon runs, and
/// publishes the node's address usage when it changed (at most once per refresh: cheap
/// for etcd however fast pods come and go).
async fn keep_alive(
    mut reg: Registry,
    node: String,
    grace: i64,
    usage: UsageSource,
    metrics: Arc<Metrics>,
    alive_lease: Arc<AtomicI64>,
) {
    let mut alive: Option<i64> = None;
    let mut published: Option<Usage> = None;
    let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
    loop {
        tick.tick().await;
        match reg.keep_alive(grace).await {
            Ok(_) => {}
            Err(LeaseError::Expired(_)) => {
                // Only after a whole grace period without etcd: the subnet may be someone
                // else's now. A restart leases afresh (and gets it back if still free).
                tracing::error!(
                    "this node's subnet lease expired; exiting so that a restart leases again"
                );
                std::process::exit(1);
            }
            Err(e) => {
                metrics.etcd_errors.fetch_add(1, Relaxed);
                tracing::warn!("keep subnet lease alive: {e}");
            }
        }
        let refreshed = match alive {
            Some(id) => reg.keep_alive(id).await.map(drop),
            None => Err(LeaseError::Expired(0)),
        };
        if refreshed.is_err() {
            published = None;
            match reg.set_alive(&node, ALIVE_TTL).await {
                Ok(id) => {
                    alive = Some(id);
                    alive_lease.store(id, Relaxed);
                }
                Err(e) => {
                    alive = None;
                    metrics.etcd_errors.fetch_add(1, Relaxed);
                    tracing::warn!("publish liveness: {e}");
                }
            }
        }
        if let (Some(id), Some(now)) = (alive, usage.read()) {
            if published != Some(now) {
                match reg.set_usage(&node, now, id).await {
                    Ok(()) => published = Some(now),
                    Err(e) => {
                        metrics.etcd_errors.fetch_add(1, Relaxed);
                        tracing::warn!("publish usage: {e}");
                    }
                }
            }
        }
    }
}

async fn next(watch: &mut Option<WatchStream>) -> Result<Option<WatchResponse>, String> {
    match watch {
        Some(w) => w.message().await.map_err(|e| e.to_string()),
        None => std::future::pending().await,
    }
}

impl Node {
    fn set_peers(&mut self, leases: Vec<LeaseRecord>) {
        self.metrics
            .leases_known
            .store(leases.len() as u64, Relaxed);
        self.peers = leases
            .into_iter()
            .filter(|l| l.node != self.name && l.subnet != self.me.subnet)
            .filter_map(|l| peer(&l))
            .map(|p| (p.subnet, p))
            .collect();
    }

    /// Follows the leases until SIGTERM or SIGINT: watch events are applied as they come,
    /// the whole data path is checked on a timer, a lost etcd is retried with backoff and
    /// followed by a full resync.
    async fn follow(&mut self, mut reg: Registry, rev: i64) -> Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut resync = tokio::time::interval(self.args.resync_interval);
        resync.tick().await;
        let mut watch = Some(reg.watch(rev + 1).await?);
        let mut backoff = Duration::from_millis(100);
        let mut retry_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = term.recv() => return self.stop("SIGTERM"),
                _ = int.recv() => return self.stop("SIGINT"),
                msg = next(&mut watch) => match msg {
                    Ok(Some(resp)) if !resp.canceled() => {
                        let mut changed = false;
                        for ev in resp.events() {
                            changed |= self.on_event(reg.event(ev));
                        }
                        if changed {
                            self.apply_changes().await;
                        }
                    }
                    other => {
                        let why = match other {
                            Ok(Some(r)) => format!("watch canceled: {}", r.cancel_reason()),
                            Ok(None) => "watch ended".to_string(),
                            Err(e) => e,
                        };
                        tracing::warn!("etcd: {why}; keeping the data path as it is and retrying");
                        self.metrics.etcd_errors.fetch_add(1, Relaxed);
                        self.metrics.etcd_connected.store(false, Relaxed);
                        watch = None;
                        retry_at = tokio::time::Instant::now() + backoff;
                    }
                },
                _ = tokio::time::sleep_until(retry_at), if watch.is_none() => {
                    match self.relist(&mut reg).await {
                        Ok(w) => {
                            tracing::info!("etcd is back: resynced");
                            watch = Some(w);
                            backoff = Duration::from_millis(100);
                            self.metrics.etcd_connected.store(true, Relaxed);
                        }
                        Err(e) => {
                            self.metrics.etcd_errors.fetch_add(1, Relaxed);
                            tracing::debug!("etcd still unreachable: {e:#}");
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            retry_at = tokio::time::Instant::now() + backoff;
                        }
                    }
                }
                _ = resync.tick() => {
                    if let Err(e) = self.full_reconcile().await {
                        tracing::warn!("resync: {e:#}");
                    }
                }
            }
        }
    }

    fn stop(&self, sig: &str) -> Result<()> {
        tracing::info!("{sig}: exiting; the data path stays in place");
        Ok(())
    }

    async fn relist(&mut self, reg: &mut Registry) -> Result<WatchStream> {
        let (leases, rev) = reg.list().await?;
        self.set_peers(leases);
        self.full_reconcile().await?;
        Ok(reg.watch(rev + 1).await?)
    }

    /// Records one lease change; true when the peers changed.
    fn on_event(&mut self, ev: Option<LeaseEvent>) -> bool {
        match ev {
            Some(LeaseEvent::Put(rec)) if rec.node != self.name && rec.subnet != self.me.subnet => {
                let Some(p) = peer(&rec) else {
                    tracing::warn!(node = %rec.node, "lease with an unreadable VTEP MAC {:?}; ignored", rec.vtep_mac);
                    return false;
                };
                let old = self.peers.insert(p.subnet, p);
                if old.is_none() {
                    let n = self.metrics.leases_known.fetch_add(1, Relaxed) + 1;
                    tracing::info!(node = %rec.node, subnet = %rec.subnet, leases = n, "node joined");
                }
                old != Some(p)
            }
            Some(LeaseEvent::Delete(subnet)) if subnet == self.me.subnet => {
                tracing::error!(subnet = %subnet, "this node's lease was deleted in etcd; the next restart leases again");
                false
            }
            Some(LeaseEvent::Delete(subnet)) => {
                let gone = self.peers.remove(&subnet).is_some();
                if gone {
                    self.metrics.leases_known.fetch_sub(1, Relaxed);
                    tracing::info!(subnet = %subnet, "node lease gone");
                }
                gone
            }
            _ => false,
        }
    }

    /// Applies the difference between the peers and what was last programmed.
    async fn apply_changes(&mut self) {
        let want = Entries::desired(self.peers.values());
        let ops = diff(&want, &self.programmed);
        let failed = datapath::apply(&self.nl, self.vx.index, &ops).await;
        self.metrics
            .reconcile_errors
            .fetch_add(failed as u64, Relaxed);
        self.set_programmed(want);
    }

    fn set_programmed(&mut self, e: Entries) {
        let (n, f, r) = e.len();
        self.metrics.neighs.store(n as u64, Relaxed);
        self.metrics.fdb.store(f as u64, Relaxed);
        self.metrics.routes.store(r as u64, Relaxed);
        self.programmed = e;
    }

    /// Checks everything against what it should be and mends what differs: the device,
    /// its address, the bridge, the node-wide rules, and every peer's entries.
    async fn full_reconcile(&mut self) -> Result<()> {
        let start = Instant::now();
        let vx = datapath::ensure_vxlan(&self.nl, &self.vx_spec).await?;
        if vx.index != self.vx.index {
            tracing::warn!(device = %vx.name, "VXLAN device was missing or replaced; recreated");
        }
        self.vx = vx;
        datapath::ensure_vtep_addr(&self.nl, &self.vx, self.me.subnet).await?;
        let gw = datapath::gateway(self.me.subnet);
        self.nl
            .ensure_bridge(
                &self.args.bridge,
                netlink::bridge_mac(gw),
                gw,
                self.me.subnet.prefix(),
            )
            .await?;
        rules::ensure_sysctls()?;
        if rules::ensure_iptables(self.cfg.cluster_cidr)? {
            tracing::info!("iptables rules installed");
        }
        let have = datapath::read(&self.nl, self.vx.index).await?;
        let want = Entries::desired(self.peers.values());
        let ops = diff(&want, &have);
        if !ops.is_empty() && self.metrics.ready.load(Relaxed) {
            self.metrics.repairs.fetch_add(1, Relaxed);
            let shown: Vec<String> = ops.iter().take(5).map(|o| format!("{o:?}")).collect();
            tracing::warn!(ops = ops.len(), first = %shown.join(", "), "kernel differed from the leases; mending");
        }
        let failed = datapath::apply(&self.nl, self.vx.index, &ops).await;
        self.metrics
            .reconcile_errors
            .fetch_add(failed as u64, Relaxed);
        self.set_programmed(want);
        let micros = start.elapsed().as_micros() as u64;
        self.metrics.reconciles.fetch_add(1, Relaxed);
        self.metrics.reconcile_micros_last.store(micros, Relaxed);
        self.metrics.reconcile_micros_sum.fetch_add(micros, Relaxed);
        Ok(())
    }

    /// Writes node.json when it differs from what is there.
    fn write_state(&self) -> Result<()> {
        let st = NodeState {
            node_name: self.name.clone(),
            pod_cidr: self.me.subnet.to_string(),
            cluster_cidr: self.cfg.cluster_cidr.to_string(),
            gateway: datapath::gateway(self.me.subnet),
            mtu: self.underlay.link.mtu - VXLAN_OVERHEAD,
        };
        if node_ipam::node_state::read(&self.args.state_dir)
            .ok()
            .flatten()
            .as_ref()
            != Some(&st)
        {
            node_ipam::node_state::write(&self.args.state_dir, &st).with_context(|| {
                format!(
                    "write {}",
                    node_ipam::node_state::path(&self.args.state_dir).display()
                )
            })?;
        }
        Ok(())
    }
}

fn peer(l: &LeaseRecord) -> Option<Peer> {
    Some(Peer {
        subnet: l.subnet,
        public_ip: l.public_ip,
        mac: l.vtep_mac_bytes()?,
    })
}
