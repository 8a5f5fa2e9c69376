//! The source guard: a pod may send only from its own MAC and addresses.
//!
//! Every frame a pod sends enters the host through the ingress of its host-side veth, so
//! that is where the guard sits: a small eBPF program in direct-action mode (`cls_bpf`
//! under an `ingress` qdisc), built per pod with the pod's MAC and addresses as constants.
//! It passes IPv4 frames whose Ethernet and IP sources are the pod's and ARP whose sender
//! hardware and protocol addresses are the pod's, IPv6 frames whose source is the pod's
//! IPv6 address or its link-local address, and drops everything else: other ethertypes,
//! VLAN tags, another pod's address or MAC, gratuitous ARP for the gateway.
//!
//! IPv6 neighbour discovery passes (it is ICMPv6 from those sources), but a neighbour
//! advertisement must be for one of the pod's own addresses (the IPv6 form of gratuitous
//! ARP for the gateway), and router advertisements and redirects are dropped: a pod is no
//! router. IPv6 with a hop-by-hop, routing or destination-options header is dropped, so
//! that no ICMPv6 hides behind one (this drops the pod's MLD reports, which ferry's
//! bridge does not need: unknown multicast is flooded). A pod without IPv6 sends no IPv6.
//!
//! Why eBPF and not nftables or flower: the guard is made on every ADD, and an exec of
//! `nft` costs more than the whole ADD; `cls_flower` and `act_gact` are optional kernel
//! modules (absent on the kernels we test on), while `cls_bpf` with direct action needs
//! neither. The program dies with the veth, so DEL has nothing to undo.

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption};

use crate::bpf::{
    self, Insn, ADD64_K, EXIT, JA, JEQ32_K, JGT_X, JNE32_K, LDX_B, LDX_H, LDX_W, MOV64_K, MOV64_X,
    TC_ACT_OK, TC_ACT_SHOT,
};
use crate::error::{Context, Error, Result};
use crate::handle::Netlink;

/// What a pod may send from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceGuard {
    pub mac: [u8; 6],
    pub ipv4: Vec<Ipv4Addr>,
    /// The pod's IPv6 addresses, its link-local one included; empty: no IPv6 passes.
    pub ipv6: Vec<Ipv6Addr>,
}

// Offsets in `struct __sk_buff`.
const SKB_VLAN_PRESENT: i16 = 20;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;

const PROG_NAME: &str = "ferry_guard";

/// Where a jump goes, resolved when the program is finished.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    Ipv4,
    Arp,
    Ipv6,
    Ipv6Source,
    Icmpv6,
    Pass,
    Drop,
}

struct Asm {
    insns: Vec<Insn>,
    /// (instruction index, target) of every jump still to resolve.
    jumps: Vec<(usize, Label)>,
    labels: Vec<(Label, usize)>,
}

impl Asm {
    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn::new(code, dst, src, off, imm));
    }
    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) {
        self.jumps.push((self.insns.len(), to));
        self.op(code, dst, src, 0, imm);
    }
    fn label(&mut self, l: Label) {
        self.labels.push((l, self.insns.len()));
    }
    /// `r4 = data + len; if r4 > data_end goto drop`: proves to the verifier (and to us)
    /// that `len` bytes of the frame are there.
    fn need(&mut self, len: i32) {
        self.op(MOV64_X, 4, 2, 0, 0);
        self.op(ADD64_K, 4, 0, 0, len);
        self.jump(JGT_X, 4, 3, 0, Label::Drop);
    }
    /// Drops unless the 6 bytes at `off` of the frame are `mac`.
    fn expect_mac(&mut self, off: i16, mac: [u8; 6]) {
        let (hi, lo) = (
            u32::from_ne_bytes([mac[0], mac[1], mac[2], mac[3]]),
            u16::from_ne_bytes([mac[4], mac[5]]),
        );
        self.op(LDX_W, 4, 2, off, 0);
        self.jump(JNE32_K, 4, 0, hi as i32, Label::Drop);
        self.op(LDX_H, 4, 2, off + 4, 0);
        self.jump(JNE32_K, 4, 0, i32::from(lo), Label::Drop);
    }
    /// Passes when the 4 bytes at `off` are one of `ips`, drops otherwise.
    fn expect_ipv4(&mut self, off: i16, ips: &[Ipv4Addr]) {
        self.op(LDX_W, 4, 2, off, 0);
        for ip in ips {
            self.jump(
                JEQ32_K,
                4,
                0,
                u32::from_ne_bytes(ip.octets()) as i32,
                Label::Pass,
            );
        }
        self.jump(JA, 0, 0, 0, Label::Drop);
    }
    /// Goes to `to` when the 16 bytes at `off` are one of `ips`, drops otherwise.
    fn expect_ipv6(&mut self, off: i16, ips: &[Ipv6Addr], to: Label) {
        for ip in ips {
            let o = ip.octets();
            // Four word comparisons; a mismatch skips the rest of this address's block
            // (2 instructions a word left, then the final jump).
            for w in 0..4 {
                let word = u32::from_ne_bytes([o[w * 4], o[w * 4 + 1], o[w * 4 + 2], o[w * 4 + 3]]);
                self.op(LDX_W, 4, 2, off + 4 * w as i16, 0);
                self.op(JNE32_K, 4, 0, 7 - 2 * w as i16, word as i32);
            }
            self.jump(JA, 0, 0, 0, to);
        }
        self.jump(JA, 0, 0, 0, Label::Drop);
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, to) in std::mem::take(&mut self.jumps) {
            let target = self
                .labels
                .iter()
                .find(|(l, _)| *l == to)
                .map(|(_, i)| *i)
                .unwrap_or(at + 1);
            // Programs are a few dozen instructions: the offset always fits.
            self.insns[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        self.insns
    }
}

