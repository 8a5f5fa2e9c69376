//! The batch's bytes and its one round trip over a NETLINK_NETFILTER socket.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use ferry_netpol::naming::TABLE;

use crate::encode::{Op, WireElement, INTERVAL_END, OPEN_USERDATA};
use crate::Error;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;
const NLA_F_NESTED: u16 = 0x8000;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;

/// A nested attribute's length is a u16: the elements of one message stay well below it,
/// and a change with more goes as several messages of the same batch.
const MAX_ELEMENTS_BYTES: usize = 32 * 1024;

/// Which change and operation a message of the batch carries, by its sequence number.
struct Sent {
    change: usize,
    op: Op,
}

/// A message the kernel refused.
pub(crate) struct Failure {
    pub change: usize,
    pub op: Op,
    pub errno: i32,
}

pub(crate) struct Batch {
    buf: Vec<u8>,
    /// The messages between begin and end, in order: sequence number `i + 1`.
    sent: Vec<Sent>,
}

fn put_attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    // Every attribute built here is far below 64 KiB (see MAX_ELEMENTS_BYTES).
    buf.extend((len as u16).to_ne_bytes());
    buf.extend(ty.to_ne_bytes());
    buf.extend(data);
    pad(buf);
}

fn put_strz(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let mut d = Vec::with_capacity(s.len() + 1);
    d.extend(s.as_bytes());
    d.push(0);
    put_attr(buf, ty, &d);
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend([0, 0]);
    buf.extend((ty | NLA_F_NESTED).to_ne_bytes());
    at
}

