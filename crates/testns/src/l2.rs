//! Probes of what a pod reaches besides another pod's API address: a neighbour's
//! link-local address (TCP to `fe80::…%eth0`), and multicast and broadcast (UDP to
//! `ff02::1`, `224.0.0.1`, `255.255.255.255`, the subnet's broadcast address), which every
//! pod of the node's bridge receives whatever its address.
//!
//! A UDP probe carries a nonce, so a datagram of an earlier probe is never taken for this
//! one's: the receiver ([`Inbox`]) records every nonce it sees, the sender sends a few
//! copies of one, and the probe is allowed when that nonce arrives.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::nonce;

/// The pod's interface, as ferry names it in every test.
pub const POD_IF: &str = "eth0";

/// Every IPv6 link-local address on the pod's interface, as the kernel reports them.
pub fn link_locals(ns: &Netns) -> Vec<Ipv6Addr> {
    ns.sh(&format!("ip -6 -o addr show dev {POD_IF} scope link"))
        .split_whitespace()
        .filter_map(|w| w.split('/').next()?.parse::<Ipv6Addr>().ok())
        .filter(|a| a.segments()[0] & 0xffc0 == 0xfe80)
        .collect()
}

/// The pod's one link-local address; a pod with none or several is a failure.
pub fn link_local(ns: &Netns) -> Ipv6Addr {
    let all = link_locals(ns);
    match all.as_slice() {
        [one] => *one,
        _ => panic!("{}: link-local addresses {all:?}, not exactly one", ns.name),
    }
}

/// The index of the pod's interface in the calling thread's namespace (the scope of a
/// link-local or link-scoped multicast address).
fn scope() -> io::Result<u32> {
    let name = std::ffi::CString::new(POD_IF).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// The socket address of `ip`:`port`, scoped to the pod's interface when `ip` needs a
/// scope (link-local unicast, link- or interface-local multicast).
fn scoped(ip: IpAddr, port: u16) -> io::Result<SocketAddr> {
    Ok(match ip {
        IpAddr::V4(a) => SocketAddr::from((a, port)),
        IpAddr::V6(a) => {
            let s = a.segments()[0];
            let needs = s & 0xffc0 == 0xfe80 || (s & 0xff00 == 0xff00 && s & 0x000f <= 2);
            let id = if needs { scope()? } else { 0 };
            SocketAddr::V6(SocketAddrV6::new(a, port, 0, id))
        }
    })
}

/// Whether a TCP connection from `from` to `ip`:`port` (scoped when it must be) completes
/// within `timeout`.
pub fn tcp(from: &Netns, ip: IpAddr, port: u16, timeout: Duration) -> bool {
    crate::inside::run(from, move || {
        scoped(ip, port)
            .and_then(|a| std::net::TcpStream::connect_timeout(&a, timeout))
            .is_ok()
    })
}

/// A TCP listener in `ns` on `[::]:port` (both families), accepting and closing: the
/// handshake is the answer. Stops when dropped.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    pub fn start(ns: &Netns, port: u16) -> io::Result<TcpServer> {
        let l = crate::inside::run(ns, move || -> io::Result<TcpListener> {
            let l = TcpListener::bind(("::", port))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => drop(c),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(TcpServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP receiver in a pod: one socket on `0.0.0.0:port` (IPv4 unicast, broadcast and
/// 224.0.0.1, which every host has joined) and one on `[::]:port + 1` (IPv6, `ff02::1`
/// included, joined by every IPv6 interface). Records the nonces it receives; stops when
/// dropped.
pub struct Inbox {
    pub port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    seen: Arc<(Mutex<HashSet<u64>>, Condvar)>,
}

impl Inbox {
    pub fn open(ns: &Netns, port: u16) -> io::Result<Inbox> {
        let sockets = crate::inside::run(ns, move || -> io::Result<Vec<UdpSocket>> {
            let v4 = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
            let v6 = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port + 1))?;
            for s in [&v4, &v6] {
                s.set_read_timeout(Some(Duration::from_millis(100)))?;
            }
            Ok(vec![v4, v6])
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<(Mutex<HashSet<u64>>, Condvar)> = Arc::default();
        let threads = sockets
            .into_iter()
            .map(|s| {
                let (stop, seen) = (stop.clone(), seen.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(n) = s.recv(&mut buf) else { continue };
                        let Some(b) = buf.get(..n).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
                            continue;
                        };
                        if let Ok(mut set) = seen.0.lock() {
                            set.insert(u64::from_be_bytes(b));
                            seen.1.notify_all();
                        }
                    }
                })
            })
            .collect();
        Ok(Inbox {
            port,
            stop,
            threads,
            seen,
        })
    }

    /// The port a datagram to `ip` must be sent to.
    pub fn port_for(&self, ip: IpAddr) -> u16 {
        if ip.is_ipv4() {
            self.port
        } else {
            self.port + 1
        }
    }

    /// Whether `n` arrives within `timeout`.
    pub fn got(&self, n: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let Ok(mut set) = self.seen.0.lock() else {
            return false;
        };
        loop {
            if set.contains(&n) {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            set = match self.seen.1.wait_timeout(set, left) {
                Ok((s, _)) => s,
                Err(_) => return false,
            };
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sends `copies` datagrams carrying `n` from `from` to `ip`:`port`: broadcast allowed,
/// link-scoped destinations on the pod's interface, multicast with a TTL of 1.
pub fn send_udp(from: &Netns, ip: IpAddr, port: u16, n: u64, copies: usize) -> io::Result<()> {
    crate::inside::run(from, move || -> io::Result<()> {
        let s = match ip {
            IpAddr::V4(_) => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?,
            IpAddr::V6(_) => UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?,
        };
        s.set_broadcast(ip.is_ipv4())?;
        let to = scoped(ip, port)?;
        for _ in 0..copies {
            s.send_to(&n.to_be_bytes(), to)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })
}

/// Whether UDP from `from` to `ip` reaches `inbox` (a few datagrams, each waited for up
/// to `timeout` in all).
pub fn udp_reaches(from: &Netns, ip: IpAddr, inbox: &Inbox, timeout: Duration) -> bool {
    let n = nonce();
    if let Err(e) = send_udp(from, ip, inbox.port_for(ip), n, 3) {
        panic!("send UDP from {} to {ip}: {e}", from.name);
    }
    inbox.got(n, timeout)
}

/// The broadcast address of the IPv4 subnet `cidr` (`10.244.1.5/24` → `10.244.1.255`).
pub fn subnet_broadcast(cidr: &str) -> Option<Ipv4Addr> {
    let net: ipnetwork::Ipv4Network = cidr.parse().ok()?;
    Some(net.broadcast())
}

/// The group and broadcast destinations a pod of `cidr` can send to: IPv6 all-nodes,
/// IPv4 all-hosts, a group nobody joined on purpose (224.0.0.251, mDNS's, is joined by no
/// one here: only what is received counts), the limited broadcast and the subnet's.
pub fn group_destinations(cidr: &str) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = vec![
        "ff02::1".parse().expect("an address"),
        IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)),
        IpAddr::V4(Ipv4Addr::BROADCAST),
    ];
    v.extend(subnet_broadcast(cidr).map(IpAddr::V4));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_broadcasts() {
        assert_eq!(
            subnet_broadcast("10.244.1.5/24"),
            Some(Ipv4Addr::new(10, 244, 1, 255))
        );
        assert_eq!(
            subnet_broadcast("10.9.0.130/25"),
            Some(Ipv4Addr::new(10, 9, 0, 255))
        );
        assert_eq!(subnet_broadcast("fd00::1/64"), None);
    }
}
