//go:build tools

// Package tools imports containerd's commands so that go.mod and go.sum pin
// every module they need; build.sh builds them with `go build`.
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
