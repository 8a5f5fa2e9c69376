//! Small tc eBPF programs: the instruction set ferry writes them in, the one assembler that
//! turns them into instructions, loading one, running one on a frame, and attaching it to
//! a link in direct-action mode (`cls_bpf`). Each program is a handful of instructions
//! assembled in Rust, so the plugin needs no compiler, object file or bpffs: it loads the
//! program, attaches it by descriptor, and the program lives as long as the link does.
//!
//! The assembler fails closed: a jump whose label is never placed, lands past the end,
//! goes backwards or is too far for its 16-bit offset, or a jump written as a plain
//! instruction with a hand-counted offset, makes assembling an error (and so the ADD that
//! needed the program fails), never a program whose jumps go somewhere nobody meant. The
//! kernel's verifier proves a program safe for the kernel, not right for the pod: a jump
//! that falls through into "pass" verifies as well as one that goes to "drop".

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use futures_util::StreamExt;
use netlink_packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::handle::Netlink;

/// One eBPF instruction, as the kernel takes it. Made only by `Asm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub(crate) code: u8,
    /// dst register in the low nibble, src register in the high one.
    regs: u8,
    pub(crate) off: i16,
    pub(crate) imm: i32,
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

/// tc's verdicts, as a direct-action program returns them: pass the frame on, or drop it.
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;

/// Whether `code` transfers control by its offset (the jump classes, less call and exit).
fn is_jump(code: u8) -> bool {
    let class = code & 0x07;
    (class == 0x05 || class == 0x06) && code != CALL && code != EXIT
}

/// Why a program could not be assembled. Each is a bug in the code that writes the
/// program, caught before anything is loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    #[error("instruction {at} jumps to a label that is never placed")]
    Unplaced { at: usize },
    #[error("a label is placed twice, at instructions {first} and {second}")]
    PlacedTwice { first: usize, second: usize },
    #[error("instruction {at} jumps to {target}, past the last instruction ({last})")]
    PastTheEnd {
        at: usize,
        target: usize,
        last: usize,
    },
    #[error("instruction {at} jumps back to {target}: these programs only jump forward")]
    Backward { at: usize, target: usize },
    #[error(
        "instruction {at} jumps {distance} instructions ahead, more than its 16-bit offset holds"
    )]
    TooFar { at: usize, distance: usize },
    #[error("instruction {at} (opcode {code:#04x}) is a jump written without a label")]
    Unlabelled { at: usize, code: u8 },
    #[error("the program does not end with exit")]
    NoExit,
}

/// Where a jump goes: made by `Asm::label`, placed by `Asm::place`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Label(usize);

/// The assembler: instructions in order, jumps by label, resolved and checked by `finish`.
#[derive(Default)]
pub(crate) struct Asm {
    insns: Vec<Insn>,
    /// (instruction index, label) of every jump.
    jumps: Vec<(usize, Label)>,
    /// Where each label was placed, by its number.
    placed: Vec<Option<usize>>,
    /// The first mistake seen while writing, reported by `finish`.
    refused: Option<AsmError>,
}

