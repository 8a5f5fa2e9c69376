//! The etcd side of leases: connect, cluster config, acquire, keep alive, list, watch.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::layout::Layout;
use super::model::{
    pick_free, ClusterConfig, ClusterV4, ClusterV6, ConfigFlags, LeaseRecord, StoredLease, Usage,
};

#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Per request, and for connecting.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("etcd at {endpoints} is unreachable: {detail}")]
    Unreachable { endpoints: String, detail: String },
    #[error("etcd {what}: {}", describe(source))]
    Etcd {
        what: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cluster config at {key} in etcd: pass --cluster-cidr (and optionally --subnet-len, --vni, --port) to create it")]
    NoConfig { key: String },
    #[error("cluster config at {key} is invalid: {detail}")]
    BadConfig { key: String, detail: String },
    #[error("flags contradict the cluster config stored at {key}: {detail}; drop the flags or fix the stored config with etcdctl")]
    Conflict { key: String, detail: String },
    #[error(
        "cluster CIDR {cidr} has no free /{len} node subnet left ({count} subnets, all leased)"
    )]
    Exhausted {
        cidr: Ipv4Network,
        len: u8,
        count: u32,
    },
    #[error(
        "IPv6 cluster CIDR {cidr} has no free /{len} node subnet left ({count} subnets, all leased)"
    )]
    ExhaustedV6 {
        cidr: Ipv6Network,
        len: u8,
        count: u32,
    },
    #[error(
        "could not lease a subnet after {0} attempts: too many nodes racing for the same subnets"
    )]
    Contention(u32),
    #[error("etcd lease {0:x} has expired")]
    Expired(i64),
    #[error(
        "another ferry-overlayd is alive as node {node} (its key {key} holds instance {other} \
         of machine {other_machine}, not this one's): refusing to run a second daemon under \
         one name. If that daemon is gone, its key expires within {ttl}s and a restart \
         succeeds; to end it at once: etcdctl del {key}. A new node needs its own --node-name"
    )]
    NameInUse {
        node: String,
        key: String,
        other: String,
        /// The machine ID the key holds ("unknown" from a daemon that wrote none).
        other_machine: String,
        ttl: u64,
    },
    #[error("etcd endpoints {endpoints}: {detail}")]
    Endpoints { endpoints: String, detail: String },
}

impl LeaseError {
    /// Whether the same request may succeed later unchanged: etcd (or the way to it) is
    /// down, slow, or not accepting this client yet. A node that boots may reach etcd's
    /// address only once kube-proxy's rules are back, so these are waited out; anything
    /// else (a flag, a stored config, a name in use) is an answer.
    pub fn is_transient(&self) -> bool {
        match self {
            LeaseError::Unreachable { .. } => true,
            LeaseError::Etcd { source, .. } => transient(source),
            _ => false,
        }
    }
}

/// An error with its causes, each once: the client's own message ("transport error")
/// says nothing of why (connection refused, a certificate refused) without them.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    add_causes(&mut parts, Some(e));
    parts.join(": ")
}

fn add_causes(parts: &mut Vec<String>, mut cur: Option<&(dyn std::error::Error + 'static)>) {
    while let Some(err) = cur {
        let text = err.to_string();
        let said = parts.iter().any(|p| p.contains(&text));
        if !said && text != "transport error" {
            parts.push(text);
        }
        cur = err.source();
    }
}

/// What went wrong, short: a gRPC status's message and causes without its metadata.
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let mut parts = Vec::new();
            if !s.message().is_empty() {
                parts.push(s.message().to_string());
            }
            add_causes(&mut parts, std::error::Error::source(s));
            if parts.is_empty() {
                parts.push(format!("{:?}", s.code()));
            }
            parts.join(": ")
        }
        etcd_client::Error::TransportError(t) => chain(t),
        other => other.to_string(),
    }
}

