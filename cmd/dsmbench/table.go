package main

import (
	"fmt"
	"io"
	"slices"
	"sync"
	"text/tabwriter"
	"time"
)

// result is one workload on one path.
type result struct {
	msgs     int
	reqs     int // requests, where CPU is reported per request
	bytes    int64
	elapsed  time.Duration
	p50, p99 time.Duration
	proxyCPU time.Duration // the proxy (or relay) process's CPU during the run
	busy     time.Duration // every CPU's non-idle time during the run (stopwatch)
}

// best keeps the faster of two runs of one path.
func best(a, b result) result {
	if a.msgs == 0 || b.rate() > a.rate() {
		return b
	}
	return a
}

// rounds collects one workload over alternating rounds: each path's best run, and the proxy/direct
// ratio within each round, where the runs were back to back. On a shared machine the spread of
// those shows how much the neighbours moved the figures.
type rounds struct {
	direct, proxy, relay result
	cur                  [3]result // this round's runs, by path (msgs 0: none yet)
	ratios, relayRatios  []float64
}

// Paths a run is added under.
const (
	pathDirect = iota
	pathProxy
	pathRelay
)

// roundOrder is the order the n paths run in, in round: as listed in even rounds, reversed in
// odd ones, so that no path always follows the same one (a broker's state, its caches and
// collections, carry over from the run before).
func roundOrder(round, n int) []int {
	order := make([]int, n)
	for i := range order {
		order[i] = i
		if round%2 == 1 {
			order[i] = n - 1 - i
		}
	}
	return order
}

// add records a run of one path in the current round.
func (r *rounds) add(path int, res result) {
	switch path {
	case pathDirect:
		r.direct = best(r.direct, res)
	case pathProxy:
		r.proxy = best(r.proxy, res)
	case pathRelay:
		r.relay = best(r.relay, res)
	}
	r.cur[path] = res
}

// endRound takes the round's ratios (against its direct run) and starts the next round.
func (r *rounds) endRound() {
	if d := r.cur[pathDirect]; d.msgs > 0 {
		if p := r.cur[pathProxy]; p.msgs > 0 {
			r.ratios = append(r.ratios, p.rate()/d.rate())
		}
		if l := r.cur[pathRelay]; l.msgs > 0 {
			r.relayRatios = append(r.relayRatios, l.rate()/d.rate())
		}
	}
	r.cur = [3]result{}
}

func (r *rounds) row(protocol, workload string, rss int64, perRequest bool) row {
	return row{protocol: protocol, workload: workload, direct: r.direct, proxy: r.proxy, ratios: r.ratios,
		relay: r.relay, relayRatios: r.relayRatios, rss: rss, perRequest: perRequest}
}

func (r result) rate() float64 { return float64(r.msgs) / r.elapsed.Seconds() }
func (r result) mbps() float64 { return float64(r.bytes) / 1e6 / r.elapsed.Seconds() }

// row is one workload: direct and proxy, measured in the same run.
type row struct {
	protocol, workload string
	direct, proxy      result
	ratios             []float64 // proxy/direct within each round
	relay              result    // the plain TCP relay (--relay), if it ran
	relayRatios        []float64 // relay/direct within each round
	rss                int64     // proxy peak RSS
	perRequest         bool      // proxy CPU per request (HTTP APIs) rather than per GB
}

// latencies keeps samples for quantiles.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func newLatencies(n int) *latencies { return &latencies{d: make([]time.Duration, 0, n)} }

func (l *latencies) add(d time.Duration) { l.mu.Lock(); l.d = append(l.d, d); l.mu.Unlock() }

func (l *latencies) quantile(q float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	slices.Sort(l.d)
	return l.d[int(q*float64(len(l.d)-1))]
}