impl Asm {
    /// Any instruction but a jump (a jump goes through `jump`, so its offset is counted
    /// by the assembler, never by hand).
    pub(crate) fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        if is_jump(code) {
            let at = self.insns.len();
            self.refuse(AsmError::Unlabelled { at, code });
        }
        self.push(code, dst, src, off, imm);
    }

    /// A jump to `to` (conditional on `dst`, `src` or `imm` as `code` says).
    pub(crate) fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) {
        self.jumps.push((self.insns.len(), to));
        self.push(code, dst, src, 0, imm);
    }

    /// A new label, to be placed once.
    pub(crate) fn label(&mut self) -> Label {
        self.placed.push(None);
        Label(self.placed.len() - 1)
    }

    /// Places `l` at the next instruction.
    pub(crate) fn place(&mut self, l: Label) {
        let here = self.insns.len();
        match self.placed[l.0] {
            Some(first) => self.refuse(AsmError::PlacedTwice {
                first,
                second: here,
            }),
            None => self.placed[l.0] = Some(here),
        }
    }

    fn push(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            regs: dst | (src << 4),
            off,
            imm,
        });
    }

    fn refuse(&mut self, e: AsmError) {
        self.refused.get_or_insert(e);
    }

    /// The program, every jump resolved to an offset that lands on an instruction after
    /// it; an error for the first mistake otherwise.
    pub(crate) fn finish(mut self, name: &'static str) -> Result<Program, AsmError> {
        if let Some(e) = self.refused.take() {
            return Err(e);
        }
        if self.insns.last().map(|i| i.code) != Some(EXIT) {
            return Err(AsmError::NoExit);
        }
        let last = self.insns.len() - 1;
        for &(at, to) in &self.jumps {
            let target = self.placed[to.0].ok_or(AsmError::Unplaced { at })?;
            if target > last {
                return Err(AsmError::PastTheEnd { at, target, last });
            }
            if target <= at {
                return Err(AsmError::Backward { at, target });
            }
            let distance = target - at - 1;
            self.insns[at].off =
                i16::try_from(distance).map_err(|_| AsmError::TooFar { at, distance })?;
        }
        Ok(Program {
            insns: self.insns,
            name,
        })
    }
}

/// A program the assembler accepted: the only thing `load` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    insns: Vec<Insn>,
    name: &'static str,
}

impl Program {
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// What `tc filter show` and bpftool print (at most 15 bytes).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Loads the program as a tc classifier; on failure, loads again with the verifier's
    /// log so the error says why.
    pub fn load(&self) -> std::io::Result<Loaded> {
        load(&self.insns, self.name).map(|fd| Loaded {
            fd,
            name: self.name,
        })
    }
}

/// Loads what the assembler made of a program; errors say `what` the program is for.
pub(crate) fn load_for(
    program: Result<Program, AsmError>,
    what: &str,
) -> crate::error::Result<Loaded> {
    let prog = program.map_err(|source| crate::error::Error::Program {
        what: format!("assemble the eBPF program of the {what}"),
        source,
    })?;
    prog.load().map_err(|source| crate::error::Error::Io {
        what: format!("load the eBPF program {} of the {what}", prog.name),
        source,
    })
}

/// A program in the kernel, freed when its last reference (this descriptor, a tc filter)
/// goes.
#[derive(Debug)]
pub struct Loaded {
    fd: OwnedFd,
    name: &'static str,
}

/// The head of `union bpf_attr` for BPF_PROG_TEST_RUN, up to the fields ferry sets; the
/// kernel takes a shorter attr and zeroes the rest.
#[repr(C)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

impl Loaded {
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// What the program returns for `frame` (from its Ethernet header on), run by the
    /// kernel on a copy of it (`BPF_PROG_TEST_RUN`): the verdict tc would act on. Nothing
    /// is sent and no link is touched.
    pub fn test_run(&self, frame: &[u8]) -> std::io::Result<u32> {
        let len = u32::try_from(frame.len())
            .map_err(|_| std::io::Error::other(format!("a {}-byte frame", frame.len())))?;
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            retval: 0,
            data_size_in: len,
            data_size_out: 0,
            data_in: frame.as_ptr() as u64,
            data_out: 0,
            repeat: 1,
            duration: 0,
        };
        // SAFETY: `attr` points at live memory (the frame outlives the call; no output
        // buffer is given) and its size is passed with it; the kernel writes only into
        // `attr`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>(),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(attr.retval)
    }
}

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

/// Loads `insns` as a tc classifier named `name` (at most 15 bytes).
fn load(insns: &[Insn], name: &str) -> std::io::Result<OwnedFd> {
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

    /// Attaches `prog`, under its name, in direct-action mode under `parent` of the link
    /// `index`, for every protocol, at preference 1.
    pub(crate) async fn attach_tc(
        &self,
        index: u32,
        parent: TcHandle,
        prog: &Loaded,
    ) -> Result<(), rtnetlink::Error> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = parent;
        msg.header.info = (1u32 << 16) | u32::from(ETH_P_ALL_BE);
        msg.attributes.push(TcAttribute::Kind("bpf".into()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.fd.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(prog.name.into())),
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

#[cfg(test)]
#[path = "bpf_tests.rs"]
mod tests;
