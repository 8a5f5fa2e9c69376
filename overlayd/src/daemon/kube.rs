//! The Kubernetes datastore (`--datastore kubernetes`): the node's subnets are its Node's
//! `spec.podCIDRs`, what peers need is published as `ferry.dev/` annotations on it, and
//! every other Node, judged as an etcd lease record is, is a peer. No name to claim and no
//! lease to keep alive: the Node object is the node's identity, the controller-manager
//! owns the subnets, and a Node stays a peer until it is deleted (NotReady included: its
//! pods may still be running).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use ferry_kube_registry::client::{self, Change, USAGE_EVERY};
use ferry_kube_registry::entry::{cluster_config, NO_POD_CIDR};
use ferry_kube_registry::{judge_all, own_record, NodeEntry};
use ferry_netlink::Netlink;
use ferry_registry::model::check_lease;
use ferry_registry::Usage;
use futures_util::{FutureExt, Stream, StreamExt};
use kube::runtime::watcher::Error as WatchError;
use kube::runtime::WatchStreamExt;
use kube::Client;

use super::liveness::{capacity, UsageSource};
use super::startup::{early_routes, go_ready, vxlan, Parts};
use super::view::log_refusal;
use super::Node;
use crate::api_retry::Retry;
use crate::args::Args;
use crate::cni_conf::CniConf;
use crate::identity::{self, NodeLock};
use crate::metrics::Metrics;
use crate::node_check::NodeCheck;
use crate::status::Status;
use crate::underlay;

/// The Node watch as the daemon follows it, with what it has listed so far.
pub(super) struct Watch {
    changes: std::pin::Pin<Box<dyn Stream<Item = Result<Change, WatchError>> + Send>>,
    /// Set when the API sent something: the retry delays start again.
    contact: Arc<std::sync::atomic::AtomicBool>,
    nodes: BTreeMap<String, NodeEntry>,
    listed: bool,
}

impl Watch {
    fn new(client: &Client) -> Watch {
        let retry = Retry::default();
        let contact = retry.contact.clone();
        Watch {
            changes: Box::pin(client::changes(client).backoff(retry)),
            contact,
            nodes: BTreeMap::new(),
            listed: false,
        }
    }

    /// Follows the watch until its first listing is complete, saying in `/readyz` what
    /// keeps it: the one listing start-up and the follow loop share (a second would double
    /// what every restarted daemon asks of the API server in a rollout).
    async fn first_listing(&mut self, status: &Status) -> Result<()> {
        let mut listing = BTreeMap::new();
        let mut told = String::new();
        while let Some(ch) = self.changes.next().await {
            match ch {
                Ok(Change::Relisting) => listing.clear(),
                Ok(Change::Seen(e)) => {
                    listing.insert(e.name.clone(), e);
                }
                Ok(Change::Gone(n)) => {
                    listing.remove(&n);
                }
                Ok(Change::Listed) => {
                    self.contact.store(true, Relaxed);
                    self.nodes = listing;
                    self.listed = true;
                    return Ok(());
                }
                Err(e) => {
                    let why = format!("listing the Nodes: {e}");
                    if why != told {
                        tracing::warn!("waiting: {why}");
                        told = why.clone();
                    }
                    status.step(format!("waiting: {why}"));
                }
            }
        }
        Err(anyhow!("the Node watch ended"))
    }
}

/// The least time between two views of the Nodes while changes keep coming.
const MIN_VIEW_GAP: Duration = Duration::from_millis(50);

/// How long a start-up request waits before it is asked again, at most.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// What a started daemon goes on with.
pub(super) struct Started {
    pub(super) node: Node,
    pub(super) client: Client,
    /// The Node watch, listed once already (unless the start was from node.json).
    pub(super) watch: Watch,
    /// Held for the life of the process.
    pub(super) lock: NodeLock,
}

