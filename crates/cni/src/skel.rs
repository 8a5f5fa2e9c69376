//! One CNI call, the same for every ferry plugin binary: the `CNI_*` environment and the
//! configuration on stdin read and checked, the verb dispatched, its result or its error
//! printed in the version the configuration asked for (see `reply`).

use crate::{reply, version, Command, Env, Error, NetConf};

/// A plugin's verbs; VERSION is answered before any configuration is parsed.
pub trait Plugin {
    /// The ADD result, as JSON.
    fn add(&self, conf: &NetConf, env: &Env) -> Result<String, Error>;
    fn del(&self, conf: &NetConf, env: &Env) -> Result<(), Error>;
    fn check(&self, conf: &NetConf, env: &Env) -> Result<(), Error>;
    fn gc(&self, conf: &NetConf, env: &Env) -> Result<(), Error>;
    fn status(&self, conf: &NetConf, env: &Env) -> Result<(), Error>;
    /// VERSION's answer to `stdin` as the runtime sent it (not necessarily a valid
    /// configuration).
    fn version(&self, stdin: &[u8]) -> String {
        let _ = stdin;
        version_reply(version::CURRENT)
    }
}

/// `{"cniVersion", "supportedVersions"}` in `cni_version`.
pub fn version_reply(cni_version: &str) -> String {
    serde_json::json!({
        "cniVersion": cni_version,
        "supportedVersions": version::SUPPORTED,
    })
    .to_string()
}

/// Runs the call the process was started for; returns the exit code.
pub fn run(plugin: &impl Plugin) -> i32 {
    reply::run(|reply_version| dispatch(plugin, reply_version))
}

fn dispatch(plugin: &impl Plugin, reply_version: &mut String) -> Result<Option<String>, Error> {
    let env = Env::from_process()?;
    let stdin = reply::read_stdin()?;
    if env.command == Command::Version {
        return Ok(Some(plugin.version(&stdin)));
    }
    let conf = NetConf::parse(&stdin)?;
    *reply_version = conf.cni_version.clone();
    match env.command {
        Command::Add => plugin.add(&conf, &env).map(Some),
        Command::Del => plugin.del(&conf, &env).map(|()| None),
        Command::Check => plugin.check(&conf, &env).map(|()| None),
        Command::Gc => plugin.gc(&conf, &env).map(|()| None),
        Command::Status => plugin.status(&conf, &env).map(|()| None),
        Command::Version => Ok(Some(plugin.version(&stdin))),
    }
}
