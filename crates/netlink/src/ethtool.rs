//! A link's transmit checksum offload, through the ethtool ioctl (rtnetlink has no
//! request for it). For the VXLAN device on kernels and NICs where offloading the inner
//! checksum corrupts packets (flannel's known issue: `ethtool -K flannel.1
//! tx-checksum-ip-generic off`), ferry can turn it off itself.

use crate::error::{Error, Result};

/// `ETHTOOL_GTXCSUM` and `ETHTOOL_STXCSUM` (linux/ethtool.h): read or set every transmit
/// checksum feature of the link at once.
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Whether `name` (in the current network namespace) offloads transmit checksums.
pub fn tx_checksum(name: &str) -> Result<bool> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_GTXCSUM,
        data: 0,
    };
    ethtool(name, &mut v, "read the transmit checksum offload")?;
    Ok(v.data != 0)
}

/// Turns transmit checksum offload of `name` on or off (`ethtool -K <name> tx on|off`).
pub fn set_tx_checksum(name: &str, on: bool) -> Result<()> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: u32::from(on),
    };
    ethtool(name, &mut v, "set the transmit checksum offload")
}

fn ethtool(name: &str, v: &mut EthtoolValue, what: &str) -> Result<()> {
    let io = |source: std::io::Error| Error::Io {
        what: format!("{what} of {name}"),
        source,
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io(std::io::Error::from(std::io::ErrorKind::InvalidInput)));
    }
    // SAFETY: a socket call with constant arguments; its result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a socket this function just opened and owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (v as *mut EthtoolValue).cast();
    // SAFETY: `ifr` names the link (NUL-terminated: zeroed, name shorter than IFNAMSIZ)
    // and points at `v`, which outlives the call; the kernel reads and writes only the
    // `struct ethtool_value` the command says.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SIOCETHTOOL,
            &mut ifr,
        )
    };
    if r < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(())
}
