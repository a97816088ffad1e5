#!/usr/bin/env bash
# Build kustomize from source through the Go module proxy and cache the binary at
# ${KUBESLIM_TOOLS:-$HOME/.cache/kubeslim/bin}/kustomize, for the GitOps example's test
# (`kustomize build --enable-helm examples/gitops`). No prebuilt binary is downloaded.
# Idempotent: returns at once when the cached binary is the pinned version.
set -euo pipefail

KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.8.2}"  # v5.8.3 needs Go 1.27
TOOLS="${KUBESLIM_TOOLS:-$HOME/.cache/kubeslim/bin}"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
STAMP="$TOOLS/.kustomize-build"
WANT="kustomize=${KUSTOMIZE_VERSION}"

if [[ -x "$TOOLS/kustomize" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "$WANT already at $TOOLS/kustomize"
    exit 0
fi

mkdir -p "$TOOLS"
echo "building $WANT into $TOOLS (minutes on a cold Go cache)"
start=$(date +%s)
GOBIN="$TOOLS" CGO_ENABLED=0 nice -n 10 "$GO" install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}"
"$TOOLS/kustomize" version
echo "$WANT" > "$STAMP"
echo "built in $(( $(date +%s) - start ))s"
