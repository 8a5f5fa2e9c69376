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

use cni::{version, Command, Env, Error, NetConf};

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
    cni::reply::run(dispatch)
}

fn dispatch(reply_version: &mut String) -> Result<Option<String>, Error> {
    let env = Env::from_process()?;
    let stdin = cni::reply::read_stdin()?;
    if env.command == Command::Version {
        return Ok(Some(version_reply(&stdin)));
    }
    let conf = NetConf::parse(&stdin)?;
    *reply_version = conf.cni_version.clone();
    match env.command {
        Command::Add => add::run(&conf, &env).map(Some),
        Command::Del => del::run(&conf, &env).map(|()| None),
        Command::Check => check::run(&conf, &env).map(|()| None),
        Command::Gc => gc::run(&conf, &env).map(|()| None),
        Command::Status => status::run(&conf, &env).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// `{"cniVersion", "supportedVersions"}`, in the version the caller sent when ferry knows it.
pub fn version_reply(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| version::is_supported(v))
        .unwrap_or_else(|| version::CURRENT.to_string());
    serde_json::json!({
        "cniVersion": asked,
        "supportedVersions": version::SUPPORTED,
    })
    .to_string()
}
