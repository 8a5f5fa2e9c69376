//! `rpsCpus`: which CPUs may take over the host's work on what a pod sends (receive
//! packet steering on its host veth; see `ferry_netlink::rps` for why it pays).

use std::collections::BTreeSet;

use ferry_cni::{Code, Error};
use ferry_netlink::rps::{self, LinkId};

use crate::config::Steering;
use crate::kernel::{err, Kernel};

/// The CPUs one ADD steers to, settled before anything on the node changes.
#[derive(Debug)]
pub struct Plan {
    cpus: BTreeSet<u32>,
    /// A setting the operator wrote is kept or the ADD fails. The default is best effort:
    /// a node that does not let ferry steer (a rootless one: the kernel wants the host's
    /// CAP_NET_ADMIN) still runs pods, and says why on stderr.
    strict: bool,
}

/// What `steering` means on this node; None: nothing to steer.
pub fn plan(steering: &Steering) -> Result<Option<Plan>, Error> {
    if *steering == Steering::Off {
        return Ok(None);
    }
    let strict = *steering != Steering::Auto;
    let online = match rps::online_cpus() {
        Ok(c) => c,
        Err(e) if !strict => {
            warn(&e, "the pod runs without receive packet steering");
            return Ok(None);
        }
        Err(e) => return Err(err(e)),
    };
    let cpus = match steering {
        Steering::Cpus(want) => {
            let cpus: BTreeSet<u32> = want.intersection(&online).copied().collect();
            if cpus.is_empty() {
                return Err(Error::new(
                    Code::InvalidConfig,
                    format!(
                        "rpsCpus {}: none of these CPUs is online on this node (online: {})",
                        rps::format_cpu_list(want),
                        rps::format_cpu_list(&online)
                    ),
                ));
            }
            cpus
        }
        // With one CPU there is nowhere to hand the work to.
        _ if online.len() < 2 => return Ok(None),
        _ => online,
    };
    Ok(Some(Plan { cpus, strict }))
}

/// Steers `link` as planned. Some when its frames now spread over several CPUs: then the
/// pod's own interface should give both directions of a flow one hash (`Steered`).
pub fn apply(
    kernel: &mut impl Kernel,
    plan: Option<&Plan>,
    link: LinkId<'_>,
) -> Result<Option<Steered>, Error> {
    let Some(plan) = plan else {
        return Ok(None);
    };
    match kernel.steer(link, &plan.cpus) {
        Ok(()) if plan.cpus.len() > 1 => Ok(Some(Steered {
            strict: plan.strict,
        })),
        Ok(()) => Ok(None),
        Err(e) => failed(
            plan.strict,
            e,
            "the pod runs without receive packet steering",
            "the host veth",
        )
        .map(|()| None),
    }
}

/// A host veth whose frames are steered over several CPUs.
#[derive(Debug)]
pub struct Steered {
    strict: bool,
}

impl Steered {
    /// Makes the pod's interface `index` (seen through `pod`, a handle in its namespace)
    /// hash each flow the same way in both directions, so that its data and its ACKs are
    /// steered to one CPU (see `ferry_netlink::flow_hash`). Failing it is failing the steering.
    pub async fn hash_by_flow(
        &self,
        kernel: &mut impl Kernel,
        index: u32,
        name: &str,
    ) -> Result<(), Error> {
        kernel.hash_by_flow(index, name).await.or_else(|e| {
            failed(
                self.strict,
                e,
                "the pod's connections are steered by their sockets' own hashes, so a connection's data and ACKs may land on different CPUs",
                "the pod's interface",
            )
        })
    }
}

/// A steering step that failed: best effort, stderr says what the pod goes without
/// (`without`) and the ADD goes on; asked for by the operator, error 103 naming what
/// `"off"` would leave alone (`leaves`).
fn failed(strict: bool, e: ferry_netlink::Error, without: &str, leaves: &str) -> Result<(), Error> {
    if strict {
        return Err(Error::new(
            Code::Kernel,
            format!("rpsCpus: {e} (\"off\" leaves {leaves} as the kernel makes it)"),
        ));
    }
    warn(&e, without);
    Ok(())
}

fn warn(e: &ferry_netlink::Error, without: &str) {
    eprintln!("ferry: {e}; {without} (rpsCpus \"off\" turns steering off and silences this)");
}
