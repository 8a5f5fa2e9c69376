//! The verdicts of ferry's two eBPF programs on real frames, run by the kernel on the
//! loaded program (`BPF_PROG_TEST_RUN`): the source guard ADD puts on each host veth, and
//! the flow hash on a pod's egress. Frames are built byte by byte here, as a pod could
//! send them; spoofing.rs shows the same guard in place on a real veth.

use std::net::{Ipv4Addr, Ipv6Addr};

use ferry_netlink::bpf::{TC_ACT_OK, TC_ACT_SHOT};
use ferry_netlink::SourceGuard;
use ferry_tests::needs_root;
use ferry_tests::netns::Netns;

const POD_MAC: [u8; 6] = [0x0a, 0x58, 10, 1, 2, 3];
const OTHER_MAC: [u8; 6] = [0x0a, 0x58, 10, 1, 2, 4];
const BRIDGE_MAC: [u8; 6] = [0x0a, 0x58, 10, 1, 2, 1];
const POD_V4: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
const OTHER_V4: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 4);
const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 1);
const POD_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 4);
const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

const ETH_IPV4: u16 = 0x0800;
const ETH_ARP: u16 = 0x0806;
const ETH_IPV6: u16 = 0x86dd;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;

const UDP: u8 = 17;
const ICMPV6: u8 = 58;

fn pod_link_local() -> Ipv6Addr {
    ferry_netlink::link_local(POD_MAC)
}

fn other_link_local() -> Ipv6Addr {
    ferry_netlink::link_local(OTHER_MAC)
}

/// An Ethernet frame to the bridge.
fn eth(src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = BRIDGE_MAC.to_vec();
    f.extend(src);
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

/// A VLAN tag (`tpid`, VLAN 7) in front of `inner_type` and `payload`.
fn tagged(tpid: u16, inner_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = 7u16.to_be_bytes().to_vec();
    p.extend(inner_type.to_be_bytes());
    p.extend(payload);
    let mut f = eth(POD_MAC, tpid, &[]);
    f.extend(p);
    f
}

/// A UDP datagram in IPv4 (checksums are not what the guard looks at).
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 28, 0, 1, 0, 0, 64, UDP, 0, 0];
    h.extend(src.octets());
    h.extend(dst.octets());
    h.extend([0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0]);
    h
}

/// An ARP packet (1 request, 2 reply) for Ethernet and IPv4.
fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 0x08, 0x00, 6, 4];
    p.extend(op.to_be_bytes());
    p.extend(sha);
    p.extend(spa.octets());
    p.extend(tha);
    p.extend(tpa.octets());
    p
}

/// An IPv6 packet: the fixed header with `next` and `payload` after it.
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend((payload.len() as u16).to_be_bytes());
    p.extend([next, 255]);
    p.extend(src.octets());
    p.extend(dst.octets());
    p.extend(payload);
    p
}

/// An ICMPv6 message of `kind` with `body` after its type, code and checksum.
fn icmpv6(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend(body);
    m
}

/// A neighbour solicitation or advertisement body: flags, then the target address.
fn nd_target(flags: u8, target: Ipv6Addr) -> Vec<u8> {
    let mut b = vec![flags, 0, 0, 0];
    b.extend(target.octets());
    b
}

