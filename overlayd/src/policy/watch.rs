//! The API's NetworkPolicy, ClusterNetworkPolicy, Namespace, Pod and Node objects, each
//! kept by a watcher that lists, watches, relists after `410 Gone`, and backs off while the
//! API is unreachable (the store keeps its last state meanwhile). Namespaces and policies
//! are kept in `kube` reflector stores; pods, by far the most numerous, and Nodes (needed
//! only for the `nodes` peers of ClusterNetworkPolicy) are converted as they arrive and
//! only what policy needs of them is kept ([`SlimStore`]).
//!
//! ClusterNetworkPolicy is a CRD (network-policy-api v0.2.0) that a cluster may not have:
//! while its list answers `404`, the kind counts as listed and empty (NetworkPolicy alone
//! is enforced, the node is ready) and is asked again every [`CRD_RECHECK`], so that
//! installing the CRD later starts enforcing it without a restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Result;
use ferry_netpol::{ClusterNetworkPolicy, ModelError, NodeInfo};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::api_retry::Retry;
use crate::metrics::Metrics;

/// How often a ClusterNetworkPolicy list that answered `404` (no CRD) is tried again: the
/// CRD is installed by hand, once; a check every half minute is no load and starts
/// enforcement soon enough after.
pub const CRD_RECHECK: Duration = Duration::from_secs(30);

/// Each watched kind's place in [`Status`].
const NAMESPACES: usize = 0;
const PODS: usize = 1;
const POLICIES: usize = 2;
const CLUSTER_POLICIES: usize = 3;
const NODES: usize = 4;
const KINDS: usize = 5;

/// The stores and a signal raised on every change to any of them.
#[derive(Clone)]
pub struct Stores {
    pub namespaces: Store<Namespace>,
    pub pods: PodStore,
    pub policies: Store<NetworkPolicy>,
    /// Empty while the API serves no ClusterNetworkPolicy (its CRD not installed).
    pub cluster_policies: Store<ClusterNetworkPolicy>,
    pub nodes: NodeStore,
    pub changed: Arc<Notify>,
    pub status: Arc<Status>,
}

/// What a [`SlimStore`] keeps of each object of a kind, made when the watch delivers it.
pub trait Slim: Sized + Send + Sync + 'static {
    type Object;

    fn key(object: &Self::Object) -> ObjectKey;
    fn of(object: &Self::Object) -> Self;
    /// Whether `self` and `other` are the same to policy (then replacing one with the
    /// other is no change worth a round).
    fn same(&self, other: &Self) -> bool;
}

/// A pod as policy needs it, converted when the watch delivers it.
pub struct SlimPod {
    /// None when the object cannot be used at all (no namespace or name).
    pub pod: Option<ferry_netpol::Pod>,
    /// What was wrong with the object (reported, and left out of `pod`).
    pub errors: Vec<ModelError>,
    /// Being deleted (`metadata.deletionTimestamp` set).
    pub terminating: bool,
}

impl Slim for SlimPod {
    type Object = Pod;

    fn key(pod: &Pod) -> ObjectKey {
        (
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default(),
        )
    }

    fn of(pod: &Pod) -> SlimPod {
        let (p, errors) = ferry_netpol::Pod::from_k8s(pod);
        SlimPod {
            pod: p,
            errors,
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }

    fn same(&self, _: &Self) -> bool {
        // Pods change what policy sees in most updates (addresses, labels, phase): not
        // worth comparing.
        false
    }
}

/// A Node as `nodes` peers need it: its name, labels and addresses, or why it cannot be
/// used.
pub type SlimNode = Result<NodeInfo, ModelError>;

impl Slim for SlimNode {
    type Object = Node;

    fn key(node: &Node) -> ObjectKey {
        (
            String::new(),
            node.metadata.name.clone().unwrap_or_default(),
        )
    }

    fn of(node: &Node) -> SlimNode {
        ferry_netpol::model::node_from_k8s(node)
    }

