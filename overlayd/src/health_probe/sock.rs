//! Raw ICMP sockets bound to this node's gateway address (CAP_NET_RAW, which the
//! DaemonSet grants): echo requests out with DF set, echo replies in.
//!
//! Raw rather than ping (`SOCK_DGRAM`) sockets: those need `net.ipv4.ping_group_range`
//! to include the daemon's group, which a node does not grant by default.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// ICMP header (type, code, checksum, identifier, sequence).
pub const ICMP_HEADER: usize = 8;
/// The token every probe of this process carries, and the smallest payload.
pub const TOKEN: usize = 8;

/// IP header bytes of a probe of this family (no options, no extension headers).
pub fn ip_header(v6: bool) -> usize {
    if v6 {
        40
    } else {
        20
    }
}

/// An echo reply to one of this process's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub from: IpAddr,
    pub seq: u16,
}

pub struct IcmpSock {
    fd: AsyncFd<Socket>,
    v6: bool,
}

impl IcmpSock {
    /// A raw ICMP socket of `src`'s family bound to `src`, nonblocking, DF on every
    /// packet (a probe at the pod MTU must fail rather than be fragmented, and a small
    /// one never needs fragmenting), receiving echo replies only.
    pub fn open(src: IpAddr) -> io::Result<IcmpSock> {
        let v6 = src.is_ipv6();
        let (domain, proto) = if v6 {
            (Domain::IPV6, Protocol::ICMPV6)
        } else {
            (Domain::IPV4, Protocol::ICMPV4)
        };
        let s = Socket::new(domain, Type::RAW, Some(proto))?;
        s.set_nonblocking(true)?;
        s.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
        let fd = s.as_raw_fd();
        if v6 {
            setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_DO,
            )?;
            setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)?;
            // ICMP6_FILTER: a set bit blocks its type. Only echo replies wake the task,
            // not the neighbour discovery of the node's pods.
            let mut filter = [u32::MAX; 8];
            filter[usize::from(ECHO_REPLY_V6 >> 5)] &= !(1u32 << (ECHO_REPLY_V6 & 31));
            setsockopt_bytes(fd, libc::IPPROTO_ICMPV6, 1, &filter)?;
        } else {
            setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DO,
            )?;
            // ICMP_FILTER (SOL_RAW): a set bit blocks its type; echo replies only, not
            // the peers' echo requests to this gateway (the kernel answers those).
            let mask: u32 = !(1u32 << ECHO_REPLY_V4);
            setsockopt_bytes(fd, libc::SOL_RAW, 1, &[mask])?;
        }
        // SAFETY: the socket owns its descriptor, which stays open while the AsyncFd holds
        // the socket (it is closed only when both drop).
        let fd = unsafe { AsyncFd::register(s) }.map_err(io::Error::from)?;
        Ok(IcmpSock { fd, v6 })
    }

    /// Sends an echo request of `ip_len` bytes in all (IP header included, at least the
    /// header, ICMP header and token) to `dst`. `EMSGSIZE` means the route's MTU is
    /// smaller than `ip_len`.
    pub fn send(
        &self,
        dst: IpAddr,
        id: u16,
        seq: u16,
        token: &[u8; TOKEN],
        ip_len: usize,
    ) -> io::Result<()> {
        let icmp_len = ip_len
            .saturating_sub(ip_header(self.v6))
            .max(ICMP_HEADER + TOKEN);
        let pkt = echo_request(self.v6, id, seq, token, icmp_len);
        self.fd
            .get_ref()
            .send_to(&pkt, &SockAddr::from(SocketAddr::new(dst, 0)))
            .map(drop)
    }

    /// Waits until a packet may be read.
    pub async fn readable(&self) -> io::Result<()> {
        let mut g = self.fd.readable().await?;
        g.clear_ready();
        Ok(())
    }

    /// Every reply queued now that carries `id` and `token`; other packets (another
    /// process's pings, truncated ones) are skipped.
    pub fn drain(&self, id: u16, token: &[u8; TOKEN]) -> io::Result<Vec<Reply>> {
        let mut out = Vec::new();
        // A reply to an MTU probe is as big as the probe: the whole packet is read, only
        // its head is looked at.
        let mut buf = [MaybeUninit::<u8>::uninit(); 65_536];
        loop {
            let (n, from) = match self.fd.get_ref().recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) => return Err(e),
            };
            // SAFETY: recv_from initialised the first `n` bytes.
            let bytes: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
            let Some(from) = from.as_socket().map(|a| a.ip()) else {
                continue;
            };
            if let Some(seq) = parse_reply(self.v6, bytes, id, token) {
                out.push(Reply { from, seq });
            }
        }
    }
}

