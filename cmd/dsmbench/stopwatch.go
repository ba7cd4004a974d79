package main

import (
	"bytes"
	"os"
	"strconv"
	"sync"
	"time"
)

// stopwatch times one measured run: wall time, and the CPU time the whole machine was busy over
// it (every process: clients, brokers, proxy, kernel). Busy cores near the CPU count mean the run
// was bound by CPU throughout, so the proxy's own CPU comes out of the clients' and the broker's;
// well below it, part of the run waited on round trips. It is an average: a Kafka fetch, say,
// leaves a core idle while the broker builds a response and uses every core while it is copied.
type stopwatch struct {
	t0    time.Time
	busy0 time.Duration
}

func startWatch() stopwatch { return stopwatch{t0: time.Now(), busy0: machineBusy()} }

// stop fills r's elapsed and busy fields.
func (s stopwatch) stop(r *result) {
	r.elapsed = time.Since(s.t0)
	if b := machineBusy(); b > 0 && s.busy0 > 0 {
		r.busy = b - s.busy0
	}
}

// machineBusy is the non-idle CPU time of all CPUs so far, from /proc/stat's first line (user,
// nice, system, irq, softirq, steal; in clock ticks), or 0 where there is none.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := bytes.Cut(b, []byte{'\n'})
	f := bytes.Fields(line)
	if len(f) < 9 || string(f[0]) != "cpu" {
		return 0
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system [idle iowait] irq softirq steal
		n, err := strconv.ParseInt(string(f[i]), 10, 64)
		if err != nil {
			return 0
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / clockTicks)
}

// clockTicks is USER_HZ, which Linux fixes at 100 on every architecture Go supports.
const clockTicks = 100

// busyCores is r's busy CPU time per wall second out of the machine's CPUs, as "1.62/2", or "-".
func busyCores(r result) string {
	n := machineCPUs()
	if r.busy <= 0 || r.elapsed <= 0 || n == 0 {
		return "-"
	}
	return strconv.FormatFloat(r.busy.Seconds()/r.elapsed.Seconds(), 'f', 2, 64) + "/" + strconv.Itoa(n)
}

// machineCPUs counts the cpuN lines of /proc/stat once: every online CPU, whatever this process's
// affinity (--pin narrows it, runtime.NumCPU follows it).
var machineCPUs = sync.OnceValue(func() int {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	n := 0
	for line := range bytes.Lines(b) {
		if len(line) > 3 && bytes.HasPrefix(line, []byte("cpu")) && line[3] >= '0' && line[3] <= '9' {
			n++
		}
	}
	return n
})
