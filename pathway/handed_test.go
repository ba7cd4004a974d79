package pathway

import (
	"runtime"
	"testing"
	"time"
)

func testCtx(i int) Context {
	t := time.UnixMilli(1e12 + int64(i))
	return Context{Hash: uint64(i) + 1, PathwayStart: t, EdgeStart: t}
}

// TestHanded: a produce carrying a handed context gets the producing service's own consume as
// its parent, or the carried context when only other services consumed it; contexts handed to
// nobody, and the oldest past the bound, are not known.
func TestHanded(t *testing.T) {
	const capacity = 1 << 10
	h := NewHanded(capacity)
	carried, consumedA, consumedB := testCtx(1), testCtx(2), testCtx(3)
	h.Put(carried, "a", consumedA)
	h.Put(carried, "b", consumedB) // fan-out: a second service consumed the same message
	for _, tc := range []struct {
		service string
		carried Context
		want    Context
		ok      bool
	}{
		{"a", carried, consumedA, true},
		{"b", carried, consumedB, true},
		{"c", carried, carried, true}, // consumed under another name than it produces under
		{"a", testCtx(9), Context{}, false},
		{"a", Context{}, Context{}, false},
	} {
		got, ok := h.Parent(tc.carried, tc.service)
		if ok != tc.ok || !got.PathwayStart.Equal(tc.want.PathwayStart) || got.Hash != tc.want.Hash {
			t.Errorf("Parent(%d, %q) = %v, %v; want %v, %v", tc.carried.Hash, tc.service, got, ok, tc.want, tc.ok)
		}
	}
	// Twice the bound, so that carried's shard surely takes more than its share.
	for i := range 2 * capacity {
		h.Put(testCtx(100+i), "a", consumedA)
	}
	if _, ok := h.Parent(carried, "a"); ok {
		t.Error("the oldest context is still known past the bound")
	}
	if _, ok := h.Parent(testCtx(100+2*capacity-1), "a"); !ok {
		t.Error("the latest context is not known")
	}
	n := 0
	for i := range h.shards {
		n += len(h.shards[i].m)
	}
	if n > capacity {
		t.Errorf("%d contexts kept, want at most %d", n, capacity)
	}
}

// TestHandedMemory: a full Handed of AMQP's size (32,768 consumes) stays within the 16 MiB the
// README states.
func TestHandedMemory(t *testing.T) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	h := NewHanded(1 << 15)
	for i := range 1 << 16 { // twice over, so every shard is full
		h.Put(testCtx(i), "orders-worker", testCtx(i+1))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if used := int64(after.HeapAlloc) - int64(before.HeapAlloc); used > 16<<20 {
		t.Errorf("%d consumes remembered hold %d KiB of heap, want at most 16 MiB", 1<<15, used>>10)
	} else {
		t.Logf("%d consumes remembered: %d KiB of heap", 1<<15, used>>10)
	}
	runtime.KeepAlive(h)
}

// TestHandedOnePathway: the contexts of one pathway (one producer on one queue, as most are)
// share their hash and differ in their times. The bound still holds about capacity consumes
// of them, not the one sixteenth a store sharded by hash alone kept.
func TestHandedOnePathway(t *testing.T) {
	const capacity = 1 << 10
	h := NewHanded(capacity)
	ctxAt := func(i int) Context {
		tm := time.UnixMilli(1.7e12 + int64(i))
		return Context{Hash: 0xfeedface, PathwayStart: tm, EdgeStart: tm}
	}
	const consumes = capacity
	for i := range consumes {
		h.Put(ctxAt(i), "orders-worker", ctxAt(1e6+i))
	}
	known := 0
	for i := consumes - capacity/2; i < consumes; i++ {
		if _, ok := h.Parent(ctxAt(i), "orders-worker"); ok {
			known++
		}
	}
	if known != capacity/2 {
		t.Errorf("%d of the latest %d consumes of one pathway known (capacity %d), want all", known, capacity/2, capacity)
	}
}

// BenchmarkHandedPut: one consume's record, as every AMQP delivery and Kafka fetched record makes,
// with the store full (each Put also forgets the oldest), and a produce's lookup of a carried
// context: serial, and from every CPU at once (the shards' locks).
func BenchmarkHandedPut(b *testing.B) {
	const capacity = 1 << 15
	ctxs := make([]Context, 4*capacity)
	for i := range ctxs {
		ctxs[i] = testCtx(i)
	}
	fill := func() *Handed {
		h := NewHanded(capacity)
		for i := range capacity {
			h.Put(ctxs[i], "svc", ctxs[i])
		}
		return h
	}
	b.Run("put", func(b *testing.B) {
		h := fill()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			c := ctxs[i%len(ctxs)]
			h.Put(c, "svc", c)
			i++
		}
	})
	b.Run("put-parallel", func(b *testing.B) {
		h := fill()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				c := ctxs[i%len(ctxs)]
				h.Put(c, "svc", c)
				i += 7
			}
		})
	})
	b.Run("parent", func(b *testing.B) {
		h := fill()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			h.Parent(ctxs[i%capacity], "svc")
			i++
		}
	})
}
