//! The operator's commands. Exit status: 0 done, 1 `check` found problems, `doctor`
//! findings or `explain` the connection denied, 2 an error (named on stderr).

mod check;
mod doctor;
mod etcd;
mod explain;
mod kube_leases;
mod leases;
mod release;
mod show;
mod table;

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
    /// Every node's subnet lease in etcd: alive or not, addresses used.
    Leases(leases::Args),
    /// Find leaked or inconsistent allocations and leases; exit 1 when there are any.
    Check(check::Args),
    /// This node against what ferry needs and what its daemon wants: findings in the
    /// order to fix them; exit 1 when there are any.
    Doctor(doctor::Args),
    /// Free addresses: by IP, by container, or every leak of a `check -o json` report.
    Release(release::Args),
    /// Whether NetworkPolicy allows a connection, and which policies and rules decide it
    /// (asks this node's ferry-overlayd, run with --network-policy).
    Explain(explain::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The store location shared by the commands: the network config's `dataDir`.
#[derive(clap::Args)]
pub struct DataDir {
    /// The allocation store (the `dataDir` key of the network config).
    #[arg(long, value_name = "DIR", default_value = ferry_node_ipam::config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

impl DataDir {
    /// The store, refusing a directory that does not exist (a typo should not look like an
    /// empty node).
    pub fn store(&self) -> anyhow::Result<ferry_node_ipam::Store> {
        if !self.data_dir.is_dir() {
            anyhow::bail!(
                "data dir {} does not exist (pass --data-dir with the network config's dataDir)",
                self.data_dir.display()
            );
        }
        Ok(ferry_node_ipam::Store::new(&self.data_dir))
    }
}

/// Where this node's addresses are and what its subnet is, for `show` and `check`.
#[derive(clap::Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub data: DataDir,
    /// Read the node's subnet from this directory's node.json (default /run/ferry, when
    /// node.json is there).
    #[arg(long, value_name = "DIR", conflicts_with = "subnet")]
    pub state_dir: Option<PathBuf>,
    /// The node's subnet, when it is static.
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
}

pub fn run() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Show(a) => show::run(a),
        Cmd::Leases(a) => leases::run(a),
        Cmd::Check(a) => check::run(a),
        Cmd::Doctor(a) => doctor::run(a),
        Cmd::Release(a) => release::run(a),
        Cmd::Explain(a) => explain::run(a),
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "ferry-ipam", &mut std::io::stdout());
            Ok(0)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry-ipam: {e:#}");
            2
        }
    }
}