/// An 8-byte extension header (hop-by-hop, routing or destination options) naming `next`.
fn ext_header(next: u8) -> Vec<u8> {
    // PadN filling the 6 bytes after next-header and length.
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// A fragment header naming `next`, at fragment offset `offset` (in 8-byte units).
fn fragment_header(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend(((offset << 3) | u16::from(more)).to_be_bytes());
    h.extend(0x1234_5678u32.to_be_bytes());
    h
}

fn v6_udp() -> Vec<u8> {
    vec![0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0]
}

/// Every case: what it is, the frame, and whether the guard of a dual-stack pod passes it.
fn cases() -> Vec<(&'static str, Vec<u8>, bool)> {
    let ll = pod_link_local();
    let all_routers: Ipv6Addr = "ff02::2".parse().unwrap();
    let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
    let na = |target| icmpv6(136, &nd_target(0x20, target));
    let with_ext = |next_header: u8| {
        let mut p = ext_header(ICMPV6);
        p.extend(icmpv6(134, &[64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        eth(POD_MAC, ETH_IPV6, &ipv6(ll, all_nodes, next_header, &p))
    };
    let hop_by_hop = with_ext(0);
    let routing = with_ext(43);
    let destination = with_ext(60);
    let mut first_fragment = fragment_header(UDP, 0, true);
    first_fragment.extend(v6_udp());
    let mut later_fragment = fragment_header(UDP, 185, false);
    later_fragment.extend([0u8; 16]);
    let mut fragmented_ra = fragment_header(ICMPV6, 0, true);
    fragmented_ra.extend(icmpv6(134, &[64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    vec![
        // The pod's own frames.
        (
            "IPv4 from the pod",
            eth(POD_MAC, ETH_IPV4, &ipv4_udp(POD_V4, GATEWAY_V4)),
            true,
        ),
        (
            "ARP request from the pod for the gateway",
            eth(
                POD_MAC,
                ETH_ARP,
                &arp(1, POD_MAC, POD_V4, [0; 6], GATEWAY_V4),
            ),
            true,
        ),
        (
            "ARP reply from the pod",
            eth(
                POD_MAC,
                ETH_ARP,
                &arp(2, POD_MAC, POD_V4, BRIDGE_MAC, GATEWAY_V4),
            ),
            true,
        ),
        (
            "IPv6 from the pod",
            eth(POD_MAC, ETH_IPV6, &ipv6(POD_V6, GATEWAY_V6, UDP, &v6_udp())),
            true,
        ),
        (
            "IPv6 from the pod's link-local address",
            eth(POD_MAC, ETH_IPV6, &ipv6(ll, GATEWAY_V6, UDP, &v6_udp())),
            true,
        ),
        (
            "neighbour solicitation from the pod",
            eth(
                POD_MAC,
                ETH_IPV6,
                &ipv6(
                    ll,
                    GATEWAY_V6,
                    ICMPV6,
                    &icmpv6(135, &nd_target(0, GATEWAY_V6)),
                ),
            ),
            true,
        ),
        (
            "neighbour advertisement for the pod's address",
            eth(POD_MAC, ETH_IPV6, &ipv6(ll, all_nodes, ICMPV6, &na(POD_V6))),
            true,
        ),
        (
            "neighbour advertisement for the pod's link-local address",
            eth(POD_MAC, ETH_IPV6, &ipv6(ll, all_nodes, ICMPV6, &na(ll))),
            true,
        ),
        (
            "router solicitation from the pod",
            eth(
                POD_MAC,
                ETH_IPV6,
                &ipv6(ll, all_routers, ICMPV6, &icmpv6(133, &[0; 4])),
            ),
            true,
        ),
        (
            "ICMPv6 echo request from the pod",
            eth(
                POD_MAC,
                ETH_IPV6,
                &ipv6(POD_V6, GATEWAY_V6, ICMPV6, &icmpv6(128, &[0, 1, 0, 1])),
            ),
            true,
        ),
        // Not dropped, and why that is no hole: a fragment's source is in the fixed
        // header the guard checks; a pod's large UDP datagrams (DNS answers over IPv6)
        // are sent as fragments; and neighbour discovery behind a fragment header is
        // dropped by every receiver (Linux's suppress_frag_ndisc, on by default: RFC
        // 6980), which the test below checks.
        (
            "first fragment of a UDP datagram from the pod",
            eth(
                POD_MAC,
                ETH_IPV6,
                &ipv6(POD_V6, GATEWAY_V6, 44, &first_fragment),
            ),
            true,
        ),
        (
            "later fragment of a UDP datagram from the pod",
            eth(
                POD_MAC,
                ETH_IPV6,
                &ipv6(POD_V6, GATEWAY_V6, 44, &later_fragment),
            ),
            true,
        ),
        (
            "router advertisement behind a fragment header",
            eth(POD_MAC, ETH_IPV6, &ipv6(ll, all_nodes, 44, &fragmented_ra)),
            true,
        ),
        // Someone else's identity.
        (
            "IPv4 from another pod's address",
            eth(POD_MAC, ETH_IPV4, &ipv4_udp(OTHER_V4, GATEWAY_V4)),
            false,
        ),
        (
            "IPv4 from the gateway's address",
            eth(POD_MAC, ETH_IPV4, &ipv4_udp(GATEWAY_V4, OTHER_V4)),
            false,
        ),
        (
            "IPv4 from another MAC",
            eth(OTHER_MAC, ETH_IPV4, &ipv4_udp(POD_V4, GATEWAY_V4)),
            false,
        ),
        (
            "ARP request claiming another address",
            eth(
                POD_MAC,
                ETH_ARP,
                &arp(1, POD_MAC, OTHER_V4, [0; 6], GATEWAY_V4),
            ),
            false,
        ),
        (
            "ARP reply claiming another address",
            eth(
                POD_MAC,
                ETH_ARP,
                &arp(2, POD_MAC, OTHER_V4, BRIDGE_MAC, GATEWAY_V4),
            ),
            false,
        ),
        (
            "gratuitous ARP for the gateway",
            eth(
                POD_MAC,
                ETH_ARP,
                &arp(1, POD_MAC, GATEWAY_V4, [0xff; 6], GATEWAY_V4),
            ),
            false,
        ),
        (
            "gratuitous ARP reply for the gateway",
            eth(
                POD_MAC,
                ETH_ARP,
                &arp(2, POD_MAC, GATEWAY_V4, [0xff; 6], GATEWAY_V4),
            ),
            false,
        ),
        (
            "ARP with another sender MAC",
            eth(
                POD_MAC,
                ETH_ARP,
                &arp(2, OTHER_MAC, POD_V4, BRIDGE_MAC, GATEWAY_V4),
            ),
            false,
        ),
        (
            "ARP from another MAC",
            eth(
                OTHER_MAC,
                ETH_ARP,
                &arp(1, OTHER_MAC, POD_V4, [0; 6], GATEWAY_V4),
            ),
            false,
        ),
        (
            "IPv6 from another pod's address",
            eth(
                POD_MAC,
                ETH_IPV6,
                &ipv6(OTHER_V6, GATEWAY_V6, UDP, &v6_udp()),
            ),
            false,
        ),
        (
            "IPv6 from another link-local address",
            eth(
                POD_MAC,
                ETH_IPV6,
                &ipv6(other_link_local(), GATEWAY_V6, UDP, &v6_udp()),
            ),
            false,
        ),
        (
            "IPv6 from another MAC",
            eth(
                OTHER_MAC,
                ETH_IPV6,
                &ipv6(POD_V6, GATEWAY_V6, UDP, &v6_udp()),
            ),
            false,
        ),
        (
            "router advertisement",
            eth(
                POD_MAC,
                ETH_IPV6,
                &ipv6(
                    ll,
                    all_nodes,
                    ICMPV6,
                    &icmpv6(134, &[64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                ),
            ),
            false,
        ),
        (
            "redirect",
            eth(
                POD_MAC,
                ETH_IPV6,
                &ipv6(ll, OTHER_V6, ICMPV6, &{
                    let mut b = nd_target(0, ll);
                    b.extend(GATEWAY_V6.octets());
                    icmpv6(137, &b)
                }),
            ),
            false,
        ),
        (
            "neighbour advertisement for the gateway",
            eth(
                POD_MAC,
                ETH_IPV6,
                &ipv6(ll, all_nodes, ICMPV6, &na(GATEWAY_V6)),
            ),
            false,
        ),
        (
            "neighbour advertisement for another pod",
            eth(
                POD_MAC,
                ETH_IPV6,
                &ipv6(ll, all_nodes, ICMPV6, &na(OTHER_V6)),
            ),
            false,
        ),
        (
            "neighbour advertisement cut short",
            eth(
                POD_MAC,
                ETH_IPV6,
                &ipv6(ll, all_nodes, ICMPV6, &na(POD_V6)[..12]),
            ),
            false,
        ),
        (
            "router advertisement behind hop-by-hop options",
            hop_by_hop,
            false,
        ),
        (
            "router advertisement behind a routing header",
            routing,
            false,
        ),
        (
            "router advertisement behind destination options",
            destination,
            false,
        ),
        // Tags and other ethertypes.
        (
            "VLAN-tagged IPv4 from the pod",
            tagged(ETH_VLAN, ETH_IPV4, &ipv4_udp(POD_V4, GATEWAY_V4)),
            false,
        ),
        (
            "QinQ-tagged IPv4 from the pod",
            {
                let mut inner = 8u16.to_be_bytes().to_vec();
                inner.extend(ETH_IPV4.to_be_bytes());
                inner.extend(ipv4_udp(POD_V4, GATEWAY_V4));
                tagged(ETH_QINQ, ETH_VLAN, &inner)
            },
            false,
        ),
        (
            "VLAN-tagged ARP from the pod",
            tagged(
                ETH_VLAN,
                ETH_ARP,
                &arp(1, POD_MAC, POD_V4, [0; 6], GATEWAY_V4),
            ),
            false,
        ),
        (
            "another ethertype (LLDP)",
            eth(POD_MAC, 0x88cc, &[0; 46]),
            false,
        ),
        // Frames too short for what the guard must read. (The kernel's test run refuses
        // IPv4 and IPv6 shorter than their fixed header, so the cut is tried on ARP and
        // on a neighbour advertisement.)
        (
            "ARP cut short",
            eth(
                POD_MAC,
                ETH_ARP,
                &arp(1, POD_MAC, POD_V4, [0; 6], GATEWAY_V4)[..20],
            ),
            false,
        ),
        ("a bare Ethernet header", eth(POD_MAC, ETH_ARP, &[]), false),
    ]
}

fn dual_stack() -> SourceGuard {
    SourceGuard {
        mac: POD_MAC,
        ipv4: vec![POD_V4],
        ipv6: vec![POD_V6, pod_link_local()],
    }
}

fn verdict_name(v: u32) -> &'static str {
    match v {
        TC_ACT_OK => "pass",
        TC_ACT_SHOT => "drop",
        _ => "other",
    }
}

/// Loads a program with `load` in a namespace of its own and runs every case through it;
/// fails naming each wrong verdict.
fn assert_verdicts(
    load: impl FnOnce() -> ferry_netlink::bpf::Loaded + Send + 'static,
    cases: Vec<(&'static str, Vec<u8>, bool)>,
) {
    let ns = Netns::new("fyb");
    let wrong = ferry_tests::inside::run(&ns, move || mismatches(&load(), &cases));
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
}

/// Runs every case through `prog` (loaded inside `ns`); the mismatches, described.
fn mismatches(
    prog: &ferry_netlink::bpf::Loaded,
    cases: &[(&'static str, Vec<u8>, bool)],
) -> Vec<String> {
    cases
        .iter()
        .filter_map(|(what, frame, pass)| {
            let want = if *pass { TC_ACT_OK } else { TC_ACT_SHOT };
            let got = match prog.test_run(frame) {
                Ok(got) => got,
                Err(e) => return Some(format!("{what}: test run of {}: {e}", prog.name())),
            };
            (got != want).then(|| {
                format!(
                    "{what}: {} ({got}), expected {}",
                    verdict_name(got),
                    verdict_name(want)
                )
            })
        })
        .collect()
}

/// A guard of one family (`ipv6`: IPv6 only; else IPv4 only) keeps that family's
/// verdicts and drops every frame of the other.
fn assert_one_family_guard(ipv6: bool) {
    let full = dual_stack();
    let guard = if ipv6 {
        SourceGuard {
            ipv4: Vec::new(),
            ..full
        }
    } else {
        SourceGuard {
            ipv6: Vec::new(),
            ..full
        }
    };
    assert_verdicts(
        move || guard.load().expect("load the guard"),
        cases_of(ipv6),
    );
}

/// The cases of one family as they are (`ipv6`: IPv6; else IPv4 and ARP), every frame of
/// the other dropped, the pod's own too: what a guard without that family must do.
fn cases_of(ipv6: bool) -> Vec<(&'static str, Vec<u8>, bool)> {
    cases()
        .into_iter()
        .map(|(what, frame, pass)| {
            let is_ipv6 = frame[12..14] == ETH_IPV6.to_be_bytes();
            (what, frame, pass && is_ipv6 == ipv6)
        })
        .collect()
}

#[test]
fn the_guard_passes_the_pods_own_frames_and_drops_the_rest() {
    needs_root!();
    assert_verdicts(|| dual_stack().load().expect("load the guard"), cases());
}

#[test]
fn a_guard_without_ipv6_drops_all_ipv6_and_keeps_ipv4_rules() {
    needs_root!();
    // The IPv4 and ARP cases as they are; every IPv6 frame, the pod's own too, dropped.
    assert_one_family_guard(false);
}

#[test]
fn an_ipv6_only_guard_drops_all_ipv4_and_arp() {
    needs_root!();
    assert_one_family_guard(true);
}

#[test]
fn the_flow_hash_passes_every_frame() {
    needs_root!();
    let all_pass: Vec<_> = cases()
        .into_iter()
        .map(|(what, frame, _)| (what, frame, true))
        .collect();
    assert_verdicts(
        move || ferry_netlink::flow_hash::load().expect("load the flow hash"),
        all_pass,
    );
}

/// What the fragment cases above rest on: a pod's kernel drops neighbour discovery that
/// came in fragments, so a router advertisement behind a fragment header, which the guard
/// passes, is ignored by every pod it reaches.
#[test]
fn pods_ignore_fragmented_neighbour_discovery() {
    needs_root!();
    let ns = Netns::new("fyb");
    for conf in ["default", "all"] {
        let v = ns.sh(&format!(
            "cat /proc/sys/net/ipv6/conf/{conf}/suppress_frag_ndisc"
        ));
        assert_eq!(
            v.trim(),
            "1",
            "{conf}: a new namespace accepts fragmented ND"
        );
    }
}
