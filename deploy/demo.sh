#!/usr/bin/env bash
# Shows ferry doing its job on one node, built out of network namespaces on this machine:
# a node, two pods added through the real `ferry` binary as a runtime adds them, their
# connectivity, the IPAM store, then DEL and cleanup. --keep leaves it all for a look.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0
[ "${1:-}" = "--keep" ] && keep=1
[ "$(id -u)" = 0 ] || { echo "run as root (it makes network namespaces)" >&2; exit 1; }

deploy/install-deps.sh
cargo build --release --workspace -q
bin=$PWD/target/release

tag=fyd$$
node=$tag-node
data=$(mktemp -d /tmp/ferry-demo.XXXXXX)
conf=$data/ferry.conf
cleanup() {
  for ns in "$node" "$tag-a" "$tag-b"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$data"
}
[ $keep = 1 ] || trap cleanup EXIT

cat >"$conf" <<JSON
{"cniVersion": "1.1.0", "name": "demo", "type": "ferry",
 "ipam": {"type": "ferry-ipam", "subnet": "10.88.0.0/24", "dataDir": "$data/ipam"}}
JSON

cni() { # cni COMMAND CONTAINER POD
  ip netns exec "$node" env CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/run/netns/$3" \
    CNI_IFNAME=eth0 CNI_PATH="$bin" "$bin/ferry" <"$conf"
}

ip netns add "$node"
for p in a b; do
  ip netns add "$tag-$p"
  echo "== ADD pod $p"
  cni ADD "pod-$p" "$tag-$p" | python3 -m json.tool
done

ip_of() { ip -n "$tag-$1" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1; }
echo
echo "== connectivity"
printf '%-8s %-22s %s\n' FROM TO RESULT
for from in a b; do
  for to in a b gateway; do
    case $to in gateway) addr=10.88.0.1 ;; *) addr=$(ip_of "$to") ;; esac
    if ip netns exec "$tag-$from" ping -c1 -W2 "$addr" >/dev/null; then r=ok; else r=FAIL; fi
    printf '%-8s %-22s %s\n' "pod $from" "$to ($addr)" "$r"
  done
done

echo
echo "== ferry-ipam show"
"$bin/ferry-ipam" show --data-dir "$data/ipam"

if [ $keep = 1 ]; then
  cat <<KEPT

Kept. Look around:
  ip -n $node -d link show               # the bridge ferry0 and the pods' host veths
  ip -n $tag-a addr; ip -n $tag-a route  # a pod's side
  $bin/ferry-ipam show --data-dir $data/ipam
Remove: ip netns del $node; ip netns del $tag-a; ip netns del $tag-b; rm -rf $data
KEPT
  exit 0
fi

echo
for p in a b; do echo "== DEL pod $p"; cni DEL "pod-$p" "$tag-$p"; done
"$bin/ferry-ipam" show --data-dir "$data/ipam"