fn transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::IoError(_) | E::TransportError(_) => true,
        // A refused connection, a failed TLS handshake and a request that timed out all
        // reach the client as one of these.
        E::GRpcStatus(s) => matches!(
            s.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Unknown
                | Code::ResourceExhausted
                | Code::Aborted
        ),
        _ => false,
    }
}

type Result<T> = std::result::Result<T, LeaseError>;

/// The outcome of `acquire`.
#[derive(Debug, Clone)]
pub struct Acquired {
    pub record: LeaseRecord,
    /// The etcd lease that keeps the subnet (TTL: the grace period).
    pub grace_lease: i64,
    /// True when the node got its earlier subnet back.
    pub reused: bool,
}

/// Who publishes a node's liveness: this process (`instance`, random per process) on this
/// machine (`machine`, derived from the node's secret, the same across restarts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Liveness {
    pub instance: String,
    pub machine: String,
}

/// The outcome of `set_alive`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The etcd lease that keeps the key.
    pub lease: i64,
    /// The instance whose key was taken over (a dead predecessor on this machine).
    pub replaced: Option<String>,
}

/// What a liveness key holds, as far as it can be read.
struct Holder {
    instance: String,
    machine: String,
}

impl Holder {
    fn of(value: &[u8]) -> Holder {
        let v = serde_json::from_slice::<serde_json::Value>(value).unwrap_or_default();
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .unwrap_or("unknown")
                .to_string()
        };
        Holder {
            instance: field("instance"),
            machine: field("machine"),
        }
    }
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

fn etcd(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> LeaseError {
    let what = what.into();
    move |source| LeaseError::Etcd { what, source }
}

fn read(path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| LeaseError::TlsFile {
        path: path.clone(),
        source,
    })
}

/// The compare that a subnet's key is free, or still at the revision of the record
/// being taken over.
fn free_or_ours(key: &str, held: Option<i64>) -> Compare {
    match held {
        Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
        None => Compare::version(key, CompareOp::Equal, 0),
    }
}

