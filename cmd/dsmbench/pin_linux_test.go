package main

import (
	"os"
	"runtime"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPinSelf: pinSelf moves every thread of the process to the CPUs given (here CPU 0, then back
// to all of them), and pinCPUs leaves the last CPU to the proxy.
func TestPinSelf(t *testing.T) {
	if runtime.NumCPU() < 2 {
		if _, _, err := pinCPUs(); err == nil {
			t.Fatal("pinCPUs accepted a machine with one CPU")
		}
		return
	}
	bench, proxyCPUs, err := pinCPUs()
	if err != nil || len(proxyCPUs) != 1 || proxyCPUs[0] != runtime.NumCPU()-1 || len(bench) != runtime.NumCPU()-1 {
		t.Fatalf("pinCPUs = %v, %v, %v", bench, proxyCPUs, err)
	}
	var all []int
	for i := 0; i < runtime.NumCPU(); i++ {
		all = append(all, i)
	}
	defer pinSelf(all)
	for _, cpus := range [][]int{{0}, all} {
		if err := pinSelf(cpus); err != nil {
			t.Fatal(err)
		}
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			tid, _ := strconv.Atoi(task.Name())
			var set unix.CPUSet
			if err := unix.SchedGetaffinity(tid, &set); err != nil {
				continue // the thread ended
			}
			if set.Count() != len(cpus) || !set.IsSet(cpus[0]) {
				t.Errorf("thread %d: affinity %v CPUs, want %v", tid, set.Count(), cpus)
			}
		}
	}
}
