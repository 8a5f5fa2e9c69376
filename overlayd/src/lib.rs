//! `ferry-overlayd` as a library: the binary only parses its arguments and hands them here,
//! so that the daemon's parts can be built and tested without its process.

mod api_retry;
pub mod args;
mod cni_conf;
mod daemon;
mod datapath;
mod etcd_retry;
mod health;
mod health_probe;
mod identity;
mod iptables;
mod metrics;
mod nft;
mod node_check;
mod node_filter;
mod node_only;
mod peers;
mod policy;
mod prepare;
mod refusals;
mod rules;
mod status;
mod underlay;
mod uninstall;

use std::process::ExitCode;

/// Runs what `args` asks for: a subcommand, or the daemon until it is stopped.
pub fn run(args: args::Args) -> ExitCode {
    match &args.command {
        Some(args::Command::PrepareNode) => return prepare::run(&args),
        Some(args::Command::Uninstall(u)) => return uninstall::run(u),
        None => {}
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(daemon::run(args)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
