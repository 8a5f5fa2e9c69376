//! Getting and giving back addresses: `ferry-ipam` in-process, or another IPAM plugin by
//! exec, behind one set of calls.

use std::collections::HashSet;
use std::net::IpAddr;

use ferry_cni::{delegate, Attachment, CniResult, Command, Env, Error, NetConf};
use ferry_node_ipam::{node_state, ops, Lease};

use crate::config::IpamKind;

pub struct Addressing<'a> {
    kind: &'a IpamKind,
    conf: &'a NetConf,
    env: &'a Env,
}

impl<'a> Addressing<'a> {
    pub fn new(kind: &'a IpamKind, conf: &'a NetConf, env: &'a Env) -> Self {
        Addressing { kind, conf, env }
    }

    fn attachment(&self) -> ops::Attachment<'a> {
        ops::Attachment::of(self.conf, self.env)
    }

    fn exec(&self, plugin: &str, command: Command) -> Result<Vec<u8>, Error> {
        let path = delegate::find(plugin, &self.env.path)?;
        delegate::exec(&path, command, self.env, self.conf.bytes())
    }

    /// Takes the pod's addresses; `node` is the node state this call has read.
    pub fn take(&self, node: &node_state::View) -> Result<Taken, Error> {
        match self.kind {
            IpamKind::Ferry(cfg) => {
                let (ips, pools) = ops::allocate_in(cfg, self.attachment(), Some(node))?;
                Ok(Taken::Typed(Lease::of(&ips, &pools)))
            }
            IpamKind::Exec(plugin) => {
                let path = delegate::find(plugin, &self.env.path)?;
                delegate::add(&path, self.env, self.conf.bytes()).map(Taken::Delegated)
            }
        }
    }

    pub fn del(&self) -> Result<(), Error> {
        match self.kind {
            IpamKind::Ferry(cfg) => {
                ops::release(cfg, &self.env.container_id, &self.env.ifname)?;
                Ok(())
            }
            IpamKind::Exec(plugin) => self.exec(plugin, Command::Del).map(drop),
        }
    }

    pub fn check(&self, expect: &[IpAddr]) -> Result<(), Error> {
        match self.kind {
            IpamKind::Ferry(cfg) => {
                ops::check(cfg, &self.env.container_id, &self.env.ifname, expect)?;
                Ok(())
            }
            IpamKind::Exec(plugin) => self.exec(plugin, Command::Check).map(drop),
        }
    }

    pub fn gc(&self, valid: &[Attachment]) -> Result<(), Error> {
        match self.kind {
            IpamKind::Ferry(cfg) => {
                let valid: HashSet<_> = valid
                    .iter()
                    .map(|a| (a.container_id.clone(), a.ifname.clone()))
                    .collect();
                ops::gc(cfg, &self.conf.name, &valid)?;
                Ok(())
            }
            IpamKind::Exec(plugin) => self.exec(plugin, Command::Gc).map(drop),
        }
    }

    pub fn status(&self) -> Result<(), Error> {
        match self.kind {
            IpamKind::Ferry(cfg) => ops::status(cfg)
                .map_err(|e| Error::new(ferry_cni::Code::NotAvailable, e.to_string())),
            IpamKind::Exec(plugin) => self.exec(plugin, Command::Status).map(drop),
        }
    }
}

/// Addresses taken: by ferry's IPAM, typed already, or by another plugin, whose result is
/// read only once they are held (so that a result ferry cannot use is given back).
pub enum Taken {
    Typed(Lease),
    Delegated(CniResult),
}

impl Taken {
    pub fn lease(self) -> Result<Lease, Error> {
        match self {
            Taken::Typed(lease) => Ok(lease),
            Taken::Delegated(r) => Lease::from_result(&r),
        }
    }
}
