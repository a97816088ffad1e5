#!/usr/bin/env bash
# Builds containerd, its runc shim, ctr and the sandbox (pause) program from
# the versions pinned in go.mod/go.sum beside this script, into a cache
# directory that a warm run reuses. Prints the directory that holds them.
#
#   tests/cluster/containerd/build.sh            # build what is missing
#   KUBESLIM_CONTAINERD_CACHE=/dir build.sh      # choose the cache directory
#   KUBESLIM_GO_FORCE=1 build.sh                 # rebuild even if present
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../gobuild.sh
source "$here/../gobuild.sh"
module=github.com/containerd/containerd/v2
version="$(awk -v m="$module" '{ if ($1 == "require") $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"
[[ -n "$version" ]] || { echo "build.sh: no $module version in $here/go.mod" >&2; exit 1; }
cache="${KUBESLIM_CONTAINERD_CACHE:-$HOME/.cache/kubeslim/containerd-$version}"

# Static binaries without the snapshotters that need C libraries (the node
# uses overlayfs); the pause program must be static to run in an empty image.
export CGO_ENABLED=0 GO_BUILD_TAGS="no_btrfs no_devmapper no_zfs"
ldflags="-s -w -X $module/version.Version=$version -X $module/version.Package=$module"
go_build_cached "$here" "$cache" "$ldflags" \
  "$here/go.sum" "${BASH_SOURCE[0]}" "$here/../gobuild.sh" "$here/pause/main.go" -- \
  containerd="$module/cmd/containerd" \
  containerd-shim-runc-v2="$module/cmd/containerd-shim-runc-v2" \
  ctr="$module/cmd/ctr" \
  pause=./pause
