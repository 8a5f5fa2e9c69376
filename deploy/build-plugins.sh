#!/usr/bin/env bash
# Builds the two CNI plugins, `ferry` and `ferry-ipam`, as static-pie executables into
# target/plugins/ (or $1).
#
# The runtime execs them once per pod and per command. Static, they start without the
# dynamic loader (about 0.3 to 1 ms less per exec, measured in docs/benchmarks.md) and run
# on any host glibc, whatever the image was built on. They are built apart from the daemon
# so that cargo does not unify their dependencies' features with kube's.
#
# crt-static needs an explicit --target: without one, RUSTFLAGS would also reach build
# scripts and proc-macros, which cannot be static.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/plugins}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked -p ferry -p ferry-ipam --target "$triple"
# Where cargo put them: CARGO_TARGET_DIR or a config's build.target-dir may move target/.
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
mkdir -p "$out"
for b in ferry ferry-ipam; do
  install -m 0755 "${target_dir:-target}/$triple/release/$b" "$out/$b"
done
echo "build-plugins: static ferry and ferry-ipam in $out"
