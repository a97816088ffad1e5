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

# A Go-module build carries no version; stamp the release in, as the upstream
# Makefile does, so that `kubectl version` and Helm's kubeVersion checks see it.
minor="${version#v1.}"; minor="${minor%%.*}"
x=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  x+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
ldflags="-s -w$x"

cached() {
  # The stamp ties the cache to go.sum and this script, so changes rebuild.
  [[ "${KUBESLIM_K8S_FORCE:-0}" != 1 && -f "$cache/.stamp" && "$(cat "$cache/.stamp")" == "$stamp" ]] || return 1
  for name in "${!packages[@]}"; do [[ -x "$cache/$name" ]] || return 1; done
}

mkdir -p "$cache"
stamp="$(cat "$here/go.sum" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
if cached; then echo "$cache"; exit 0; fi
# Test sessions may call this at the same time: one builds, the others wait.
exec 9>"$cache/.lock"
flock 9
if cached; then echo "$cache"; exit 0; fi

cd "$here"
start=$SECONDS
for name in etcd kube-apiserver kube-controller-manager kubectl; do
  echo "building $name (${packages[$name]})" >&2
  # Build under a temporary name so an interrupted build never leaves a
  # truncated binary that looks cached.
  nice -n 10 "$go_bin" build -mod=readonly -trimpath -ldflags="$ldflags" \
    -o "$cache/$name.tmp.$$" "${packages[$name]}" >&2
  mv "$cache/$name.tmp.$$" "$cache/$name"
done
echo "$stamp" > "$cache/.stamp"
echo "built in $((SECONDS - start)) s" >&2
echo "$cache"
