#!/usr/bin/env bash
# Build helm from source through the Go module proxy and cache the binary at
# ${KUBESLIM_TOOLS:-$HOME/.cache/kubeslim/bin}/helm. No prebuilt binary is downloaded:
# the proxy serves source and `go install` compiles it (about 5 minutes cold on 2 cores).
# Idempotent: returns at once when the cached binary was built with the same settings.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# The Kubernetes version helm assumes without a cluster (`helm template`, `helm lint`):
# that of the client-go in helm's go.mod (v0.37.0 for helm v3.22.0), as helm's Makefile
# sets it. Without it, helm says v1.20 and rejects the chart's kubeVersion.
K8S_MAJOR=1
K8S_MINOR="${HELM_K8S_MINOR:-37}"
TOOLS="${KUBESLIM_TOOLS:-$HOME/.cache/kubeslim/bin}"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
HELM="$TOOLS/helm"
STAMP="$TOOLS/.helm-build"
WANT="helm=${HELM_VERSION} kubernetes=${K8S_MAJOR}.${K8S_MINOR}"

if [[ -x "$HELM" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "$WANT already at $HELM"
    exit 0
fi

mkdir -p "$TOOLS"
echo "building $WANT into $TOOLS (minutes on a cold Go cache)"
start=$(date +%s)
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X ${pkg}.k8sVersionMajor=${K8S_MAJOR} -X ${pkg}.k8sVersionMinor=${K8S_MINOR}"
done
# CGO off: a static binary that does not depend on the host's libc.
GOBIN="$TOOLS" CGO_ENABLED=0 nice -n 10 "$GO" install -trimpath -ldflags "$ldflags" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
"$HELM" version --short
echo "$WANT" > "$STAMP"
echo "built in $(( $(date +%s) - start ))s"
