package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

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

// pinSelf restricts every thread of this process to cpus.
func pinSelf(cpus []int) error {
	_, err := pinProcess("self", cpus)
	return err
}

// pinProcess restricts every thread of process pid ("self" or a number) to cpus and returns what
// gives each thread its own affinity back. Affinity is per thread in Linux, and a new thread
// inherits its creator's: two passes over /proc/PID/task catch a thread created by one not yet
// pinned during the first.
func pinProcess(pid string, cpus []int) (restore func(), err error) {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	saved := map[int]unix.CPUSet{}
	restore = func() {
		for tid, s := range saved {
			_ = unix.SchedSetaffinity(tid, &s) // a thread that ended needs nothing
		}
	}
	for pass := 0; pass < 2; pass++ {
		tasks, err := os.ReadDir(filepath.Join("/proc", pid, "task"))
		if err != nil {
			restore()
			return nil, err
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if _, ok := saved[tid]; !ok {
				var old unix.CPUSet
				if err := unix.SchedGetaffinity(tid, &old); err != nil {
					continue // ended
				}
				saved[tid] = old
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
				restore()
				return nil, fmt.Errorf("pinning thread %d of process %s to CPUs %v: %w", tid, pid, cpus, err)
			}
		}
	}
	return restore, nil
}

// listenerPID finds the process listening on TCP port (any address, IPv4 or IPv6): the socket's
// inode from /proc/net/tcp and tcp6, then the process holding it among /proc/*/fd.
func listenerPID(port int) (int, error) {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || fs[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, ok := strings.Cut(fs[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); ok && err == nil && int(p) == port {
				inodes["socket:["+fs[9]+"]"] = true
			}
		}
		fh.Close()
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("no socket listens on TCP port %d", port)
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		if err != nil {
			continue // gone, or not ours to read
		}
		for _, fd := range fds {
			if link, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name())); err == nil && inodes[link] {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("port %d listens, but no process whose descriptors can be read here holds it", port)
}
