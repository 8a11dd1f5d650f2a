package vm

import "banger/internal/snapshot"

// The snapshot errors the service returns, for callers that map errors
// to API codes without knowing package snapshot: the service is the one
// door to snapshots and forks.
var (
	ErrSnapshotState        = snapshot.ErrInvalidState // a snapshot's state forbids the operation
	ErrSnapshotIncompatible = snapshot.ErrIncompatible // made by another VMM, image or kernel
	ErrSnapshotDamaged      = snapshot.ErrDamaged      // its files do not match its record
)