func printTable(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PROTOCOL\tWORKLOAD\tPATH\tMSG/S\tMB/S\tP50\tP99\tCORES BUSY\tPROXY CPU\tPROXY PEAK RSS\tRATIO (MSG/S)\tPER ROUND\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\tdirect\t%.0f\t%.1f\t%s\t%s\t%s\t\t\t\t\t\n", r.protocol, r.workload, r.direct.rate(), r.direct.mbps(), dur(r.direct.p50), dur(r.direct.p99), busyCores(r.direct))
		fmt.Fprintf(tw, "\t\tproxy\t%.0f\t%.1f\t%s\t%s\t%s\t%s\t%.0f MiB\t%s\t%s\t\n", r.proxy.rate(), r.proxy.mbps(), dur(r.proxy.p50), dur(r.proxy.p99),
			busyCores(r.proxy), cpuOf(r.proxy, r.perRequest), float64(r.rss)/(1<<20), median(r.ratios), spread(r.ratios))
		if r.relay.msgs > 0 {
			fmt.Fprintf(tw, "\t\trelay\t%.0f\t%.1f\t%s\t%s\t%s\t%s\t\t%s\t%s\t\n", r.relay.rate(), r.relay.mbps(), dur(r.relay.p50), dur(r.relay.p99),
				busyCores(r.relay), cpuOf(r.relay, r.perRequest), median(r.relayRatios), spread(r.relayRatios))
		}
	}
	tw.Flush()
	fmt.Fprintln(w, "\nP50/P99: Kafka produce, from Produce to acknowledgement per record (pipelined); fetch, per poll;")
	fmt.Fprintln(w, "SQS and AMQP, per request. PROXY CPU: the proxy process's CPU per GB moved, or per request.")
	fmt.Fprintln(w, "CORES BUSY: the whole machine's CPU time (every process and the kernel) per second of the run,")
	fmt.Fprintln(w, "averaged: near the CPU count, the run was bound by CPU and the proxy's CPU is taken from the")
	fmt.Fprintln(w, "clients and the broker; below it, part of the run waited on round trips.")
	fmt.Fprintln(w, "Direct and proxy alternate on the same broker for several rounds, in reverse order every other round.")
	fmt.Fprintln(w, "MSG/S to P99 are each path's best round. RATIO is the median over the rounds of proxy/direct")
	fmt.Fprintln(w, "measured back to back in one round (not best over best, which pairs runs from different rounds),")
	fmt.Fprintln(w, "and PER ROUND the lowest and highest of those ratios. The Kafka")
	fmt.Fprintln(w, "broker (kfake) runs in a child process (inside dsmbench with --kafka-in-process), SQS (npm")
	fmt.Fprintln(w, "local-aws-sqs) and RabbitMQ as local servers, the proxy in a child process whose CPU (/proc) and")
	fmt.Fprintln(w, "peak RSS are shown.")
	if slices.ContainsFunc(rows, func(r row) bool { return r.relay.msgs > 0 }) {
		fmt.Fprintln(w, "RELAY: the same workload through a plain TCP relay in a child process (--relay), which parses")
		fmt.Fprintln(w, "nothing: relay/direct is what the extra hop alone costs, proxy/relay what the proxy's work adds.")
	}
}

// cpuOf is the proxy's (or relay's) CPU per request or per GB in r, or "-".
func cpuOf(r result, perRequest bool) string {
	switch {
	case perRequest && r.reqs > 0:
		return fmt.Sprintf("%.0f µs/req", float64(r.proxyCPU.Microseconds())/float64(r.reqs))
	case r.bytes > 0:
		return fmt.Sprintf("%.2f s/GB", r.proxyCPU.Seconds()/(float64(r.bytes)/1e9))
	}
	return "-"
}

// median is the middle per-round ratio (the mean of the middle two for an even count), or "-".
func median(ratios []float64) string {
	if len(ratios) == 0 {
		return "-"
	}
	s := slices.Sorted(slices.Values(ratios))
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + m) / 2
	}
	return fmt.Sprintf("%.2f", m)
}

// spread is "min-max" of the per-round ratios, or the one ratio.
func spread(ratios []float64) string {
	switch len(ratios) {
	case 0:
		return "-"
	case 1:
		return fmt.Sprintf("%.2f", ratios[0])
	}
	return fmt.Sprintf("%.2f-%.2f", slices.Min(ratios), slices.Max(ratios))
}

func dur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	}
	return fmt.Sprintf("%dµs", d.Microseconds())
}
