#!/usr/bin/env bash
# Shows ferry doing its job: installs what it needs, builds, starts a 3-node cluster made
# of network namespaces on this machine (an underlay switch, a real etcd, ferry-overlayd on
# every node, pods added through the real `ferry` binary as a runtime adds them), prints
# who reaches whom, and removes everything. --keep leaves it running and says how to look
# around and clean up.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (it makes network namespaces)" >&2; exit 1; }
deploy/install-deps.sh demo
echo "building ferry (cargo build --profile demo; the first build takes several minutes)"
cargo build --profile demo -p ferry-tests -p ferry -p ferry-ipam -p ferry-overlayd
# Where cargo put it (CARGO_TARGET_DIR, a config's build.target-dir): `cargo run` knows,
# and on Unix it execs the demo in its place.
exec cargo run -q --profile demo -p ferry-tests --bin ferry-demo -- "$@"
