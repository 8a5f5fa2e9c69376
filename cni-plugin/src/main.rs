//! `ferry`, the CNI plugin binary: everything is in the library (`ferry::run`).

fn main() {
    std::process::exit(ferry::run());
}
