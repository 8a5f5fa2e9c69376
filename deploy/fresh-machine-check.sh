#!/usr/bin/env bash
# Proves that ferry sets up from a bare Debian 12 root, the way a new user's machine is:
# debootstraps a minbase bookworm into a temporary directory, copies this checkout into it
# (/root/ferry) and, with that root as /, runs `deploy/install-deps.sh build` then
# `cargo build --release --workspace --locked`. Nothing the host has installed can help:
# only the host's Rust toolchain is lent (mounted read-only), with an empty CARGO_HOME, so
# every crate is fetched as a new user's would be. As root, on a host with debootstrap
# (installed with apt if missing) and network access to a Debian mirror and crates.io.
#
#   deploy/fresh-machine-check.sh [--run demo] [--run tests] [--keep-root] [--verbose]
#
#   --run demo    then deploy/demo.sh in the root: its packages (install-deps.sh demo), the
#                 3-node namespace cluster with a real etcd
#   --run tests   then tests/run in the root: the test packages and the kubernetes-validate
#                 venv (install-deps.sh test), a debug build, every test
#   --keep-root   leave the root (unmounted) for a look; its path is printed
#   --verbose     stream each phase's output (default: one log per phase under
#                 target/fresh-machine/, a progress line every 30 s, the log's tail on failure)
#
# Environment: FERRY_FRESH_MIRROR (default http://deb.debian.org/debian),
# FERRY_FRESH_SECURITY (default http://deb.debian.org/debian-security), FERRY_FRESH_SUITE
# (default bookworm), FERRY_FRESH_TMPDIR (where the root is made; default /var/tmp; it needs
# about 2 GB, 4 GB with --run tests; /dev/shm works, and is faster, with the RAM to spare).
#
# What it does to the host: nothing outside the temporary root and target/fresh-machine/.
# The checkout is copied, not mounted. Each phase runs in its own mount and PID namespaces:
# the mounts it makes (proc, sys, dev, a tmpfs /dev/shm and /run, the toolchain read-only,
# /lib/modules read-only) and the processes it starts (and the network namespaces of the demo and tests)
# end with the phase, on every path, Ctrl-C included. The root is removed only once findmnt
# shows nothing mounted under it and the phase's processes are gone.
#
# The root becomes / of each phase's mount namespace (pivot_root, not just chroot: tests
# that nsenter --mount into a namespace made inside would land in the host's / otherwise).
# What it shares with the host, and so cannot prove: the kernel. The demo and tests
# make their own network namespaces and need VXLAN, bridges, veths, netfilter and
# br_netfilter from the host's kernel (loaded, or loadable from the host's /lib/modules);
# containerd and runc in the runtime and CRI tests use the host's cgroups (/sys is the
# host's).
# The DNS and the root CA certificates the host trusts beyond Debian's own (a TLS proxy's)
# are lent too: /etc/resolv.conf is copied, and those CAs go to the root's
# /usr/local/share/ca-certificates, which the ca-certificates package (install-deps.sh
# build) folds into the bundle -- so a missing ca-certificates still fails here.
set -euo pipefail

self=$(readlink -f "${BASH_SOURCE[0]}")