/// Everything from the node's lock to ready: its Node read (waited for until it has pod
/// CIDRs), the data path to the other Nodes programmed, the address and VTEP MAC
/// published, the node reconciled once, the policy started and node.json written.
pub(super) async fn start(args: &Args, name: String, metrics: &Arc<Metrics>) -> Result<Started> {
    let status = &metrics.status;
    status.step("starting: taking the node's lock");
    let lock = identity::lock(&args.state_dir, status).await?;
    status.step("starting: finding the underlay");
    let nl = Netlink::open().context("netlink")?;
    let underlay = underlay::find(&nl, args.iface.as_deref(), args.public_ip, &args.bridge).await?;
    status.step("starting: connecting to the Kubernetes API");
    let client = client::connect(args.kubeconfig.as_deref()).await?;
    let own_node = || async {
        match client::get(&client, &name).await {
            Ok(Some(e)) if !e.pod_cidrs.is_empty() => Ok(e),
            Ok(Some(_)) => Err((false, format!("Node {name} {NO_POD_CIDR}"))),
            Ok(None) => Err((
                false,
                format!(
                    "no Node {name} in the API (the kubelet registers it; is the node name right?)"
                ),
            )),
            Err(e) => Err((true, format!("the API: {e}"))),
        }
    };
    // A restart while the API is away (an upgrade, an OOM kill during an outage) starts
    // from this node's last state rather than leave the node unable to add pods: its
    // subnets from node.json, the data path kept as the kernel has it until the Nodes are
    // listed again.
    let (own, cached) = match own_node().await {
        Ok(e) => (e, false),
        Err((api_away, why)) => match api_away.then(|| cached_entry(args, &name)).flatten() {
            Some(e) => {
                tracing::warn!(
                    "{why}; starting from this node's last state in node.json, the data path kept as it is until the API answers"
                );
                (e, true)
            }
            None => (
                retried(status, || async {
                    own_node().await.map_err(|(_, why)| why)
                })
                .await,
                false,
            ),
        },
    };
    let flags = args.config_flags();
    let cfg = cluster_config(&flags, &own)
        .and_then(|c| c.check_underlay(&underlay.networks).map(|()| c))
        .map_err(|e| anyhow!("the cluster config (from the flags and Node {name}): {e}"))?;
    let mut node_check = NodeCheck::new();
    status.step("starting: checking the node's sysctls");
    node_check.wait(cfg.ipv6.is_some(), status).await;

    status.step("starting: programming the data path");
    let previous = own
        .vtep_mac
        .as_deref()
        .and_then(ferry_registry::model::parse_mac);
    let (vx_spec, vx) = vxlan(&nl, &cfg, &underlay, previous).await?;
    let mac = ferry_netlink::format_mac(&vx_spec.mac);
    let me = own_record(&cfg, &own, underlay.ip, &mac).map_err(|e| anyhow!("{e}"))?;
    // The Node's own subnets pass the checks every other node will make of them, or no
    // other node would route to this one.
    check_lease(&cfg, &underlay.networks, me.primary(), &me)
        .map_err(|e| anyhow!("Node {name}'s spec.podCIDRs {:?}: {e}", own.pod_cidrs))?;
    let mut watch = Watch::new(&client);
    let reach = if cached {
        crate::peers::Reach::new()
    } else {
        // The routes to every other Node first, the annotations second: when this node's
        // address changed, the others switch to it only once it can answer there.
        status.step("starting: listing the Nodes");
        watch.first_listing(status).await?;
        let judged = judge_all(&cfg, &underlay.networks, watch.nodes.values());
        let reach = early_routes(&nl, args, &vx, &underlay, &judged.view, &name).await?;
        status.step("starting: publishing this node's address on its Node");
        retried(status, || async {
            client::publish(&client, &name, underlay.ip, &mac)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        reach
    };
    tracing::info!(
        node = %name, subnet = ?me.subnet, subnet_v6 = ?me.subnet_v6,
        public_ip = %underlay.ip, vtep_mac = %mac,
        "{}",
        if cached {
            "pod CIDRs from node.json (the API is away); published once it answers"
        } else {
            "pod CIDRs from the Node; address published"
        }
    );
    let mut node = Node::new(
        args,
        Parts {
            name,
            nl,
            cfg,
            underlay,
            me,
            vx_spec,
            vx,
            grace_lease: 0,
            reach,
            node_check,
        },
        metrics,
    );
    if cached {
        // Every subnet the kernel routes now is kept as it is until the Nodes are listed.
        let have = crate::datapath::read(&node.nl, node.vx.index).await?;
        node.view.held = have.routes.keys().copied().collect();
    } else {
        node.take_nodes(watch.nodes.values());
    }
    go_ready(&mut node, args, metrics).await?;
    Ok(Started {
        node,
        client,
        watch,
        lock,
    })
}

/// This node's Node as node.json last knew it (its subnets), when node.json is this
/// node's.
fn cached_entry(args: &Args, name: &str) -> Option<NodeEntry> {
    let st = ferry_node_ipam::node_state::read(&args.state_dir).ok()??;
    let pod_cidrs: Vec<String> = st.pod_cidr.into_iter().chain(st.pod_cidr_v6).collect();
    (st.node_name == name && !pod_cidrs.is_empty()).then(|| NodeEntry {
        name: name.to_string(),
        created: 0,
        pod_cidrs,
        addresses: Vec::new(),
        public_ip: None,
        vtep_mac: None,
        usage: None,
        ready: None,
    })
}

/// Asks `attempt` until it answers, saying in `/readyz` (and the log, once per reason)
/// what it waits for.
async fn retried<T, F, Fut>(status: &Status, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, String>>,
{
    let mut wait = Duration::from_millis(200);
    let mut told = String::new();
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(why) => {
                if why != told {
                    tracing::warn!("waiting: {why}");
                    told = why.clone();
                }
                status.step(format!("waiting: {why}"));
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(MAX_WAIT);
    }
}

impl Node {
    /// The peers from every Node (this node's own left out by `take_view`), and the
    /// Nodes that are not peers yet, each said once.
    fn take_nodes<'a>(&mut self, nodes: impl IntoIterator<Item = &'a NodeEntry>) {
        let judged = judge_all(&self.cfg, &self.underlay.networks, nodes);
        for (n, why) in &judged.pending {
            if *n != self.name {
                tracing::debug!(node = %n, "not a peer yet: Node {n} {why}");
            }
        }
        self.take_view(judged.view);
    }

    /// Whether this node's Node still says what it published; when it does not (edited,
    /// or the Node made again), the annotations are written back.
    async fn defend_annotations(&self, client: &Client, own: Option<&NodeEntry>) {
        let ip = self.underlay.ip.to_string();
        let mac = ferry_netlink::format_mac(&self.vx_spec.mac);
        let Some(own) = own else { return };
        if own.public_ip.as_deref() == Some(ip.as_str())
            && own.vtep_mac.as_deref() == Some(mac.as_str())
        {
            return;
        }
        tracing::warn!(node = %self.name, "this node's ferry.dev/ annotations were removed or changed; written back");
        if let Err(e) = client::publish(client, &self.name, self.underlay.ip, &mac).await {
            self.metrics.api_errors.fetch_add(1, Relaxed);
            tracing::warn!("{e}");
        }
    }

    /// Follows the Nodes until the process is stopped: changes are applied as they come
    /// (a burst in one go), the data path is checked on a timer, the usage published at a
    /// bounded rate. An API outage keeps the data path as it is; kube's watcher lists
    /// again when the API is back.
    pub(super) async fn follow_api(&mut self, client: Client, watch: Watch) -> Result<()> {
        let Watch {
            mut changes,
            contact,
            mut nodes,
            mut listed,
        } = watch;
        let mut relist: Option<BTreeMap<String, NodeEntry>> = None;
        self.metrics.api_connected.store(listed, Relaxed);
        let mut up = true;
        let mut resync = tokio::time::interval(self.args.resync_interval);
        resync.tick().await;
        let mut cni_poll = tokio::time::interval(super::follow::CNI_CONF_POLL);
        let mut usage_tick = tokio::time::interval(USAGE_EVERY);
        let usage = UsageSource {
            store: ferry_node_ipam::Store::new(&self.args.ipam_data_dir),
            capacity: capacity(&self.me),
        };
        let mut published: Option<Usage> = None;
        let mut last_view = tokio::time::Instant::now()
            .checked_sub(MIN_VIEW_GAP)
            .unwrap_or_else(tokio::time::Instant::now);
        let mut due = false;
        loop {
            tokio::select! {
                first = changes.next() => {
                    let Some(first) = first else {
                        return Err(anyhow!("the Node watch ended"));
                    };
                    // The whole burst at once: a rollout patches every Node within
                    // seconds, and one view of all of them is enough.
                    let mut dirty = false;
                    let mut next = Some(first);
                    while let Some(ch) = next {
                        match ch {
                            Ok(ch) => {
                                if !matches!(ch, Change::Relisting) {
                                    contact.store(true, Relaxed);
                                    if !up {
                                        tracing::info!("the API is back: following the Nodes again");
                                        up = true;
                                    }
                                }
                                dirty |= self.note(ch, &mut nodes, &mut relist, &mut listed)?;
                            }
                            Err(e) => {
                                self.metrics.api_errors.fetch_add(1, Relaxed);
                                if up {
                                    tracing::warn!("the API: {e}; keeping the data path as it is and retrying");
                                    up = false;
                                }
                            }
                        }
                        next = changes.next().now_or_never().flatten();
                    }
                    self.metrics.api_connected.store(up && listed, Relaxed);
                    if dirty && listed {
                        // A lone change is applied at once; a storm (every Node patched
                        // in a rollout) at most every MIN_VIEW_GAP, whatever its size.
                        if last_view.elapsed() >= MIN_VIEW_GAP {
                            self.take_nodes(nodes.values());
                            self.apply_changes().await;
                            last_view = tokio::time::Instant::now();
                            due = false;
                        } else {
                            due = true;
                        }
                    }
                }
                _ = tokio::time::sleep_until(last_view + MIN_VIEW_GAP), if due => {
                    self.take_nodes(nodes.values());
                    self.apply_changes().await;
                    last_view = tokio::time::Instant::now();
                    due = false;
                }
                _ = resync.tick() => {
                    if up && listed {
                        self.defend_annotations(&client, nodes.get(&self.name)).await;
                    }
                    if let Err(e) = self.full_reconcile().await {
                        tracing::warn!("resync: {e:#}");
                    }
                    if let Some(line) = self.refusal_log.due(Instant::now()) {
                        log_refusal(line, self.refused.len());
                    }
                    self.keep_cni_conf();
                }
                _ = usage_tick.tick() => {
                    let changed = |u: &Usage| !published.is_some_and(|p| p.same_figure(u));
                    if let Some(now) = usage.read().filter(changed) {
                        match client::publish_usage(&client, &self.name, now.stamped()).await {
                            Ok(()) => published = Some(now),
                            Err(e) => tracing::debug!("{e}"),
                        }
                    }
                }
                _ = cni_poll.tick(), if self.cni.as_ref().is_some_and(CniConf::waiting) => {
                    self.keep_cni_conf();
                }
            }
        }
    }

    /// Takes one change into `nodes` (or the listing in progress); whether the peers may
    /// have changed. This node's pod CIDRs changing is an error: its pods hold addresses
    /// of the old ones, and a restart is how the node takes the new ones.
    fn note(
        &self,
        ch: Change,
        nodes: &mut BTreeMap<String, NodeEntry>,
        relist: &mut Option<BTreeMap<String, NodeEntry>>,
        listed: &mut bool,
    ) -> Result<bool> {
        match ch {
            Change::Relisting => {
                *relist = Some(BTreeMap::new());
                Ok(false)
            }
            Change::Seen(e) => {
                if e.name == self.name {
                    self.check_own(&e)?;
                }
                if let Some(r) = relist {
                    r.insert(e.name.clone(), e);
                    return Ok(false);
                }
                let changed = nodes.get(&e.name).is_none_or(|old| !old.routes_like(&e));
                nodes.insert(e.name.clone(), e);
                Ok(changed)
            }
            Change::Gone(name) => {
                if name == self.name {
                    tracing::warn!(node = %name, "this node's Node was deleted; its routes stay until it is back (the kubelet registers it again)");
                }
                if let Some(r) = relist {
                    r.remove(&name);
                    return Ok(false);
                }
                if nodes.remove(&name).is_some() {
                    tracing::info!(node = %name, "Node deleted");
                    return Ok(true);
                }
                Ok(false)
            }
            Change::Listed => {
                if let Some(r) = relist.take() {
                    *nodes = r;
                }
                *listed = true;
                Ok(true)
            }
        }
    }

    /// Fails when this node's Node names other pod CIDRs than the ones it runs with.
    fn check_own(&self, e: &NodeEntry) -> Result<()> {
        if e.pod_cidrs.is_empty() {
            return Ok(());
        }
        let now = own_record(&self.cfg, e, self.me.public_ip, &self.me.vtep_mac);
        match now {
            Ok(r) if r.subnet == self.me.subnet && r.subnet_v6 == self.me.subnet_v6 => Ok(()),
            _ => Err(anyhow!(
                "Node {}'s spec.podCIDRs are now {:?}, not the {:?}/{:?} this daemon runs with; exiting so that a restart takes them (pods on this node must be restarted to get addresses of them)",
                self.name, e.pod_cidrs, self.me.subnet, self.me.subnet_v6
            )),
        }
    }
}
