//! The API side: a client, this node's Node read and annotated, every Node listed and
//! watched as [`NodeEntry`]s (the rest of each Node dropped as it arrives).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;

use crate::annotations::{PUBLIC_IP, USAGE, VTEP_MAC};
use crate::entry::NodeEntry;
use crate::slim::SlimNode;
use ferry_registry::Usage;

/// How often, at most, a node's usage annotation is written: every write is a watch event
/// on every node of the cluster, so a busy node must not write on each pod.
pub const USAGE_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("find the Kubernetes API (in-cluster, $KUBECONFIG or ~/.kube/config; or pass --kubeconfig): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("make a Kubernetes API client: {0}")]
    Client(#[source] kube::Error),
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// A client from `kubeconfig`, else the in-cluster configuration (or `$KUBECONFIG`).
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Client, ApiError> {
    let config = match kubeconfig {
        Some(path) => {
            let bad = |source| ApiError::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(bad)?
        }
        None => kube::Config::infer().await.map_err(ApiError::Infer)?,
    };
    Client::try_from(config).map_err(ApiError::Client)
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ApiError {
    let what = what.into();
    move |source| ApiError::Api { what, source }
}

/// This node's Node, `None` when the API has none of that name.
pub async fn get(client: &Client, name: &str) -> Result<Option<NodeEntry>, ApiError> {
    let node = Api::<Node>::all(client.clone())
        .get_opt(name)
        .await
        .map_err(api_error(format!("get Node {name}")))?;
    Ok(node.as_ref().and_then(NodeEntry::of))
}

/// Every Node, a page at a time.
pub async fn list(client: &Client) -> Result<Vec<NodeEntry>, ApiError> {
    let api = Api::<Node>::all(client.clone());
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await.map_err(api_error("list Nodes"))?;
        out.extend(page.items.iter().filter_map(NodeEntry::of));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = params.continue_token(&c),
            None => return Ok(out),
        }
    }
}

/// Writes the node's address and VTEP MAC on its Node, touching no other key.
pub async fn publish(
    client: &Client,
    name: &str,
    public_ip: IpAddr,
    vtep_mac: &str,
) -> Result<(), ApiError> {
    let patch = json!({"metadata": {"annotations": {
        PUBLIC_IP: public_ip.to_string(),
        VTEP_MAC: vtep_mac,
    }}});
    merge(client, name, &patch, "publish the address and VTEP MAC on").await
}

/// Writes the node's usage figure on its Node.
pub async fn publish_usage(client: &Client, name: &str, usage: Usage) -> Result<(), ApiError> {
    let value = serde_json::to_string(&usage).unwrap_or_default();
    let patch = json!({"metadata": {"annotations": {USAGE: value}}});
    merge(client, name, &patch, "publish the usage on").await
}

async fn merge(
    client: &Client,
    name: &str,
    patch: &serde_json::Value,
    what: &str,
) -> Result<(), ApiError> {
    Api::<Node>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(api_error(format!("{what} Node {name}")))?;
    Ok(())
}

/// One change to the Nodes, as the watch reports it.
#[derive(Debug)]
pub enum Change {
    /// A (re)list begins: what follows until `Listed` is the whole set.
    Relisting,
    /// A Node as it is now (added, changed, or listed).
    Seen(NodeEntry),
    /// A Node deleted.
    Gone(String),
    /// The (re)list is complete.
    Listed,
}

/// Every Node, listed then watched, re-listed by kube's watcher after a lost watch
/// (errors are yielded, the stream goes on).
pub fn changes(client: &Client) -> impl Stream<Item = Result<Change, watcher::Error>> + Send {
    let cfg = watcher::Config::default().page_size(500);
    watcher(Api::<SlimNode>::all(client.clone()), cfg).map(|ev| {
        Ok(match ev? {
            watcher::Event::Init => Change::Relisting,
            watcher::Event::InitDone => Change::Listed,
            watcher::Event::Apply(n) | watcher::Event::InitApply(n) => match NodeEntry::of_slim(&n)
            {
                Some(e) => Change::Seen(e),
                // Nameless: nothing to key it by; the API never sends one.
                None => Change::Relisting,
            },
            watcher::Event::Delete(n) => Change::Gone(n.metadata.name.unwrap_or_default()),
        })
    })
}
