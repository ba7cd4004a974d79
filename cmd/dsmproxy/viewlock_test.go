package main

import (
	"context"
	"fmt"
	goruntime "runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dsmproxy/dsmproxy/aggregator"
)

// TestViewContentsDoNotWaitForSend: /dsm and /metrics read contents, and a flush's Send copies
// every pathway's three sketches (seconds with tens of thousands of pathway groups): a scrape
// must not stall for that, exactly when the proxy is busiest. Send is held inside its copying
// (pathwayCopied), and contents must answer meanwhile with the view as it was before the flush;
// once Send is let go, the view holds the flush.
func TestViewContentsDoNotWaitForSend(t *testing.T) {
	now := time.Now().Truncate(10 * time.Second)
	bucket := func(start time.Time, n int) aggregator.Bucket {
		b := aggregator.Bucket{Start: start, Duration: 10 * time.Second, TimestampType: aggregator.Current}
		for i := range n {
			b.Groups = append(b.Groups, aggregator.Group{Service: "orders", EdgeTags: []string{"direction:out", "topic:orders", "type:kafka"},
				Hash: uint64(i + 1), PathwayLatency: sketchOf(t, 0.5), EdgeLatency: sketchOf(t, 0.1), PayloadSize: sketchOf(t, 100), PayloadBytes: 100})
		}
		return b
	}
	v := &localView{}
	if err := v.Send(context.Background(), []aggregator.Bucket{bucket(now.Add(-20*time.Second), 1)}); err != nil {
		t.Fatal(err)
	}
	copying, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	v.pathwayCopied = func() {
		once.Do(func() {
			close(copying)
			<-release
		})
	}
	sent := make(chan error, 1)
	go func() {
		sent <- v.Send(context.Background(), []aggregator.Bucket{bucket(now.Add(-10*time.Second), 100)})
	}()
	<-copying
	released := false
	letGo := func() {
		if !released {
			close(release)
			released = true
		}
	}
	defer letGo()
	got := make(chan viewContents, 1)
	go func() { got <- v.contents() }()
	for {
		select {
		case c := <-got:
			if len(c.pts) != 1 || !c.pts[0].Start.Equal(now.Add(-20*time.Second)) {
				t.Errorf("contents during a Send: %d pathways, want the 1 of the flush before", len(c.pts))
			}
			letGo()
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			c = v.contents()
			if len(c.pts) != 100 {
				t.Errorf("after the Send the view holds %d pathways, want 100", len(c.pts))
			}
			if tot := c.totals[pathwayKey("orders", []string{"direction:out", "topic:orders", "type:kafka"}, 1, 0)]; tot != (pathwayTotal{Messages: 2, Bytes: 200}) {
				t.Errorf("totals of the pathway in both flushes %+v, want 2 messages, 200 bytes", tot)
			}
			return
		default:
		}
		if blockedIn("(*localView).contents(") {
			t.Fatal("contents waits for the view's lock while Send copies the flush's sketches")
		}
		goruntime.Gosched()
	}
}

// TestScrapesDoNotWaitForEachOther: contents copies every pathway and offset the view holds (up
// to 100,000 offsets); two scrapes at once (two Prometheus servers, or /metrics and /dsm) only
// read, and one must not wait for the other's copy.
func TestScrapesDoNotWaitForEachOther(t *testing.T) {
	v := &localView{}
	if err := v.Send(context.Background(), []aggregator.Bucket{{Start: time.Now().Truncate(10 * time.Second), Duration: 10 * time.Second,
		TimestampType: aggregator.Current, Groups: []aggregator.Group{{Service: "orders", EdgeTags: []string{"direction:out", "topic:orders", "type:kafka"},
			Hash: 1, PathwayLatency: sketchOf(t, 0.5), EdgeLatency: sketchOf(t, 0.1), PayloadSize: sketchOf(t, 100)}}}}); err != nil {
		t.Fatal(err)
	}
	copying, release := make(chan struct{}), make(chan struct{})
	var calls atomic.Int32
	v.contentsCopying = func() { // holds the first scrape inside its copy (a sync.Once would hold the second too)
		if calls.Add(1) == 1 {
			close(copying)
			<-release
		}
	}
	first := make(chan viewContents, 1)
	go func() { first <- v.contents() }()
	<-copying
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	second := make(chan viewContents, 1)
	go func() { second <- v.contents() }()
	for {
		select {
		case c := <-second:
			if len(c.pts) != 1 {
				t.Errorf("the second scrape got %d pathways, want 1", len(c.pts))
			}
			close(release)
			if c := <-first; len(c.pts) != 1 {
				t.Errorf("the first scrape got %d pathways, want 1", len(c.pts))
			}
			return
		default:
		}
		if blockedIn("(*localView).contents(") {
			t.Fatal("a scrape waits for the view's lock while another copies the view")
		}
		goruntime.Gosched()
	}
}

// blockedIn reports whether a goroutine in fn (as a stack trace names it) is parked on a mutex:
// its header says so ("goroutine 7 [sync.Mutex.Lock]:"), not one merely passing through Lock.
func blockedIn(fn string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:goruntime.Stack(buf, true)]
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, fn) && (strings.Contains(g, "[sync.Mutex.Lock") || strings.Contains(g, "[sync.RWMutex.")) {
			return true
		}
	}
	return false
}

// BenchmarkLocalViewSend: a flush of 10,000 pathway groups into a view that holds them already,
// as at every flush of a busy proxy.
func BenchmarkLocalViewSend(b *testing.B) {
	bucket := aggregator.Bucket{Start: time.Now().Truncate(10 * time.Second), Duration: 10 * time.Second, TimestampType: aggregator.Current}
	for i := range 10_000 {
		bucket.Groups = append(bucket.Groups, aggregator.Group{Service: fmt.Sprintf("svc%d", i%50),
			EdgeTags: []string{"direction:in", "group:billing", fmt.Sprintf("topic:orders%d", i%200), "type:kafka"}, Hash: uint64(i + 1), ParentHash: uint64(i),
			PathwayLatency: sketchOf(b, 0.5, 1.5, 3), EdgeLatency: sketchOf(b, 0.01, 0.2), PayloadSize: sketchOf(b, 100, 2000), PayloadBytes: 2100})
	}
	buckets := []aggregator.Bucket{bucket}
	v := &localView{}
	if err := v.Send(context.Background(), buckets); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := v.Send(context.Background(), buckets); err != nil {
			b.Fatal(err)
		}
	}
}