fn setsockopt(fd: i32, level: i32, name: i32, v: i32) -> io::Result<()> {
    setsockopt_bytes(fd, level, name, &[v])
}

fn setsockopt_bytes<T: Copy>(fd: i32, level: i32, name: i32, v: &[T]) -> io::Result<()> {
    // SAFETY: `v` is a live slice of plain values, its length in bytes given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            v.as_ptr().cast(),
            std::mem::size_of_val(v) as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An echo request's ICMP message of `len` bytes: the token, then zeros. The IPv4
/// checksum is computed here; the kernel computes ICMPv6's (it covers a pseudo-header
/// of addresses only the kernel knows for sure).
pub fn echo_request(v6: bool, id: u16, seq: u16, token: &[u8; TOKEN], len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(ICMP_HEADER + TOKEN)];
    p[0] = if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 };
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..8 + TOKEN].copy_from_slice(token);
    if !v6 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// The Internet checksum (RFC 1071).
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The sequence number of an echo reply to this process (`id`, `token`): an IPv4 raw
/// socket reads the IP header too, an IPv6 one the ICMP message alone.
pub fn parse_reply(v6: bool, b: &[u8], id: u16, token: &[u8; TOKEN]) -> Option<u16> {
    let icmp = if v6 {
        b
    } else {
        let ihl = usize::from(*b.first()? & 0x0f) * 4;
        b.get(ihl..)?
    };
    let want = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    if icmp.len() < ICMP_HEADER + TOKEN || icmp[0] != want || icmp[1] != 0 {
        return None;
    }
    if u16::from_be_bytes([icmp[4], icmp[5]]) != id || icmp[8..8 + TOKEN] != token[..] {
        return None;
    }
    Some(u16::from_be_bytes([icmp[6], icmp[7]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_request_checks_out_and_its_reply_is_recognised() {
        let token = *b"ferry!!!";
        let p = echo_request(false, 0x1234, 7, &token, 1450 - 20);
        assert_eq!(p.len(), 1430);
        assert_eq!(checksum(&p), 0, "a valid checksum sums to zero");
        // The reply as a raw IPv4 socket reads it: a 20-byte header, type 0.
        let mut r = vec![0x45u8];
        r.extend([0u8; 19]);
        let mut icmp = p.clone();
        icmp[0] = ECHO_REPLY_V4;
        r.extend(&icmp);
        assert_eq!(parse_reply(false, &r, 0x1234, &token), Some(7));
        assert_eq!(
            parse_reply(false, &r, 0x1235, &token),
            None,
            "another pinger"
        );
        assert_eq!(parse_reply(false, &r, 0x1234, b"other..."), None);
        assert_eq!(
            parse_reply(false, &r[..30], 0x1234, &token),
            None,
            "truncated"
        );
        // The request itself (a peer's probe of this gateway) is not a reply.
        let mut req = vec![0x45u8];
        req.extend([0u8; 19]);
        req.extend(&p);
        assert_eq!(parse_reply(false, &req, 0x1234, &token), None);
    }

    #[test]
    fn an_ipv6_reply_has_no_ip_header_and_the_smallest_probe_carries_the_token() {
        let token = *b"12345678";
        let p = echo_request(true, 1, 65_535, &token, 0);
        assert_eq!((p.len(), p[0]), (ICMP_HEADER + TOKEN, ECHO_REQUEST_V6));
        let mut r = p.clone();
        r[0] = ECHO_REPLY_V6;
        assert_eq!(parse_reply(true, &r, 1, &token), Some(65_535));
    }
}
