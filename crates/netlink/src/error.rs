use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink request failed; `what` names the operation and its objects.
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} already exists and is not a bridge (it is {kind})")]
    NotABridge { name: String, kind: String },
    /// A route whose gateway is not of its destination's family.
    #[error("route {dst} via {gw}: the gateway is of another family")]
    FamilyMismatch { dst: String, gw: String },
    /// A route the kernel could not be asked for (a prefix too long for its family).
    #[error("route {route}: {why}")]
    InvalidRoute { route: String, why: String },
    /// An eBPF program that its own code got wrong: nothing was loaded.
    #[error("{what}: {source}")]
    Program {
        what: String,
        #[source]
        source: crate::bpf::AsmError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The errno of a failed netlink request, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(m.raw_code().abs()),
            _ => None,
        }
    }
}

impl Error {
    /// Whether the kernel refused because the object is already there (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The error a netlink request refused with `errno` gives: for fakes of the kernel in
    /// tests that run without one.
    pub fn from_errno(what: impl Into<String>, errno: i32) -> Error {
        let mut m = netlink_packet_core::ErrorMessage::default();
        m.code = std::num::NonZeroI32::new(-errno);
        Error::Netlink {
            what: what.into(),
            source: rtnetlink::Error::NetlinkError(m),
        }
    }
}

/// Whether a raw netlink request was refused with one of `errnos`: the one place the
/// crate reads a kernel refusal, for the refusals that mean "already done".
pub(crate) fn errno_in(e: &rtnetlink::Error, errnos: &[i32]) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if errnos.contains(&m.raw_code().abs()))
}

/// The refusals of a delete whose object is already gone (a route: ESRCH; an FDB or
/// neighbour entry: ENOENT; its device: ENODEV).
pub(crate) const GONE: &[i32] = &[libc::ESRCH, libc::ENOENT, libc::ENODEV];

/// Whether a raw netlink request failed because the object is already there.
pub(crate) fn exists(e: &rtnetlink::Error) -> bool {
    errno_in(e, &[libc::EEXIST])
}

pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, rtnetlink::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Netlink {
            what: what(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_errno_made_for_a_fake_reads_back() {
        let e = super::Error::from_errno("create veth fy1", libc::EEXIST);
        assert!(e.is_exists());
        assert_eq!(e.errno(), Some(libc::EEXIST));
    }
}
