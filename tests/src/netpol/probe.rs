//! The servers of a conformance pod and the probes other pods make to them.
//!
//! TCP: a connect that completes is allowed. UDP: a datagram whose echo comes back is
//! allowed. SCTP: this kernel may have no SCTP stack (no module to load), so no SCTP socket
//! can be opened; instead the client sends a well-formed SCTP INIT (the first packet of an
//! association, with its CRC32c) from a raw IP socket, and the server pod counts the INITs
//! arriving for each port on a raw `IPPROTO_SCTP` socket. An INIT that arrives proves that
//! the first packet of an association passes the node's rules (conntrack tracks it as SCTP
//! and checks its checksum); nothing after it is exercised.
//!
//! Every probe carries a nonce (the UDP payload, the INIT's initiate tag), so an answer to
//! an earlier probe is never taken for this one's.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cases::Protocol;
use crate::netns::Netns;

/// IANA's protocol number of SCTP.
pub const IPPROTO_SCTP: i32 = 132;

/// How often a server thread looks whether it must stop.
const STOP_POLL: Duration = Duration::from_millis(100);

/// The INITs a pod's raw SCTP socket has seen: `(destination port, initiate tag)`.
#[derive(Default)]
pub struct SctpLog {
    seen: Mutex<HashSet<(u16, u32)>>,
    arrived: Condvar,
}

impl SctpLog {
    fn record(&self, port: u16, tag: u32) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert((port, tag));
            self.arrived.notify_all();
        }
    }

    /// Whether the INIT with `tag` arrives for `port` within `timeout`.
    pub fn wait(&self, port: u16, tag: u32, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        loop {
            if seen.remove(&(port, tag)) {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            seen = match self.arrived.wait_timeout(seen, left) {
                Ok((s, _)) => s,
                Err(_) => return false,
            };
        }
    }
}

/// The servers of one pod: TCP and UDP on each port, one raw socket for SCTP. Dropping
/// it stops them (their threads are joined: the pod's namespace is held by no socket).
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub sctp: Arc<SctpLog>,
}

enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
    Sctp(OwnedFd),
}

impl Servers {
    /// Opens the sockets inside `ns` and serves them: every port of `ports` on every
    /// protocol of `protocols`.
    pub fn start(ns: &Netns, ports: &[u16], protocols: &[Protocol]) -> io::Result<Servers> {
        let each: Vec<(u16, Protocol)> = protocols
            .iter()
            .flat_map(|proto| ports.iter().map(move |p| (*p, *proto)))
            .collect();
        Servers::start_each(ns, &each)
    }

    /// Opens the sockets inside `ns` and serves them: each `(port, protocol)` of `served`.
    /// SCTP INITs are counted for the SCTP ports of `served` only.
    pub fn start_each(ns: &Netns, served: &[(u16, Protocol)]) -> io::Result<Servers> {
        Servers::start_each_at(ns, Ipv4Addr::UNSPECIFIED, served)
    }

