#!/usr/bin/env bash
# Creates a kind cluster whose pod network is ferry: builds the image, loads it into the
# nodes, applies the manifests, and waits until every node is Ready and ferry is ready
# everywhere. ferry's datastore is the Kubernetes API (each Node's spec.podCIDRs, which
# kind's controller-manager allocates); with FERRY_KIND_DATASTORE=etcd it is ferry's own
# etcd instead (the etcd component: its certificates made, its image the one kind's nodes
# have). Run again after a change: the image is tagged by what was built, so a rebuild is
# a new image the DaemonSet rolls out to every node.
#
#   deploy/kind/up.sh      FERRY_KIND_CLUSTER (default ferry), FERRY_IMAGE_REPO (default
#                          ferry), FERRY_KIND_FAMILY (ipv4, the default, dual or ipv6),
#                          FERRY_KIND_DATASTORE (kubernetes, the default, or etcd)
#
# Needs docker (a running engine), kind and kubectl; openssl too for etcd.
set -euo pipefail
cd "$(dirname "$0")/../.."
cluster=${FERRY_KIND_CLUSTER:-ferry}
repo=${FERRY_IMAGE_REPO:-ferry}
family=${FERRY_KIND_FAMILY:-ipv4}
datastore=${FERRY_KIND_DATASTORE:-kubernetes}
case "$family" in
  ipv4) kind_config=deploy/kind/kind-config.yaml; kustomization=deploy/kubernetes; with_etcd=deploy/kind/etcd ;;
  dual) kind_config=deploy/kind/kind-config-dual.yaml; kustomization=deploy/kind/dual; with_etcd=deploy/kind/dual-etcd ;;
  ipv6) kind_config=deploy/kind/kind-config-ipv6.yaml; kustomization=deploy/kind/ipv6; with_etcd=deploy/kind/ipv6-etcd ;;
  *) echo "up.sh: FERRY_KIND_FAMILY is ipv4, dual or ipv6" >&2; exit 1 ;;
esac
tools=(docker kind kubectl)
case "$datastore" in
  kubernetes) ;;
  etcd) kustomization=$with_etcd; tools+=(openssl) ;;
  *) echo "up.sh: FERRY_KIND_DATASTORE is kubernetes or etcd" >&2; exit 1 ;;
esac
# Everything checked before anything is made.
missing=()
for tool in "${tools[@]}"; do
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

images=(-e "s|image: ferry:dev|image: $image|")
if [ "$datastore" = etcd ]; then
  # ferry's etcd runs the etcd image kubeadm already put on the control plane: no pull.
  etcd_image=$(docker exec "$cluster-control-plane" crictl images |
    awk '$1 ~ /\/etcd$/ { print $1 ":" $2; exit }')
  [ -n "$etcd_image" ] || { echo "up.sh: no etcd image on $cluster-control-plane" >&2; exit 1; }
  echo "ferry's etcd uses $etcd_image"
  images+=(-e "s|image: registry.k8s.io/etcd:.*|image: $etcd_image|")
  # Made once: a new CA would need etcd and every daemon restarted (deploy/etcd-certs.sh).
  if ! kubectl -n kube-system get secret ferry-etcd-client >/dev/null 2>&1; then
    deploy/etcd-certs.sh | kubectl apply -f -
  fi
fi

kubectl kustomize "$kustomization" | sed "${images[@]}" | kubectl apply -f -

if [ "$datastore" = etcd ]; then
  kubectl -n kube-system rollout status deployment/ferry-etcd --timeout=180s
fi
kubectl -n kube-system rollout status daemonset/ferry --timeout=300s
kubectl wait --for=condition=Ready nodes --all --timeout=300s
kubectl -n kube-system rollout status deployment/coredns --timeout=300s
kubectl get nodes -o wide
echo "ferry is the pod network of kind cluster $cluster; deploy/kind/check.sh checks it"
