//! The plugin's own keys over configurations made from `fuzz/seeds/` (see
//! `fuzz/mutate.rs`; the CNI header and the IPAM keys are the properties of `cni` and
//! `node-ipam`): a configuration parses into values within their limits or fails with a
//! CNI error.

#[path = "../../fuzz/mutate.rs"]
mod mutate;

use ferry_cni::NetConf;
use mutate::check_error;
use proptest::prelude::*;

use crate::config::{IpamKind, PluginConf};

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn plugin_configuration(bytes in mutate::inputs("conf-")) {
        let Ok(conf) = NetConf::parse(&bytes) else {
            return Ok(());
        };
        match PluginConf::parse(&conf) {
            Err(e) => check_error(&e),
            Ok(pc) => {
                assert!(
                    ferry_cni::env::validate_ifname(&pc.bridge).is_ok(),
                    "{}",
                    pc.bridge
                );
                assert!(pc.mtu.is_none_or(|m| (68..=65535).contains(&m)));
                if let IpamKind::Ferry(cfg) = &pc.ipam {
                    assert!(cfg.ipam.data_dir().is_absolute());
                    assert!(cfg.state_dir.is_absolute());
                }
            }
        }
    }
}
