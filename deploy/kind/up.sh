#!/usr/bin/env bash
# Creates a kind cluster whose pod network is ferry: builds the image, loads it into the
# nodes, applies the manifests, and waits until every node is Ready and ferry is ready
# everywhere. Needs docker, kind and kubectl.
#
#   deploy/kind/up.sh              FERRY_KIND_CLUSTER (default ferry), FERRY_IMAGE (default ferry:dev)
set -euo pipefail
cd "$(dirname "$0")/../.."
cluster=${FERRY_KIND_CLUSTER:-ferry}
image=${FERRY_IMAGE:-ferry:dev}
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "up.sh: $tool is needed" >&2; exit 1; }
done

kind get clusters 2>/dev/null | grep -qx "$cluster" ||
  kind create cluster --name "$cluster" --config deploy/kind/kind-config.yaml
kubectl config use-context "kind-$cluster" >/dev/null

docker build -f deploy/Dockerfile -t "$image" .
kind load docker-image "$image" --name "$cluster"

# ferry's etcd runs the etcd image kubeadm already put on the control plane: no pull.
etcd_image=$(docker exec "$cluster-control-plane" crictl images -o json |
  python3 -c 'import json,sys; print(next(t for i in json.load(sys.stdin)["images"] for t in i["repoTags"] if "/etcd:" in t))')
echo "ferry's etcd uses $etcd_image"

kubectl kustomize deploy/kubernetes |
  sed -e "s|image: ferry:dev|image: $image|" -e "s|image: registry.k8s.io/etcd:.*|image: $etcd_image|" |
  kubectl apply -f -

kubectl -n kube-system rollout status deployment/ferry-etcd --timeout=180s
kubectl -n kube-system rollout status daemonset/ferry --timeout=300s
kubectl wait --for=condition=Ready nodes --all --timeout=300s
kubectl -n kube-system rollout status deployment/coredns --timeout=300s
kubectl get nodes -o wide
echo "ferry is the pod network of kind cluster $cluster; deploy/kind/check.sh checks it"
