//! ADD's order, undo and error mapping, against a fake kernel that records every call:
//! no root, no network namespace.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;
use std::path::Path;

use ferry_cni::{CniResult, Code, Error};
use ferry_netlink::{BigTcp, Link, SourceGuard, VethSpec};
use ferry_node_ipam::{Lease, LeasedIp, LeasedRoute};
use ipnetwork::IpNetwork;

use super::{add, unwind, Made, Plan};
use crate::kernel::{Kernel, Side};

/// How a step of the fake fails.
#[derive(Clone, Copy)]
enum Fail {
    Errno(i32),
    NotABridge,
}

#[derive(Default)]
struct Fake {
    calls: Vec<String>,
    /// The first call whose record starts with this fails.
    fail: Option<(&'static str, Fail)>,
    host: HashMap<String, Link>,
    pod: HashMap<String, Link>,
    in_pod: bool,
}

fn link(index: u32, name: &str, mac: &[u8]) -> Link {
    Link {
        index,
        vxlan: None,
        name: name.to_string(),
        mac: mac.to_vec(),
        mtu: 1500,
        up: false,
        controller: None,
        kind: None,
        alias: None,
        group: 0,
        sizes: Default::default(),
    }
}

impl Fake {
    fn step(&mut self, call: String) -> ferry_netlink::Result<()> {
        let failing = matches!(self.fail, Some((p, _)) if call.starts_with(p));
        self.calls.push(call.clone());
        match self.fail {
            Some((_, how)) if failing => {
                self.fail = None;
                Err(match how {
                    Fail::Errno(n) => ferry_netlink::Error::from_errno(call, n),
                    Fail::NotABridge => ferry_netlink::Error::NotABridge {
                        name: "cni0".into(),
                        kind: "dummy".into(),
                    },
                })
            }
            _ => Ok(()),
        }
    }

