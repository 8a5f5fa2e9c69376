//! The CNI IPAM plugin: the same operations `ferry` runs in-process.

use std::collections::HashSet;

use cni::{version, Code, Command, Env, Error, NetConf};
use node_ipam::ops::{self, Attachment, Config};

pub fn run() -> i32 {
    cni::reply::run(dispatch)
}

fn dispatch(reply_version: &mut String) -> Result<Option<String>, Error> {
    let env = Env::from_process()?;
    let stdin = cni::reply::read_stdin()?;
    if env.command == Command::Version {
        return Ok(Some(
            serde_json::json!({
                "cniVersion": version::CURRENT,
                "supportedVersions": version::SUPPORTED,
            })
            .to_string(),
        ));
    }
    let conf = NetConf::parse(&stdin)?;
    *reply_version = conf.cni_version.clone();
    let cfg = Config::from_netconf(&conf)?;
    match env.command {
        Command::Add => {
            let (ips, pools) = ops::allocate(&cfg, Attachment::of(&conf, &env))?;
            Ok(Some(ops::result(&ips, &pools).to_json(&conf.cni_version)))
        }
        Command::Del => {
            ops::release(&cfg, &env.container_id, &env.ifname)?;
            Ok(None)
        }
        Command::Check => {
            ops::check(&cfg, &env.container_id, &env.ifname, &[])?;
            Ok(None)
        }
        Command::Gc => {
            let valid: HashSet<_> = conf
                .valid_attachments()?
                .into_iter()
                .map(|a| (a.container_id, a.ifname))
                .collect();
            ops::gc(&cfg, &conf.name, &valid)?;
            Ok(None)
        }
        Command::Status => {
            ops::status(&cfg).map_err(|e| Error::new(Code::NotAvailable, e.to_string()))?;
            Ok(None)
        }
        Command::Version => unreachable!("answered above"),
    }
}
