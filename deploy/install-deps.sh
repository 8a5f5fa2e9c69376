#!/usr/bin/env bash
# Installs, on Debian 12 as root, what a command of ferry needs. Idempotent: asks apt only
# for what is missing.
#
#   deploy/install-deps.sh build   what `cargo build --release --workspace` needs
#   deploy/install-deps.sh demo    build + what deploy/demo.sh runs
#   deploy/install-deps.sh test    demo + what tests/run and .ci/run run, and
#                                  kubernetes-validate in a venv under target/ci-venv
#
# Packages are installed with --no-install-recommends, and a bare root (debootstrap
# minbase, a slim container image) has no Recommends either: every package a command needs
# is named here, even one that usually comes along (libc6-dev with gcc, libprotobuf-dev with
# protobuf-compiler). deploy/fresh-machine-check.sh proves the lists on a bare Debian root.
# The Rust toolchain is not a Debian package here: install it with rustup.
set -euo pipefail

usage() {
  sed -n '2,14s/^# \{0,1\}//p' "$0"
}

mode=${1:-}
case "$mode" in
  build | demo | test) ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; echo "install-deps: say what for: build, demo or test" >&2; exit 2 ;;
esac

build=(
  gcc libc6-dev                   # the linker rustc calls (cc), its crt files and libc; ring's C
  protobuf-compiler libprotobuf-dev  # the etcd client crate compiles etcd's protos, which
                                  # import google/protobuf/*.proto (from libprotobuf-dev)
  ca-certificates                 # cargo fetches crates from https://crates.io
)
demo=(
  iproute2                        # ip, ss, bridge, tc: namespaces, veths, the underlay switch
  iptables                        # ferry-overlayd's node-wide rules (iptables, iptables-restore)
  nftables                        # ferry-overlayd's underlay filter and NetworkPolicy table (nft)
  conntrack                       # ferry-overlayd cuts connections a policy change denies
  kmod                            # ferry-overlayd loads br_netfilter with modprobe
  python3                         # the pods' echo servers and clients, the metrics GET
  etcd-server etcd-client         # ferry-overlayd's datastore; etcdctl waits for it
  iputils-ping procps util-linux curl  # ping, sysctl, nsenter: the --keep hints
  debootstrap debian-archive-keyring  # the image's root without Docker (--cri, the kind tests)
)
test=(
  openssl                         # the etcd-over-TLS tests make a CA and certificates
  containernetworking-plugins     # reference bridge/host-local/portmap/loopback
  containerd runc busybox-static mount  # the runtime and CRI tests (ctr, overlay mounts;
                                  # their pause image is built with cc -static: libc6-dev)
  iperf3                          # throughput benchmark
  ethtool                         # the VXLAN A/B benchmark turns veth GRO on and off
  shellcheck python3-venv         # deploy checks: scripts, and a venv for kubernetes-validate
)

packages=("${build[@]}")
case "$mode" in
  demo) packages+=("${demo[@]}") ;;
  test) packages+=("${demo[@]}" "${test[@]}") ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps ($mode): installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Kubernetes schema validator, in a venv under target/ (nothing installed system-wide).
if [ "$mode" = test ]; then
  venv="$(cd "$(dirname "$0")/.." && pwd)/target/ci-venv"
  if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    echo "install-deps ($mode): installing kubernetes-validate into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q kubernetes-validate
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (rustup, Rust 1.85 or newer)" >&2
  exit 1
fi
