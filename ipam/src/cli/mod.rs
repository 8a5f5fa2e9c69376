//! The operator's commands. Exit status: 0 done, 2 an error (named on stderr).

mod release;
mod show;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "ferry-ipam",
    version,
    about = "Inspect and repair ferry's pod addresses on this node",
    long_about = "Inspect and repair ferry's pod addresses on this node.\n\n\
                  With CNI_COMMAND set, ferry-ipam is instead a CNI IPAM plugin \
                  (\"ipam\": {\"type\": \"ferry-ipam\"})."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// The node's pool and every allocation in it.
    Show(show::Args),
    /// Free an address by IP, or every address of a container.
    Release(release::Args),
}

/// The store location shared by the commands: the network config's `dataDir`.
#[derive(clap::Args)]
pub struct DataDir {
    /// The allocation store (the `dataDir` key of the network config).
    #[arg(long, value_name = "DIR", default_value = ipam::config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

impl DataDir {
    /// The store, refusing a directory that does not exist (a typo should not look like an
    /// empty node).
    pub fn store(&self) -> anyhow::Result<ipam::Store> {
        if !self.data_dir.is_dir() {
            anyhow::bail!(
                "data dir {} does not exist (pass --data-dir with the network config's dataDir)",
                self.data_dir.display()
            );
        }
        Ok(ipam::Store::new(&self.data_dir))
    }
}

pub fn run() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Show(a) => show::run(a),
        Cmd::Release(a) => release::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry-ipam: {e:#}");
            2
        }
    }
}
