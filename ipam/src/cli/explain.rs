//! `ferry-ipam explain`: asks this node's `ferry-overlayd` (over its policy socket)
//! whether NetworkPolicy allows a connection, and which policies and rules decide it. The
//! answer comes from the same evaluator whose result the node's nftables table enforces.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_policy_notice::Notice;

use super::Output;

#[derive(clap::Args)]
pub struct Args {
    /// The client: `namespace/pod`, or an address (a pod's, its link-local one included,
    /// or any other).
    from: String,
    /// The server: `namespace/pod`, an address, or `namespace/pod@ADDRESS` for the pod
    /// receiving what is sent to ADDRESS (a multicast or broadcast address, its
    /// link-local address).
    to: String,
    /// The server's port.
    #[arg(long)]
    port: u16,
    /// TCP, UDP or SCTP.
    #[arg(long, default_value = "TCP")]
    protocol: String,
    /// ferry-overlayd's state directory, where its policy socket is.
    #[arg(long, value_name = "DIR", default_value = ferry_node_ipam::node_state::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

/// Exit 0 when the connection is allowed, 1 when denied.
pub fn run(a: Args) -> Result<i32> {
    let socket = a.state_dir.join(ferry_policy_notice::SOCKET_NAME);
    let asked = ferry_policy_notice::ask(
        &socket,
        &Notice::Explain {
            from: a.from.clone(),
            to: a.to.clone(),
            protocol: a.protocol.clone(),
            port: a.port,
        },
        Duration::from_secs(5),
    );
    let reply = match asked {
        // No daemon there: most often one that runs with another --state-dir, which
        // nothing here can find out (its flags are its own), so say how to point at it.
        Err(ferry_policy_notice::NoticeError::Connect { source, .. }) => anyhow::bail!(
            "explain {} -> {} port {}/{}: nothing answers on {} ({source}). explain asks \
             the ferry-overlayd whose state directory is {} (--state-dir; the default, as \
             ferry-overlayd's, is {}). A daemon started with --state-dir DIR or \
             FERRY_STATE_DIR=DIR is asked with `ferry-ipam explain ... --state-dir DIR`; it \
             must run with --network-policy",
            a.from,
            a.to,
            a.port,
            a.protocol,
            socket.display(),
            a.state_dir.display(),
            ferry_node_ipam::node_state::DEFAULT_STATE_DIR,
        ),
        other => other.with_context(|| {
            format!(
                "explain {} -> {} port {}/{}",
                a.from, a.to, a.port, a.protocol
            )
        })?,
    };
    match a.output {
        Output::Table => println!("{}", reply.text),
        Output::Json => println!("{}", serde_json::to_string_pretty(&reply.detail)?),
    }
    let allowed = reply.detail["allowed"].as_bool().unwrap_or(false);
    Ok(if allowed { 0 } else { 1 })
}
