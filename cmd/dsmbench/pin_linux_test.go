package main

import (
	"bufio"
	"maps"
	"net"
	"os"
	"os/exec"
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

// TestPinProcess: pinProcess moves every thread of another process (a Python child with three
// threads besides its main one) to one CPU and its restore gives each thread its own affinity back;
// listenerPID finds the process by its listening port.
func TestPinProcess(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: nothing to move a process between")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if pid, err := listenerPID(ln.Addr().(*net.TCPAddr).Port); err != nil || pid != os.Getpid() {
		t.Fatalf("listenerPID of this test's own listener = %d, %v; want %d", pid, err, os.Getpid())
	}
	if _, err := listenerPID(ln.Addr().(*net.TCPAddr).Port + 1); err == nil {
		t.Error("listenerPID found a process for a port nothing listens on")
	}

	child := exec.Command("python3", "-c", "import threading, time\n"+
		"for _ in range(3): threading.Thread(target=time.sleep, args=(60,)).start()\n"+
		"print('ready', flush=True)\ntime.sleep(60)")
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { child.Process.Kill(); child.Wait() }()
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("the child said %q, %v", line, err)
	}
	pid := strconv.Itoa(child.Process.Pid)
	affinities := func() map[int]int {
		out := map[int]int{}
		tasks, err := os.ReadDir("/proc/" + pid + "/task")
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			tid, _ := strconv.Atoi(task.Name())
			var set unix.CPUSet
			if err := unix.SchedGetaffinity(tid, &set); err == nil {
				out[tid] = set.Count()
				if set.Count() == 1 && !set.IsSet(0) {
					out[tid] = -1
				}
			}
		}
		return out
	}
	before := affinities()
	if len(before) < 4 {
		t.Fatalf("the child has %d threads, want 4", len(before))
	}
	restore, err := pinProcess(pid, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	for tid, n := range affinities() {
		if n != 1 {
			t.Errorf("thread %d after pinning: %d CPUs, want CPU 0 only", tid, n)
		}
	}
	restore()
	if after := affinities(); !maps.Equal(after, before) {
		t.Errorf("after restore: CPUs per thread %v, want %v as before", after, before)
	}
}