impl SourceGuard {
    /// The program: r1 is the `__sk_buff`, r2/r3 the frame's start and end, r4 scratch.
    pub fn program(&self) -> Vec<Insn> {
        let mut a = Asm {
            insns: Vec::new(),
            jumps: Vec::new(),
            labels: Vec::new(),
        };
        // A tag was already taken off into the skb: the frame below it is not what the
        // pod's address rules speak of.
        a.op(LDX_W, 4, 1, SKB_VLAN_PRESENT, 0);
        a.jump(JNE32_K, 4, 0, 0, Label::Drop);
        a.op(LDX_W, 2, 1, SKB_DATA, 0);
        a.op(LDX_W, 3, 1, SKB_DATA_END, 0);
        a.need(14);
        a.expect_mac(6, self.mac);
        a.op(LDX_H, 4, 2, 12, 0);
        a.jump(
            JEQ32_K,
            4,
            0,
            i32::from(u16::from_ne_bytes([0x08, 0x00])),
            Label::Ipv4,
        );
        a.jump(
            JEQ32_K,
            4,
            0,
            i32::from(u16::from_ne_bytes([0x08, 0x06])),
            Label::Arp,
        );
        if !self.ipv6.is_empty() {
            a.jump(
                JEQ32_K,
                4,
                0,
                i32::from(u16::from_ne_bytes([0x86, 0xdd])),
                Label::Ipv6,
            );
        }
        a.jump(JA, 0, 0, 0, Label::Drop);

        a.label(Label::Ipv4);
        a.need(14 + 20);
        a.expect_ipv4(14 + 12, &self.ipv4);

        a.label(Label::Arp);
        a.need(14 + 28);
        a.expect_mac(14 + 8, self.mac);
        a.expect_ipv4(14 + 14, &self.ipv4);

        if !self.ipv6.is_empty() {
            a.label(Label::Ipv6);
            a.need(14 + 40);
            a.expect_ipv6(14 + 8, &self.ipv6, Label::Ipv6Source);
            a.label(Label::Ipv6Source);
            a.op(LDX_B, 4, 2, 14 + 6, 0);
            a.jump(JEQ32_K, 4, 0, 58, Label::Icmpv6);
            for hidden in [0, 43, 60] {
                a.jump(JEQ32_K, 4, 0, hidden, Label::Drop);
            }
            a.jump(JA, 0, 0, 0, Label::Pass);
            a.label(Label::Icmpv6);
            a.need(14 + 40 + 4);
            a.op(LDX_B, 4, 2, 14 + 40, 0);
            a.jump(JEQ32_K, 4, 0, 134, Label::Drop); // router advertisement
            a.jump(JEQ32_K, 4, 0, 137, Label::Drop); // redirect
            a.jump(JNE32_K, 4, 0, 136, Label::Pass);
            // A neighbour advertisement: only for the pod's own addresses.
            a.need(14 + 40 + 24);
            a.expect_ipv6(14 + 40 + 8, &self.ipv6, Label::Pass);
        }

        a.label(Label::Pass);
        a.op(MOV64_K, 0, 0, 0, TC_ACT_OK);
        a.op(EXIT, 0, 0, 0, 0);
        a.label(Label::Drop);
        a.op(MOV64_K, 0, 0, 0, TC_ACT_SHOT);
        a.op(EXIT, 0, 0, 0, 0);
        a.finish()
    }
}