# --- inside one phase's namespaces -------------------------------------------------------
# Every phase runs as `unshare --mount --pid --fork --kill-child` (see phase): a private
# mount namespace, and a PID namespace whose PID 1 is this script again, in one of two
# internal modes. When PID 1 exits, or when the phase's unshare is killed, the kernel ends
# every process left in the namespace and drops every mount made in it.
#
# `--in-root ROOT SYSROOT -- CMD...`: mounts what a booted machine has, makes ROOT the
# namespace's / (pivot_root), then runs CMD from /root/ferry with a clean environment.
if [ "${1:-}" = --in-root ]; then
  root=$2 sysroot=$3
  shift 4
  [ "$$" = 1 ] || { echo "--in-root runs only as PID 1 of its own namespace" >&2; exit 2; }
  mount --bind "$root" "$root"   # a mount point, as / is (pivot_root needs it too)
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys"
  mount --rbind /dev "$root/dev"
  umount -R -l "$root/dev/shm" 2>/dev/null || true   # a /dev/shm of its own, as a machine has
  mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
  if [ -d /lib/modules ]; then
    mkdir -p "$root/lib/modules"
    mount --bind -o ro /lib/modules "$root/lib/modules"
  fi
  mkdir -p "$root$sysroot"
  mount --bind -o ro "$sysroot" "$root$sysroot"
  env=(/usr/bin/env -i HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM=dumb
    PATH="$sysroot/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    CARGO_HOME=/root/.cargo /bin/bash -c 'cd /root/ferry && exec "$@"' in-root "$@")
  # Not exec: this shell stays PID 1 and reaps whatever the command orphans.
  rc=0
  cd "$root"
  if pivot_root . .; then
    # The host's / now lies on top of the root, at the same place: detach it. (Bash keeps
    # reading this script through its open descriptor.)
    umount -l .
    cd /
    "${env[@]}" </dev/null || rc=$?
  else
    echo "pivot_root failed: chroot instead (nsenter --mount inside would see the host's /)" >&2
    chroot "$root" "${env[@]}" </dev/null || rc=$?
  fi
  exit "$rc"
fi
# `--fn NAME`: runs one of the host-side functions below (the state comes in the
# environment: FRESH_WORK).
fn=""
if [ "${1:-}" = --fn ]; then
  [ "$$" = 1 ] || { echo "--fn runs only as PID 1 of its own namespace" >&2; exit 2; }
  fn=$2
  set --
fi

# --- on the host -------------------------------------------------------------------------
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$self"; }

runs=()
keep_root=false
verbose=false
while (($#)); do
  case "$1" in
    --run)
      case "${2:-}" in
        demo | tests) runs+=("$2") ;;
        *) usage >&2; echo "--run takes demo or tests" >&2; exit 2 ;;
      esac
      shift 2 ;;
    --keep-root) keep_root=true; shift ;;
    --verbose | -v) verbose=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

src=$(cd "$(dirname "$self")/.." && pwd)
suite=${FERRY_FRESH_SUITE:-bookworm}
mirror=${FERRY_FRESH_MIRROR:-http://deb.debian.org/debian}
security=${FERRY_FRESH_SECURITY:-http://deb.debian.org/debian-security}
tmpbase=${FERRY_FRESH_TMPDIR:-/var/tmp}
logs=$src/target/fresh-machine
work=${FRESH_WORK:-}  # the temporary directory; the root is $work/root
sysroot=""            # the host's Rust toolchain

say() { printf '%s\n' "fresh-machine-check: $*"; }
die() { say "$*" >&2; exit 1; }
dur() { local s=$1; if ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mounts need it)"

host_prereqs() {
  local t
  for t in unshare pivot_root chroot findmnt tar awk; do
    command -v "$t" >/dev/null || { echo "$t is missing on the host" >&2; return 1; }
  done
  if ! command -v debootstrap >/dev/null; then
    echo "installing debootstrap on the host"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends debootstrap
  fi
  debootstrap --version
}

# What a machine has that debootstrap does not make, and the checkout.
prepare_root() {
  local r=$work/root
  # A booted machine's /etc/hosts (the installer or the container runtime writes it).
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
  cp -L /etc/resolv.conf "$r/etc/resolv.conf"
  # The sources of an installed Debian: the release, its updates and security.
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
    "$mirror" "$suite" "$mirror" "$suite" "$security" "$suite" >"$r/etc/apt/sources.list"
  echo "sources.list:"; cat "$r/etc/apt/sources.list"

  # The CAs the host trusts beyond the ca-certificates package's (a TLS proxy's), one file
  # each where Debian takes local CAs; the root gets its bundle only from ca-certificates.
  local bundle=/etc/ssl/certs/ca-certificates.crt n
  if [ -f "$bundle" ]; then
    mkdir -p "$r/usr/local/share/ca-certificates"
    n=$(find /usr/share/ca-certificates -name '*.crt' -print0 2>/dev/null | xargs -0 -r cat |
      awk -v out="$r/usr/local/share/ca-certificates/host-extra-" '
        /-----BEGIN CERTIFICATE-----/ { pem = ""; body = ""; inside = 1 }
        inside { pem = pem $0 "\n"; if ($0 !~ /-----/) body = body $0 }
        /-----END CERTIFICATE-----/ {
          inside = 0
          if (!bundle) { known[body] = 1 } else if (!(body in known)) { n++; printf "%s", pem > (out n ".crt") }
        }
        END { print n + 0 }
      ' - bundle=1 "$bundle")
    echo "CA certificates the host trusts beyond the ca-certificates package: $n"
  fi

  # The checkout as its owner sees it: tracked and untracked files, not the ignored ones
  # (target/); without git, everything but target/ and .git/.
  local dst=$r/root/ferry
  mkdir -p "$dst"
  if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "copying $src (git: tracked and untracked, not ignored) to /root/ferry"
    (cd "$src" && git ls-files -z -c -o --exclude-standard |
      while IFS= read -r -d '' f; do if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi; done |
      tar --null -T - -cf -) | tar -C "$dst" -xf -
  else
    echo "copying $src (no git: all but target/ and .git/) to /root/ferry"
    tar -C "$src" --exclude=./target --exclude=./.git -cf - . | tar -C "$dst" -xf -
  fi
  du -sh "$dst"
}

if [ -n "$fn" ]; then
  case "$fn" in
    host_prereqs | prepare_root) "$fn"; exit ;;
    *) echo "unknown --fn $fn" >&2; exit 2 ;;
  esac
fi

case "$tmpbase" in *[[:space:]]*) die "FERRY_FRESH_TMPDIR must not contain spaces" ;; esac