    /// `start_each` with the TCP and UDP sockets bound to `addr`: a host-network pod's
    /// servers answer from its node's address (an unbound UDP socket would answer from
    /// whichever address the route back picks, which the client's socket ignores).
    pub fn start_each_at(
        ns: &Netns,
        addr: Ipv4Addr,
        served: &[(u16, Protocol)],
    ) -> io::Result<Servers> {
        let served = served.to_vec();
        let sctp_ports: HashSet<u16> = served
            .iter()
            .filter(|(_, p)| *p == Protocol::Sctp)
            .map(|(port, _)| *port)
            .collect();
        let sockets = crate::inside::run(ns, move || -> io::Result<Vec<Socket>> {
            let mut out = Vec::new();
            let mut sctp = false;
            for (port, proto) in &served {
                match proto {
                    Protocol::Tcp => {
                        let l = TcpListener::bind((addr, *port))?;
                        l.set_nonblocking(true)?;
                        out.push(Socket::Tcp(l));
                    }
                    Protocol::Udp => {
                        let s = UdpSocket::bind((addr, *port))?;
                        s.set_read_timeout(Some(STOP_POLL))?;
                        out.push(Socket::Udp(s));
                    }
                    Protocol::Sctp if !sctp => {
                        sctp = true;
                        out.push(Socket::Sctp(raw_sctp_socket(Some(STOP_POLL))?));
                    }
                    Protocol::Sctp => {}
                }
            }
            Ok(out)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let sctp = Arc::new(SctpLog::default());
        let sctp_ports = Arc::new(sctp_ports);
        let threads = sockets
            .into_iter()
            .map(|s| {
                let (stop, sctp, ports) = (stop.clone(), sctp.clone(), sctp_ports.clone());
                std::thread::spawn(move || match s {
                    Socket::Tcp(l) => serve_tcp(&l, &stop),
                    Socket::Udp(u) => serve_udp(&u, &stop),
                    Socket::Sctp(fd) => serve_sctp(&fd, &stop, &sctp, &ports),
                })
            })
            .collect();
        Ok(Servers {
            stop,
            threads,
            sctp,
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(l: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            // The handshake is the answer: the connection is closed at once.
            Ok((c, _)) => drop(c),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve_udp(u: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = u.recv_from(&mut buf) {
            let _ = u.send_to(&buf[..n], from);
        }
    }
}

fn serve_sctp(fd: &OwnedFd, stop: &AtomicBool, log: &SctpLog, ports: &HashSet<u16>) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: recv into a buffer of the given length on a socket we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else { continue };
        if let Some((port, tag)) = parse_init(buf.get(..n).unwrap_or_default()) {
            if ports.contains(&port) {
                log.record(port, tag);
            }
        }
    }
}

/// A raw IPv4 socket for protocol SCTP, in the calling thread's namespace.
fn raw_sctp_socket(read_timeout: Option<Duration>) -> io::Result<OwnedFd> {
    raw_socket(IPPROTO_SCTP, read_timeout)
}

/// A raw IPv4 socket for `protocol`, in the calling thread's namespace.
fn raw_socket(protocol: i32, read_timeout: Option<Duration>) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(t) = read_timeout {
        let tv = libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: t.subsec_micros() as libc::suseconds_t,
        };
        crate::set_socket_option(&fd, libc::SO_RCVTIMEO, &tv)?;
    }
    Ok(fd)
}

/// `(destination port, initiate tag)` of an IPv4 packet (as a raw socket reads it, with
/// its IP header) holding an SCTP INIT.
pub fn parse_init(packet: &[u8]) -> Option<(u16, u32)> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let sctp = packet.get(ihl..)?;
    let port = u16::from_be_bytes(sctp.get(2..4)?.try_into().ok()?);
    // The first chunk, after the 12-byte common header: type 1 is INIT.
    if *sctp.get(12)? != 1 {
        return None;
    }
    let tag = u32::from_be_bytes(sctp.get(16..20)?.try_into().ok()?);
    Some((port, tag))
}

/// An SCTP packet holding one INIT chunk, as an association's first packet: verification
/// tag 0, the initiate tag `tag`, one stream each way, and the CRC32c of RFC 9260.
pub fn init_packet(src_port: u16, dst_port: u16, tag: u32, tsn: u32) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0..2].copy_from_slice(&src_port.to_be_bytes());
    p[2..4].copy_from_slice(&dst_port.to_be_bytes());
    // p[4..8]: verification tag 0, as an INIT's must be; p[8..12]: checksum, below.
    p[12] = 1; // chunk type INIT
    p[14..16].copy_from_slice(&20u16.to_be_bytes()); // chunk length
    p[16..20].copy_from_slice(&tag.to_be_bytes());
    p[20..24].copy_from_slice(&65535u32.to_be_bytes()); // advertised receiver window
    p[24..26].copy_from_slice(&1u16.to_be_bytes()); // outbound streams
    p[26..28].copy_from_slice(&1u16.to_be_bytes()); // inbound streams
    p[28..32].copy_from_slice(&tsn.to_be_bytes());
    // The checksum goes on the wire in the CRC's own (little-endian) byte order.
    let crc = crc32c(&p);
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

/// CRC32c (Castagnoli, reflected, as SCTP uses it). No crate of the offline registry
/// provides it, and a bitwise loop over 32 bytes costs nothing here.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

pub use ferry_testns::nonce;

/// What one probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Connected (TCP), echoed (UDP), arrived (SCTP INIT).
    Allowed,
    /// Nothing came back in time (or a local failure that says nothing of the network).
    TimedOut,
    /// Refused: a TCP RST, an ICMP unreachable, an SCTP ABORT.
    Refused,
}

impl Seen {
    pub fn allowed(self) -> bool {
        self == Seen::Allowed
    }
}

/// Whether an error of a connect, send or receive is an answer refusing the connection.
fn refusal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ECONNRESET)
    )
}

/// A TCP connect from the calling thread's namespace: allowed when it completes.
pub fn tcp(ip: Ipv4Addr, port: u16, timeout: Duration) -> bool {
    tcp_seen(ip, port, timeout).allowed()
}

/// A TCP connect: what it saw.
pub fn tcp_seen(ip: Ipv4Addr, port: u16, timeout: Duration) -> Seen {
    match TcpStream::connect_timeout(&SocketAddr::from((ip, port)), timeout) {
        Ok(_) => Seen::Allowed,
        Err(e) if refusal(&e) => Seen::Refused,
        Err(_) => Seen::TimedOut,
    }
}

