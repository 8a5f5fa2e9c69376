//! `/proc/sys` access. Keys are paths below it (`net/ipv4/ip_forward`), so interface names
//! with dots need no escaping. Paths under `/proc/sys/net` resolve in the network namespace
//! of the calling thread, so these run inside `netns::run_in` when meant for a pod.

use crate::error::{Error, Result};

pub fn read(key: &str) -> Result<String> {
    let path = format!("/proc/sys/{key}");
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::Io {
            what: format!("read sysctl {key}"),
            source,
        })
}

pub fn write(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    std::fs::write(&path, value).map_err(|source| Error::Io {
        what: format!("set sysctl {key}={value}"),
        source,
    })
}

/// Writes only when the value differs: cheaper than a write, and works on read-only /proc
/// when nothing needs changing.
pub fn ensure(key: &str, value: &str) -> Result<()> {
    if read(key)? == value {
        return Ok(());
    }
    write(key, value)
}
