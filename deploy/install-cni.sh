#!/bin/sh
# Installs ferry's CNI binaries on a node, each atomically (written beside the target,
# then renamed): a runtime never execs half a binary. The network config is not written
# here: ferry-overlayd installs it (00-ferry.conflist) once the node can add pods, so the
# runtime reports the node's network ready only then.
#
#   install-cni.sh [HOST_ROOT]     (default /host; the DaemonSet mounts the node's dirs there)
#
# FERRY_BIN_SRC (default /usr/local/bin) holds ferry and ferry-ipam. A 10-ferry.conflist
# left by an older ferry is removed: the config is 00-ferry.conflist now.
set -eu
root=${1:-/host}
bin_src=${FERRY_BIN_SRC:-/usr/local/bin}
bin_dst=$root/opt/cni/bin
conf_dst=$root/etc/cni/net.d

mkdir -p "$bin_dst"
for b in ferry ferry-ipam; do
  [ -x "$bin_src/$b" ] || { echo "install-cni: $bin_src/$b is missing" >&2; exit 1; }
  cp "$bin_src/$b" "$bin_dst/.$b.tmp.$$"
  chmod 0755 "$bin_dst/.$b.tmp.$$"
  mv -f "$bin_dst/.$b.tmp.$$" "$bin_dst/$b"
done
echo "install-cni: ferry and ferry-ipam in $bin_dst"
if [ -e "$conf_dst/10-ferry.conflist" ]; then
  rm -f "$conf_dst/10-ferry.conflist"
  echo "install-cni: removed the old $conf_dst/10-ferry.conflist (ferry-overlayd installs 00-ferry.conflist)"
fi
