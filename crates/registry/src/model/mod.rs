//! The cluster config and leases as data, and the decisions about them: the config
//! ([`config`]), one family's pod network and its subnets ([`family`]), and the lease
//! records with their checks ([`lease`]).

pub mod config;
pub mod family;
pub mod lease;

pub use config::{
    check_vxlan, ClusterConfig, ConfigFlags, DEFAULT_PORT, DEFAULT_SUBNET_LEN,
    DEFAULT_SUBNET_LEN_V6, DEFAULT_VNI,
};
pub use family::{
    overlap, pick_free, Cluster, ClusterV4, ClusterV6, FamilyNet, MAX_SUBNET_LEN,
    MAX_SUBNET_LEN_V6, MIN_CLUSTER_PREFIX, MIN_CLUSTER_PREFIX_V6,
};
pub use lease::{
    check_lease, parse_mac, resolve, LeaseRecord, LeaseView, Refused, StoredLease, Usage,
};

#[cfg(test)]
mod tests;
