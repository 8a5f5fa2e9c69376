//! The etcd side of leases: connect, cluster config, list, watch, keep alive; leasing
//! subnets is in [`acquire`], the liveness key in [`liveness`], the errors in [`error`],
//! the key layout in [`crate::layout`].

mod acquire;
mod error;
mod liveness;

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use ipnetwork::IpNetwork;

use super::layout::Layout;
use super::model::{ClusterConfig, ConfigFlags, LeaseRecord, StoredLease, Usage};
pub use acquire::Acquired;
pub use error::LeaseError;
use error::{describe, transient, Result};
pub use liveness::{Claimed, Liveness};

#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Per request, and for connecting.
    pub timeout: Duration,
}

/// A lease as stored: its key, its record (or why it does not parse), its etcd lease.
#[derive(Debug, Clone)]
pub struct LeaseEntry {
    pub key: String,
    pub record: std::result::Result<LeaseRecord, String>,
    /// 0: the key never expires (a reservation, or written by hand).
    pub lease_id: i64,
}

#[derive(Clone)]
pub struct Registry {
    client: Client,
    layout: Layout,
}

pub(super) fn etcd(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> LeaseError {
    let what = what.into();
    move |source| LeaseError::Etcd { what, source }
}

fn read(path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| LeaseError::TlsFile {
        path: path.clone(),
        source,
    })
}

impl Registry {
    /// Connects and makes one request, so that an unreachable etcd is reported here,
    /// naming the endpoints, within `opts.timeout`.
    pub async fn connect(opts: &EtcdOptions, prefix: &str) -> Result<Registry> {
        let endpoints = opts.endpoints.join(",");
        let mut co = ConnectOptions::new()
            .with_connect_timeout(opts.timeout)
            .with_timeout(opts.timeout)
            .with_keep_alive(Duration::from_secs(10), opts.timeout);
        if opts.cacert.is_some() || opts.cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &opts.cacert {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            match (&opts.cert, &opts.key) {
                (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
                (None, None) => {}
                _ => {
                    return Err(LeaseError::Unreachable {
                        endpoints,
                        detail: "--etcd-cert and --etcd-key go together".into(),
                    })
                }
            }
            co = co.with_tls(tls);
        }
        let unreachable = |detail: String| LeaseError::Unreachable {
            endpoints: endpoints.clone(),
            detail,
        };
        // The client connects lazily: what fails here is the endpoints' form or the TLS
        // settings, which no retry mends.
        let client = tokio::time::timeout(opts.timeout, Client::connect(&opts.endpoints, Some(co)))
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", opts.timeout)))?
            .map_err(|e| LeaseError::Endpoints {
                endpoints: endpoints.clone(),
                detail: describe(&e),
            })?;
        let mut r = Registry {
            client,
            layout: Layout::new(prefix),
        };
        let probe = r.layout.config();
        match tokio::time::timeout(opts.timeout, r.client.get(probe, None)).await {
            Err(_) => Err(unreachable(format!("no answer within {:?}", opts.timeout))),
            Ok(Err(e)) if transient(&e) => Err(unreachable(describe(&e))),
            Ok(Err(source)) => Err(LeaseError::Etcd {
                what: format!("first request to {endpoints}"),
                source,
            }),
            Ok(Ok(_)) => Ok(r),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The stored cluster config, created from the flags when there is none. Flags that
    /// contradict a stored config are an error, never an overwrite; so is a config, stored
    /// or from the flags, that overlaps `underlay` (this node's own networks).
    pub async fn cluster_config(
        &mut self,
        flags: &ConfigFlags,
        underlay: &[IpNetwork],
    ) -> Result<ClusterConfig> {
        let key = self.layout.config();
        for _ in 0..5 {
            let (cfg, stored) = self.planned_config(flags, underlay).await?;
            if stored {
                return Ok(cfg);
            }
            let value = serde_json::to_vec(&cfg).expect("config serializes");
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.clone(), value, None)]);
            if self.commit(txn, "create cluster config").await? {
                return Ok(cfg);
            }
            // Another node created it first: read theirs and compare.
        }
        Err(LeaseError::Contention(5))
    }