fn nest_end(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// nlmsghdr and nfgenmsg; the length is filled in by `msg_end`.
fn msg_start(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
    let at = buf.len();
    buf.extend(0u32.to_ne_bytes());
    buf.extend(ty.to_ne_bytes());
    buf.extend(flags.to_ne_bytes());
    buf.extend(seq.to_ne_bytes());
    buf.extend(0u32.to_ne_bytes());
    buf.push(family);
    buf.push(0); // NFNETLINK_V0
    buf.extend(res_id.to_be_bytes());
    at
}

fn msg_end(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
}

fn put_data_value(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let n = nest_start(buf, ty);
    put_attr(buf, NFTA_DATA_VALUE, value);
    nest_end(buf, n);
}

/// The `index`th element of its message (from 1): libnftnl numbers each element's nest
/// (the kernel reads any type there; `NFTA_LIST_ELEM` is 1).
fn put_element(buf: &mut Vec<u8>, index: u16, e: &WireElement) {
    let n = nest_start(buf, index);
    if e.flags != 0 {
        put_attr(buf, NFTA_SET_ELEM_FLAGS, &e.flags.to_be_bytes());
    }
    put_data_value(buf, NFTA_SET_ELEM_KEY, &e.key);
    if let Some(end) = &e.key_end {
        put_data_value(buf, NFTA_SET_ELEM_KEY_END, end);
    }
    if let Some(chain) = &e.jump {
        let d = nest_start(buf, NFTA_SET_ELEM_DATA);
        let v = nest_start(buf, NFTA_DATA_VERDICT);
        put_attr(buf, NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
        put_strz(buf, NFTA_VERDICT_CHAIN, chain);
        nest_end(buf, v);
        nest_end(buf, d);
    }
    if e.open {
        put_attr(buf, NFTA_SET_ELEM_USERDATA, &OPEN_USERDATA);
    }
    nest_end(buf, n);
    debug_assert!(e.flags & !INTERVAL_END == 0);
}

impl Batch {
    pub fn new() -> Batch {
        let mut buf = Vec::new();
        let at = msg_start(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            libc::NLM_F_REQUEST as u16,
            0,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
        );
        msg_end(&mut buf, at);
        Batch {
            buf,
            sent: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Adds the messages for `elements` of `set` (change `change`), as many as they need.
    pub fn push(&mut self, change: usize, op: Op, family: u8, set: &str, elements: &[WireElement]) {
        let (ty, flags) = match op {
            Op::Add => (NFT_MSG_NEWSETELEM, libc::NLM_F_CREATE),
            Op::Delete => (NFT_MSG_DELSETELEM, 0),
        };
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16;
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | ty;
        let mut rest = elements;
        while !rest.is_empty() {
            let seq = self.sent.len() as u32 + 1;
            let m = msg_start(&mut self.buf, ty, flags, seq, family, 0);
            put_strz(&mut self.buf, NFTA_SET_ELEM_LIST_TABLE, TABLE);
            put_strz(&mut self.buf, NFTA_SET_ELEM_LIST_SET, set);
            let list = nest_start(&mut self.buf, NFTA_SET_ELEM_LIST_ELEMENTS);
            let mut n = 0;
            for e in rest {
                if n > 0 && self.buf.len() - list >= MAX_ELEMENTS_BYTES {
                    break;
                }
                n += 1;
                // At most a few hundred elements fit below MAX_ELEMENTS_BYTES.
                put_element(&mut self.buf, n as u16, e);
            }
            nest_end(&mut self.buf, list);
            msg_end(&mut self.buf, m);
            self.sent.push(Sent { change, op });
            rest = &rest[n..];
        }
    }

    fn end_seq(&self) -> u32 {
        self.sent.len() as u32 + 1
    }

    /// The bytes of the whole batch, its end included.
    pub fn finish(mut self) -> Vec<u8> {
        self.close();
        self.buf
    }

    fn close(&mut self) {
        let seq = self.end_seq();
        let at = msg_start(
            &mut self.buf,
            NFNL_MSG_BATCH_END,
            libc::NLM_F_REQUEST as u16,
            seq,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
        );
        msg_end(&mut self.buf, at);
    }

    /// Sends the batch as one datagram and reads an ack for every message; returns the
    /// messages the kernel refused, in order.
    pub fn send(mut self) -> Result<Vec<Failure>, Error> {
        let end_seq = self.end_seq();
        self.close();

        let sock = Socket::open(self.buf.len(), self.sent.len())?;
        sock.send(&self.buf)?;
        let mut acked = vec![false; self.sent.len()];
        let mut left = self.sent.len();
        let mut failures: Vec<(u32, i32)> = Vec::new();
        let mut rbuf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = sock.recv(&mut rbuf)?;
            let mut msgs = &rbuf[..n];
            while msgs.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes([msgs[0], msgs[1], msgs[2], msgs[3]]) as usize;
                let ty = u16::from_ne_bytes([msgs[4], msgs[5]]);
                if len < NLMSG_HDRLEN || len > msgs.len() {
                    return Err(Error::Protocol(format!(
                        "a message of {len} bytes in a datagram of {n}"
                    )));
                }
                let msg = &msgs[..len];
                msgs = msgs.get(((len + 3) & !3)..).unwrap_or(&[]);
                if ty != NLMSG_ERROR {
                    continue;
                }
                // struct nlmsgerr: the error, then the header of the message it answers.
                let body = &msg[NLMSG_HDRLEN..];
                if body.len() < 4 + NLMSG_HDRLEN {
                    return Err(Error::Protocol(format!("a short ack of {len} bytes")));
                }
                let errno = -i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                let seq = u32::from_ne_bytes([body[12], body[13], body[14], body[15]]);
                if seq == 0 || seq == end_seq {
                    // The batch's begin or end: the kernel refused the batch as a whole.
                    return Err(Error::Batch(io::Error::from_raw_os_error(errno.max(1))));
                }
                let i = (seq - 1) as usize;
                if i >= acked.len() || acked[i] {
                    return Err(Error::Protocol(format!(
                        "an unexpected ack of message {seq}"
                    )));
                }
                acked[i] = true;
                left -= 1;
                if errno != 0 {
                    failures.push((seq, errno));
                }
            }
        }
        failures.sort_unstable();
        Ok(failures
            .into_iter()
            .map(|(seq, errno)| {
                let s = &self.sent[(seq - 1) as usize];
                Failure {
                    change: s.change,
                    op: s.op,
                    errno,
                }
            })
            .collect())
    }
}

struct Socket(OwnedFd);

fn last_err(what: &'static str) -> Error {
    Error::Io {
        what,
        err: io::Error::last_os_error(),
    }
}

fn set_int(fd: i32, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: an int option, its size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A buffer size: the forced one (root, or CAP_NET_ADMIN, which the batch needs anyway)
/// when the default is too small, else the ordinary one up to the system's maximum.
fn set_buf(fd: i32, force: i32, plain: i32, size: usize) -> io::Result<()> {
    let size = i32::try_from(size).unwrap_or(i32::MAX);
    set_int(fd, libc::SOL_SOCKET, force, size)
        .or_else(|_| set_int(fd, libc::SOL_SOCKET, plain, size))
}

impl Socket {
    /// A socket whose buffers hold the whole batch (sent as one datagram, which the kernel
    /// takes only whole) and an ack for each of its `messages`.
    fn open(batch_len: usize, messages: usize) -> Result<Socket, Error> {
        // SAFETY: plain socket creation; the fd is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(last_err("socket"));
        }
        // SAFETY: fd was just created and is not owned elsewhere.
        let sock = Socket(unsafe { OwnedFd::from_raw_fd(fd) });
        let fd = sock.0.as_raw_fd();
        let io = |what| move |err| Error::Io { what, err };
        // Acks without a copy of the message they answer.
        set_int(fd, libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1).map_err(io("NETLINK_CAP_ACK"))?;
        set_buf(
            fd,
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            batch_len + 64 * 1024,
        )
        .map_err(io("send buffer"))?;
        // An ack is a small skb, but each costs its true size (about 1 KiB) in the buffer.
        set_buf(
            fd,
            libc::SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
            messages * 2048 + 256 * 1024,
        )
        .map_err(io("receive buffer"))?;
        // The kernel processes the batch within the send, so the acks are there by the
        // time it returns; a limit only guards against waiting forever.
        let tv = libc::timeval {
            tv_sec: Duration::from_secs(30).as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: a timeval option, its size given.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(last_err("SO_RCVTIMEO"));
        }
        // SAFETY: a zeroed sockaddr_nl is the kernel-assigned address.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let r = unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(last_err("bind"));
        }
        Ok(sock)
    }

    fn send(&self, buf: &[u8]) -> Result<(), Error> {
        // SAFETY: buf is valid for its length; the kernel is the destination (no address).
        let n = unsafe { libc::send(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(last_err("send batch"));
        }
        if n as usize != buf.len() {
            return Err(Error::Protocol(format!("sent {n} of {} bytes", buf.len())));
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> Result<usize, Error> {
        loop {
            // SAFETY: buf is valid and writable for its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(Error::Io {
                    what: "read acks (the batch was sent; whether it applied is not known)",
                    err,
                });
            }
        }
    }
}
