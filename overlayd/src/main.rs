//! `ferry-overlayd`: one per node. The daemon is the library's; this sets up logging and
//! reads the command line.

use std::process::ExitCode;

use clap::Parser;

/// The policy engine turns over a cluster's worth of small objects every round (pods,
/// labels, set elements); glibc's allocator spent more time than the computation itself
/// on them in the daemon's threads (`malloc_consolidate`, `unlink_chunk` on top of the
/// profile). mimalloc keeps them cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    ferry_overlayd::run(ferry_overlayd::args::Args::parse())
}