# The host's Rust toolchain for this checkout (rust-toolchain files and rustup overrides
# respected), lent read-only: a new user would install the same with rustup.
find_sysroot() {
  local rustc
  rustc=$(command -v rustc || true)
  [ -n "$rustc" ] || [ ! -x "$HOME/.cargo/bin/rustc" ] || rustc=$HOME/.cargo/bin/rustc
  [ -n "$rustc" ] || die "no Rust toolchain on this host (rustc): the check lends the host's to the root"
  sysroot=$(cd "$src" && "$rustc" --print sysroot) || die "$rustc --print sysroot failed"
  sysroot=$(readlink -f "$sysroot")
  if [ ! -x "$sysroot/bin/cargo" ] || [ ! -x "$sysroot/bin/rustc" ]; then
    die "$sysroot has no bin/cargo and bin/rustc (install the toolchain with rustup)"
  fi
  case "$sysroot" in *[[:space:]]*) die "toolchain path with spaces: $sysroot" ;; esac
}

phase_pid=""   # the running phase's unshare: killing it ends the phase's namespaces
current=""     # the running phase's name
summary=()     # "name time status" per finished phase
t_start=$SECONDS

print_summary() {
  ((${#summary[@]})) || return 0
  say "phases:"
  local line
  for line in "${summary[@]}"; do
    # shellcheck disable=SC2086 # the fields are single words
    printf '  %-14s %8s  %s\n' $line
  done
  printf '  %-14s %8s\n' total "$(dur $((SECONDS - t_start)))"
}

# Everything under $1 that the host's mount table shows (nothing, normally: every mount is
# made in a phase's private mount namespace).
mounts_under() {
  findmnt -rn -o TARGET | awk -v w="$1" '$0 == w || index($0, w "/") == 1' | sort -r
}

# The processes in the PID namespace $1 (a killed phase's, still ending).
procs_in_ns() {
  local p
  [ -n "$1" ] || return 0
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/pid" 2>/dev/null)" != "$1" ] || echo "${p#/proc/}"
  done
}

cleanup() {
  local rc=$? m ns="" init
  set +e
  trap - EXIT INT TERM HUP
  if [ -n "$phase_pid" ]; then
    # The phase's unshare: when it dies, its child (PID 1 of the phase's PID namespace)
    # gets SIGKILL (--kill-child), and with it every process of the phase, and only those.
    init=$(cat "/proc/$phase_pid/task/$phase_pid/children" 2>/dev/null)
    init=${init%% *}
    [ -z "$init" ] || ns=$(readlink "/proc/$init/ns/pid" 2>/dev/null)
    kill -KILL "$phase_pid" 2>/dev/null
    wait "$phase_pid" 2>/dev/null
    for _ in $(seq 50); do
      [ -n "$(procs_in_ns "$ns")" ] || break
      sleep 0.2
    done
  fi
  if [ -n "$current" ]; then
    summary+=("$current - interrupted")
    ((rc != 0)) || rc=1
  fi
  if [ -n "$work" ] && [ -d "$work" ]; then
    for m in $(mounts_under "$work"); do umount -R -l "$m" 2>/dev/null; done
    if [ -n "$(procs_in_ns "$ns")" ] || [ -n "$(mounts_under "$work")" ]; then
      say "NOT removing $work: the phase's processes still run, or something is mounted there:" >&2
      procs_in_ns "$ns" >&2
      mounts_under "$work" >&2
    elif $keep_root; then
      say "root kept (nothing mounted): $work/root  (remove: rm -rf --one-file-system $work)"
    else
      local t0=$SECONDS
      say "removing $work"
      rm -rf --one-file-system "$work" || say "could not remove $work" >&2
      summary+=("cleanup $(dur $((SECONDS - t0))) ok")
    fi
  fi
  print_summary
  if ((rc != 0)); then say "FAILED (exit $rc)" >&2; fi
  exit "$rc"
}

# phase NAME CMD...: runs CMD as PID 1 of its own PID and mount namespaces, with its output
# in $logs/NAME.log (and on the terminal with --verbose); says every 30 s that it is still
# going, times it; on failure prints the log's tail and exits naming the phase.
phase() {
  local name=$1 log=$logs/$1.log t0=$SECONDS rc=0 n=0 last took
  shift
  say "==> $name"
  current=$name
  local cmd=(unshare --mount --propagation private --pid --fork --kill-child -- "$@")
  if $verbose; then
    "${cmd[@]}" > >(tee "$log") 2>&1 </dev/null &
  else
    "${cmd[@]}" >"$log" 2>&1 </dev/null &
  fi
  phase_pid=$!
  while kill -0 "$phase_pid" 2>/dev/null; do
    sleep 1
    if ! $verbose && ((++n % 30 == 0)) && kill -0 "$phase_pid" 2>/dev/null; then
      last=$(tail -n 1 "$log" 2>/dev/null | tr -d '\r' | cut -c1-110)
      say "    $name: $(dur $((SECONDS - t0))) ... ${last}"
    fi
  done
  wait "$phase_pid" || rc=$?
  phase_pid=""
  current=""
  took=$(dur $((SECONDS - t0)))
  if ((rc != 0)); then
    summary+=("$name $took FAILED")
    if ! $verbose; then
      say "last lines of $log:" >&2
      tail -n 40 "$log" >&2
    fi
    die "FAILED in phase '$name' (exit $rc) after $took; log: $log"
  fi
  summary+=("$name $took ok")
  say "<== $name ok ($took)"
}

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

mkdir -p "$logs"
rm -f "$logs"/*.log
avail=$(df -Pk "$tmpbase" | awk 'NR == 2 { print int($4 / 1048576) }')
need=2
if ((${#runs[@]})); then need=5; fi
((avail >= need)) || die "$tmpbase has ${avail} GB free; the check needs about $need GB (FERRY_FRESH_TMPDIR)"

phase host "$self" --fn host_prereqs
find_sysroot
work=$(mktemp -d "$tmpbase/ferry-fresh.XXXXXX")
export FRESH_WORK=$work
mkdir "$work/root"
say "root: $work/root ($suite minbase from $mirror)"
say "source: $src (copied to /root/ferry); toolchain: $sysroot (read-only); logs: $logs/"

in_root=("$self" --in-root "$work/root" "$sysroot" --)
phase debootstrap debootstrap --variant=minbase "$suite" "$work/root" "$mirror"
phase prepare "$self" --fn prepare_root
phase install-deps "${in_root[@]}" deploy/install-deps.sh build
phase build "${in_root[@]}" cargo build --release --workspace --locked
for r in "${runs[@]}"; do
  case "$r" in
    demo) phase demo "${in_root[@]}" deploy/demo.sh ;;
    tests) phase tests "${in_root[@]}" tests/run ;;
  esac
done
say "OK: a bare $suite root set up with deploy/install-deps.sh and built ferry${runs[*]:+, then ran: ${runs[*]}}"
