//! `ferry-overlayd`: one per node.

mod args;
mod cni_conf;
mod daemon;
mod datapath;
mod etcd_retry;
mod health;
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
mod startup;
mod status;
mod underlay;
mod uninstall;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = args::Args::parse();
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
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
