//go:build unix

package amqp

import (
	"syscall"
	"time"
)

// processCPU is the CPU time this process has used, user and system: on a shared machine a
// benchmark's CPU per op varies less than its wall time, which includes waits for a core.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
