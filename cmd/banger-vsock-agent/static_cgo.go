//go:build cgo

package main

// The agent runs as /init in initramfs images and inside images of any
// distribution, where no matching C library can be assumed. A plain `go
// build ./cmd/...` has cgo on, which links the binary against the host's
// libc; this directive makes the external linker link it statically
// instead, so every way of building produces an agent that boots.
// (scripts/build.sh builds with CGO_ENABLED=0, where this file is left out.)

// #cgo LDFLAGS: -static
import "C"
