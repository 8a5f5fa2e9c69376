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
//! bridge does not need: unknown multicast is flooded). IPv6 fragments pass: a pod's large
//! UDP datagrams are fragments, their source is in the fixed header checked here, and
//! receivers drop neighbour discovery that comes in fragments (RFC 6980). A pod without
//! IPv6 sends no IPv6.
//!
//! The program is written with `bpf::Asm`, whose jumps go to labels only and which refuses
//! to finish a program with a jump that lands nowhere meant: a slip here fails the ADD, it
//! never opens the guard.
//!
//! Why eBPF and not nftables or flower: the guard is made on every ADD, and an exec of
//! `nft` costs more than the whole ADD; `cls_flower` and `act_gact` are optional kernel
//! modules (absent on the kernels we test on), while `cls_bpf` with direct action needs
//! neither. The program dies with the veth, so DEL has nothing to undo.

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption};

use crate::bpf::{
    self, AsmError, Label, Loaded, Program, ADD64_K, EXIT, JA, JEQ32_K, JGT_X, JNE32_K, LDX_B,
    LDX_H, LDX_W, MOV64_K, MOV64_X, TC_ACT_OK, TC_ACT_SHOT,
};
use crate::error::{Context, Result};
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

/// The guard's assembler with the two verdicts every check ends in.
struct Writer {
    a: bpf::Asm,
    pass: Label,
    drop: Label,
}

impl Writer {
    /// `r4 = data + len; if r4 > data_end goto drop`: proves to the verifier (and to us)
    /// that `len` bytes of the frame are there.
    fn need(&mut self, len: i32) {
        self.a.op(MOV64_X, 4, 2, 0, 0);
        self.a.op(ADD64_K, 4, 0, 0, len);
        self.a.jump(JGT_X, 4, 3, 0, self.drop);
    }
    /// Drops unless the 6 bytes at `off` of the frame are `mac`.
    fn expect_mac(&mut self, off: i16, mac: [u8; 6]) {
        let (hi, lo) = (
            u32::from_ne_bytes([mac[0], mac[1], mac[2], mac[3]]),
            u16::from_ne_bytes([mac[4], mac[5]]),
        );
        self.a.op(LDX_W, 4, 2, off, 0);
        self.a.jump(JNE32_K, 4, 0, hi as i32, self.drop);
        self.a.op(LDX_H, 4, 2, off + 4, 0);
        self.a.jump(JNE32_K, 4, 0, i32::from(lo), self.drop);
    }
    /// Passes when the 4 bytes at `off` are one of `ips`, drops otherwise.
    fn expect_ipv4(&mut self, off: i16, ips: &[Ipv4Addr]) {
        self.a.op(LDX_W, 4, 2, off, 0);
        for ip in ips {
            let word = u32::from_ne_bytes(ip.octets()) as i32;
            self.a.jump(JEQ32_K, 4, 0, word, self.pass);
        }
        self.a.jump(JA, 0, 0, 0, self.drop);
    }
    /// Goes to `to` when the 16 bytes at `off` are one of `ips`, drops otherwise.
    fn expect_ipv6(&mut self, off: i16, ips: &[Ipv6Addr], to: Label) {
        for ip in ips {
            // Four word comparisons; a mismatch goes on to the next address.
            let next = self.a.label();
            for (w, word) in ip.octets().chunks_exact(4).enumerate() {
                let word = u32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
                self.a.op(LDX_W, 4, 2, off + 4 * w as i16, 0);
                self.a.jump(JNE32_K, 4, 0, word as i32, next);
            }
            self.a.jump(JA, 0, 0, 0, to);
            self.a.place(next);
        }
        self.a.jump(JA, 0, 0, 0, self.drop);
    }
}