/// A UDP datagram from the calling thread's namespace: allowed when its echo comes back.
pub fn udp(ip: Ipv4Addr, port: u16, timeout: Duration) -> bool {
    udp_seen(ip, port, timeout).allowed()
}

/// A UDP datagram: what it saw (an ICMP unreachable shows as an error of the connected
/// socket).
pub fn udp_seen(ip: Ipv4Addr, port: u16, timeout: Duration) -> Seen {
    let attempt = || -> io::Result<bool> {
        let s = UdpSocket::bind(("0.0.0.0", 0))?;
        s.connect((ip, port))?;
        let token = nonce().to_be_bytes();
        s.send(&token)?;
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 64];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            s.set_read_timeout(Some(left))?;
            let n = s.recv(&mut buf)?;
            if buf.get(..n) == Some(&token[..]) {
                return Ok(true);
            }
        }
    };
    match attempt() {
        Ok(true) => Seen::Allowed,
        Ok(false) => Seen::TimedOut,
        Err(e) if refusal(&e) => Seen::Refused,
        Err(_) => Seen::TimedOut,
    }
}

/// An SCTP INIT from the calling thread's namespace to `ip`:`port`; `arrived` waits for
/// the server's side to see it (by its initiate tag). When it did not arrive, an ABORT or
/// an ICMP unreachable answering it (read on raw sockets opened before the INIT left)
/// makes it refused.
pub fn sctp_seen(ip: Ipv4Addr, port: u16, arrived: impl FnOnce(u32) -> bool) -> Seen {
    let sctp = raw_sctp_socket(None).ok();
    let icmp = raw_socket(libc::IPPROTO_ICMP, None).ok();
    let (tag, src_port) = match sctp_init_from(ip, port) {
        Ok(t) => t,
        Err(_) => return Seen::TimedOut,
    };
    if arrived(tag) {
        return Seen::Allowed;
    }
    let mut buf = [0u8; 2048];
    let mut read = |fd: &OwnedFd, is_refusal: &dyn Fn(&[u8]) -> bool| -> bool {
        loop {
            // SAFETY: recv into a buffer of the given length on a socket we own.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let Ok(n) = usize::try_from(n) else {
                return false;
            };
            if is_refusal(buf.get(..n).unwrap_or_default()) {
                return true;
            }
        }
    };
    let abort = |p: &[u8]| is_abort(p, ip, port, src_port);
    let unreachable = |p: &[u8]| is_unreachable(p, ip, port, src_port);
    let refused = sctp.as_ref().is_some_and(|fd| read(fd, &abort))
        || icmp.as_ref().is_some_and(|fd| read(fd, &unreachable));
    if refused {
        Seen::Refused
    } else {
        Seen::TimedOut
    }
}

/// An IPv4 packet from `server`:`server_port` to our `client_port` holding an SCTP ABORT.
pub fn is_abort(packet: &[u8], server: Ipv4Addr, server_port: u16, client_port: u16) -> bool {
    let check = || -> Option<bool> {
        let src = Ipv4Addr::from(<[u8; 4]>::try_from(packet.get(12..16)?).ok()?);
        let ihl = usize::from(packet.first()? & 0x0f) * 4;
        let sctp = packet.get(ihl..)?;
        let sport = u16::from_be_bytes(sctp.get(0..2)?.try_into().ok()?);
        let dport = u16::from_be_bytes(sctp.get(2..4)?.try_into().ok()?);
        Some(src == server && sport == server_port && dport == client_port && *sctp.get(12)? == 6)
    };
    check().unwrap_or(false)
}

/// An IPv4 ICMP destination unreachable whose quoted packet is our SCTP packet to
/// `server`:`server_port` from `client_port`.
pub fn is_unreachable(packet: &[u8], server: Ipv4Addr, server_port: u16, client_port: u16) -> bool {
    let check = || -> Option<bool> {
        let ihl = usize::from(packet.first()? & 0x0f) * 4;
        let icmp = packet.get(ihl..)?;
        if *icmp.first()? != 3 {
            return Some(false);
        }
        let inner = icmp.get(8..)?;
        let inner_ihl = usize::from(inner.first()? & 0x0f) * 4;
        let proto = i32::from(*inner.get(9)?);
        let dst = Ipv4Addr::from(<[u8; 4]>::try_from(inner.get(16..20)?).ok()?);
        let l4 = inner.get(inner_ihl..)?;
        let sport = u16::from_be_bytes(l4.get(0..2)?.try_into().ok()?);
        let dport = u16::from_be_bytes(l4.get(2..4)?.try_into().ok()?);
        Some(proto == IPPROTO_SCTP && dst == server && sport == client_port && dport == server_port)
    };
    check().unwrap_or(false)
}

/// Sends an SCTP INIT from the calling thread's namespace; its initiate tag, for
/// [`SctpLog::wait`] on the server's side.
pub fn sctp_init(ip: Ipv4Addr, port: u16) -> io::Result<u32> {
    sctp_init_from(ip, port).map(|(tag, _)| tag)
}

