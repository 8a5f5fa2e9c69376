//! Node subnet leases and the cluster config in etcd.
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
pub use model::{ClusterConfig, ConfigFlags, LeaseRecord, Usage};
pub use registry::{Acquired, EtcdOptions, LeaseEntry, LeaseError, LeaseEvent, Registry};
