//! Leasing a node's subnets: its own again when it has them, else free ones, by
//! transactions that never let two nodes hold one subnet.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::error::{LeaseError, Result};
use super::{etcd, Registry};
use crate::model::{
    pick_free, Cluster, ClusterConfig, ClusterV4, ClusterV6, FamilyNet, LeaseRecord,
};

/// The outcome of `acquire`.
#[derive(Debug, Clone)]
pub struct Acquired {
    pub record: LeaseRecord,
    /// The etcd lease that keeps the subnet (TTL: the grace period).
    pub grace_lease: i64,
    /// True when the node got its earlier subnet back.
    pub reused: bool,
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
                    if self.ttl(lease_id).await?.is_some() {
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
            let txn = Txn::new()
                .when(when)
                .and_then(self.record_ops(&lk, &rec, lease_id));
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
        Ok((pick(v4, &taken, seed, attempt)?, None))
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
        Ok((pick(v6, &taken, seed, attempt)?, None))
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
        let txn = Txn::new().and_then(self.record_ops(&key, me, grace_lease));
        self.client
            .txn(txn)
            .await
            .map_err(etcd("restore own lease"))?;
        Ok(true)
    }

    /// The writes of a whole lease on `lease`: the record at `key`, the node index, and
    /// in a dual-stack cluster the IPv6 subnet's index; all kept and expired together.
    fn record_ops(&self, key: &str, rec: &LeaseRecord, lease: i64) -> Vec<TxnOp> {
        let put = || Some(PutOptions::new().with_lease(lease));
        let mut then = vec![
            TxnOp::put(
                key,
                serde_json::to_vec(rec).expect("lease serializes"),
                put(),
            ),
            TxnOp::put(self.layout.node(&rec.node), key, put()),
        ];
        if let (Some(s6), Some(_)) = (rec.subnet_v6, rec.subnet) {
            then.push(TxnOp::put(self.layout.lease_v6(s6), key, put()));
        }
        then
    }
}

/// A free subnet of `c` that is not `taken`, spread by `seed` and moved on by each
/// `attempt` so that a node losing a race tries another one.
fn pick<N: FamilyNet>(c: &Cluster<N>, taken: &HashSet<N>, seed: u64, attempt: u32) -> Result<N> {
    pick_free(
        c,
        taken,
        seed.wrapping_add(u64::from(attempt) * 0x9e37_79b9),
    )
    .ok_or_else(|| LeaseError::exhausted(c))
}
