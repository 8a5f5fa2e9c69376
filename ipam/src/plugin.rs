//! The CNI IPAM plugin: the same operations `ferry` runs in-process.

use std::collections::HashSet;

use ferry_cni::{Code, Env, Error, NetConf};
use ferry_node_ipam::ops::{self, Attachment, Config};

pub fn run() -> i32 {
    ferry_cni::skel::run(&FerryIpam)
}

/// The IPAM plugin's verbs, for `ferry_cni::skel`; VERSION is skel's default answer.
struct FerryIpam;

impl ferry_cni::skel::Plugin for FerryIpam {
    fn add(&self, conf: &NetConf, env: &Env) -> Result<String, Error> {
        let cfg = Config::from_netconf(conf)?;
        let (ips, pools) = ops::allocate(&cfg, Attachment::of(conf, env))?;
        Ok(ops::result(&ips, &pools).to_json(&conf.cni_version))
    }

    fn del(&self, conf: &NetConf, env: &Env) -> Result<(), Error> {
        let cfg = Config::from_netconf(conf)?;
        ops::release(&cfg, &env.container_id, &env.ifname)?;
        Ok(())
    }

    fn check(&self, conf: &NetConf, env: &Env) -> Result<(), Error> {
        let cfg = Config::from_netconf(conf)?;
        ops::check(&cfg, &env.container_id, &env.ifname, &[])?;
        Ok(())
    }

    fn gc(&self, conf: &NetConf, _env: &Env) -> Result<(), Error> {
        let cfg = Config::from_netconf(conf)?;
        let valid: HashSet<_> = conf
            .valid_attachments()?
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        ops::gc(&cfg, &conf.name, &valid)?;
        Ok(())
    }

    fn status(&self, conf: &NetConf, _env: &Env) -> Result<(), Error> {
        let cfg = Config::from_netconf(conf)?;
        ops::status(&cfg).map_err(|e| Error::new(Code::NotAvailable, e.to_string()))
    }
}
