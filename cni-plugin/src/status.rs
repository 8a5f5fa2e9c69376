//! STATUS: whether an ADD could succeed now (error 50 says why not).

use ferry_cni::{Env, Error, NetConf};

use crate::addressing::Addressing;
use crate::config::PluginConf;

pub fn run(conf: &NetConf, env: &Env) -> Result<(), Error> {
    conf.require_version("1.1.0", "STATUS")?;
    let pc = PluginConf::parse(conf)?;
    Addressing::new(&pc.ipam, conf, env).status()
}
