//! Properties of the IPAM's parsers over inputs made from `fuzz/seeds/` (see
//! `fuzz/mutate.rs`): the `ipam` keys and the pool they resolve to, and the store document.

#[path = "../../../fuzz/mutate.rs"]
mod mutate;

use std::path::Path;

use ferry_cni::NetConf;
use mutate::check_error;
use proptest::prelude::*;

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn ipam_configuration(bytes in mutate::inputs("conf-")) {
        let Ok(conf) = NetConf::parse(&bytes) else {
            return Ok(());
        };
        match ferry_node_ipam::ops::Config::from_netconf(&conf) {
            Err(e) => check_error(&e),
            // Only a static subnet: without one the pool comes from a file the config
            // names, which a fuzzer must not make the test read.
            Ok(cfg) if cfg.ipam.is_static() => match cfg.pools() {
                Err(e) => check_error(&ferry_cni::Error::from(e)),
                Ok(pools) => {
                    for pool in pools.iter() {
                        assert!(pool.start <= pool.end);
                        assert!(pool.capacity() >= 1);
                        assert!(pool.subnet.contains(pool.start) && pool.subnet.contains(pool.end));
                        let ip = ferry_node_ipam::allocator::next_free(pool, None, 0, |_| false)
                            .expect("a pool with capacity has a free address");
                        assert!(pool.contains(ip) && ip != pool.gateway);
                    }
                }
            },
            Ok(_) => {}
        }
    }

    #[test]
    fn store_document(bytes in mutate::inputs("store-")) {
        let path = Path::new("/fuzz/allocations.json");
        match ferry_node_ipam::store::parse(path, &bytes) {
            Err(e) => check_error(&ferry_cni::Error::from(e)),
            Ok(data) => {
                for (ip, a) in &data.allocations {
                    assert!(data.find(&a.container_id, &a.ifname).contains(ip), "{ip}");
                }
                // What is written back reads back the same.
                let again = serde_json::to_vec(&data).expect("a store document serialises");
                assert_eq!(ferry_node_ipam::store::parse(path, &again).expect("it reads back"), data);
            }
        }
    }
}
