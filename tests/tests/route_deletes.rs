//! What a route delete of ferry's removes, asked of the kernel itself: the route it names
//! whole (destination, next hop, device, protocol), never another route to the same
//! prefix, of either family. The daemon relies on it so that, whatever it believes, it
//! cannot remove a route it did not make (docs/security.md, "etcd records").

use ferry_netlink::{Netlink, Route, ROUTE_PROTO_FERRY};
use ferry_tests::needs_root;
use ferry_tests::netns::Netns;

/// `route` as ferry would name it to delete it, on `d0` (index `oif`).
fn named(dst: &str, prefix: u8, via: &str, oif: u32, protocol: u8) -> Route {
    Route {
        dst: dst.parse().expect("address"),
        prefix,
        gateway: Some(via.parse().expect("address")),
        oif: Some(oif),
        protocol,
    }
}

fn del(ns: &Netns, r: Route) {
    ferry_tests::inside::block_on(ns, move || async move {
        let nl = Netlink::open().expect("netlink");
        nl.del_route(&r)
            .await
            .unwrap_or_else(|e| panic!("delete {r}: {e}"));
    });
}

#[test]
fn a_delete_removes_the_route_it_names_and_no_other_to_the_prefix() {
    needs_root!();
    let ns = Netns::new("fyq");
    ns.sh(
        "ip link add d0 type veth peer name d1 && ip link set d1 up && ip link set d0 up && \
         ip addr add 192.0.2.1/24 dev d0 && ip -6 addr add 2001:db8::1/64 dev d0 nodad",
    );
    let oif: u32 = ns
        .sh("cat /sys/class/net/d0/ifindex")
        .trim()
        .parse()
        .expect("ifindex");
    for (family, dst, prefix, own, other) in [
        ("-4", "10.9.0.0", 24, "192.0.2.99", "192.0.2.98"),
        ("-6", "fd00:9::", 64, "2001:db8::99", "2001:db8::98"),
    ] {
        let show = || ns.sh(&format!("ip {family} route show exact {dst}/{prefix}"));
        // The host's own route: what a lease named.
        ns.sh(&format!(
            "ip {family} route add {dst}/{prefix} via {own} dev d0 proto static"
        ));
        let host = show();
        // Ferry's protocol, the same next hop and device: not the host's route.
        del(&ns, named(dst, prefix, own, oif, ROUTE_PROTO_FERRY));
        assert_eq!(
            show(),
            host,
            "{family}: removed by another protocol's delete"
        );
        // The host's protocol but another next hop: not it either.
        del(&ns, named(dst, prefix, other, oif, 4));
        assert_eq!(
            show(),
            host,
            "{family}: removed by another next hop's delete"
        );
        // Beside it, at another metric, a route of ferry's: deleted, the host's stays.
        ns.sh(&format!(
            "ip {family} route add {dst}/{prefix} via {other} dev d0 proto 102 metric 50"
        ));
        assert_eq!(show().lines().count(), 2, "{}", show());
        del(&ns, named(dst, prefix, other, oif, ROUTE_PROTO_FERRY));
        assert_eq!(
            show(),
            host,
            "{family}: ferry's route was not the one removed"
        );
        // Deleting it again (gone) is no error; the host's route is untouched.
        del(&ns, named(dst, prefix, other, oif, ROUTE_PROTO_FERRY));
        assert_eq!(show(), host);
    }
}