impl Netlink {
    /// Installs `guard` on the ingress of the link `index` (a pod's host-side veth, which
    /// must still be down so that no frame passes before the guard is there).
    pub async fn guard_source(&self, index: u32, name: &str, guard: &SourceGuard) -> Result<()> {
        let what = || format!("source guard on {name} in {}", self.place);
        self.handle
            .qdisc()
            .add(index as i32)
            .ingress()
            .execute()
            .await
            .context(|| format!("add ingress qdisc: {}", what()))?;
        let prog = bpf::load(&guard.program(), PROG_NAME).map_err(|source| Error::Io {
            what: format!("load the eBPF program of the {}", what()),
            source,
        })?;
        self.attach_tc(index, TcHandle::INGRESS, &prog, PROG_NAME)
            .await
            .context(|| format!("add filter: {}", what()))
    }

    /// Whether the link `index` carries ferry's source guard.
    pub async fn has_source_guard(&self, index: u32) -> Result<bool> {
        use futures_util::TryStreamExt;
        let filters: Vec<TcMessage> = self
            .handle
            .traffic_filter(index as i32)
            .get()
            .ingress()
            .execute()
            .try_collect()
            .await
            .context(|| format!("list ingress filters of link {index} in {}", self.place))?;
        Ok(filters.iter().any(|f| {
            f.attributes.iter().any(|a| {
                matches!(a, TcAttribute::Options(o) if o.iter().any(|o| matches!(o,
                    TcOption::Bpf(TcFilterBpfOption::ProgName(n)) if n.starts_with(PROG_NAME))))
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> SourceGuard {
        SourceGuard {
            mac: [0x0a, 0x58, 10, 1, 2, 3],
            ipv4: vec![Ipv4Addr::new(10, 1, 2, 3)],
            ipv6: Vec::new(),
        }
    }

    /// Every jump goes forward and lands inside the program.
    fn assert_jumps_inside(p: &[Insn]) {
        for (i, insn) in p.iter().enumerate() {
            let is_jump = insn.code & 0x07 == 0x05 || insn.code & 0x07 == 0x06;
            if is_jump && insn.code != EXIT {
                let to = i as i64 + 1 + i64::from(insn.off);
                assert!(
                    to > i as i64 && (to as usize) < p.len(),
                    "insn {i}: {insn:?}"
                );
            }
        }
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let p = guard().program();
        assert_jumps_inside(&p);
        assert_eq!(p.last().map(|i| i.code), Some(EXIT));
    }

    #[test]
    fn each_address_is_one_comparison() {
        let one = guard().program().len();
        let mut two = guard();
        two.ipv4.push(Ipv4Addr::new(10, 1, 2, 4));
        // Compared once for IPv4 sources and once for ARP senders.
        assert_eq!(two.program().len(), one + 2);
    }

    #[test]
    fn constants_are_the_frame_bytes() {
        let p = guard().program();
        let ip = u32::from_ne_bytes([10, 1, 2, 3]) as i32;
        assert_eq!(
            p.iter()
                .filter(|i| i.code == JEQ32_K && i.imm == ip)
                .count(),
            2
        );
    }

    #[test]
    fn ipv6_only_when_given() {
        let v4 = guard().program();
        let ipv6_ethertype = i32::from(u16::from_ne_bytes([0x86, 0xdd]));
        assert!(!v4
            .iter()
            .any(|i| i.code == JEQ32_K && i.imm == ipv6_ethertype));
        let mut g = guard();
        g.ipv6 = vec![
            "fd00::3".parse().unwrap(),
            "fe80::858:aff:fe01:203".parse().unwrap(),
        ];
        let p = g.program();
        assert!(p
            .iter()
            .any(|i| i.code == JEQ32_K && i.imm == ipv6_ethertype));
        // The hand-counted skips of the address blocks included.
        assert_jumps_inside(&p);
        // A skip out of an address block lands on the next block's first load.
        let first = p
            .iter()
            .position(|i| i.code == JNE32_K && i.off == 7)
            .unwrap();
        assert_eq!(p[first + 8].code, LDX_W);
    }
}