    fn names(&self) -> Vec<&str> {
        self.calls
            .iter()
            .map(|c| c.split(' ').next().unwrap_or(""))
            .collect()
    }
}

impl Kernel for Fake {
    async fn ensure_bridge(&mut self, name: &str, mac: [u8; 6]) -> ferry_netlink::Result<Link> {
        self.step(format!("ensure_bridge {name}"))?;
        Ok(link(4, name, &mac))
    }
    async fn addrs(&mut self, index: u32) -> ferry_netlink::Result<Vec<(IpAddr, u8)>> {
        self.step(format!("addrs {index}"))?;
        Ok(Vec::new())
    }
    async fn add_addr(
        &mut self,
        side: Side,
        _index: u32,
        name: &str,
        ip: IpAddr,
        prefix: u8,
    ) -> ferry_netlink::Result<()> {
        self.step(format!("add_addr {side:?} {name} {ip}/{prefix}"))
    }
    fn enable_forwarding(&mut self, key: &str) -> ferry_netlink::Result<()> {
        self.step(format!("enable_forwarding {key}"))
    }
    async fn create_veth(&mut self, spec: &VethSpec<'_>) -> ferry_netlink::Result<()> {
        self.step(format!("create_veth {} {}", spec.host_name, spec.peer_name))?;
        self.host.insert(
            spec.host_name.into(),
            link(7, spec.host_name, &spec.host_mac),
        );
        self.pod.insert(
            spec.peer_name.into(),
            link(3, spec.peer_name, &spec.peer_mac),
        );
        Ok(())
    }
    async fn get_link(&mut self, side: Side, name: &str) -> ferry_netlink::Result<Option<Link>> {
        self.step(format!("get_link {side:?} {name}"))?;
        Ok(match side {
            Side::Host => self.host.get(name).cloned(),
            Side::Pod if self.in_pod => self.pod.get(name).cloned(),
            Side::Pod => None,
        })
    }
    async fn retire(
        &mut self,
        _index: u32,
        name: &str,
        to: &str,
        _group: u32,
    ) -> ferry_netlink::Result<bool> {
        self.step(format!("retire {name} {to}"))?;
        Ok(self.host.remove(name).is_some())
    }
    async fn configure_port(
        &mut self,
        name: &str,
        hairpin: bool,
        alias: &str,
    ) -> ferry_netlink::Result<()> {
        self.step(format!("configure_port {name} {hairpin} {alias}"))
    }
    async fn ensure_big_tcp(&mut self, link: &Link, _big: BigTcp) -> ferry_netlink::Result<bool> {
        self.step(format!("ensure_big_tcp {}", link.name))?;
        Ok(true)
    }
    async fn guard_source(
        &mut self,
        _index: u32,
        name: &str,
        guard: &SourceGuard,
    ) -> ferry_netlink::Result<()> {
        self.step(format!(
            "guard_source {name} {:?} {:?}",
            guard.ipv4, guard.ipv6
        ))
    }
    fn steer(
        &mut self,
        link: ferry_netlink::rps::LinkId<'_>,
        _cpus: &BTreeSet<u32>,
    ) -> ferry_netlink::Result<()> {
        self.step(format!("steer {}", link.name))
    }
    async fn set_up(&mut self, side: Side, _index: u32, name: &str) -> ferry_netlink::Result<()> {
        self.step(format!("set_up {side:?} {name}"))
    }
    async fn enter_pod(&mut self, _ns: &File, path: &Path) -> ferry_netlink::Result<()> {
        self.step(format!("enter_pod {}", path.display()))?;
        self.in_pod = true;
        Ok(())
    }
    async fn set_addr_gen_none(
        &mut self,
        _index: u32,
        name: &str,
        needs_ipv6: bool,
    ) -> ferry_netlink::Result<()> {
        self.step(format!("set_addr_gen_none {name} {needs_ipv6}"))
    }
    async fn add_route(
        &mut self,
        dst: IpNetwork,
        gw: IpAddr,
        _index: u32,
    ) -> ferry_netlink::Result<()> {
        self.step(format!("add_route {dst} via {gw}"))
    }
    async fn hash_by_flow(&mut self, _index: u32, name: &str) -> ferry_netlink::Result<()> {
        self.step(format!("hash_by_flow {name}"))
    }
    async fn del_link(&mut self, name: &str) -> ferry_netlink::Result<bool> {
        self.step(format!("del_link {name}"))?;
        Ok(self.host.remove(name).is_some())
    }
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn dual_lease() -> Lease {
    Lease {
        ips: vec![
            LeasedIp {
                net: net("10.1.2.5/24"),
                gateway: Some("10.1.2.1".parse().unwrap()),
            },
            LeasedIp {
                net: net("fd00:1::5/64"),
                gateway: None,
            },
        ],
        routes: vec![
            LeasedRoute {
                dst: net("0.0.0.0/0"),
                gw: None,
            },
            LeasedRoute {
                dst: net("::/0"),
                gw: None,
            },
        ],
        dns: Default::default(),
    }
}

/// Runs ADD against `k` as `add::run` does: on failure, unwinds; returns what was left
/// made and whether the address was released.
fn run_add(k: &mut Fake, lease: Result<Lease, Error>) -> (Result<CniResult, Error>, bool) {
    run_add_covered(k, lease, |_| Ok(()))
}

fn run_add_covered(
    k: &mut Fake,
    lease: Result<Lease, Error>,
    cover: impl FnOnce(Vec<IpAddr>) -> Result<(), Error>,
) -> (Result<CniResult, Error>, bool) {
    let ns = File::open("/dev/null").unwrap();
    let plan = Plan {
        bridge: "cni0",
        mtu: 1450,
        hairpin: true,
        big_tcp: None,
        host_veth: "fy0000000000001",
        ifname: "eth0",
        container_id: "c1",
        alias: "ferry/net/c1/eth0".into(),
        netns: &ns,
        netns_path: Path::new("/run/netns/p1"),
        steer: None,
    };
    let rt = crate::kernel::runtime().unwrap();
    let mut made = vec![Made::Lease];
    let mut released = false;
    let r = rt.block_on(async {
        let r = add(k, &plan, lease, cover, &mut made).await;
        if r.is_err() {
            unwind(k, &mut made, || {
                released = true;
                Ok(())
            })
            .await;
        }
        r
    });
    assert!(r.is_ok() || made.is_empty(), "unwound: {made:?}");
    (r, released)
}

#[test]
fn dual_stack_add_runs_in_order_and_builds_the_result_once() {
    let mut k = Fake::default();
    let (r, released) = run_add(&mut k, Ok(dual_lease()));
    let r = r.unwrap();
    assert!(!released);
    assert_eq!(
        k.calls,
        [
            "ensure_bridge cni0",
            "addrs 4",
            "add_addr Host cni0 10.1.2.1/24",
            "add_addr Host cni0 fd00:1::1/64",
            "enable_forwarding net/ipv4/ip_forward",
            "enable_forwarding net/ipv6/conf/all/forwarding",
            "create_veth fy0000000000001 eth0",
            "configure_port fy0000000000001 true ferry/net/c1/eth0",
            "get_link Host fy0000000000001",
            "guard_source fy0000000000001 [10.1.2.5] [fd00:1::5, fe80::858:aff:fe01:205]",
            "set_up Host fy0000000000001",
            "enter_pod /run/netns/p1",
            "get_link Pod eth0",
            "set_addr_gen_none eth0 true",
            "add_addr Pod eth0 fe80::858:aff:fe01:205/64",
            "add_addr Pod eth0 10.1.2.5/24",
            "add_addr Pod eth0 fd00:1::5/64",
            "set_up Pod eth0",
            "set_up Pod lo",
            "add_route 0.0.0.0/0 via 10.1.2.1",
            "add_route ::/0 via fd00:1::1",
        ]
    );
    assert_eq!(
        r.to_json("1.0.0"),
        concat!(
            r#"{"cniVersion":"1.0.0","interfaces":[{"mac":"0a:58:0a:01:02:01","name":"cni0"},"#,
            r#"{"mac":"0a:59:0a:01:02:05","name":"fy0000000000001"},"#,
            r#"{"mac":"0a:58:0a:01:02:05","mtu":1450,"name":"eth0","sandbox":"/run/netns/p1"}],"#,
            r#""ips":[{"address":"10.1.2.5/24","gateway":"10.1.2.1","interface":2},"#,
            r#"{"address":"fd00:1::5/64","interface":2}],"#,
            r#""routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]}"#
        )
    );
}

#[test]
fn every_failure_after_the_veth_removes_it_then_releases_the_address() {
    for step in [
        "configure_port",
        "get_link Host",
        "guard_source",
        "set_up Host",
        "enter_pod",
        "get_link Pod",
        "set_addr_gen_none",
        "add_addr Pod",
        "set_up Pod eth0",
        "set_up Pod lo",
        "add_route",
    ] {
        let mut k = Fake {
            fail: Some((step, Fail::Errno(libc::EPERM))),
            ..Default::default()
        };
        let (r, released) = run_add(&mut k, Ok(dual_lease()));
        let e = r.unwrap_err();
        assert_eq!(e.code, Code::Kernel as u32, "{step}: {e:?}");
        assert!(
            e.msg.starts_with(step.split(' ').next().unwrap()),
            "{step}: {}",
            e.msg
        );
        assert_eq!(
            k.calls.last().unwrap(),
            "del_link fy0000000000001",
            "{step}"
        );
        assert!(released, "{step}");
    }
}

#[test]
fn a_failure_before_the_veth_only_releases_the_address() {
    for step in ["addrs", "add_addr Host", "enable_forwarding", "create_veth"] {
        let mut k = Fake {
            fail: Some((step, Fail::Errno(libc::EPERM))),
            ..Default::default()
        };
        let (r, released) = run_add(&mut k, Ok(dual_lease()));
        assert_eq!(r.unwrap_err().code, Code::Kernel as u32, "{step}");
        assert!(!k.names().contains(&"del_link"), "{step}: {:?}", k.calls);
        assert!(released, "{step}");
    }
}

#[test]
fn a_bridge_name_taken_by_another_kind_is_a_config_error() {
    let mut k = Fake {
        fail: Some(("ensure_bridge", Fail::NotABridge)),
        ..Default::default()
    };
    let (r, released) = run_add(&mut k, Ok(dual_lease()));
    let e = r.unwrap_err();
    assert_eq!(e.code, Code::InvalidConfig as u32);
    assert_eq!(
        e.msg,
        "cni0 already exists and is not a bridge (it is dummy)"
    );
    assert_eq!(k.calls, ["ensure_bridge cni0"]);
    assert!(released);
}

#[test]
fn an_existing_host_end_is_someone_elses_and_is_left_alone() {
    let mut k = Fake {
        fail: Some(("create_veth", Fail::Errno(libc::EEXIST))),
        ..Default::default()
    };
    k.host.insert(
        "fy0000000000001".into(),
        link(9, "fy0000000000001", &[0; 6]),
    );
    let (r, released) = run_add(&mut k, Ok(dual_lease()));
    let e = r.unwrap_err();
    assert_eq!(e.code, Code::Kernel as u32);
    assert_eq!(
        e.msg,
        "host interface fy0000000000001 of container c1 interface eth0 already exists: a previous attachment was not deleted (run DEL for it, or see `ferry-ipam check`)"
    );
    assert!(!k.names().contains(&"del_link"), "{:?}", k.calls);
    assert!(k.host.contains_key("fy0000000000001"));
    assert!(released);
}

#[test]
fn an_existing_pod_end_is_named() {
    let mut k = Fake {
        fail: Some(("create_veth", Fail::Errno(libc::EEXIST))),
        ..Default::default()
    };
    let (r, _) = run_add(&mut k, Ok(dual_lease()));
    assert_eq!(
        r.unwrap_err().msg,
        "interface eth0 already exists in network namespace /run/netns/p1"
    );
}

#[test]
fn a_retired_veth_holding_the_name_is_renamed_and_add_goes_on() {
    let mut k = Fake {
        fail: Some(("create_veth", Fail::Errno(libc::EEXIST))),
        ..Default::default()
    };
    let mut old = link(9, "fy0000000000001", &[0; 6]);
    old.group = crate::reap::TOMBSTONE_GROUP;
    k.host.insert("fy0000000000001".into(), old);
    let (r, _) = run_add(&mut k, Ok(dual_lease()));
    r.unwrap();
    assert_eq!(
        k.calls[6..8],
        [
            "create_veth fy0000000000001 eth0",
            "get_link Host fy0000000000001",
        ]
    );
    assert!(
        k.calls[8].starts_with("retire fy0000000000001 fz"),
        "{}",
        k.calls[8]
    );
    assert_eq!(k.calls[9], "create_veth fy0000000000001 eth0");
}

#[test]
fn a_pod_not_covered_by_policy_is_undone() {
    let mut k = Fake::default();
    let (r, released) = run_add_covered(&mut k, Ok(dual_lease()), |ips| {
        assert_eq!(ips, [net("10.1.2.5/24").ip(), net("fd00:1::5/64").ip()]);
        Err(Error::new(Code::TryAgainLater, "not covered"))
    });
    assert_eq!(r.unwrap_err().code, Code::TryAgainLater as u32);
    assert_eq!(k.calls.last().unwrap(), "del_link fy0000000000001");
    assert!(released);
}

#[test]
fn an_unusable_ipam_result_touches_no_kernel_and_gives_the_address_back() {
    let bad = CniResult {
        ips: vec![ferry_cni::IpConfig {
            address: "10.1.2.x/24".into(),
            gateway: None,
            interface: None,
        }],
        ..Default::default()
    };
    let mut k = Fake::default();
    let (r, released) = run_add(&mut k, Lease::from_result(&bad));
    let e = r.unwrap_err();
    assert_eq!(
        (e.code, e.msg.as_str()),
        (Code::InvalidConfig as u32, "IPAM returned 10.1.2.x/24")
    );
    assert!(k.calls.is_empty());
    assert!(released);

    let mut k = Fake::default();
    let (r, released) = run_add(&mut k, Ok(Lease::default()));
    assert_eq!(r.unwrap_err().msg, "IPAM returned no address");
    assert!(k.calls.is_empty() && released);
}

#[test]
fn a_route_of_a_family_without_an_address_is_skipped_and_gateways_follow_the_ipam_rule() {
    let mut lease = dual_lease();
    lease.ips.truncate(1);
    lease.ips[0].gateway = Some("fd00::9".parse().unwrap());
    let mut k = Fake::default();
    run_add(&mut k, Ok(lease)).0.unwrap();
    let routes: Vec<_> = k
        .calls
        .iter()
        .filter(|c| c.starts_with("add_route"))
        .collect();
    assert_eq!(routes, ["add_route 0.0.0.0/0 via 10.1.2.1"]);
    assert!(k
        .calls
        .contains(&"set_addr_gen_none eth0 false".to_string()));
}
