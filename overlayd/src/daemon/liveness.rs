//! Liveness: the subnet lease and the liveness key kept alive, and the node's address
//! usage published, on a timer of its own so that a slow reconcile never lets them lapse.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use ferry_registry::{LeaseError, LeaseRecord, Liveness, Registry, Usage};
use tokio::sync::oneshot;

use crate::identity::ALIVE_TTL;
use crate::metrics::Metrics;

/// How often etcd leases are refreshed.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);

/// Why this daemon can no longer be the node: each ends the process.
#[derive(Debug)]
pub(super) enum Lost {
    /// Only after a whole grace period without etcd: the subnet may be someone else's
    /// now. A restart leases afresh (and gets it back if still free).
    SubnetLease,
    /// This daemon was silent long enough for another to take its name: two must never
    /// run as one node, and the other one is alive.
    Name(LeaseError),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::SubnetLease => f.write_str(
                "this node's subnet lease expired; exiting so that a restart leases again",
            ),
            Lost::Name(e) => write!(f, "{e}; exiting"),
        }
    }
}

pub(super) struct Identity {
    pub(super) node: String,
    pub(super) liveness: Liveness,
}

/// Where the node's address usage comes from: the IPAM store's snapshot (no lock taken).
pub(super) struct UsageSource {
    pub(super) store: ferry_node_ipam::Store,
    pub(super) capacity: u32,
}

impl UsageSource {
    pub(super) fn read(&self) -> Option<Usage> {
        let data = self.store.snapshot().ok()?;
        Some(Usage {
            used: data.allocations.len() as u32,
            capacity: self.capacity,
            at: None,
        })
    }
}

/// Host addresses of a node's subnet but the gateway: its IPv4 subnet's, else (IPv6-only)
/// its IPv6 subnet's, at most `u32::MAX`.
pub(super) fn capacity(me: &LeaseRecord) -> u32 {
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
/// for etcd however fast pods come and go). Ends only when the node is `Lost`, said on
/// `lost`: the daemon's main loop, not a task, decides how the process ends.
pub(super) async fn keep_alive(
    mut reg: Registry,
    me: Identity,
    grace: i64,
    usage: UsageSource,
    metrics: Arc<Metrics>,
    alive_lease: Arc<AtomicI64>,
    lost: oneshot::Sender<Lost>,
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
                let _ = lost.send(Lost::SubnetLease);
                return;
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
                Ok(ferry_registry::Claimed { lease: id, .. }) => {
                    alive = Some(id);
                    alive_lease.store(id, Relaxed);
                }
                Err(e @ LeaseError::NameInUse { .. }) => {
                    let _ = lost.send(Lost::Name(e));
                    return;
                }
                Err(e) => {
                    alive = None;
                    metrics.etcd_errors.fetch_add(1, Relaxed);
                    tracing::warn!("publish liveness: {e}");
                }
            }
        }
        if let (Some(id), Some(now)) = (alive, usage.read()) {
            if !published.is_some_and(|p| p.same_figure(&now)) {
                match reg.set_usage(&node, now.stamped(), id).await {
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
