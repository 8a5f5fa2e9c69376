//! The flags that reach etcd, shared by `leases` and `check` (the same as ferry-overlayd's).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use ipam::lease::{EtcdOptions, Registry};

#[derive(clap::Args, Clone)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated.
    #[arg(long, env = "FERRY_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of ferry's data in etcd.
    #[arg(long, env = "FERRY_ETCD_PREFIX", default_value = "/ferry")]
    pub etcd_prefix: String,
    /// CA certificate (PEM) to verify etcd.
    #[arg(long, env = "FERRY_ETCD_CACERT", value_name = "FILE")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM); goes with --etcd-key.
    #[arg(
        long,
        env = "FERRY_ETCD_CERT",
        value_name = "FILE",
        requires = "etcd_key"
    )]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM); goes with --etcd-cert.
    #[arg(
        long,
        env = "FERRY_ETCD_KEY",
        value_name = "FILE",
        requires = "etcd_cert"
    )]
    pub etcd_key: Option<PathBuf>,
    /// How long to wait for etcd before giving up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub etcd_timeout: Duration,
}

impl EtcdArgs {
    pub fn given(&self) -> bool {
        !self.etcd_endpoints.is_empty()
    }

    pub async fn connect(&self) -> Result<Registry> {
        anyhow::ensure!(
            self.given(),
            "pass --etcd-endpoints (or set FERRY_ETCD_ENDPOINTS)"
        );
        let opts = EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            cacert: self.etcd_cacert.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            timeout: self.etcd_timeout,
        };
        Ok(Registry::connect(&opts, &self.etcd_prefix).await?)
    }
}

/// A runtime for one command's etcd requests.
pub fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
