//! ferry's cluster registry in etcd: the cluster config, node subnet leases, liveness and
//! usage, linked by `ferry-overlayd` and the `ferry-ipam` CLI, never by the CNI plugin.
//!
//! Layout (`layout`) and the decisions that need no etcd (`model`) are separate from the
//! etcd client (`registry`), so that they are tested without one.

mod args;
pub mod layout;
pub mod model;
mod registry;

pub use args::EtcdArgs;
pub use etcd_client::{WatchResponse, WatchStream};
pub use layout::Layout;
pub use model::{
    ClusterConfig, ClusterV4, ClusterV6, ConfigFlags, LeaseRecord, LeaseView, Refused, StoredLease,
    Usage,
};
pub use registry::{Acquired, Claimed, EtcdOptions, LeaseEntry, LeaseError, Liveness, Registry};
