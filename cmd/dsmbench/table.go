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
	proxyCPU time.Duration // the proxy process's CPU during the run (proxy path only)
}

// best keeps the faster of two runs of one path.
func best(a, b result) result {
	if a.msgs == 0 || b.rate() > a.rate() {
		return b
	}
	return a
}

func (r result) rate() float64 { return float64(r.msgs) / r.elapsed.Seconds() }
func (r result) mbps() float64 { return float64(r.bytes) / 1e6 / r.elapsed.Seconds() }

// row is one workload: direct and proxy, measured in the same run.
type row struct {
	protocol, workload string
	direct, proxy      result
	rss                int64 // proxy peak RSS
	perRequest         bool  // proxy CPU per request (HTTP APIs) rather than per GB
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
	fmt.Fprintln(tw, "PROTOCOL\tWORKLOAD\tPATH\tMSG/S\tMB/S\tP50\tP99\tPROXY CPU\tPROXY PEAK RSS\tRATIO (MSG/S)\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\tdirect\t%.0f\t%.1f\t%s\t%s\t\t\t\t\n", r.protocol, r.workload, r.direct.rate(), r.direct.mbps(), dur(r.direct.p50), dur(r.direct.p99))
		cpu := "-"
		switch {
		case r.perRequest && r.proxy.reqs > 0:
			cpu = fmt.Sprintf("%.0f µs/req", float64(r.proxy.proxyCPU.Microseconds())/float64(r.proxy.reqs))
		case r.proxy.bytes > 0:
			cpu = fmt.Sprintf("%.2f s/GB", r.proxy.proxyCPU.Seconds()/(float64(r.proxy.bytes)/1e9))
		}
		fmt.Fprintf(tw, "\t\tproxy\t%.0f\t%.1f\t%s\t%s\t%s\t%.0f MiB\t%.2f\t\n", r.proxy.rate(), r.proxy.mbps(), dur(r.proxy.p50), dur(r.proxy.p99),
			cpu, float64(r.rss)/(1<<20), r.proxy.rate()/r.direct.rate())
	}
	tw.Flush()
	fmt.Fprintln(w, "\nP50/P99: Kafka produce, from Produce to acknowledgement per record (pipelined); fetch, per poll;")
	fmt.Fprintln(w, "SQS and AMQP, per request. PROXY CPU: the proxy process's CPU per GB moved, or per request.")
	fmt.Fprintln(w, "Direct and proxy alternate on the same broker for several rounds; each path's best round is shown. The broker")
	fmt.Fprintln(w, "(kfake) runs inside dsmbench, SQS (npm local-aws-sqs) and RabbitMQ as local servers, the proxy in a child")
	fmt.Fprintln(w, "process whose CPU (/proc) and peak RSS are shown.")
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
