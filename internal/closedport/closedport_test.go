package closedport_test

import (
	"errors"
	"net"
	"syscall"
	"testing"

	"github.com/dsmproxy/dsmproxy/internal/closedport"
)

func TestRefusesAndIsHeld(t *testing.T) {
	p := closedport.New(t)
	if _, err := net.Dial("tcp", p.Addr()); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s: %v, want connection refused", p.Addr(), err)
	}
	if ln, err := net.Listen("tcp", p.Addr()); err == nil {
		ln.Close()
		t.Fatalf("listened on %s while it was reserved", p.Addr())
	}
	p.Release()
	ln, err := net.Listen("tcp", p.Addr())
	if err != nil {
		t.Fatalf("listen on %s after Release: %v", p.Addr(), err)
	}
	ln.Close()
}
