//! The API's NetworkPolicy, Namespace and Pod objects, each kept by a watcher that lists,
//! watches, relists after `410 Gone`, and backs off while the API is unreachable (the store
//! keeps its last state meanwhile). Namespaces and policies are kept in `kube` reflector
//! stores; pods, by far the most numerous, are converted as they arrive and only what
//! policy needs of them is kept ([`PodStore`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};

use anyhow::Result;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::api_retry::Retry;
use crate::metrics::Metrics;

/// The three stores and a signal raised on every change to any of them.
#[derive(Clone)]
pub struct Stores {
    pub namespaces: Store<Namespace>,
    pub pods: PodStore,
    pub policies: Store<NetworkPolicy>,
    pub changed: Arc<Notify>,
    pub status: Arc<Status>,
}

/// A pod as policy needs it, converted when the watch delivers it.
pub struct SlimPod {
    /// None when the object cannot be used at all (no namespace or name).
    pub pod: Option<ferry_netpol::Pod>,
    /// What was wrong with the object (reported, and left out of `pod`).
    pub errors: Vec<ferry_netpol::ModelError>,
    /// Being deleted (`metadata.deletionTimestamp` set).
    pub terminating: bool,
}

impl SlimPod {
    fn of(pod: &Pod) -> SlimPod {
        let (p, errors) = ferry_netpol::Pod::from_k8s(pod);
        SlimPod {
            pod: p,
            errors,
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

type PodKey = (String, String);

fn pod_key(pod: &Pod) -> PodKey {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

#[derive(Default)]
struct PodMap {
    live: BTreeMap<PodKey, SlimPod>,
    /// A relist in progress: it replaces `live` when complete, so that the last state
    /// stays in force until then.
    relist: Option<BTreeMap<PodKey, SlimPod>>,
}

/// The API's pods, as [`SlimPod`]s by namespace and name.
#[derive(Clone, Default)]
pub struct PodStore(Arc<RwLock<PodMap>>);

impl PodStore {
    fn apply(&self, event: &watcher::Event<Pod>) {
        let Ok(mut m) = self.0.write() else { return };
        match event {
            watcher::Event::Init => m.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(p) => {
                if let Some(r) = m.relist.as_mut() {
                    r.insert(pod_key(p), SlimPod::of(p));
                }
            }
            watcher::Event::InitDone => {
                if let Some(r) = m.relist.take() {
                    m.live = r;
                }
            }
            watcher::Event::Apply(p) => {
                m.live.insert(pod_key(p), SlimPod::of(p));
            }
            watcher::Event::Delete(p) => {
                m.live.remove(&pod_key(p));
            }
        }
    }

    /// Runs `f` over the pods as they are now.
    pub fn with<T>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &SlimPod>) -> T) -> T {
        match self.0.read() {
            Ok(m) => f(&mut m.live.values()),
            Err(_) => f(&mut std::iter::empty()),
        }
    }
}

/// Whether each watch has listed once and is up now.
#[derive(Default)]
pub struct Status {
    listed: [std::sync::atomic::AtomicBool; 3],
    up: [std::sync::atomic::AtomicBool; 3],
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

/// Starts the three watches.
pub fn start(client: Client, metrics: Arc<Metrics>) -> Stores {
    let changed = Arc::new(Notify::new());
    let status = Arc::new(Status::default());
    let namespaces = spawn(
        Api::<Namespace>::all(client.clone()),
        0,
        "namespaces",
        &changed,
        &status,
        &metrics,
    );
    let pods = PodStore::default();
    let store = pods.clone();
    spawn_with(
        Api::<Pod>::all(client.clone()),
        1,
        "pods",
        &changed,
        &status,
        &metrics,
        move |ev| store.apply(ev),
    );
    let policies = spawn(
        Api::<NetworkPolicy>::all(client),
        2,
        "networkpolicies",
        &changed,
        &status,
        &metrics,
    );
    Stores {
        namespaces,
        pods,
        policies,
        changed,
        status,
    }
}

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

fn spawn<K: Watched>(
    api: Api<K>,
    slot: usize,
    kind: &'static str,
    changed: &Arc<Notify>,
    status: &Arc<Status>,
    metrics: &Arc<Metrics>,
) -> Store<K> {
    let (reader, mut writer) = reflector::store();
    spawn_with(api, slot, kind, changed, status, metrics, move |ev| {
        writer.apply_watcher_event(ev)
    });
    reader
}

/// Starts the watch of one kind, handing every event to `apply`.
fn spawn_with<K: Watched>(
    api: Api<K>,
    slot: usize,
    kind: &'static str,
    changed: &Arc<Notify>,
    status: &Arc<Status>,
    metrics: &Arc<Metrics>,
    mut apply: impl FnMut(&watcher::Event<K>) + Send + 'static,
) {
    let changed = changed.clone();
    let status = status.clone();
    let metrics = metrics.clone();
    let retry = Retry::default();
    let contact = retry.contact.clone();
    let stream = watcher(api, watcher::Config::default()).backoff(retry);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(ev) => {
                    apply(&ev);
                    // Every attempt to list begins with `Init`, before any request: only
                    // what the API sent proves it answers.
                    if matches!(ev, watcher::Event::Init) {
                        continue;
                    }
                    contact.store(true, Relaxed);
                    if !status.up[slot].swap(true, Relaxed) {
                        tracing::info!(kind, "NetworkPolicy: watching the API");
                    }
                    if matches!(ev, watcher::Event::InitDone) {
                        status.listed[slot].store(true, Relaxed);
                    }
                    changed.notify_one();
                }
                Err(e) => {
                    metrics.policy.api_errors.fetch_add(1, Relaxed);
                    if status.up[slot].swap(false, Relaxed) {
                        tracing::warn!(kind, "NetworkPolicy: the API watch failed, enforcing the last known state: {e}");
                    }
                }
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
