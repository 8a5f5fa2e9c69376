//! What can go wrong talking to etcd, and which of it is worth waiting out.

use std::path::PathBuf;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::model::{Cluster, FamilyNet};

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
    /// That `c` has no free node subnet left, in the variant of its family.
    pub(super) fn exhausted<N: FamilyNet>(c: &Cluster<N>) -> LeaseError {
        let (len, count) = (c.subnet_len, c.subnet_count());
        match c.cluster_cidr.into() {
            IpNetwork::V4(cidr) => LeaseError::Exhausted { cidr, len, count },
            IpNetwork::V6(cidr) => LeaseError::ExhaustedV6 { cidr, len, count },
        }
    }

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
pub(super) fn describe(e: &etcd_client::Error) -> String {
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

pub(super) fn transient(e: &etcd_client::Error) -> bool {
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

pub(crate) type Result<T> = std::result::Result<T, LeaseError>;

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
}
