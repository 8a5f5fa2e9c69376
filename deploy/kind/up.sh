#!/usr/bin/env bash
# Creates a kind cluster whose pod network is ferry: builds the image, loads it into the
# nodes, makes ferry's etcd certificates, applies the manifests, and waits until every node
# is Ready and ferry is ready everywhere. Run again after a change: the image is tagged by
# what was built, so a rebuild is a new image the DaemonSet rolls out to every node.
#
#   deploy/kind/up.sh      FERRY_KIND_CLUSTER (default ferry), FERRY_IMAGE_REPO (default
#                          ferry), FERRY_KIND_FAMILY (ipv4, the default, dual or ipv6)
#
# Needs docker (a running engine), kind, kubectl and openssl.
set -euo pipefail
cd "$(dirname "$0")/../.."
cluster=${FERRY_KIND_CLUSTER:-ferry}
repo=${FERRY_IMAGE_REPO:-ferry}
family=${FERRY_KIND_FAMILY:-ipv4}
case "$family" in
  ipv4) kind_config=deploy/kind/kind-config.yaml; kustomization=deploy/kubernetes ;;
  dual) kind_config=deploy/kind/kind-config-dual.yaml; kustomization=deploy/kind/dual ;;
  ipv6) kind_config=deploy/kind/kind-config-ipv6.yaml; kustomization=deploy/kind/ipv6 ;;
  *) echo "up.sh: FERRY_KIND_FAMILY is ipv4, dual or ipv6" >&2; exit 1 ;;
esac
# Everything checked before anything is made.
missing=()
for tool in docker kind kubectl openssl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "up.sh: needs ${missing[*]} (not found on PATH)" >&2
  exit 1
fi
docker info >/dev/null 2>&1 || { echo "up.sh: docker does not answer: is its engine running?" >&2; exit 1; }

kind get clusters 2>/dev/null | grep -qx "$cluster" ||
  kind create cluster --name "$cluster" --config "$kind_config"
kubectl config use-context "kind-$cluster" >/dev/null

docker build -f deploy/Dockerfile -t "$repo:build" .
id=$(docker image inspect --format '{{.Id}}' "$repo:build")
id=${id#sha256:}
image="$repo:${id:0:12}"
docker tag "$repo:build" "$image"
kind load docker-image "$image" --name "$cluster"
echo "ferry's image: $image"

# ferry's etcd runs the etcd image kubeadm already put on the control plane: no pull.
etcd_image=$(docker exec "$cluster-control-plane" crictl images |
  awk '$1 ~ /\/etcd$/ { print $1 ":" $2; exit }')
[ -n "$etcd_image" ] || { echo "up.sh: no etcd image on $cluster-control-plane" >&2; exit 1; }
echo "ferry's etcd uses $etcd_image"

# Made once: a new CA would need etcd and every daemon restarted (deploy/etcd-certs.sh).
if ! kubectl -n kube-system get secret ferry-etcd-client >/dev/null 2>&1; then
  deploy/etcd-certs.sh | kubectl apply -f -
fi

kubectl kustomize "$kustomization" |
  sed -e "s|image: ferry:dev|image: $image|" -e "s|image: registry.k8s.io/etcd:.*|image: $etcd_image|" |
  kubectl apply -f -

kubectl -n kube-system rollout status deployment/ferry-etcd --timeout=180s
kubectl -n kube-system rollout status daemonset/ferry --timeout=300s
kubectl wait --for=condition=Ready nodes --all --timeout=300s
kubectl -n kube-system rollout status deployment/coredns --timeout=300s
kubectl get nodes -o wide
echo "ferry is the pod network of kind cluster $cluster; deploy/kind/check.sh checks it"