    fn same(&self, other: &Self) -> bool {
        // A Node's status is rewritten often (conditions, images); its labels and
        // addresses seldom: only those make a round.
        self == other
    }
}

/// `(namespace, name)`; the namespace is empty for a cluster-scoped kind.
pub type ObjectKey = (String, String);

struct SlimMap<S> {
    live: BTreeMap<ObjectKey, S>,
    /// A relist in progress: it replaces `live` when complete, so that the last state
    /// stays in force until then.
    relist: Option<BTreeMap<ObjectKey, S>>,
}

impl<S> Default for SlimMap<S> {
    fn default() -> Self {
        SlimMap {
            live: BTreeMap::new(),
            relist: None,
        }
    }
}

/// The API's objects of one kind, as [`Slim`] values by namespace and name.
pub struct SlimStore<S>(Arc<RwLock<SlimMap<S>>>);

impl<S> Clone for SlimStore<S> {
    fn clone(&self) -> Self {
        SlimStore(self.0.clone())
    }
}

impl<S> Default for SlimStore<S> {
    fn default() -> Self {
        SlimStore(Arc::default())
    }
}

/// The API's pods.
pub type PodStore = SlimStore<SlimPod>;
/// The API's Nodes.
pub type NodeStore = SlimStore<SlimNode>;

impl<S: Slim> SlimStore<S> {
    /// Takes one watch event; whether what policy sees changed.
    fn apply(&self, event: &watcher::Event<S::Object>) -> bool {
        let Ok(mut m) = self.0.write() else {
            return false;
        };
        match event {
            watcher::Event::Init => {
                m.relist = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(o) => {
                if let Some(r) = m.relist.as_mut() {
                    r.insert(S::key(o), S::of(o));
                }
                false
            }
            watcher::Event::InitDone => {
                if let Some(r) = m.relist.take() {
                    m.live = r;
                }
                true
            }
            watcher::Event::Apply(o) => {
                let (key, slim) = (S::key(o), S::of(o));
                let same = m.live.get(&key).is_some_and(|before| before.same(&slim));
                m.live.insert(key, slim);
                !same
            }
            watcher::Event::Delete(o) => m.live.remove(&S::key(o)).is_some(),
        }
    }

    /// Runs `f` over the objects as they are now.
    pub fn with<T>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &S>) -> T) -> T {
        match self.0.read() {
            Ok(m) => f(&mut m.live.values()),
            Err(_) => f(&mut std::iter::empty()),
        }
    }
}

/// Whether each watch has listed once and is up now.
#[derive(Default)]
pub struct Status {
    listed: [AtomicBool; KINDS],
    up: [AtomicBool; KINDS],
}

impl Status {
    /// Every kind listed at least once: the state is complete, if perhaps old.
    pub fn listed(&self) -> bool {
        self.listed.iter().all(|b| b.load(Relaxed))
    }

    /// Every watch is up now.
    pub fn up(&self) -> bool {
        self.up.iter().all(|b| b.load(Relaxed))
    }
}

/// A client from `kubeconfig`, else the in-cluster configuration (or `$KUBECONFIG`).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    Ok(ferry_kube_registry::client::connect(kubeconfig).await?)
}

/// Starts the watches.
pub fn start(client: Client, metrics: Arc<Metrics>) -> Stores {
    let changed = Arc::new(Notify::new());
    let status = Arc::new(Status::default());
    let watch = |slot, kind, crd| Watch {
        slot,
        kind,
        crd,
        changed: changed.clone(),
        status: status.clone(),
        metrics: metrics.clone(),
        absent: Arc::default(),
    };
    let namespaces = spawn(
        Api::<Namespace>::all(client.clone()),
        watch(NAMESPACES, "namespaces", None),
    );
    let pods = PodStore::default();
    let store = pods.clone();
    spawn_with(
        Api::<Pod>::all(client.clone()),
        watch(PODS, "pods", None),
        move |ev| store.apply(ev),
    );
    let policies = spawn(
        Api::<NetworkPolicy>::all(client.clone()),
        watch(POLICIES, "networkpolicies", None),
    );
    let cluster_policies = spawn(
        Api::<ClusterNetworkPolicy>::all(client.clone()),
        watch(CLUSTER_POLICIES, "clusternetworkpolicies", Some(CNP_CRD)),
    );
    let nodes = NodeStore::default();
    let store = nodes.clone();
    spawn_with(
        Api::<Node>::all(client),
        watch(NODES, "nodes", None),
        move |ev| store.apply(ev),
    );
    Stores {
        namespaces,
        pods,
        policies,
        cluster_policies,
        nodes,
        changed,
        status,
    }
}

