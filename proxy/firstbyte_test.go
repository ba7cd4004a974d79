package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestFirstByteConnLookedThrough: under TLS, Unread and Linger reach the TCP socket through a
// FirstByteConn (its NetConn): a drain sees a request the kernel holds, and a lingering close
// half-closes instead of leaving the close to send a reset.
func TestFirstByteConnLookedThrough(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Unread reads the kernel's count on Linux only")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	raw, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	tc := tls.Server(&FirstByteConn{Conn: raw}, &tls.Config{})
	if _, err := client.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for Unread(tc) != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("Unread through TLS and a FirstByteConn: %d, want 3", Unread(tc))
		}
		time.Sleep(5 * time.Millisecond)
	}
	go Linger(tc)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("after Linger the client reads %v, want EOF (a half-close)", err)
	}
}

// TestPlaintextAlert: the alert is found however the reads split the client's last bytes, and
// only when those bytes are an unencrypted alert record.
func TestPlaintextAlert(t *testing.T) {
	alert := []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 45}
	for _, tc := range []struct {
		name  string
		reads [][]byte
		want  bool
	}{
		{"one read", [][]byte{alert}, true},
		{"after other records", [][]byte{append([]byte{0x14, 0x03, 0x03, 0x00, 0x01, 0x01}, alert...)}, true},
		{"in pieces", [][]byte{{0x16, 0x03}, alert[:3], alert[3:5], alert[5:]}, true},
		{"byte by byte", [][]byte{alert[:1], alert[1:2], alert[2:3], alert[3:4], alert[4:5], alert[5:6], alert[6:]}, true},
		{"a handshake record", [][]byte{{0x16, 0x03, 0x03, 0x00, 0x02, 0x02, 45}}, false},
		{"short", [][]byte{alert[1:]}, false},
		{"more after the alert", [][]byte{alert, {0x17}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c FirstByteConn
			for _, r := range tc.reads {
				c.keepTail(r)
			}
			got, ok := c.PlaintextAlert()
			if ok != tc.want || (ok && got != tls.AlertError(45)) {
				t.Errorf("PlaintextAlert() = %v, %v; want found %v", got, ok, tc.want)
			}
		})
	}
}

// FuzzKeepTail: whatever the reads' sizes, the kept tail is the last bytes read, and
// PlaintextAlert finds an alert exactly when those are an unencrypted alert record.
func FuzzKeepTail(f *testing.F) {
	f.Add([]byte{0x16, 0x03, 0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 45}, []byte{2, 3, 1})
	f.Add([]byte{0x15, 0x03, 0x01, 0x00, 0x02, 0x01, 0}, []byte{7})
	f.Add([]byte("GET / HTTP/1.1\r\n"), []byte{1, 1, 20})
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		var c FirstByteConn
		rest := data
		for _, n := range cuts {
			if len(rest) == 0 {
				break
			}
			k := min(int(n)%16+1, len(rest))
			c.keepTail(rest[:k])
			rest = rest[k:]
		}
		if len(rest) > 0 {
			c.keepTail(rest)
		}
		want := data[max(0, len(data)-plainAlertLen):]
		if got := c.tail[:c.tailN]; string(got) != string(want) {
			t.Fatalf("tail %x after reading %x, want %x", got, data, want)
		}
		isAlert := len(want) == plainAlertLen && want[0] == 0x15 && want[1] == 0x03 && want[3] == 0 && want[4] == 2
		if got, ok := c.PlaintextAlert(); ok != isAlert || ok && got != tls.AlertError(want[6]) {
			t.Fatalf("PlaintextAlert() = %v, %v for tail %x", got, ok, want)
		}
	})
}
