#!/bin/sh
# Removes ferry's links and rules from a node (after `kubectl delete -f deploy/kubernetes/`):
# the VXLAN device, the bridge, pods' host veths, the iptables chains, the nftables table
# `ip ferry` (the VXLAN filter), node state and CNI files.
# Pods still running on the node lose their network: drain it first.
#
#   node-cleanup.sh [HOST_ROOT]    (default /: run on the node; the cleanup DaemonSet passes /host)
set -u
root=${1:-/}
for dev in $(ip -o link show type vxlan | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^ferry\.'); do
  ip link del "$dev" && echo "removed $dev"
done
for dev in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^f[yz][0-9a-f]{13}$'); do
  ip link del "$dev" 2>/dev/null && echo "removed $dev"
done
ip link del ferry0 2>/dev/null && echo "removed ferry0"
iptables -w -t nat -D POSTROUTING -m comment --comment "ferry masquerade" -j FERRY-POSTRTG 2>/dev/null
iptables -w -t nat -F FERRY-POSTRTG 2>/dev/null && iptables -w -t nat -X FERRY-POSTRTG && echo "removed FERRY-POSTRTG"
iptables -w -D FORWARD -m comment --comment "ferry forward" -j FERRY-FWD 2>/dev/null
iptables -w -F FERRY-FWD 2>/dev/null && iptables -w -X FERRY-FWD && echo "removed FERRY-FWD"
nft delete table ip ferry 2>/dev/null && echo "removed nftables table ip ferry"
rm -rf "$root/run/ferry" "$root/var/lib/ferry" "$root/var/lib/ferry-etcd"
rm -f "$root/etc/cni/net.d/10-ferry.conflist" "$root/opt/cni/bin/ferry" "$root/opt/cni/bin/ferry-ipam"
echo "ferry removed from this node"
