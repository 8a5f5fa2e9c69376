//! The API's NetworkPolicy, Namespace and Pod objects, each kept in a `kube` reflector
//! store by a watcher that lists, watches, relists after `410 Gone`, and backs off while
//! the API is unreachable (the store keeps its last state meanwhile).

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::metrics::Metrics;

/// The three stores and a signal raised on every change to any of them.
#[derive(Clone)]
pub struct Stores {
    pub namespaces: Store<Namespace>,
    pub pods: Store<Pod>,
    pub policies: Store<NetworkPolicy>,
    pub changed: Arc<Notify>,
    pub status: Arc<Status>,
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
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("use kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("find the Kubernetes API (in-cluster, $KUBECONFIG or ~/.kube/config); or pass --kubeconfig")?,
    };
    Client::try_from(config).context("make a Kubernetes API client")
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
    let pods = spawn(
        Api::<Pod>::all(client.clone()),
        1,
        "pods",
        &changed,
        &status,
        &metrics,
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

fn spawn<K>(
    api: Api<K>,
    slot: usize,
    kind: &'static str,
    changed: &Arc<Notify>,
    status: &Arc<Status>,
    metrics: &Arc<Metrics>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let changed = changed.clone();
    let status = status.clone();
    let metrics = metrics.clone();
    let stream = watcher(api, watcher::Config::default())
        .backoff(Retry::default())
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(ev) => {
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
    reader
}

/// Retries of a failed watch: 0.2 s, doubling to at most 5 s, back to 0.2 s after a
/// success. kube's default waits up to 30 s, so an API back from an outage could go
/// unseen that long; at most one attempt per watch every 5 s is still a light load.
struct Retry {
    next: std::time::Duration,
}

const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(200);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

impl Default for Retry {
    fn default() -> Self {
        Retry { next: RETRY_MIN }
    }
}

impl Iterator for Retry {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<Self::Item> {
        let d = self.next;
        self.next = (self.next * 2).min(RETRY_MAX);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for Retry {
    fn reset(&mut self) {
        self.next = RETRY_MIN;
    }
}
