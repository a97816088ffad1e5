#!/usr/bin/env bash
# Builds the control plane (etcd, kube-apiserver, kube-controller-manager,
# kubectl) and the real node's Kubernetes parts (kubelet, kube-scheduler,
# kube-proxy) from the versions pinned in go.mod/go.sum beside this script,
# into a cache directory that a warm run reuses. Prints the directory that
# holds the binaries.
#
#   tests/cluster/k8s/build.sh            # build what is missing
#   KUBESLIM_K8S_CACHE=/some/dir build.sh # choose the cache directory
#   KUBESLIM_K8S_FORCE=1 build.sh         # rebuild even if present
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../gobuild.sh
source "$here/../gobuild.sh"
version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"
[[ -n "$version" ]] || { echo "build.sh: no k8s.io/kubernetes version in $here/go.mod" >&2; exit 1; }
cache="${KUBESLIM_K8S_CACHE:-$HOME/.cache/kubeslim/k8s-$version}"

# A Go-module build carries no version; stamp the release in, as the upstream
# Makefile does, so that `kubectl version` and Helm's kubeVersion checks see it.
minor="${version#v1.}"; minor="${minor%%.*}"
x=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  x+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

# etcd's main package is the server module itself.
go_build_cached "$here" "$cache" "-s -w$x" "$here/go.sum" "${BASH_SOURCE[0]}" "$here/../gobuild.sh" -- \
  etcd=go.etcd.io/etcd/server/v3 \
  kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
  kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
  kubectl=k8s.io/kubernetes/cmd/kubectl \
  kubelet=k8s.io/kubernetes/cmd/kubelet \
  kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
  kube-proxy=k8s.io/kubernetes/cmd/kube-proxy
