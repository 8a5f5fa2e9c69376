#!/usr/bin/env bash
# Creates a kind cluster whose pod network is ferry: builds the image, loads it into the
# nodes, applies the manifests, and waits until every node is Ready and ferry is ready
# everywhere. Needs docker, kind and kubectl.
#
#   deploy/kind/up.sh              FERRY_KIND_CLUSTER (default ferry), FERRY_IMAGE (default ferry:dev),
#                                  FERRY_KIND_FAMILY (ipv4, the default, dual or ipv6)
set -euo pipefail
cd "$(dirname "$0")/../.."
cluster=${FERRY_KIND_CLUSTER:-ferry}
image=${FERRY_IMAGE:-ferry:dev}
family=${FERRY_KIND_FAMILY:-ipv4}
case "$family" in
  ipv4) kind_config=deploy/kind/kind-config.yaml; v6_cidr= ;;
  # Must equal the IPv6 half of podSubnet in kind-config-dual.yaml.
  dual) kind_config=deploy/kind/kind-config-dual.yaml; v6_cidr=fd00:10:244::/56 ;;
  # Must equal podSubnet in kind-config-ipv6.yaml.
  ipv6) kind_config=deploy/kind/kind-config-ipv6.yaml; v6_cidr=fd00:10:244::/56 ;;
  *) echo "up.sh: FERRY_KIND_FAMILY is ipv4, dual or ipv6" >&2; exit 1 ;;
esac
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "up.sh: $tool is needed" >&2; exit 1; }
done

kind get clusters 2>/dev/null | grep -qx "$cluster" ||
  kind create cluster --name "$cluster" --config "$kind_config"
kubectl config use-context "kind-$cluster" >/dev/null

docker build -f deploy/Dockerfile -t "$image" .
kind load docker-image "$image" --name "$cluster"

# ferry's etcd runs the etcd image kubeadm already put on the control plane: no pull.
etcd_image=$(docker exec "$cluster-control-plane" crictl images -o json |
  python3 -c 'import json,sys; print(next(t for i in json.load(sys.stdin)["images"] for t in i["repoTags"] if "/etcd:" in t))')
echo "ferry's etcd uses $etcd_image"

kubectl kustomize deploy/kubernetes |
  sed -e "s|image: ferry:dev|image: $image|" -e "s|image: registry.k8s.io/etcd:.*|image: $etcd_image|" |
  # Dual-stack and IPv6-only: the ConfigMap's data gets cluster-cidr-v6 before anything
  # starts (the first daemon writes the cluster config to etcd). IPv6-only: no IPv4 pod
  # network (cluster-cidr, subnet-len removed), and ferry's etcd on an IPv6 ClusterIP of
  # serviceSubnet, listening on every IPv6 address.
  V6_CIDR="$v6_cidr" FAMILY="$family" python3 -c '
import os, re, sys
v6, family = os.environ["V6_CIDR"], os.environ["FAMILY"]
for doc in sys.stdin.read().split("\n---\n"):
    if v6 and "kind: ConfigMap" in doc and "name: ferry-config" in doc:
        doc = doc.replace("\ndata:\n", "\ndata:\n  cluster-cidr-v6: \"%s\"\n" % v6, 1)
    if family == "ipv6":
        doc = re.sub(r"\n  (cluster-cidr|subnet-len): .*", "", doc)
        doc = doc.replace("http://10.96.0.66:6666", "http://[fd00:10:96::66]:6666")
        doc = doc.replace("clusterIP: 10.96.0.66", "clusterIP: fd00:10:96::66")
        doc = doc.replace("http://0.0.0.0:6666", "http://[::]:6666")
        host = "$" + "(HOST_IP)"  # the variable the manifest expands, not the shell
        doc = doc.replace("http://%s:6666" % host, "http://[%s]:6666" % host)
    print(doc, end="\n---\n")
' |
  kubectl apply -f -

kubectl -n kube-system rollout status deployment/ferry-etcd --timeout=180s
kubectl -n kube-system rollout status daemonset/ferry --timeout=300s
kubectl wait --for=condition=Ready nodes --all --timeout=300s
kubectl -n kube-system rollout status deployment/coredns --timeout=300s
kubectl get nodes -o wide
echo "ferry is the pod network of kind cluster $cluster; deploy/kind/check.sh checks it"
