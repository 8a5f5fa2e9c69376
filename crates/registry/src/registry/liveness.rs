//! A node's liveness key: who holds it (this process, or a dead predecessor on the same
//! machine), claimed so that two daemons never run under one node name.

use std::collections::HashSet;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use super::error::{LeaseError, Result};
use super::{etcd, Registry};

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

impl Registry {
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

    #[test]
    fn a_liveness_value_of_an_older_daemon_has_no_machine() {
        let h = Holder::of(br#"{"instance":"ab","since":1}"#);
        assert_eq!((h.instance.as_str(), h.machine.as_str()), ("ab", "unknown"));
        let h = Holder::of(b"not json");
        assert_eq!(h.instance, "unknown");
    }
}
