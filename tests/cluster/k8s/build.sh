#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager and kubectl from the
# versions pinned in go.mod/go.sum beside this script, into a cache directory
# that a warm run reuses. Prints the directory that holds the binaries.
#
#   tests/cluster/k8s/build.sh            # build what is missing
#   KUBESLIM_K8S_CACHE=/some/dir build.sh # choose the cache directory
#   KUBESLIM_K8S_FORCE=1 build.sh         # rebuild even if present
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
go_bin="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"
[[ -n "$version" ]] || { echo "build.sh: no k8s.io/kubernetes version in $here/go.mod" >&2; exit 1; }
cache="${KUBESLIM_K8S_CACHE:-$HOME/.cache/kubeslim/k8s-$version}"

# binary name -> Go package; etcd's main package is the server module itself.
declare -A packages=(
  [etcd]=go.etcd.io/etcd/server/v3
  [kube-apiserver]=k8s.io/kubernetes/cmd/kube-apiserver
  [kube-controller-manager]=k8s.io/kubernetes/cmd/kube-controller-manager
  [kubectl]=k8s.io/kubernetes/cmd/kubectl
)

mkdir -p "$cache"
# The stamp ties the cache to this exact go.sum, so a version bump rebuilds.
stamp="$(sha256sum "$here/go.sum" | cut -c1-16)"
if [[ "${KUBESLIM_K8S_FORCE:-0}" != 1 && -f "$cache/.stamp" && "$(cat "$cache/.stamp")" == "$stamp" ]]; then
  missing=0
  for name in "${!packages[@]}"; do [[ -x "$cache/$name" ]] || missing=1; done
  if [[ $missing == 0 ]]; then echo "$cache"; exit 0; fi
fi

cd "$here"
start=$SECONDS
for name in etcd kube-apiserver kube-controller-manager kubectl; do
  echo "building $name (${packages[$name]})" >&2
  # Build into a temporary name first so an interrupted build never leaves a
  # truncated binary that looks cached.
  nice -n 10 "$go_bin" build -mod=readonly -trimpath -ldflags="-s -w" \
    -o "$cache/$name.tmp" "${packages[$name]}" >&2
  mv "$cache/$name.tmp" "$cache/$name"
done
echo "$stamp" > "$cache/.stamp"
echo "built in $((SECONDS - start)) s" >&2
echo "$cache"
