//! `ferry`: the CNI plugin. Driven by `CNI_*` variables and the network configuration on
//! stdin; prints a result or a CNI error on stdout and nothing else there. A library so
//! that the binary is only its entry point and tests and benchmarks can link the verbs.

mod add;
mod addressing;
mod check;
mod config;
mod del;
#[cfg(test)]
mod fuzz;
mod gc;
mod kernel;
mod policy;
mod reap;
mod sandbox;
mod status;
mod steering;

use ferry_cni::{version, Env, Error, NetConf};

/// The whole plugin: the reaper when started as one, else one CNI call; the exit code.
pub fn run() -> i32 {
    if let Some(code) = reap::run_if_reaper() {
        return code;
    }
    if std::env::var_os("CNI_COMMAND").is_none() {
        eprintln!(
            "CNI ferry plugin v{}\nCNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            version::SUPPORTED.join(", ")
        );
        return 0;
    }
    ferry_cni::skel::run(&Ferry)
}

/// The plugin's verbs, for `ferry_cni::skel`.
struct Ferry;

impl ferry_cni::skel::Plugin for Ferry {
    fn add(&self, conf: &NetConf, env: &Env) -> Result<String, Error> {
        add::run(conf, env)
    }
    fn del(&self, conf: &NetConf, env: &Env) -> Result<(), Error> {
        del::run(conf, env)
    }
    fn check(&self, conf: &NetConf, env: &Env) -> Result<(), Error> {
        check::run(conf, env)
    }
    fn gc(&self, conf: &NetConf, env: &Env) -> Result<(), Error> {
        gc::run(conf, env)
    }
    fn status(&self, conf: &NetConf, env: &Env) -> Result<(), Error> {
        status::run(conf, env)
    }
    fn version(&self, stdin: &[u8]) -> String {
        version_reply(stdin)
    }
}

/// `{"cniVersion", "supportedVersions"}`, in the version the caller sent when ferry knows it.
pub fn version_reply(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| version::is_supported(v))
        .unwrap_or_else(|| version::CURRENT.to_string());
    ferry_cni::skel::version_reply(&asked)
}
