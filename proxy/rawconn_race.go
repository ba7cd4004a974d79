//go:build linux && race

package proxy

import "sync/atomic"

// rawIOSync stands in for the syscall package's race annotations (ReleaseMerge before a write,
// Acquire after a read), which raw system calls skip: bytes written to a socket and read back in
// the same process order the writer's memory before the reader's, and the race detector must see
// that edge. Atomic operations are synchronizing events to it.
var rawIOSync atomic.Uint64

func raceReleaseIO() { rawIOSync.Add(1) }
func raceAcquireIO() { rawIOSync.Load() }
