package main

import (
	"os"
	"strings"
	"syscall"
)

// Freed memory and page faults. dsmbench's own processes (the clients, and the Kafka broker that
// keeps every record on its heap) run with collections off during a timed phase and collect
// between phases; the Go runtime then hands the freed pages back to the kernel (MADV_DONTNEED),
// and the next phase faults each one in again. On VMs that back guest memory lazily a fault
// costs ~10-20 µs: 50,000 broker faults in one proxy fetch phase once halved its ratio, and
// 20,000-28,000 client faults in a phase, which came at random, cut that phase to half the
// rate of its neighbours (2026-12-05). With madvdontneed=0 the runtime uses MADV_FREE instead,
// and the faults go. The cost does not go with them on this VM: reusing a page returned with
// MADV_FREE took about 6 µs of user time (a C program touching 512 MiB so: 0.7-0.8 s, no faults),
// against about 13 µs of user and system time after MADV_DONTNEED; kafka.go's warmRead keeps the
// broker's fetches out of returned memory. A long-running client or broker with its collector on
// reuses a warm heap; these are artefacts of the harness.
//
// The proxy and relay children run with the runtime's default (madvdontneed=1), as dsmproxy
// ships, so their figures are a real deployment's.
const (
	benchMemory = "madvdontneed=0"
	shipMemory  = "madvdontneed=1"
)

// withGODEBUG returns env with the GODEBUG setting kv (key=value) in place of any setting of
// that key, the others kept.
func withGODEBUG(env []string, kv string) []string {
	key, _, _ := strings.Cut(kv, "=")
	out := make([]string, 0, len(env)+1)
	settings := []string{}
	for _, e := range env {
		v, ok := strings.CutPrefix(e, "GODEBUG=")
		if !ok {
			out = append(out, e)
			continue
		}
		for _, s := range strings.Split(v, ",") {
			if k, _, _ := strings.Cut(s, "="); s != "" && k != key {
				settings = append(settings, s)
			}
		}
	}
	return append(out, "GODEBUG="+strings.Join(append(settings, kv), ","))
}

// reexecWithBenchMemory restarts this process with benchMemory unless GODEBUG already sets
// madvdontneed (the runtime reads it only at start; a user's own setting is kept). It returns
// only when it did not restart.
func reexecWithBenchMemory() {
	for _, s := range strings.Split(os.Getenv("GODEBUG"), ",") {
		if strings.HasPrefix(s, "madvdontneed=") {
			return
		}
	}
	self, err := os.Executable()
	if err != nil {
		return
	}
	_ = syscall.Exec(self, os.Args, withGODEBUG(os.Environ(), benchMemory)) // returns only on failure
}
