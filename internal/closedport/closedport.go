// Package closedport gives tests a loopback address that refuses connections and that nothing
// else on the machine can listen on meanwhile. Listening on :0 and closing frees the port at once,
// and another test's listener (or a broker's) can take it before the test dials it: the test then
// reaches a stranger instead of being refused.
package closedport

import "testing"

// Port is a reserved loopback TCP port with nothing listening on it.
type Port struct {
	addr    string
	release func()
}

// New reserves a port until the test ends or Release is called.
func New(t testing.TB) *Port {
	t.Helper()
	addr, release, err := reserve()
	if err != nil {
		t.Fatalf("reserve a closed port: %v", err)
	}
	p := &Port{addr: addr, release: release}
	t.Cleanup(p.Release)
	return p
}

// Addr is the port's address, "127.0.0.1:PORT".
func (p *Port) Addr() string { return p.addr }

// Release frees the port, for a test that then listens on it (a server coming back).
func (p *Port) Release() {
	if p.release != nil {
		p.release()
		p.release = nil
	}
}