/// A kind defined by a CRD the cluster may lack, as the log names it.
pub struct Crd {
    /// `<plural>.<group>`, as the API server names a resource.
    resource: &'static str,
    /// Where the CRD comes from.
    from: &'static str,
    /// What is enforced without it.
    without: &'static str,
}

const CNP_CRD: &Crd = &Crd {
    resource: "clusternetworkpolicies.policy.networking.k8s.io",
    from: "network-policy-api v0.2.0",
    without: "NetworkPolicy only",
};

/// What a watched kind must be for kube's watcher and reflector.
trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

fn spawn<K: Watched>(api: Api<K>, watch: Watch) -> Store<K> {
    let (reader, mut writer) = reflector::store();
    spawn_with(api, watch, move |ev| {
        writer.apply_watcher_event(ev);
        !matches!(ev, watcher::Event::Init | watcher::Event::InitApply(_))
    });
    reader
}

/// The bookkeeping of one kind's watch: its slot in [`Status`], the change signal, the
/// error count, and, for a kind of a CRD, whether the API serves it.
struct Watch {
    slot: usize,
    kind: &'static str,
    crd: Option<&'static Crd>,
    changed: Arc<Notify>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    /// The API answered `404` for the kind (its CRD is not installed).
    absent: Arc<AtomicBool>,
}

impl Watch {
    /// After an event the API sent and the store took (`changed`: what policy sees did).
    fn took(&self, listed: bool, changed: bool) {
        if !self.status.up[self.slot].swap(true, Relaxed) {
            tracing::info!(kind = self.kind, "NetworkPolicy: watching the API");
        }
        if listed {
            self.status.listed[self.slot].store(true, Relaxed);
            if let Some(crd) = self.crd {
                if self.absent.swap(false, Relaxed) {
                    tracing::info!(
                        "ClusterNetworkPolicy: the API serves {} now (its CRD was installed): enforcing it",
                        crd.resource
                    );
                }
            }
        }
        if changed {
            self.changed.notify_one();
        }
    }

    /// After a failed list or watch. `clear` empties the kind's store (a list of none).
    fn failed(&self, e: &watcher::Error, clear: impl FnOnce()) {
        if let Some(crd) = self.crd.filter(|_| not_found(e)) {
            // No CRD, so no such objects: an answer, not an outage.
            let first = !self.absent.swap(true, Relaxed);
            if first {
                tracing::warn!(
                    "ClusterNetworkPolicy: the API serves no {} (the CRD of {} is not installed): enforcing {}; checking again every {}s",
                    crd.resource,
                    crd.from,
                    crd.without,
                    CRD_RECHECK.as_secs()
                );
                clear();
            }
            self.status.listed[self.slot].store(true, Relaxed);
            self.status.up[self.slot].store(true, Relaxed);
            if first {
                self.changed.notify_one();
            }
            return;
        }
        self.metrics.policy.api_errors.fetch_add(1, Relaxed);
        if self.status.up[self.slot].swap(false, Relaxed) {
            tracing::warn!(
                kind = self.kind,
                "NetworkPolicy: the API watch failed, enforcing the last known state: {e}"
            );
        }
    }
}

/// Whether the API said it has no such resource.
fn not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

/// [`Retry`], but every [`CRD_RECHECK`] while the kind's CRD is absent.
struct CrdRetry {
    retry: Retry,
    absent: Arc<AtomicBool>,
}

impl Iterator for CrdRetry {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.absent.load(Relaxed) {
            return Some(CRD_RECHECK);
        }
        self.retry.next()
    }
}

