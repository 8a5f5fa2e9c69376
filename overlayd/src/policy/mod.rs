//! NetworkPolicy on this node (`--network-policy`): the Kubernetes API watched for
//! NetworkPolicy, ClusterNetworkPolicy (when its CRD is installed), Namespace, Pod and Node
//! objects (`watch`), the node's nftables table kept equal
//! to the state computed from them by the `netpol` crate (`engine`), the plugin's notices
//! of new pods answered once the table covers them (`notices`), connections a change no
//! longer allows cut from conntrack (`conntrack`), and denials counted and logged.
//!
//! The API unreachable: the last state stays enforced, `/readyz` says not ready, and the
//! watches relist when it is back. A pod the plugin announces before the API has shown
//! it (or whose namespace's policies are not known yet) starts closed: isolated both ways
//! with nothing allowed, until its labels are known.
//!
//! A local pod is known by every address it can send from or be reached at: the API's,
//! and its link-local address, which ferry derives from its MAC (`ferry_netlink::pod_link_local`,
//! the one the plugin gives it); and by its port on the node bridge (found by the MAC its
//! host-side veth carries), where multicast and broadcast reach it.

mod conntrack;
mod denylog;
mod engine;
mod explain;
mod notices;
mod watch;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::metrics::Metrics;

/// What the policy side needs from the daemon's flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub state_dir: PathBuf,
    /// None: in-cluster configuration, else `$KUBECONFIG`, else `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The node bridge, whose ports (the pods' host-side veths) the bridge table names.
    pub bridge: String,
}

/// Starts watching the API, the engine and the notice socket. Fails only on what an
/// operator must fix (an unreadable kubeconfig, a socket path that cannot be bound); an
/// API that does not answer yet is retried in the background.
pub async fn start(settings: Settings, metrics: Arc<Metrics>) -> Result<()> {
    let client = watch::client(settings.kubeconfig.as_deref()).await?;
    let (notice_tx, notice_rx) = tokio::sync::mpsc::channel(256);
    let listener = notices::bind(&settings.state_dir).with_context(|| {
        format!(
            "NetworkPolicy: the plugin's socket in {}",
            settings.state_dir.display()
        )
    })?;
    metrics
        .policy
        .enabled
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let stores = watch::start(client, metrics.clone());
    let view = denylog::View::default();
    denylog::spawn(view.clone());
    tokio::spawn(notices::serve(listener, notice_tx));
    tokio::spawn(engine::run(
        settings.node,
        settings.bridge,
        stores,
        notice_rx,
        metrics,
        view,
    ));
    Ok(())
}
