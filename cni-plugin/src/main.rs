//! `ferry`, the CNI plugin binary: everything is in the library (`cni_plugin::run`).

fn main() {
    std::process::exit(cni_plugin::run());
}
