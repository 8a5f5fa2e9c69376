//! STATUS: whether an ADD could succeed now (error 50 says why not).

use cni::{version, Code, Env, Error, NetConf};

use crate::addressing::Addressing;
use crate::config::PluginConf;

pub fn run(conf: &NetConf, env: &Env) -> Result<(), Error> {
    if !version::at_least(&conf.cni_version, "1.1.0") {
        return Err(Error::new(
            Code::IncompatibleVersion,
            format!("config version {} does not allow STATUS", conf.cni_version),
        ));
    }
    let pc = PluginConf::parse(conf)?;
    Addressing::new(&pc.ipam, conf, env).status()
}
