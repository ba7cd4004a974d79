package amqp

import (
	"runtime"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/dsmproxy/dsmproxy/proxy"
)

// TestLoginUserKeptSmall: the user kept for the log lines is its first maxConnNameBytes bytes,
// and only those stay in memory for the connection's life: a slice of the decoded user kept the
// whole of it (up to MaxFrameBytes) alive.
func TestLoginUserKeptSmall(t *testing.T) {
	p, err := New(Config{Listen: "127.0.0.1:0", Upstream: rabbitAddr, Observer: &recorder{}, Errors: &errRecorder{},
		Services: &proxy.Services{Default: "svc"}, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	s := &session{p: p, log: zerolog.Nop(), pub: map[uint16]*pubState{}, del: map[uint16]*delState{}, shared: map[uint16]*chanShared{}}
	s.setService("", "")
	const size = 512 << 10
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	func() { // the frame goes out of scope: only what the session keeps stays
		resp := "\x00" + strings.Repeat("u", size) + "\x00pw"
		raw := appendFrame(nil, frameMethod, 0, method(classConnection, 11, table(), sstr("PLAIN"), lstr([]byte(resp)), sstr("en_US")))
		f, _, err := splitFrame(raw)
		if err != nil {
			t.Fatal(err)
		}
		s.clientMethod(f)
	}()
	if n := len(s.loginUser()); n != maxConnNameBytes {
		t.Fatalf("kept user of %d bytes, want %d", n, maxConnNameBytes)
	}
	before := heap()
	s.user.Store(nil)
	freed := int64(before) - int64(heap())
	if freed > size/2 {
		t.Errorf("forgetting the %d-byte kept user freed %d bytes: it held the whole decoded user", maxConnNameBytes, freed)
	}
	runtime.KeepAlive(s)
}
