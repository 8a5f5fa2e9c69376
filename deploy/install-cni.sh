#!/bin/sh
# Installs ferry's CNI binaries and network config on a node, each atomically (written
# beside the target, then renamed): a runtime never sees half a binary or half a config.
#
#   install-cni.sh [HOST_ROOT]     (default /host; the DaemonSet mounts the node's dirs there)
#
# FERRY_BIN_SRC (default /usr/local/bin) holds ferry and ferry-ipam; FERRY_CONFLIST_SRC
# (default /etc/ferry/10-ferry.conflist) is the network config.
set -eu
root=${1:-/host}
bin_src=${FERRY_BIN_SRC:-/usr/local/bin}
conf_src=${FERRY_CONFLIST_SRC:-/etc/ferry/10-ferry.conflist}
bin_dst=$root/opt/cni/bin
conf_dst=$root/etc/cni/net.d

mkdir -p "$bin_dst" "$conf_dst"
for b in ferry ferry-ipam; do
  [ -x "$bin_src/$b" ] || { echo "install-cni: $bin_src/$b is missing" >&2; exit 1; }
  cp "$bin_src/$b" "$bin_dst/.$b.tmp.$$"
  chmod 0755 "$bin_dst/.$b.tmp.$$"
  mv -f "$bin_dst/.$b.tmp.$$" "$bin_dst/$b"
done
[ -s "$conf_src" ] || { echo "install-cni: $conf_src is missing or empty" >&2; exit 1; }
cp "$conf_src" "$conf_dst/.10-ferry.conflist.tmp.$$"
mv -f "$conf_dst/.10-ferry.conflist.tmp.$$" "$conf_dst/10-ferry.conflist"
echo "install-cni: ferry and ferry-ipam in $bin_dst, 10-ferry.conflist in $conf_dst"
