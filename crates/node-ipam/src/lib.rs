//! Node-local IP address management for ferry.
//!
//! The pool is the node's pod subnet (static, or from the node state that
//! `ferry-overlayd` writes). Allocations live in one JSON document under `dataDir`,
//! replaced atomically under an exclusive lock, so a crash at any instant leaves either
//! the old or the new document and no address is ever handed out twice.

pub mod allocator;
pub mod attachment;
pub mod config;
pub mod drift;
pub mod durable;
pub mod error;
pub mod lease;
pub mod node_state;
pub mod ops;
pub mod peer_paths;
pub mod store;

pub use config::{IpamConf, Pool, Pools};
pub use error::IpamError;
pub use lease::{Lease, LeasedIp, LeasedRoute};
pub use node_state::NodeState;
pub use store::{Allocation, Store, StoreData};
