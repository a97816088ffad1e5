# Shared by k8s/build.sh and containerd/build.sh (sourced, not run): build Go
# commands pinned by a go.mod/go.sum into a cache directory that a warm run
# reuses, one build at a time across test sessions.
#
#   go_build_cached MODULE_DIR CACHE_DIR LDFLAGS STAMP_INPUT... -- NAME=PACKAGE...
#
# Prints CACHE_DIR. The stamp hashes the STAMP_INPUT files (go.sum, the build
# scripts), so a change to any of them rebuilds.

go_build_cached() {
  local module="$1" cache="$2" ldflags="$3"; shift 3
  local inputs=() targets=()
  while [[ $# -gt 0 && "$1" != -- ]]; do inputs+=("$1"); shift; done
  shift
  targets=("$@")
  local go_bin="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
  local stamp
  stamp="$(cat "${inputs[@]}" | sha256sum | cut -c1-16)"
  mkdir -p "$cache"
  if _go_cached "$cache" "$stamp" "${targets[@]}"; then echo "$cache"; return 0; fi
  # Test sessions may call this at the same time: one builds, the others wait.
  exec 9>"$cache/.lock"
  flock 9
  if _go_cached "$cache" "$stamp" "${targets[@]}"; then echo "$cache"; return 0; fi
  local start=$SECONDS target name pkg
  for target in "${targets[@]}"; do
    name="${target%%=*}" pkg="${target#*=}"
    echo "building $name ($pkg)" >&2
    # Build under a temporary name so an interrupted build never leaves a
    # truncated binary that looks cached.
    (cd "$module" && nice -n 10 "$go_bin" build -mod=readonly -trimpath -ldflags="$ldflags" \
      ${GO_BUILD_TAGS:+-tags "$GO_BUILD_TAGS"} -o "$cache/$name.tmp.$$" "$pkg") >&2
    mv "$cache/$name.tmp.$$" "$cache/$name"
  done
  echo "$stamp" > "$cache/.stamp"
  echo "built in $((SECONDS - start)) s" >&2
  echo "$cache"
}

_go_cached() {
  local cache="$1" stamp="$2" target; shift 2
  [[ "${KUBESLIM_GO_FORCE:-${KUBESLIM_K8S_FORCE:-0}}" != 1 && -f "$cache/.stamp" \
     && "$(cat "$cache/.stamp")" == "$stamp" ]] || return 1
  for target in "$@"; do [[ -x "$cache/${target%%=*}" ]] || return 1; done
}
