#!/bin/sh
# Makes the TLS material of ferry's own etcd (the etcd component,
# deploy/kubernetes/components/etcd/) and prints it as two Secrets for kube-system, to pipe
# into kubectl:
#
#   deploy/etcd-certs.sh | kubectl apply -f -
#
#   ferry-etcd-server  ca.crt, server.crt, server.key: etcd's serving certificate
#   ferry-etcd-client  ca.crt, client.crt, client.key: what every ferry-overlayd presents
#
# A CA of its own (10 years), whose key is thrown away once both certificates are signed:
# no one can sign another client. etcd requires a client certificate of this CA, so a pod
# that reaches etcd's port (it listens on the host network) cannot read or write anything.
# The server certificate names the Service's fixed ClusterIPs (10.96.0.66 and
# fd00:10:96::66, see etcd.yaml) and its DNS names; FERRY_ETCD_SANS adds more
# (comma-separated, `IP:…` or `DNS:…`) for a cluster whose Service range differs.
# Running it again makes a new CA: apply both Secrets, then restart etcd and ferry
# (kubectl -n kube-system rollout restart deployment/ferry-etcd daemonset/ferry).
# Needs openssl.
set -eu
command -v openssl >/dev/null || { echo "etcd-certs: openssl is needed" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
sans="IP:10.96.0.66,IP:fd00:10:96::66,IP:127.0.0.1,IP:::1,DNS:localhost,DNS:ferry-etcd,DNS:ferry-etcd.kube-system,DNS:ferry-etcd.kube-system.svc,DNS:ferry-etcd.kube-system.svc.cluster.local"
[ -z "${FERRY_ETCD_SANS:-}" ] || sans="$sans,$FERRY_ETCD_SANS"
quiet() { "$@" 2>err.log || { cat err.log >&2; exit 1; }; }
quiet openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
  -subj /CN=ferry-etcd-ca
quiet openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=ferry-etcd
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$sans" >server.ext
quiet openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt \
  -days 3650 -extfile server.ext
quiet openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=ferry-overlayd
printf 'extendedKeyUsage=clientAuth\n' >client.ext
quiet openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt \
  -days 3650 -extfile client.ext
rm -f ca.key
b64() { base64 <"$1" | tr -d '\n'; }
for who in server client; do
  cat <<EOF
---
apiVersion: v1
kind: Secret
metadata:
  name: ferry-etcd-$who
  namespace: kube-system
  labels:
    app.kubernetes.io/name: ferry-etcd
type: Opaque
data:
  ca.crt: $(b64 ca.crt)
  $who.crt: $(b64 "$who.crt")
  $who.key: $(b64 "$who.key")
EOF
done
