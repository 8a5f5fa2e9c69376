//! The daemon: set the node up once, then keep it true.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipnetwork::IpNetwork;
use netlink::{Link, Netlink, VxlanSpec};
use node_ipam::NodeState;
use registry::model::resolve;
use registry::{
    ClusterConfig, LeaseError, LeaseRecord, Liveness, Refused, Registry, StoredLease, Usage,
    WatchResponse, WatchStream,
};
use tokio::signal::unix::{signal, SignalKind};

use crate::args::Args;
use crate::cni_conf::CniConf;
use crate::datapath;
use crate::etcd_retry::{etcd, MAX_BACKOFF};
use crate::identity::{self, ALIVE_TTL};
use crate::metrics::Metrics;
use crate::node_check::NodeCheck;
use crate::node_filter::{self, Family, Members, Wrote};
use crate::node_only::NodeOnly;
use crate::peers::{diff, Entries, Hop, Op, Peer, Reach};
use crate::refusals::{Line, RefusalLog};
use crate::status::Cause;
use crate::underlay::Underlay;
use crate::{health, startup};

/// How often etcd leases are refreshed.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
/// How often the CNI config is looked at while it waits for the daemon to be ready.
const CNI_CONF_POLL: Duration = Duration::from_millis(200);

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
    /// Keyed by the subnet their record's key names (`LeaseRecord::primary`).
    peers: BTreeMap<IpNetwork, Peer>,
    /// Each peer's node name, keyed as `peers`.
    names: BTreeMap<IpNetwork, String>,
    /// The peers reached on-link (DirectRouting), as last asked of the kernel.
    reach: Reach,
    /// The path to each peer as last written to peers.json.
    paths: Option<node_ipam::peer_paths::PeerPaths>,
    /// Subnets whose lease cannot be read now and whose node was not known before: what
    /// the kernel has for them is kept.
    held: BTreeSet<IpNetwork>,
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

