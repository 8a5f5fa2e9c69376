use std::net::IpAddr;
use std::path::PathBuf;

use ferry_cni::Code;

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid IPAM configuration: {0}")]
    Config(String),
    #[error("node state {path} not found: ferry-overlayd has not written it yet (is it running on this node?), or set ipam.subnet for a static subnet")]
    NodeStateMissing { path: PathBuf },
    #[error("node state {path} is unreadable: {detail}")]
    NodeStateInvalid { path: PathBuf, detail: String },
    #[error("no free address in {range} ({} addresses, all allocated)", crate::config::show_capacity(*capacity))]
    Exhausted { range: String, capacity: u128 },
    #[error("container {container_id} interface {ifname} already holds {ip}")]
    AlreadyAllocated {
        container_id: String,
        ifname: String,
        ip: IpAddr,
    },
    #[error("IPAM store {path}: {source}")]
    StoreIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("IPAM store lock {path} is held by another process: gave up after {}s (a stuck ferry, ferry-ipam, or someone else holding it; find it with `fuser {}`)", waited.as_secs(), path.display())]
    LockTimeout {
        path: PathBuf,
        waited: std::time::Duration,
    },
    #[error("IPAM store {path} does not parse ({detail}); run `ferry-ipam check`")]
    StoreCorrupt { path: PathBuf, detail: String },
    #[error("no allocation for container {container_id} interface {ifname}")]
    NotFound {
        container_id: String,
        ifname: String,
    },
}

impl IpamError {
    pub fn code(&self) -> Code {
        match self {
            IpamError::Config(_) => Code::InvalidConfig,
            IpamError::NodeStateMissing { .. } | IpamError::NodeStateInvalid { .. } => {
                Code::TryAgainLater
            }
            IpamError::LockTimeout { .. } => Code::TryAgainLater,
            IpamError::Exhausted { .. } => Code::PoolExhausted,
            IpamError::AlreadyAllocated { .. } => Code::AlreadyAllocated,
            IpamError::StoreIo { .. } | IpamError::StoreCorrupt { .. } => Code::Store,
            IpamError::NotFound { .. } => Code::CheckFailed,
        }
    }
}

impl From<IpamError> for ferry_cni::Error {
    fn from(e: IpamError) -> Self {
        ferry_cni::Error::new(e.code(), e.to_string())
    }
}
