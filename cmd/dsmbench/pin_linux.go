package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// pinCPUs splits the machine for --pin: the last CPU for the proxy child, the others for this
// process (the clients) and the brokers and servers it starts, which inherit its affinity.
func pinCPUs() (bench, proxy []int, err error) {
	n := runtime.NumCPU()
	if n < 2 {
		return nil, nil, fmt.Errorf("--pin needs at least 2 CPUs, this machine has %d", n)
	}
	for i := 0; i < n-1; i++ {
		bench = append(bench, i)
	}
	return bench, []int{n - 1}, nil
}

// pinSelf restricts every thread of this process to cpus. Affinity is per thread in Linux, and a
// new thread inherits its creator's: two passes over /proc/self/task catch a thread created by one
// not yet pinned during the first.
func pinSelf(cpus []int) error {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	for pass := 0; pass < 2; pass++ {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("pinning thread %d to CPUs %v: %w", tid, cpus, err)
			}
		}
	}
	return nil
}
