//! `ferry-ipam`: a CNI IPAM plugin when `CNI_COMMAND` is set, the operator's CLI otherwise.

mod cli;
mod plugin;

fn main() {
    let code = if std::env::var_os("CNI_COMMAND").is_some() {
        plugin::run()
    } else {
        cli::run()
    };
    std::process::exit(code);
}