/// [`sctp_init`]: the initiate tag and the source port used.
fn sctp_init_from(ip: Ipv4Addr, port: u16) -> io::Result<(u32, u16)> {
    let n = nonce();
    // A fresh tag and source port each time: every INIT is a new association to conntrack.
    let tag = (n as u32).max(1);
    let src_port = 32768 + (n % 28000) as u16;
    let packet = init_packet(src_port, port, tag, (n >> 32) as u32);
    let fd = raw_sctp_socket(None)?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sendto with a buffer and a sockaddr_in of the sizes given.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((tag, src_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The check value of CRC-32C (RFC 3720, B.4).
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn init_packet_checksums_to_the_stored_value_and_parses_back() {
        let p = init_packet(40000, 80, 0xdead_beef, 7);
        let stored = u32::from_le_bytes(p[8..12].try_into().unwrap());
        let mut zeroed = p;
        zeroed[8..12].fill(0);
        assert_eq!(crc32c(&zeroed), stored);
        assert_eq!(&p[4..8], &[0, 0, 0, 0], "an INIT's verification tag is 0");
        // As the raw socket reads it: a 20-byte IPv4 header first.
        let mut ip = vec![0x45u8];
        ip.extend_from_slice(&[0; 19]);
        ip.extend_from_slice(&p);
        assert_eq!(parse_init(&ip), Some((80, 0xdead_beef)));
        assert_eq!(
            parse_init(&ip[..30]),
            None,
            "a truncated packet is not an INIT"
        );
        ip[20 + 12] = 3; // a SACK chunk
        assert_eq!(parse_init(&ip), None);
    }

    #[test]
    fn nonces_differ_and_are_never_zero() {
        let a = nonce();
        let b = nonce();
        assert_ne!(a, b);
        assert!(a != 0 && b != 0);
    }
    #[test]
    fn a_refusal_is_told_from_a_timeout() {
        // A closed port on loopback: the kernel answers with a RST (TCP) and an ICMP
        // port unreachable (UDP).
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let lo = Ipv4Addr::LOCALHOST;
        assert_eq!(tcp_seen(lo, port, Duration::from_secs(1)), Seen::Refused);
        let udp_port = {
            let u = UdpSocket::bind("127.0.0.1:0").unwrap();
            u.local_addr().unwrap().port()
        };
        assert_eq!(
            udp_seen(lo, udp_port, Duration::from_secs(1)),
            Seen::Refused
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = l.local_addr().unwrap().port();
        assert_eq!(tcp_seen(lo, open, Duration::from_secs(1)), Seen::Allowed);
        assert!(!Seen::Refused.allowed() && !Seen::TimedOut.allowed());
    }

    #[test]
    fn aborts_and_unreachables_are_recognised() {
        let server = Ipv4Addr::new(10, 244, 1, 5);
        // An SCTP ABORT from server:80 to client port 40000, after a 20-byte IP header.
        let mut abort = vec![0x45u8, 0, 0, 0, 0, 0, 0, 0, 64, 132, 0, 0];
        abort.extend_from_slice(&server.octets());
        abort.extend_from_slice(&[10, 244, 2, 6]);
        abort.extend_from_slice(&80u16.to_be_bytes());
        abort.extend_from_slice(&40000u16.to_be_bytes());
        abort.extend_from_slice(&[0; 8]);
        abort.extend_from_slice(&[6, 0, 0, 4]);
        assert!(is_abort(&abort, server, 80, 40000));
        assert!(!is_abort(&abort, server, 81, 40000));
        assert!(!is_abort(&abort, Ipv4Addr::new(10, 244, 1, 6), 80, 40000));
        let mut init = abort.clone();
        init[32] = 1;
        assert!(!is_abort(&init, server, 80, 40000));
        assert!(!is_abort(&abort[..25], server, 80, 40000));
        // An ICMP port unreachable quoting our INIT (client 40000 -> server:80).
        let mut icmp = vec![
            0x45u8, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 244, 1, 1, 10, 244, 2, 6,
        ];
        icmp.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
        icmp.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 132, 0, 0, 10, 244, 2, 6]);
        icmp.extend_from_slice(&server.octets());
        icmp.extend_from_slice(&40000u16.to_be_bytes());
        icmp.extend_from_slice(&80u16.to_be_bytes());
        icmp.extend_from_slice(&[0; 4]);
        assert!(is_unreachable(&icmp, server, 80, 40000));
        assert!(!is_unreachable(&icmp, server, 80, 40001));
        let mut echo = icmp.clone();
        echo[20] = 0;
        assert!(!is_unreachable(&echo, server, 80, 40000));
        assert!(!is_unreachable(&icmp[..30], server, 80, 40000));
    }
}