impl SourceGuard {
    /// The program: r1 is the `__sk_buff`, r2/r3 the frame's start and end, r4 scratch.
    /// An error only for a mistake in the code below, which fails the ADD: the guard is
    /// never left out or loaded with a jump gone astray.
    pub fn program(&self) -> std::result::Result<Program, AsmError> {
        let mut a = bpf::Asm::default();
        let (pass, drop) = (a.label(), a.label());
        let mut w = Writer { a, pass, drop };
        let (ipv4, arp, ipv6) = (w.a.label(), w.a.label(), w.a.label());
        // A tag was already taken off into the skb: the frame below it is not what the
        // pod's address rules speak of.
        w.a.op(LDX_W, 4, 1, SKB_VLAN_PRESENT, 0);
        w.a.jump(JNE32_K, 4, 0, 0, drop);
        w.a.op(LDX_W, 2, 1, SKB_DATA, 0);
        w.a.op(LDX_W, 3, 1, SKB_DATA_END, 0);
        w.need(14);
        w.expect_mac(6, self.mac);
        w.a.op(LDX_H, 4, 2, 12, 0);
        let ethertype = |t: [u8; 2]| i32::from(u16::from_ne_bytes(t));
        w.a.jump(JEQ32_K, 4, 0, ethertype([0x08, 0x00]), ipv4);
        w.a.jump(JEQ32_K, 4, 0, ethertype([0x08, 0x06]), arp);
        if !self.ipv6.is_empty() {
            w.a.jump(JEQ32_K, 4, 0, ethertype([0x86, 0xdd]), ipv6);
        }
        w.a.jump(JA, 0, 0, 0, drop);

        w.a.place(ipv4);
        w.need(14 + 20);
        w.expect_ipv4(14 + 12, &self.ipv4);

        w.a.place(arp);
        w.need(14 + 28);
        w.expect_mac(14 + 8, self.mac);
        w.expect_ipv4(14 + 14, &self.ipv4);

        if !self.ipv6.is_empty() {
            let (source_ok, icmpv6) = (w.a.label(), w.a.label());
            w.a.place(ipv6);
            w.need(14 + 40);
            w.expect_ipv6(14 + 8, &self.ipv6, source_ok);
            w.a.place(source_ok);
            w.a.op(LDX_B, 4, 2, 14 + 6, 0);
            w.a.jump(JEQ32_K, 4, 0, 58, icmpv6);
            for hidden in [0, 43, 60] {
                w.a.jump(JEQ32_K, 4, 0, hidden, drop);
            }
            w.a.jump(JA, 0, 0, 0, pass);
            w.a.place(icmpv6);
            w.need(14 + 40 + 4);
            w.a.op(LDX_B, 4, 2, 14 + 40, 0);
            w.a.jump(JEQ32_K, 4, 0, 134, drop); // router advertisement
            w.a.jump(JEQ32_K, 4, 0, 137, drop); // redirect
            w.a.jump(JNE32_K, 4, 0, 136, pass);
            // A neighbour advertisement: only for the pod's own addresses.
            w.need(14 + 40 + 24);
            w.expect_ipv6(14 + 40 + 8, &self.ipv6, pass);
        }

        let mut a = w.a;
        a.place(pass);
        a.op(MOV64_K, 0, 0, 0, TC_ACT_OK as i32);
        a.op(EXIT, 0, 0, 0, 0);
        a.place(drop);
        a.op(MOV64_K, 0, 0, 0, TC_ACT_SHOT as i32);
        a.op(EXIT, 0, 0, 0, 0);
        a.finish(PROG_NAME)
    }

    /// The program, assembled and loaded, attached to nothing (to try frames on it).
    pub fn load(&self) -> Result<Loaded> {
        bpf::load_for(self.program(), "source guard")
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
        let prog = bpf::load_for(guard.program(), &what())?;
        self.attach_tc(index, TcHandle::INGRESS, &prog)
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

    fn insns(g: &SourceGuard) -> Vec<crate::bpf::Insn> {
        g.program().expect("the guard assembles").insns().to_vec()
    }

    #[test]
    fn every_shape_of_pod_assembles() {
        let v6: Vec<Ipv6Addr> = vec![
            "fd00::3".parse().unwrap(),
            "fe80::858:aff:fe01:203".parse().unwrap(),
        ];
        let shapes = [
            guard(),
            SourceGuard {
                ipv6: v6.clone(),
                ..guard()
            },
            SourceGuard {
                ipv4: Vec::new(),
                ipv6: v6,
                ..guard()
            },
            SourceGuard {
                ipv4: Vec::new(),
                ..guard()
            },
        ];
        for g in shapes {
            let p = g.program().unwrap_or_else(|e| panic!("{g:?}: {e}"));
            assert_eq!(p.name(), PROG_NAME);
        }
    }

    #[test]
    fn each_address_is_one_comparison() {
        let one = insns(&guard()).len();
        let mut two = guard();
        two.ipv4.push(Ipv4Addr::new(10, 1, 2, 4));
        // Compared once for IPv4 sources and once for ARP senders.
        assert_eq!(insns(&two).len(), one + 2);
    }

    #[test]
    fn constants_are_the_frame_bytes() {
        let ip = u32::from_ne_bytes([10, 1, 2, 3]) as i32;
        assert_eq!(
            insns(&guard())
                .iter()
                .filter(|i| i.code == JEQ32_K && i.imm == ip)
                .count(),
            2
        );
    }

    #[test]
    fn ipv6_only_when_given() {
        let ipv6_ethertype = i32::from(u16::from_ne_bytes([0x86, 0xdd]));
        let has_ipv6 = |g: &SourceGuard| {
            insns(g)
                .iter()
                .any(|i| i.code == JEQ32_K && i.imm == ipv6_ethertype)
        };
        assert!(!has_ipv6(&guard()));
        let mut g = guard();
        g.ipv6 = vec!["fd00::3".parse().unwrap()];
        assert!(has_ipv6(&g));
    }
}