impl kube::runtime::utils::Backoff for CrdRetry {
    /// As [`Retry`]'s: only contact with the API resets the delays.
    fn reset(&mut self) {}
}

/// Starts the watch of one kind, handing every event to `apply`, which says whether what
/// policy sees changed.
fn spawn_with<K: Watched>(
    api: Api<K>,
    watch: Watch,
    mut apply: impl FnMut(&watcher::Event<K>) -> bool + Send + 'static,
) {
    let retry = CrdRetry {
        retry: Retry::default(),
        absent: watch.absent.clone(),
    };
    let contact = retry.retry.contact.clone();
    let stream = watcher(api, watcher::Config::default()).backoff(retry);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(ev) => {
                    let changed = apply(&ev);
                    // Every attempt to list begins with `Init`, before any request: only
                    // what the API sent proves it answers.
                    if matches!(ev, watcher::Event::Init) {
                        continue;
                    }
                    contact.store(true, Relaxed);
                    watch.took(matches!(ev, watcher::Event::InitDone), changed);
                }
                Err(e) => watch.failed(&e, || {
                    apply(&watcher::Event::Init);
                    apply(&watcher::Event::InitDone);
                }),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use watcher::Event;

    fn pod(ns: &str, name: &str, ip: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"app": name}},
            "status": {"podIPs": [{"ip": ip}]}
        }))
        .unwrap()
    }

    fn names(s: &PodStore) -> Vec<String> {
        s.with(|all| {
            all.filter_map(|p| {
                p.pod
                    .as_ref()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
            })
            .collect()
        })
    }

    fn node(name: &str, zone: &str, ip: &str, heartbeat: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"zone": zone}},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}],
                       "conditions": [{"type": "Ready", "status": "True",
                                       "lastHeartbeatTime": heartbeat}]}
        }))
        .unwrap()
    }

    #[test]
    fn nodes_are_kept_slim_and_a_status_beat_is_no_change() {
        let s = NodeStore::default();
        assert!(s.apply(&Event::Apply(node(
            "n1",
            "a",
            "192.0.2.1",
            "2026-12-07T00:00:00Z"
        ))));
        assert!(
            !s.apply(&Event::Apply(node(
                "n1",
                "a",
                "192.0.2.1",
                "2026-12-07T00:00:10Z"
            ))),
            "a heartbeat changes nothing policy sees"
        );
        assert!(s.apply(&Event::Apply(node(
            "n1",
            "b",
            "192.0.2.1",
            "2026-12-07T00:00:10Z"
        ))));
        assert!(s.apply(&Event::Apply(node(
            "n1",
            "b",
            "192.0.2.9",
            "2026-12-07T00:00:10Z"
        ))));
        let nameless: Node = serde_json::from_value(serde_json::json!({"metadata": {}})).unwrap();
        s.apply(&Event::Apply(nameless));
        s.with(|all| {
            let all: Vec<&SlimNode> = all.collect();
            assert_eq!(all.len(), 2);
            assert!(
                all.iter().any(|n| n.is_err()),
                "the nameless one is reported"
            );
            let n1 = all.iter().find_map(|n| n.as_ref().ok()).unwrap();
            assert_eq!(n1.labels["zone"], "b");
            assert_eq!(n1.ips, ["192.0.2.9".parse::<std::net::IpAddr>().unwrap()]);
        });
        assert!(s.apply(&Event::Delete(node(
            "n1",
            "b",
            "192.0.2.9",
            "2026-12-07T00:00:10Z"
        ))));
        assert!(!s.apply(&Event::Delete(node(
            "n1",
            "b",
            "192.0.2.9",
            "2026-12-07T00:00:10Z"
        ))));
    }

    fn api_error(code: u16) -> watcher::Error {
        watcher::Error::InitialListFailed(kube::Error::Api(
            kube::core::Status::failure(
                "the server could not find the requested resource",
                "NotFound",
            )
            .with_code(code)
            .boxed(),
        ))
    }

    fn watch(crd: Option<&'static Crd>) -> Watch {
        Watch {
            slot: CLUSTER_POLICIES,
            kind: "clusternetworkpolicies",
            crd,
            changed: Arc::default(),
            status: Arc::default(),
            metrics: Arc::default(),
            absent: Arc::default(),
        }
    }

    #[test]
    fn a_crd_not_installed_is_listed_and_empty_and_asked_again_slowly() {
        let w = watch(Some(CNP_CRD));
        let mut cleared = 0;
        w.failed(&api_error(404), || cleared += 1);
        w.failed(&api_error(404), || cleared += 1);
        assert_eq!(cleared, 1, "the store is emptied once, when the CRD goes");
        assert!(w.status.listed[CLUSTER_POLICIES].load(Relaxed));
        assert!(w.status.up[CLUSTER_POLICIES].load(Relaxed));
        assert_eq!(
            w.metrics.policy.api_errors.load(Relaxed),
            0,
            "a 404 is no API error"
        );
        let mut retry = CrdRetry {
            retry: Retry::default(),
            absent: w.absent.clone(),
        };
        assert_eq!(retry.next(), Some(CRD_RECHECK));
        // The CRD is installed: its list succeeds, and retries are quick again.
        w.took(true, true);
        assert!(!w.absent.load(Relaxed));
        assert!(retry.next() < Some(Duration::from_secs(1)));
        // Another failure is an outage like any other.
        w.failed(&api_error(500), || cleared += 1);
        assert_eq!(w.metrics.policy.api_errors.load(Relaxed), 1);
        assert!(!w.status.up[CLUSTER_POLICIES].load(Relaxed));
        assert_eq!(cleared, 1);
    }

    #[test]
    fn a_404_of_a_core_kind_is_an_api_error() {
        let w = watch(None);
        w.failed(&api_error(404), || {
            panic!("a core kind's store is never emptied")
        });
        assert_eq!(w.metrics.policy.api_errors.load(Relaxed), 1);
        assert!(!w.status.listed[CLUSTER_POLICIES].load(Relaxed));
        assert!(!w.absent.load(Relaxed));
        assert!(!not_found(&api_error(403)));
        assert!(not_found(&watcher::Error::WatchError(
            kube::core::Status::failure("gone", "NotFound")
                .with_code(404)
                .boxed()
        )));
    }

    #[test]
    fn a_relist_replaces_the_pods_only_when_complete() {
        let s = PodStore::default();
        s.apply(&Event::Apply(pod("x", "a", "10.1.0.1")));
        s.apply(&Event::Apply(pod("x", "b", "10.1.0.2")));
        s.apply(&Event::Delete(pod("x", "a", "10.1.0.1")));
        assert_eq!(names(&s), ["x/b"]);
        s.apply(&Event::Init);
        s.apply(&Event::InitApply(pod("y", "c", "10.1.0.3")));
        assert_eq!(names(&s), ["x/b"], "the last state holds during a relist");
        s.apply(&Event::InitDone);
        assert_eq!(names(&s), ["y/c"]);
        // A stray InitApply outside a relist changes nothing.
        s.apply(&Event::InitApply(pod("z", "d", "10.1.0.4")));
        assert_eq!(names(&s), ["y/c"]);
    }

    #[test]
    fn a_bad_pod_keeps_its_errors_and_what_can_be_used() {
        let s = PodStore::default();
        s.apply(&Event::Apply(pod("x", "a", "not-an-ip")));
        let nameless: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"deletionTimestamp": "2026-11-22T00:00:00Z"},
            "status": {"podIPs": [{"ip": "10.1.0.9"}]}
        }))
        .unwrap();
        s.apply(&Event::Apply(nameless));
        s.with(|all| {
            let all: Vec<&SlimPod> = all.collect();
            assert_eq!(all.len(), 2);
            assert!(all.iter().all(|p| !p.errors.is_empty()));
            assert!(all.iter().any(|p| p.pod.is_none() && p.terminating));
            assert!(all
                .iter()
                .any(|p| p.pod.as_ref().is_some_and(|p| p.ips.is_empty())));
        });
    }
}
