//! Small tc eBPF programs: the instruction set ferry writes them in, loading one, and
//! attaching it to a link in direct-action mode (`cls_bpf`). Each program is a handful of
//! instructions assembled in Rust, so the plugin needs no compiler, object file or bpffs:
//! it loads the program, attaches it by descriptor, and the program lives as long as the
//! link does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use futures_util::StreamExt;
use netlink_packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::handle::Netlink;

/// One eBPF instruction, as the kernel takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub(crate) code: u8,
    /// dst register in the low nibble, src register in the high one.
    regs: u8,
    pub(crate) off: i16,
    pub(crate) imm: i32,
}

impl Insn {
    pub(crate) const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Insn {
            code,
            regs: dst | (src << 4),
            off,
            imm,
        }
    }
}

// Opcodes (linux/bpf_common.h, linux/bpf.h).
pub(crate) const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
pub(crate) const LDX_H: u8 = 0x69; // dst = *(u16 *)(src + off)
pub(crate) const LDX_B: u8 = 0x71; // dst = *(u8 *)(src + off)
pub(crate) const MOV64_X: u8 = 0xbf; // dst = src
pub(crate) const MOV64_K: u8 = 0xb7; // dst = imm
pub(crate) const ADD64_K: u8 = 0x07; // dst += imm
pub(crate) const JGT_X: u8 = 0x2d; // if dst > src goto off
pub(crate) const JA: u8 = 0x05; // goto off
pub(crate) const JEQ32_K: u8 = 0x16; // if (u32)dst == imm goto off
pub(crate) const JNE32_K: u8 = 0x56; // if (u32)dst != imm goto off
pub(crate) const CALL: u8 = 0x85; // r0 = helper imm (r1..r5)
pub(crate) const EXIT: u8 = 0x95;

pub(crate) const TC_ACT_OK: i32 = 0;
pub(crate) const TC_ACT_SHOT: i32 = 2;

/// The head of `union bpf_attr` for BPF_PROG_LOAD, up to the fields ferry sets; the kernel
/// takes a shorter attr and zeroes the rest.
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// Loads `insns` as a tc classifier named `name` (at most 15 bytes: what `tc filter show`
/// and bpftool print); on failure, loads again with the verifier's log so the error says
/// why.
pub(crate) fn load(insns: &[Insn], name: &str) -> std::io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut prog_name = [0u8; 16];
    let n = name.len().min(15);
    prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut log = vec![0u8; 0];
    for attempt in 0..2 {
        if attempt == 1 {
            log = vec![0u8; 64 * 1024];
        }
        let attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SCHED_CLS,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(attempt == 1),
            log_size: log.len() as u32,
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            kern_version: 0,
            prog_flags: 0,
            prog_name,
        };
        // SAFETY: `attr` points at live memory (the instructions, the license string and the
        // log buffer outlive the call) and its size is passed with it.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let e = std::io::Error::last_os_error();
        if attempt == 1 || e.raw_os_error() == Some(libc::EPERM) {
            let text = String::from_utf8_lossy(&log);
            let verifier = text.trim_end_matches('\0').trim();
            return Err(if verifier.is_empty() {
                e
            } else {
                std::io::Error::new(e.kind(), format!("{e}; verifier: {verifier}"))
            });
        }
    }
    Err(std::io::Error::other("unreachable: two attempts made"))
}

/// `ETH_P_ALL` in network byte order, as the filter's protocol.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();

impl Netlink {
    /// Adds a `clsact` qdisc to the link `index`: the hook for programs on its egress
    /// (and ingress).
    pub(crate) async fn add_clsact(&self, index: u32) -> Result<(), rtnetlink::Error> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = TcHandle::CLSACT;
        msg.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        msg.attributes.push(TcAttribute::Kind("clsact".into()));
        self.create(RouteNetlinkMessage::NewQueueDiscipline(msg))
            .await
    }

    /// Attaches `prog` in direct-action mode under `parent` of the link `index`, for every
    /// protocol, at preference 1.
    pub(crate) async fn attach_tc(
        &self,
        index: u32,
        parent: TcHandle,
        prog: &OwnedFd,
        name: &str,
    ) -> Result<(), rtnetlink::Error> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = parent;
        msg.header.info = (1u32 << 16) | u32::from(ETH_P_ALL_BE);
        msg.attributes.push(TcAttribute::Kind("bpf".into()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        self.create(RouteNetlinkMessage::NewTrafficFilter(msg))
            .await
    }

    /// Sends one request that must create what it names (not replace it) and waits for
    /// the kernel's answer.
    async fn create(&self, msg: RouteNetlinkMessage) -> Result<(), rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        let mut handle = self.handle.clone();
        let mut replies = handle.request(req)?;
        while let Some(m) = replies.next().await {
            if let netlink_packet_core::NetlinkPayload::Error(e) = m.payload {
                if e.code.is_some() {
                    return Err(rtnetlink::Error::NetlinkError(e));
                }
            }
        }
        Ok(())
    }
}
