//! Properties of the CNI parsers over inputs made from `fuzz/seeds/` (see
//! `fuzz/mutate.rs`): the network configuration's header and the `CNI_*` environment
//! either parse into something within their limits or fail with a CNI error.

#[path = "../../../fuzz/mutate.rs"]
mod mutate;

use std::collections::HashMap;

use ferry_cni::{Env, NetConf};
use mutate::check_error;
use proptest::prelude::*;
use serde_json::Value;

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn network_configuration(bytes in mutate::inputs("conf-")) {
        match NetConf::parse(&bytes) {
            Err(e) => check_error(&e),
            Ok(conf) => {
                assert!(!conf.name.is_empty() && conf.name.len() <= ferry_cni::conf::MAX_NETWORK_NAME);
                assert!(ferry_cni::version::is_supported(&conf.cni_version));
                if let Err(e) = conf.valid_attachments() {
                    check_error(&e);
                }
                if let Err(e) = conf.prev_result() {
                    check_error(&e);
                }
            }
        }
    }

    #[test]
    fn cni_environment(bytes in mutate::inputs("env-")) {
        let Ok(Value::Object(vars)) = serde_json::from_slice::<Value>(&bytes) else {
            return Ok(());
        };
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect();
        match Env::from_lookup(|k| vars.get(k).cloned()) {
            Err(e) => check_error(&e),
            Ok(env) => {
                if matches!(
                    env.command,
                    ferry_cni::Command::Add | ferry_cni::Command::Del | ferry_cni::Command::Check
                ) {
                    assert!(ferry_cni::env::validate_container_id(&env.container_id).is_ok());
                    assert!(env.container_id.len() <= ferry_cni::env::MAX_CONTAINER_ID);
                    assert!(ferry_cni::env::validate_ifname(&env.ifname).is_ok());
                }
            }
        }
    }
}

#[test]
fn generator_is_reproducible() {
    let (mut a, mut b) = (mutate::Rng(7), mutate::Rng(7));
    let mut va = mutate::seeds("conf-")[0].clone();
    let mut vb = va.clone();
    for _ in 0..50 {
        mutate::mutate(&mut va, &mut a, 0);
        mutate::mutate(&mut vb, &mut b, 0);
    }
    assert_eq!(va, vb);
    let corpus = mutate::seeds("env-");
    assert_eq!(mutate::input(&corpus, 42), mutate::input(&corpus, 42));
}