pub async fn run(args: Args) -> Result<()> {
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
    // Everything runs in here, so that the liveness key is given up on every way out.
    let work = async {
        let startup::Prepared {
            nl,
            underlay,
            mut reg,
            cfg,
            liveness,
            lock: _lock,
            mut retry,
            node_check,
        } = startup::prepare(&args, &metrics, &reg_slot).await?;
        metrics.status.step("starting: claiming this node's name");
        // Before anything of this node is written: no second daemon under one name.
        let alive_id =
            identity::claim_name(&mut reg, &name, &liveness, &mut retry, &metrics.status).await?;
        alive_lease.store(alive_id, Relaxed);
        metrics
            .status
            .step("starting: programming the data path and leasing the subnet");
        // The VTEP MAC survives restarts: the device's own, else the one in our lease.
        let vx_name = datapath::vxlan_name(cfg.vni);
        let existing = nl.get_link(&vx_name).await?.filter(|l| l.vxlan.is_some());
        let previous = etcd!(retry, reg.lease_of(&name));
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
            mtu: underlay.pod_mtu(),
            mac,
        };
        // The device and the routes to every other node come first, the lease second: when
        // this node's address changed, the others switch to it only once it can answer there.
        let vx = datapath::ensure_vxlan(&nl, &vx_spec).await?;
        let (stored, _) = etcd!(retry, reg.list(&cfg));
        let view = resolve(&cfg, &underlay.networks, &stored);
        let family = Family::of(underlay.ip);
        let others: Vec<Peer> = view
            .accepted
            .iter()
            .filter(|l| l.node != name)
            .filter_map(|l| peer(l, family))
            .collect();
        let held: BTreeSet<IpNetwork> = view.unreadable.iter().copied().collect();
        let have = datapath::read(&nl, vx.index).await?;
        let reach = if args.direct_routing {
            datapath::reach(&nl, &others, underlay.link.index).await
        } else {
            Reach::new()
        };
        let early = diff(
            &Entries::desired(&others, &reach).keeping(&held, &have),
            &have,
        );
        datapath::apply_guarded(&nl, vx.index, early).await;

        // The subnet this node had, so that its pods keep their addresses: node.json's, else
        // the one its lease names.
        let state = node_ipam::node_state::read(&args.state_dir).ok().flatten();
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
                &netlink::format_mac(&mac),
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

        let filter = filter_shape(&args, &cfg, underlay.ip);
        let mut node = Node {
            args: args.clone(),
            name,
            nl,
            cfg,
            underlay,
            me: acquired.record,
            vx_spec,
            vx,
            grace_lease: acquired.grace_lease,
            peers: BTreeMap::new(),
            names: BTreeMap::new(),
            reach,
            paths: None,
            held: BTreeSet::new(),
            refused: BTreeSet::new(),
            refusal_log: RefusalLog::default(),
            spared: BTreeSet::new(),
            programmed: Entries::default(),
            filter,
            filtered: None,
            iptables: crate::iptables::Selection::choose(args.iptables_backend),
            metrics: metrics.clone(),
            node_check,
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
        let rev = etcd!(retry, node.refresh(&mut reg));
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
        metrics.etcd_connected.store(true, Relaxed);
        metrics.status.clear(Cause::Starting);
        node.keep_cni_conf();
        tracing::info!(peers = node.peers.len(), "ready");

        let usage = UsageSource {
            store: node_ipam::Store::new(&args.ipam_data_dir),
            capacity: capacity(&node.me),
        };
        tokio::spawn(keep_alive(
            reg.clone(),
            Identity {
                node: node.name.clone(),
                liveness,
            },
            acquired.grace_lease,
            usage,
            metrics.clone(),
            alive_lease.clone(),
        ));
        node.follow(reg.clone(), rev).await
    };
    let result: Result<()> = tokio::select! {
        r = work => r,
        _ = term.recv() => stop("SIGTERM"),
        _ = int.recv() => stop("SIGINT"),
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

fn stop(sig: &str) -> Result<()> {
    tracing::info!("{sig}: exiting; the data path stays in place");
    Ok(())
}

struct Identity {
    node: String,
    liveness: Liveness,
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

/// Host addresses of a node's subnet but the gateway: its IPv4 subnet's, else (IPv6-only)
/// its IPv6 subnet's, at most `u32::MAX`.
fn capacity(me: &LeaseRecord) -> u32 {
    let bits = match (me.subnet, me.subnet_v6) {
        (Some(s), _) => 32 - u32::from(s.prefix()),
        (None, Some(s)) => 128 - u32::from(s.prefix()),
        (None, None) => 0,
    };
    if bits >= 32 {
        return u32::MAX;
    }
    (1u32 << bits).saturating_sub(3)
}

/// Refreshes the subnet lease and the liveness key for as long as the daemon runs, and
/// publishes the node's address usage when it changed (at most once per refresh: cheap
/// for etcd however fast pods come and go).
async fn keep_alive(
    mut reg: Registry,
    me: Identity,
    grace: i64,
    usage: UsageSource,
    metrics: Arc<Metrics>,
    alive_lease: Arc<AtomicI64>,
) {
    let node = me.node;
    let mut alive = Some(alive_lease.load(Relaxed)).filter(|id| *id != 0);
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
            match reg.set_alive(&node, &me.liveness, ALIVE_TTL, false).await {
                Ok(registry::Claimed { lease: id, .. }) => {
                    alive = Some(id);
                    alive_lease.store(id, Relaxed);
                }
                Err(e @ LeaseError::NameInUse { .. }) => {
                    // This daemon was silent long enough for another to take its name:
                    // two must never run as one node, and the other one is alive.
                    tracing::error!("{e}; exiting");
                    std::process::exit(1);
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
    /// Lists the leases, makes them this node's view, and defends its own lease; the
    /// revision read at.
    async fn refresh(&mut self, reg: &mut Registry) -> Result<i64> {
        let (stored, rev) = reg.list(&self.cfg).await?;
        self.set_view(&stored);
        self.defend(reg).await?;
        Ok(rev)
    }

    /// Writes this node's lease back when it was deleted or damaged.
    async fn defend(&mut self, reg: &mut Registry) -> Result<()> {
        if reg.restore_own(&self.me, self.grace_lease).await? {
            let key = self.me.primary().map(|p| reg.layout().record_key(p));
            tracing::warn!(
                key = ?key,
                "this node's lease was deleted or changed in etcd; written back"
            );
        }
        Ok(())
    }

    /// The peers from every stored record, checked and with conflicts settled (the same
    /// on every node), this node's own subnet left out.
    fn set_view(&mut self, stored: &[StoredLease]) {
        let view = resolve(&self.cfg, &self.underlay.networks, stored);
        let refused: BTreeSet<Refused> = view.refused.into_iter().collect();
        let lines = self
            .refusal_log
            .refused(Instant::now(), refused.difference(&self.refused));
        for line in lines {
            log_refusal(line, refused.len());
        }
        self.metrics
            .leases_refused
            .store(refused.len() as u64, Relaxed);
        self.refused = refused;
        self.metrics
            .leases_known
            .store(view.accepted.len() as u64, Relaxed);
        let family = Family::of(self.underlay.ip);
        for l in view
            .accepted
            .iter()
            .filter(|l| Family::of(l.public_ip) != family)
        {
            tracing::debug!(node = %l.node, public_ip = %l.public_ip, "another underlay family than this node's: unreachable over VXLAN");
        }
        let mine = self.me.primary();
        let others = || {
            view.accepted
                .iter()
                .filter(|l| l.node != self.name && l.primary() != mine)
        };
        let mut peers: BTreeMap<IpNetwork, Peer> = others()
            .filter_map(|l| Some((l.primary()?, peer(l, family)?)))
            .collect();
        let mut names: BTreeMap<IpNetwork, String> = others()
            .filter_map(|l| Some((l.primary()?, l.node.clone())))
            .collect();
        let mut held = BTreeSet::new();
        for s in view.unreadable.into_iter().filter(|s| Some(*s) != mine) {
            // The last valid view of that node stays in force.
            match self.peers.get(&s) {
                Some(p) => {
                    peers.insert(s, *p);
                    if let Some(n) = self.names.get(&s) {
                        names.insert(s, n.clone());
                    }
                }
                None => {
                    held.insert(s);
                }
            }
        }
        for (s, p) in &peers {
            if !self.peers.contains_key(s) {
                tracing::info!(subnet = %s, public_ip = %p.public_ip, leases = peers.len() + 1, "node joined");
            }
        }
        for s in self.peers.keys().filter(|s| !peers.contains_key(s)) {
            tracing::info!(subnet = %s, "node lease gone");
        }
        self.peers = peers;
        self.names = names;
        self.held = held;
    }

    /// What the kernel should hold, given what it holds (for held subnets).
    fn desired(&self, have: &Entries) -> Entries {
        Entries::desired(self.peers.values(), &self.reach).keeping(&self.held, have)
    }

    /// Asks the kernel again which peers are on-link: a node that moved to another
    /// segment, or an underlay route that changed, switches path at the next round.
    async fn refresh_reach(&mut self) {
        if !self.args.direct_routing {
            return;
        }
        let peers: Vec<Peer> = self.peers.values().copied().collect();
        self.reach = datapath::reach(&self.nl, &peers, self.underlay.link.index).await;
    }

    /// Writes peers.json (the path to each peer, for `ferry-ipam leases --state-dir`) when
    /// it changed, logging each peer whose path changed.
    fn write_paths(&mut self, programmed: &Entries) {
        use node_ipam::peer_paths::{self, PathKind, PeerPath, PeerPaths};
        let peers: Vec<Peer> = self.peers.values().copied().collect();
        let hops = programmed.paths(&peers);
        let mut out = PeerPaths::default();
        for (s, p) in &self.peers {
            let hop: Option<Hop> = hops.get(&p.public_ip).copied().flatten();
            out.peers.push(PeerPath {
                node: self.names.get(s).cloned().unwrap_or_default(),
                public_ip: p.public_ip,
                path: if hop.is_some() {
                    PathKind::Direct
                } else {
                    PathKind::Vxlan
                },
                device: hop.map(|_| self.underlay.link.name.clone()),
            });
        }
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
        match peer_paths::write(&self.args.state_dir, &out) {
            Ok(()) => self.paths = Some(out),
            Err(e) => tracing::warn!(
                "write {}: {e}",
                peer_paths::path(&self.args.state_dir).display()
            ),
        }
    }

    /// Follows the leases until the process is stopped (`run` ends this on SIGTERM or
    /// SIGINT): watch events are applied as they come, the whole data path is checked on
    /// a timer, a lost etcd is retried with backoff and followed by a full resync.
    async fn follow(&mut self, mut reg: Registry, rev: i64) -> Result<()> {
        let mut resync = tokio::time::interval(self.args.resync_interval);
        resync.tick().await;
        let mut cni_poll = tokio::time::interval(CNI_CONF_POLL);
        // etcd gone since the listing is one more outage, retried below.
        let mut watch = match reg.watch(&self.cfg, rev + 1).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("etcd: {e}; keeping the data path as it is and retrying");
                None
            }
        };
        let mut backoff = Duration::from_millis(100);
        let mut retry_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                msg = next(&mut watch) => match msg {
                    Ok(Some(resp)) if !resp.canceled() => {
                        // Any change is read whole: one record is only judged against
                        // all the others.
                        if !resp.events().is_empty() {
                            match self.refresh(&mut reg).await {
                                Ok(_) => self.apply_changes().await,
                                Err(e) => {
                                    tracing::warn!("etcd: {e:#}; keeping the data path as it is and retrying");
                                    self.metrics.etcd_errors.fetch_add(1, Relaxed);
                                    self.metrics.etcd_connected.store(false, Relaxed);
                                    watch = None;
                                    retry_at = tokio::time::Instant::now() + backoff;
                                }
                            }
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
                    if watch.is_some() {
                        if let Err(e) = self.defend(&mut reg).await {
                            self.metrics.etcd_errors.fetch_add(1, Relaxed);
                            tracing::warn!("resync: {e:#}");
                        }
                    }
                    if let Err(e) = self.full_reconcile().await {
                        tracing::warn!("resync: {e:#}");
                    }
                    // Refusals held back for a summary are told within a resync of it
                    // being due, flood over or not.
                    if let Some(line) = self.refusal_log.due(Instant::now()) {
                        log_refusal(line, self.refused.len());
                    }
                    self.keep_cni_conf();
                }
                // Until the first install: the policy may become ready between resyncs.
                _ = cni_poll.tick(), if self.cni.as_ref().is_some_and(CniConf::waiting) => {
                    self.keep_cni_conf();
                }
            }
        }
    }

    /// Installs or mends the CNI config, once the node can take pods.
    fn keep_cni_conf(&mut self) {
        if let Some(c) = &mut self.cni {
            if self.metrics.data_ready() {
                c.keep(&self.metrics.status);
            }
        }
    }

    async fn relist(&mut self, reg: &mut Registry) -> Result<WatchStream> {
        let rev = self.refresh(reg).await?;
        self.full_reconcile().await?;
        Ok(reg.watch(&self.cfg, rev + 1).await?)
    }

    /// Applies the difference between the peers and what was last programmed.
    async fn apply_changes(&mut self) {
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

    /// Applies `ops` (guarded already), counting the failures.
    async fn apply(&mut self, ops: &[Op]) {
        let failed = datapath::apply(&self.nl, self.vx.index, ops).await;
        self.metrics
            .reconcile_errors
            .fetch_add(failed as u64, Relaxed);
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
    /// its address, the bridge, the node-wide rules, and every peer's entries.
    async fn full_reconcile(&mut self) -> Result<()> {
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
                    .ensure_bridge(&self.args.bridge, netlink::bridge_mac(gw), gw, s.prefix())
                    .await?,
            );
        }
        if let Some(s6) = self.me.subnet_v6 {
            if self.me.subnet.is_none() {
                // The bridge's MAC as the plugin would make it on an IPv6-only node.
                let gw = IpAddr::V6(datapath::gateway_v6(s6));
                bridge = Some(
                    self.nl
                        .ensure_bridge_link(&self.args.bridge, netlink::bridge_mac_of(gw))
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
        }
        self.apply(ops).await;
        self.note_spared(guarded);
        self.write_paths(&now);
        self.set_programmed(now);
        let micros = start.elapsed().as_micros() as u64;
        self.metrics.reconciles.fetch_add(1, Relaxed);
        self.metrics.reconcile_micros_last.store(micros, Relaxed);
        self.metrics.reconcile_micros_sum.fetch_add(micros, Relaxed);
        Ok(())
    }

    /// Turns the VXLAN device's transmit checksum offload off when it is on (a recreated
    /// device, or a hand change, comes back with it on).
    fn checksum_offload_off(&self) -> Result<()> {
        let name = &self.vx.name;
        if netlink::ethtool::tx_checksum(name)? {
            netlink::ethtool::set_tx_checksum(name, false)?;
            tracing::info!(device = %name, "transmit checksum offload turned off (--vxlan-checksum-offload=false)");
        }
        Ok(())
    }

    /// The pods' BIG TCP sizes: the underlay's, when `--big-tcp` asks for them.
    fn big_tcp(&self) -> Option<netlink::BigTcp> {
        self.args.big_tcp.then(|| self.underlay.big_tcp()).flatten()
    }

    /// Writes node.json when it differs from what is there.
    fn write_state(&self) -> Result<()> {
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
            big_tcp: self.big_tcp().map(|b| node_ipam::node_state::BigTcp {
                ipv4: b.ipv4,
                ipv6: b.ipv6,
            }),
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

/// Logs a line about refused lease records; `now`: how many are refused now (a summary
/// may come after the records it counts are gone).
fn log_refusal(line: Line, now: usize) {
    match line {
        Line::One(r) => tracing::warn!(key = %r.key, "lease record refused: {}", r.reason),
        Line::More(n) => tracing::warn!(
            more = n,
            refused_now = now,
            "lease records refused: {n} more, not named one by one (at most {} a minute are); ferry_leases_refused counts them all",
            crate::refusals::NAMED_PER_WINDOW
        ),
    }
}

/// What table inet ferry's rules are made of: this node's underlay address, the cluster
/// CIDRs, the node-only services. An etcd endpoint given by name cannot be a rule: said
/// once.
fn filter_shape(args: &Args, cfg: &ClusterConfig, underlay: IpAddr) -> node_filter::Shape {
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

/// The peer a record makes, when its VTEP is of this node's underlay `family` (a VXLAN
/// device speaks one family).
fn peer(l: &LeaseRecord, family: Family) -> Option<Peer> {
    if Family::of(l.public_ip) != family {
        return None;
    }
    Some(Peer {
        subnet: l.subnet,
        public_ip: l.public_ip,
        mac: l.vtep_mac_bytes()?,
        subnet_v6: l.subnet_v6,
    })
}
