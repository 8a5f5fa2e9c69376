#!/usr/bin/env bash
# Installs what building and testing ferry needs on Debian (as root). Idempotent: asks apt
# only for what is missing.
set -euo pipefail

packages=(
  iproute2 iptables nftables iputils-ping procps util-linux kmod python3
  containernetworking-plugins   # reference bridge/host-local/portmap (tests, benchmark)
  containerd runc busybox-static  # the real-runtime test (ctr run --cni)
  etcd-server etcd-client         # ferry-overlayd's datastore in the cluster tests
  protobuf-compiler               # the etcd client crate compiles etcd's protos
  iperf3                          # throughput benchmark
  shellcheck python3-venv         # deploy checks: scripts, and a venv for kubernetes-validate
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Kubernetes schema validator, in a venv under target/ (nothing installed system-wide).
venv="$(cd "$(dirname "$0")/.." && pwd)/target/ci-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "installing kubernetes-validate into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (rustup, Rust 1.85 or newer)" >&2
  exit 1
fi