    /// The cluster config this node would run with, writing nothing: the stored one
    /// checked against the flags and `underlay`, else the one the flags make (checked
    /// alike); and whether it is the stored one. Every error `cluster_config` gives for a
    /// config comes from here, so that it can be known before anything is written.
    pub async fn planned_config(
        &mut self,
        flags: &ConfigFlags,
        underlay: &[IpNetwork],
    ) -> Result<(ClusterConfig, bool)> {
        let key = self.layout.config();
        if let Some(cfg) = self.read_config().await? {
            cfg.check_underlay(underlay)
                .map_err(|detail| LeaseError::BadConfig {
                    key: key.clone(),
                    detail,
                })?;
            cfg.check_flags(flags)
                .map_err(|detail| LeaseError::Conflict {
                    key: key.clone(),
                    detail,
                })?;
            return Ok((cfg, true));
        }
        let cfg = ClusterConfig::from_flags(flags)
            .ok_or_else(|| LeaseError::NoConfig { key: key.clone() })?;
        cfg.validate()
            .and_then(|()| cfg.check_underlay(underlay))
            .map_err(|detail| LeaseError::BadConfig {
                key: format!("{key} (from the flags)"),
                detail,
            })?;
        Ok((cfg, false))
    }

    /// Every lease key as stored, parsed or not (`model::resolve` decides what to use),
    /// and the revision they were read at (to watch from).
    pub async fn list(&mut self, cfg: &ClusterConfig) -> Result<(Vec<StoredLease>, i64)> {
        // Dual-stack: who owns each IPv6 subnet, as the index says (read first: a lease
        // made in between is only missing its owner, and judged among the records).
        let mut owners = std::collections::HashMap::new();
        if !cfg.v6_only() && cfg.ipv6.is_some() {
            let (kvs, _) = self
                .get_prefix(self.layout.leases_v6(), false, "list IPv6 index")
                .await?;
            for kv in kvs {
                if let Some(s6) = self.layout.subnet_v6_of(&String::from_utf8_lossy(kv.key())) {
                    owners.insert(s6, String::from_utf8_lossy(kv.value()).into_owned());
                }
            }
        }
        let (kvs, rev) = self
            .get_prefix(self.layout.records(cfg.v6_only()), false, "list leases")
            .await?;
        let leases = kvs
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let record: std::result::Result<LeaseRecord, String> =
                    serde_json::from_slice(kv.value()).map_err(|e| e.to_string());
                let v6_owner = record
                    .as_ref()
                    .ok()
                    .and_then(|r| owners.get(&r.subnet_v6?).cloned());
                StoredLease {
                    key_subnet: self.layout.net_of(&key),
                    key,
                    record,
                    create_revision: kv.create_revision(),
                    v6_owner,
                }
            })
            .collect();
        Ok((leases, rev))
    }

    /// Every lease key, parsed or not, with its etcd lease (`v6_only`: the records of an
    /// IPv6-only cluster).
    pub async fn entries(&mut self, v6_only: bool) -> Result<Vec<LeaseEntry>> {
        let (kvs, _) = self
            .get_prefix(self.layout.records(v6_only), false, "list leases")
            .await?;
        Ok(kvs
            .iter()
            .map(|kv| LeaseEntry {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                record: serde_json::from_slice(kv.value()).map_err(|e| e.to_string()),
                lease_id: kv.lease(),
            })
            .collect())
    }

    /// Runs a transaction; whether its conditions held.
    pub(super) async fn commit(&mut self, txn: Txn, what: &str) -> Result<bool> {
        Ok(self.client.txn(txn).await.map_err(etcd(what))?.succeeded())
    }

    /// Every key under `prefix` (with values unless `keys_only`), and the revision read at.
    pub(super) async fn get_prefix(
        &mut self,
        prefix: String,
        keys_only: bool,
        what: &str,
    ) -> Result<(Vec<KeyValue>, i64)> {
        let mut opts = GetOptions::new().with_prefix();
        if keys_only {
            opts = opts.with_keys_only();
        }
        let mut resp = self
            .client
            .get(prefix, Some(opts))
            .await
            .map_err(etcd(what))?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok((resp.take_kvs(), rev))
    }

    /// The value at `key`, if any.
    pub(super) async fn get_one(&mut self, key: String, what: &str) -> Result<Option<KeyValue>> {
        let mut resp = self.client.get(key, None).await.map_err(etcd(what))?;
        Ok(resp.take_kvs().into_iter().next())
    }

    /// The stored cluster config, if there is one (never creates it); one that does not
    /// parse or is not valid is an error naming the key.
    pub async fn read_config(&mut self) -> Result<Option<ClusterConfig>> {
        let key = self.layout.config();
        let Some(kv) = self.get_one(key.clone(), "read cluster config").await? else {
            return Ok(None);
        };
        let bad = |detail: String| LeaseError::BadConfig {
            key: key.clone(),
            detail,
        };
        let cfg: ClusterConfig =
            serde_json::from_slice(kv.value()).map_err(|e| bad(e.to_string()))?;
        cfg.validate().map_err(bad)?;
        Ok(Some(cfg))
    }

    /// Seconds an etcd lease has left; `None` when it has expired or does not exist.
    pub async fn ttl(&mut self, lease_id: i64) -> Result<Option<i64>> {
        let ttl = self
            .client
            .lease_time_to_live(lease_id, None)
            .await
            .map_err(etcd("read lease TTL"))?
            .ttl();
        Ok((ttl > 0).then_some(ttl))
    }

    /// Publishes how many addresses `node` uses, on its liveness lease (gone with it).
    pub async fn set_usage(&mut self, node: &str, usage: Usage, lease: i64) -> Result<()> {
        self.client
            .put(
                self.layout.usage(node),
                serde_json::to_vec(&usage).expect("usage serializes"),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(etcd("publish usage"))?;
        Ok(())
    }

    /// What every node publishes of its usage.
    pub async fn usage(&mut self) -> Result<std::collections::HashMap<String, Usage>> {
        let prefix = self.layout.usage_prefix();
        let (kvs, _) = self.get_prefix(prefix.clone(), false, "list usage").await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                let node = String::from_utf8_lossy(kv.key())
                    .strip_prefix(&prefix)?
                    .to_string();
                Some((node, serde_json::from_slice(kv.value()).ok()?))
            })
            .collect())
    }

    /// Watches every lease record from `revision` on.
    pub async fn watch(&mut self, cfg: &ClusterConfig, revision: i64) -> Result<WatchStream> {
        self.client
            .watch(
                self.layout.records(cfg.v6_only()),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision),
                ),
            )
            .await
            .map_err(etcd("watch leases"))
    }

    /// Refreshes an etcd lease once; an expired lease is an error.
    pub async fn keep_alive(&mut self, id: i64) -> Result<i64> {
        let (mut keeper, mut stream) = self
            .client
            .lease_keep_alive(id)
            .await
            .map_err(etcd("keep lease alive"))?;
        keeper
            .keep_alive()
            .await
            .map_err(etcd("keep lease alive"))?;
        let ttl = stream
            .message()
            .await
            .map_err(etcd("keep lease alive"))?
            .map(|r| r.ttl())
            .unwrap_or(0);
        if ttl <= 0 {
            return Err(LeaseError::Expired(id));
        }
        Ok(ttl)
    }

    /// Ends an etcd lease (and with it the keys on it).
    pub async fn revoke(&mut self, id: i64) -> Result<()> {
        self.client
            .lease_revoke(id)
            .await
            .map_err(etcd("revoke lease"))?;
        Ok(())
    }
}
