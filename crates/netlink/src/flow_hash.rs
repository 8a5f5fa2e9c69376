//! One hash for both directions of a pod's flows, so that receive steering keeps a
//! connection's data and its ACKs on one CPU.
//!
//! Steering (`rps`) picks the CPU for a frame from its hash. A packet that a local socket
//! sends carries that socket's own random hash (`sk_txhash`), and a veth hands the packet
//! on with it. So the two ends of one TCP connection are steered by two unrelated
//! numbers: on a node with two CPUs, half of all connections have their data worked on by
//! one CPU and their ACKs by the other, and the ACKs queue behind the data. Measured on
//! the hand-built pair of docs/benchmarks.md, such runs fell to the speed of no steering
//! at all while the others gained about two fifths.
//!
//! A three-instruction program on the egress of the pod's interface, inside the pod,
//! marks the hash invalid. The kernel then computes it from the packet's addresses and
//! ports, in an order that gives both directions the same value, and steers both to one
//! CPU. It changes nothing else: every packet passes.

use netlink_packet_route::tc::TcHandle;

use crate::bpf::{self, Asm, AsmError, Loaded, Program, CALL, EXIT, MOV64_K, TC_ACT_OK};
use crate::error::{Context, Result};
use crate::handle::Netlink;

/// What `tc filter show` names the program.
pub const PROG_NAME: &str = "ferry_flowhash";

/// `bpf_set_hash_invalid` (linux/bpf.h, helper 41).
const SET_HASH_INVALID: i32 = 41;

/// The program: r1 is the `__sk_buff`, which the helper takes as it is.
pub fn program() -> std::result::Result<Program, AsmError> {
    let mut a = Asm::default();
    a.op(CALL, 0, 0, 0, SET_HASH_INVALID);
    a.op(MOV64_K, 0, 0, 0, TC_ACT_OK as i32);
    a.op(EXIT, 0, 0, 0, 0);
    a.finish(PROG_NAME)
}

/// The program, assembled and loaded, attached to nothing (to try frames on it).
pub fn load() -> Result<Loaded> {
    bpf::load_for(program(), "flow hash")
}

impl Netlink {
    /// Puts the flow-hash program on the egress of the link `index` (a pod's interface,
    /// through a handle opened in the pod's namespace).
    pub async fn hash_by_flow(&self, index: u32, name: &str) -> Result<()> {
        let what = || format!("flow hash on {name} in {}", self.place);
        self.add_clsact(index)
            .await
            .context(|| format!("add clsact qdisc: {}", what()))?;
        let prog = bpf::load_for(program(), &what())?;
        let egress = TcHandle {
            major: TcHandle::CLSACT.major,
            minor: TcHandle::MIN_EGRESS,
        };
        self.attach_tc(index, egress, &prog)
            .await
            .context(|| format!("add filter: {}", what()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passes_every_packet() {
        let p = super::program().expect("the flow hash assembles");
        let p = p.insns();
        assert_eq!(p[0].imm, super::SET_HASH_INVALID);
        assert_eq!(
            (p[1].code, p[1].imm),
            (super::MOV64_K, super::TC_ACT_OK as i32)
        );
        assert_eq!(p[2].code, super::EXIT);
    }
}
