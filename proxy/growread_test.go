package proxy

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// trickle hands out at most chunk bytes per Read, as a slow peer does.
type trickle struct {
	data  []byte
	chunk int
}

func (t *trickle) Read(p []byte) (int, error) {
	if len(t.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), t.chunk)], t.data)
	t.data = t.data[n:]
	return n, nil
}

func TestReadGrowing(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 40<<10) // 640 KiB
	for _, tc := range []struct {
		name     string
		have     []byte // b's contents before the read
		capacity int    // b's capacity
		sent, n  int    // bytes r holds, bytes asked for
		wantErr  error
		maxCap   int // the buffer's capacity after the read is at most this
	}{
		{"fits the buffer", []byte("head"), 1 << 20, 1000, 1000, nil, 1 << 20},
		{"grows to what came", []byte("head"), 4, len(payload), len(payload), nil, 2*len(payload) + 8},
		{"announced much, sent little", nil, 0, 10, 1 << 30, io.ErrUnexpectedEOF, 2 * GrowFrom},
		{"nothing sent", []byte("x"), 1, 0, 100, io.EOF, GrowFrom * 2},
		{"nothing asked", []byte("x"), 1, 0, 0, nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := append(make([]byte, 0, max(tc.capacity, len(tc.have))), tc.have...)
			got, err := ReadGrowing(&trickle{data: payload[:tc.sent], chunk: 7000}, b, tc.n)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err %v, want %v", err, tc.wantErr)
			}
			want := append(append([]byte(nil), tc.have...), payload[:min(tc.sent, tc.n)]...)
			if !bytes.Equal(got, want) {
				t.Errorf("got %d bytes, want %d (the first ones kept, then what came)", len(got), len(want))
			}
			if cap(got) > tc.maxCap {
				t.Errorf("capacity %d after %d bytes came, want at most %d", cap(got), len(got), tc.maxCap)
			}
		})
	}
}
