//! The flags that reach etcd, the same for `ferry-overlayd` and `ferry-ipam`.

use std::path::PathBuf;
use std::time::Duration;

use super::registry::{EtcdOptions, LeaseError, Registry};

#[derive(clap::Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated (https:// with the TLS flags).
    #[arg(long, env = "FERRY_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of ferry's data in etcd.
    #[arg(long, env = "FERRY_ETCD_PREFIX", default_value = "/ferry")]
    pub etcd_prefix: String,
    /// CA certificate (PEM) to verify etcd's certificate.
    #[arg(long, env = "FERRY_ETCD_CACERT", value_name = "FILE")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd; goes with --etcd-key.
    #[arg(
        long,
        env = "FERRY_ETCD_CERT",
        value_name = "FILE",
        requires = "etcd_key"
    )]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd; goes with --etcd-cert.
    #[arg(
        long,
        env = "FERRY_ETCD_KEY",
        value_name = "FILE",
        requires = "etcd_cert"
    )]
    pub etcd_key: Option<PathBuf>,
    /// Timeout of each etcd request, and of connecting.
    #[arg(long, env = "FERRY_ETCD_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub etcd_timeout: Duration,
}

impl EtcdArgs {
    pub fn given(&self) -> bool {
        !self.etcd_endpoints.is_empty()
    }

    pub fn options(&self) -> EtcdOptions {
        EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            cacert: self.etcd_cacert.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            timeout: self.etcd_timeout,
        }
    }

    /// Connects; no endpoints is an error that says how to give them.
    pub async fn connect(&self) -> Result<Registry, LeaseError> {
        if !self.given() {
            return Err(LeaseError::Unreachable {
                endpoints: String::new(),
                detail: "no endpoints: pass --etcd-endpoints (or set FERRY_ETCD_ENDPOINTS)".into(),
            });
        }
        Registry::connect(&self.options(), &self.etcd_prefix).await
    }
}