/// Whether a stored lease value is not another node's record: unreadable, or `node`'s.
fn not_anothers(value: &[u8], node: &str) -> bool {
    serde_json::from_slice::<LeaseRecord>(value).map_or(true, |r| r.node == node)
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

    /// The lease `node` holds now, if any.
    pub async fn lease_of(&mut self, node: &str) -> Result<Option<LeaseRecord>> {
        Ok(self.own_lease(node).await?.map(|(rec, _, _)| rec))
    }

    /// This node's current lease: record, etcd lease ID, the key's mod revision.
    async fn own_lease(&mut self, node: &str) -> Result<Option<(LeaseRecord, i64, i64)>> {
        let Some(idx) = self
            .get_one(self.layout.node(node), "read node index")
            .await?
        else {
            return Ok(None);
        };
        let lease_key = String::from_utf8_lossy(idx.value()).into_owned();
        let Some(kv) = self.get_one(lease_key, "read own lease").await? else {
            return Ok(None);
        };
        match serde_json::from_slice::<LeaseRecord>(kv.value()) {
            Ok(rec) if rec.node == node => Ok(Some((rec, kv.lease(), kv.mod_revision()))),
            _ => Ok(None),
        }
    }

    /// Leases a subnet for `node`: its current one when it has one (updating the public IP
    /// and VTEP MAC if they changed), else `prefer` (the subnet it had, when still free),
    /// else a free one; by a transaction that only succeeds when neither the subnet nor the
    /// node already has a lease, so two nodes never hold one subnet. In a dual-stack
    /// cluster the IPv6 subnet (`prefer_v6` when free) is leased in the same transaction,
    /// on the same etcd lease, with its own index key: kept and expired together. In an
    /// IPv6-only cluster the IPv6 subnet's key holds the record itself.
    #[allow(clippy::too_many_arguments)]
    pub async fn acquire(
        &mut self,
        cfg: &ClusterConfig,
        node: &str,
        public_ip: IpAddr,
        vtep_mac: &str,
        grace: Duration,
        prefer: Option<Ipv4Network>,
        prefer_v6: Option<Ipv6Network>,
    ) -> Result<Acquired> {
        const ATTEMPTS: u32 = 30;
        // Without a subnet from the caller, the one the node index names (its record may
        // be damaged, the index still says which subnet was this node's).
        let indexed = self
            .get_one(self.layout.node(node), "read node index")
            .await?
            .and_then(|kv| self.layout.net_of(&String::from_utf8_lossy(kv.value())));
        let prefer = prefer.or(match indexed {
            Some(IpNetwork::V4(s)) => Some(s),
            _ => None,
        });
        let prefer_v6 = prefer_v6.or(match indexed {
            Some(IpNetwork::V6(s)) => Some(s),
            _ => None,
        });
        let mut h = std::collections::hash_map::DefaultHasher::new();
        node.hash(&mut h);
        let seed = h.finish();
        for attempt in 0..ATTEMPTS {
            if let Some((rec, lease_id, rev)) = self.own_lease(node).await? {
                let shaped = rec.subnet.is_some() == cfg.ipv4.is_some();
                if let Some(primary) = rec.primary().filter(|p| shaped && cfg.holds_any(*p)) {
                    let ttl = self
                        .client
                        .lease_time_to_live(lease_id, None)
                        .await
                        .map_err(etcd("read lease TTL"))?
                        .ttl();
                    if ttl > 0 {
                        let key = self.layout.record_key(primary);
                        let put = || Some(PutOptions::new().with_lease(lease_id));
                        let mut when =
                            vec![Compare::mod_revision(key.clone(), CompareOp::Equal, rev)];
                        let mut then = Vec::new();
                        // A node leased before its cluster had IPv6 (or by a previous
                        // release) gets its IPv6 subnet now, on the lease it has.
                        let subnet_v6 = match (cfg.ipv6, rec.subnet_v6) {
                            (None, _) => None,
                            (Some(v6), Some(s)) if v6.holds(s) => Some(s),
                            (Some(v6), _) => {
                                let (s, held) = self
                                    .free_v6(&v6, prefer_v6, attempt, seed, node, Some(&key))
                                    .await?;
                                let ik = self.layout.lease_v6(s);
                                when.push(free_or_ours(&ik, held));
                                then.push(TxnOp::put(ik, key.clone(), put()));
                                Some(s)
                            }
                        };
                        let want = LeaseRecord {
                            public_ip,
                            vtep_mac: vtep_mac.to_string(),
                            subnet_v6,
                            ..rec.clone()
                        };
                        if want != rec {
                            then.push(TxnOp::put(
                                key,
                                serde_json::to_vec(&want).expect("lease serializes"),
                                put(),
                            ));
                            let txn = Txn::new().when(when).and_then(then);
                            if !self.commit(txn, "update own lease").await? {
                                continue;
                            }
                        }
                        return Ok(Acquired {
                            record: want,
                            grace_lease: lease_id,
                            reused: true,
                        });
                    }
                }
            }
            // A node index left without its lease would block the create below.
            let nk = self.layout.node(node);
            if let Some(kv) = self.get_one(nk.clone(), "read node index").await? {
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        nk.clone(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([TxnOp::delete(nk.clone(), None)]);
                self.commit(txn, "remove stale node index").await?;
            }

            let mut when = vec![Compare::version(nk.clone(), CompareOp::Equal, 0)];
            let subnet = match cfg.ipv4 {
                Some(v4) => {
                    let (s, held) = self.free_v4(&v4, prefer, attempt, seed, node).await?;
                    when.push(free_or_ours(&self.layout.lease(s), held));
                    Some(s)
                }
                None => None,
            };
            // The record's key: the IPv4 subnet's, else (IPv6-only) the IPv6 subnet's.
            let lk_v4 = subnet.map(|s| self.layout.lease(s));
            let subnet_v6 = match cfg.ipv6 {
                Some(v6) => {
                    let (s, held) = self
                        .free_v6(&v6, prefer_v6, attempt, seed, node, lk_v4.as_deref())
                        .await?;
                    when.push(free_or_ours(&self.layout.lease_v6(s), held));
                    Some(s)
                }
                None => None,
            };
            let rec = LeaseRecord {
                node: node.to_string(),
                subnet,
                public_ip,
                vtep_mac: vtep_mac.to_string(),
                subnet_v6,
            };
            let Some(primary) = rec.primary() else {
                // A validated config has a family, so a record has a subnet.
                return Err(LeaseError::BadConfig {
                    key: self.layout.config(),
                    detail: "no cluster CIDR of either family".into(),
                });
            };
            let lk = self.layout.record_key(primary);
            let ttl = i64::try_from(grace.as_secs().max(10)).unwrap_or(i64::MAX);
            let lease_id = self
                .client
                .lease_grant(ttl, None)
                .await
                .map_err(etcd("grant subnet lease"))?
                .id();
            let put = || Some(PutOptions::new().with_lease(lease_id));
            let mut then = vec![
                TxnOp::put(
                    lk.clone(),
                    serde_json::to_vec(&rec).expect("lease serializes"),
                    put(),
                ),
                TxnOp::put(nk, lk.clone(), put()),
            ];
            if let (Some(s6), Some(_)) = (subnet_v6, subnet) {
                then.push(TxnOp::put(self.layout.lease_v6(s6), lk, put()));
            }
            let txn = Txn::new().when(when).and_then(then);
            if self.commit(txn, "create lease").await? {
                return Ok(Acquired {
                    record: rec,
                    grace_lease: lease_id,
                    reused: false,
                });
            }
            let _ = self.client.lease_revoke(lease_id).await;
        }
        Err(LeaseError::Contention(ATTEMPTS))
    }

    /// An IPv4 subnet to lease: `prefer` on the first attempt when it is free, or held by
    /// a record that is not another node's (damaged, or ours: the node's pods keep their
    /// addresses), else a free one. The second value: the mod revision of the record to
    /// take over, when there is one.
    async fn free_v4(
        &mut self,
        v4: &ClusterV4,
        prefer: Option<Ipv4Network>,
        attempt: u32,
        seed: u64,
        node: &str,
    ) -> Result<(Ipv4Network, Option<i64>)> {
        let taken = self.taken().await?;
        if let Some(p) = prefer.filter(|p| attempt == 0 && v4.holds(*p)) {
            if !taken.contains(&p) {
                return Ok((p, None));
            }
            let kv = self
                .get_one(self.layout.lease(p), "read own old lease")
                .await?;
            if let Some(kv) = kv.filter(|kv| not_anothers(kv.value(), node)) {
                return Ok((p, Some(kv.mod_revision())));
            }
        }
        let s = pick_free(
            v4,
            &taken,
            seed.wrapping_add(u64::from(attempt) * 0x9e37_79b9),
        )
        .ok_or(LeaseError::Exhausted {
            cidr: v4.cluster_cidr,
            len: v4.subnet_len,
            count: v4.subnet_count(),
        })?;
        Ok((s, None))
    }

    /// An IPv6 subnet to lease, as `free_v4`: `prefer` (else, in a dual-stack cluster,
    /// the one whose index names `record`, this node's IPv4 lease key) when free or this
    /// node's, else a free one. An IPv6 key is this node's when it indexes `record`
    /// (dual-stack), or (IPv6-only: `record` is `None`) holds a record that is not
    /// another node's.
    async fn free_v6(
        &mut self,
        v6: &ClusterV6,
        prefer: Option<Ipv6Network>,
        attempt: u32,
        seed: u64,
        node: &str,
        record: Option<&str>,
    ) -> Result<(Ipv6Network, Option<i64>)> {
        let (kvs, _) = self
            .get_prefix(self.layout.leases_v6(), false, "list IPv6 subnets")
            .await?;
        let ours = |value: &[u8]| match record {
            Some(lk) => value == lk.as_bytes(),
            None => not_anothers(value, node),
        };
        let mut taken = HashSet::new();
        let mut held = None;
        for kv in &kvs {
            let Some(s) = self.layout.subnet_v6_of(&String::from_utf8_lossy(kv.key())) else {
                continue;
            };
            taken.insert(s);
            if record.is_some() && ours(kv.value()) {
                held = Some(s);
            }
        }
        let prefer = prefer.or(held);
        if let Some(p) = prefer.filter(|p| attempt == 0 && v6.holds(*p)) {
            if !taken.contains(&p) {
                return Ok((p, None));
            }
            let key = self.layout.lease_v6(p);
            let kv = kvs.iter().find(|kv| kv.key() == key.as_bytes());
            if let Some(kv) = kv.filter(|kv| ours(kv.value())) {
                return Ok((p, Some(kv.mod_revision())));
            }
        }
        let s = pick_free(
            v6,
            &taken,
            seed.wrapping_add(u64::from(attempt) * 0x9e37_79b9),
        )
        .ok_or(LeaseError::ExhaustedV6 {
            cidr: v6.cluster_cidr,
            len: v6.subnet_len,
            count: v6.subnet_count(),
        })?;
        Ok((s, None))
    }

    async fn taken(&mut self) -> Result<HashSet<Ipv4Network>> {
        let (kvs, _) = self
            .get_prefix(self.layout.leases(), true, "list leases")
            .await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| self.layout.subnet_of(&String::from_utf8_lossy(kv.key())))
            .collect())
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

    /// Writes this node's lease back when its key is gone or holds anything but `me`
    /// (deleted or damaged by hand): true when it did. The key stays on `grace_lease`.
    pub async fn restore_own(&mut self, me: &LeaseRecord, grace_lease: i64) -> Result<bool> {
        let Some(primary) = me.primary() else {
            return Ok(false);
        };
        let key = self.layout.record_key(primary);
        let kv = self.get_one(key.clone(), "read own lease").await?;
        let intact = kv
            .as_ref()
            .and_then(|kv| serde_json::from_slice::<LeaseRecord>(kv.value()).ok())
            .is_some_and(|r| &r == me);
        if intact {
            return Ok(false);
        }
        let put = || Some(PutOptions::new().with_lease(grace_lease));
        let mut then = vec![
            TxnOp::put(
                key.clone(),
                serde_json::to_vec(me).expect("lease serializes"),
                put(),
            ),
            TxnOp::put(self.layout.node(&me.node), key.clone(), put()),
        ];
        if let (Some(s6), Some(_)) = (me.subnet_v6, me.subnet) {
            then.push(TxnOp::put(self.layout.lease_v6(s6), key, put()));
        }
        let txn = Txn::new().and_then(then);
        self.client
            .txn(txn)
            .await
            .map_err(etcd("restore own lease"))?;
        Ok(true)
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
    async fn commit(&mut self, txn: Txn, what: &str) -> Result<bool> {
        Ok(self.client.txn(txn).await.map_err(etcd(what))?.succeeded())
    }

    /// Every key under `prefix` (with values unless `keys_only`), and the revision read at.
    async fn get_prefix(
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
    async fn get_one(&mut self, key: String, what: &str) -> Result<Option<KeyValue>> {
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

    /// Publishes that `node` is alive as `me` (one instance per process, on one machine),
    /// on a lease of `ttl`. The key is this process's while it is absent or already holds
    /// `me.instance`; with `take_over`, also while it holds another instance of
    /// `me.machine` (the caller knows that instance is dead: it holds the machine's lock).
    /// Any other holder is `NameInUse`, naming the key. Each change is guarded by the
    /// key's revision, so two claimants never both win.
    pub async fn set_alive(
        &mut self,
        node: &str,
        me: &Liveness,
        ttl: Duration,
        take_over: bool,
    ) -> Result<Claimed> {
        let secs = ttl.as_secs().max(2);
        let key = self.layout.alive(node);
        let id = self
            .client
            .lease_grant(i64::try_from(secs).unwrap_or(60), None)
            .await
            .map_err(etcd("grant liveness lease"))?
            .id();
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let value = serde_json::json!({
            "instance": me.instance,
            "machine": me.machine,
            "since": since,
        })
        .to_string();
        let put = || {
            TxnOp::put(
                key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(id)),
            )
        };
        let result = async {
            let mut when = Compare::version(key.clone(), CompareOp::Equal, 0);
            // A holder that changes between the read and the write is read again.
            for _ in 0..5 {
                let txn = Txn::new()
                    .when([when])
                    .and_then([put()])
                    .or_else([TxnOp::get(key.clone(), None)]);
                let resp = self
                    .client
                    .txn(txn)
                    .await
                    .map_err(etcd("publish liveness"))?;
                if resp.succeeded() {
                    return Ok(None);
                }
                let Some(kv) = resp.op_responses().into_iter().find_map(|r| match r {
                    etcd_client::TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
                    _ => None,
                }) else {
                    // Gone meanwhile: free again.
                    when = Compare::version(key.clone(), CompareOp::Equal, 0);
                    continue;
                };
                let holder = Holder::of(kv.value());
                let mine = holder.instance == me.instance;
                let predecessor = take_over && holder.machine == me.machine;
                if !mine && !predecessor {
                    return Err(LeaseError::NameInUse {
                        node: node.to_string(),
                        key: key.clone(),
                        other: holder.instance,
                        other_machine: holder.machine,
                        ttl: secs,
                    });
                }
                // Our own key on an older lease (etcd was away), or a dead predecessor's
                // of this machine: moved to the new lease.
                when = Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision());
                let txn = Txn::new().when([when.clone()]).and_then([put()]);
                if self.commit(txn, "publish liveness").await? {
                    return Ok((!mine).then_some(holder.instance));
                }
            }
            Err(LeaseError::Contention(5))
        }
        .await;
        match result {
            Ok(replaced) => Ok(Claimed {
                lease: id,
                replaced,
            }),
            Err(e) => {
                let _ = self.client.lease_revoke(id).await;
                Err(e)
            }
        }
    }

    /// Ends an etcd lease (and with it the keys on it).
    pub async fn revoke(&mut self, id: i64) -> Result<()> {
        self.client
            .lease_revoke(id)
            .await
            .map_err(etcd("revoke lease"))?;
        Ok(())
    }

    /// Names of the nodes whose liveness key exists.
    pub async fn alive_nodes(&mut self) -> Result<HashSet<String>> {
        let prefix = self.layout.alive_prefix();
        let (kvs, _) = self
            .get_prefix(prefix.clone(), true, "list liveness")
            .await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                String::from_utf8_lossy(kv.key())
                    .strip_prefix(&prefix)
                    .map(str::to_string)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code) -> LeaseError {
        LeaseError::Etcd {
            what: "read".into(),
            source: etcd_client::Error::GRpcStatus(tonic::Status::new(code, "m")),
        }
    }

    #[test]
    fn only_what_passes_is_waited_for() {
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Cancelled,
        ] {
            assert!(status(code).is_transient(), "{code:?}");
        }
        for code in [
            tonic::Code::PermissionDenied,
            tonic::Code::InvalidArgument,
            tonic::Code::Unauthenticated,
        ] {
            assert!(!status(code).is_transient(), "{code:?}");
        }
        let unreachable = LeaseError::Unreachable {
            endpoints: "e".into(),
            detail: "refused".into(),
        };
        assert!(unreachable.is_transient());
        let conflict = LeaseError::Conflict {
            key: "k".into(),
            detail: "d".into(),
        };
        assert!(!conflict.is_transient());
        assert_eq!(status(tonic::Code::Unavailable).to_string(), "etcd read: m");
    }

    #[test]
    fn a_liveness_value_of_an_older_daemon_has_no_machine() {
        let h = Holder::of(br#"{"instance":"ab","since":1}"#);
        assert_eq!((h.instance.as_str(), h.machine.as_str()), ("ab", "unknown"));
        let h = Holder::of(b"not json");
        assert_eq!(h.instance, "unknown");
    }
}
