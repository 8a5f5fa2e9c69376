#!/usr/bin/env bash
# Checks a kind cluster made by up.sh: pods on different nodes ping each other, a pod
# reaches a ClusterIP Service and CoreDNS, and a NodePort answers on every address of
# every node (both families on a dual-stack cluster). Needs docker and kubectl.
set -euo pipefail
cluster=${FERRY_KIND_CLUSTER:-ferry}
for tool in docker kubectl; do
  command -v "$tool" >/dev/null || { echo "check.sh: needs $tool (not found on PATH)" >&2; exit 1; }
done
ns=ferry-check
kubectl config use-context "kind-$cluster" >/dev/null
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
trap 'kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT

workers=$(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[*].metadata.name}')
read -r w1 w2 _ <<<"$workers"
for i in 1 2; do
  node=$w1; [ "$i" = 2 ] && node=$w2
  kubectl -n "$ns" run "client$i" --image=busybox:1.36 --restart=Never \
    --overrides="{\"spec\":{\"nodeName\":\"$node\"}}" -- sleep 3600
done
kubectl -n "$ns" create deployment echo --image=registry.k8s.io/e2e-test-images/agnhost:2.47 -- /agnhost netexec --http-port=8080
kubectl -n "$ns" expose deployment echo --port=80 --target-port=8080 --type=NodePort
kubectl -n "$ns" wait --for=condition=Ready pod --all --timeout=180s

ip2=$(kubectl -n "$ns" get pod client2 -o jsonpath='{.status.podIP}')
svc=$(kubectl -n "$ns" get service echo -o jsonpath='{.spec.clusterIP}')
nodeport=$(kubectl -n "$ns" get service echo -o jsonpath='{.spec.ports[0].nodePort}')
# An IPv6 address in a URL goes in brackets (FERRY_KIND_FAMILY=ipv6).
host() { if [[ $1 == *:* ]]; then echo "[$1]"; else echo "$1"; fi; }
fail=0
check() { # check NAME COMMAND...
  if "${@:2}" >/dev/null 2>&1; then echo "ok    $1"; else echo "FAIL  $1"; fail=1; fi
}
check "pod on $w1 pings pod on $w2 ($ip2)" kubectl -n "$ns" exec client1 -- ping -c2 -W2 "$ip2"
check "pod reaches the ClusterIP Service ($svc)" kubectl -n "$ns" exec client1 -- wget -qO- -T5 "http://$(host "$svc")/hostname"
check "pod resolves a name through CoreDNS" kubectl -n "$ns" exec client1 -- nslookup kubernetes.default.svc.cluster.local
for node in $(kubectl get nodes -o jsonpath='{.items[*].metadata.name}'); do
  # A dual-stack node has one InternalIP per family: each is checked on its own.
  for addr in $(kubectl get node "$node" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}'); do
    check "NodePort $nodeport answers on $node ($addr)" docker exec "$cluster-control-plane" curl -sf -m5 "http://$(host "$addr"):$nodeport/hostname"
  done
done
exit $fail
